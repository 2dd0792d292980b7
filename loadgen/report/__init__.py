"""Run reports: the JSON file, its summary table, and (later) gates and HTML."""
