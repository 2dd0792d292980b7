"""AWS's wildcards and policy variables, as IoT policies use them in resources
and condition values."""

from __future__ import annotations

import re

VARIABLE = re.compile(r"\$\{([^}]+)\}")


def expand(pattern: str, variables: dict[str, str]) -> str | None:
    """``pattern`` with its policy variables substituted; None when one of them
    has no value for the connection (then it cannot match anything)."""
    if pattern.startswith("${") and pattern.endswith("}") and "}" not in pattern[2:-1]:
        # One variable and nothing else (a condition's usual value): what the
        # regex would find, without it.
        return variables.get(pattern[2:-1]) if len(pattern) > 3 else pattern
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        value = variables.get(match[1])
        if value is None:
            missing = True
            return ""
        return value

    expanded = VARIABLE.sub(sub, pattern)
    return None if missing else expanded


def _same(value: str, at: int, part: str) -> bool:
    """``part`` (``?`` any one character) matches ``value`` from ``at``."""
    return all(p == "?" or p == v for p, v in zip(part, value[at : at + len(part)], strict=True))


def _find(value: str, part: str, start: int, end: int) -> int:
    """Where ``part`` first matches within ``value[start:end]``, or -1."""
    if "?" not in part:
        return value.find(part, start, end)
    for at in range(start, end - len(part) + 1):
        if _same(value, at, part):
            return at
    return -1


def glob(value: str, pattern: str) -> bool:
    """AWS's wildcards: ``*`` any characters (``/`` too), ``?`` any one; all else
    plain, brackets included. Without a regular expression: a pattern holding a
    policy variable is a new pattern for every device, and compiling one per
    connect (``fnmatch``) cost more than the rest of the CONNECT."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return len(value) == len(pattern) and _same(value, 0, pattern)
    first, last = parts[0], parts[-1]
    end = len(value) - len(last)
    if end < len(first) or not _same(value, 0, first) or not _same(value, end, last):
        return False
    # Each part between stars at its leftmost place leaves the most room for the
    # next: if that fails, every other placement does.
    at = len(first)
    for part in parts[1:-1]:
        found = _find(value, part, at, end)
        if found < 0:
            return False
        at = found + len(part)
    return True
