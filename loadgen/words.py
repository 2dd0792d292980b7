"""Counts as people read them."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 device``, ``0 devices``, ``2 devices``: the noun agrees with the count."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
