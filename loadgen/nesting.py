"""How deep the files a user gives may nest. Python's parsers and the checks
that walk a file recurse, and give out (RecursionError, a traceback) near a
thousand levels: a file nested deeper than any real one is refused first."""

from __future__ import annotations

import json
from typing import Any

# Scenarios and profiles nest about 6 levels, templates about 10, reports 6.
MAX_DEPTH = 100


def parse_json(text: str | bytes, *, strict: bool = True) -> Any:
    """``json.loads``, where nesting too deep for Python's parser is a
    ``ValueError`` as any other mistake in the text is."""
    try:
        return json.loads(text, strict=strict)
    except RecursionError:
        raise ValueError("nested too deep to read (a file nests a few levels)") from None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels:
    found level by level, not by recursing into them."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if not level:
            return False
    return any(isinstance(node, dict | list) for node in level)
