"""The arrival schedule (open model) and the worker processes that keep it."""
