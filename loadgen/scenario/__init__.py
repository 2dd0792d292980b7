"""Scenario files: what to run, against what, with which fleet and load."""
