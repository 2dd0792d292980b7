"""Counts and numbers as people read them."""

from __future__ import annotations

from decimal import Decimal


def counted(n: float, noun: str, plural: str | None = None) -> str:
    """``1 device``, ``0 devices``, ``2,000 devices``: the noun agrees with the
    count (a count read from JSON as ``60.0`` is still 60)."""
    return f"{number(n)} {noun if n == 1 else plural or noun + 's'}"


def number(value: float, *, grouped: bool = True) -> str:
    """A count exactly (a million devices is not 1e+06), with thousands
    separators when ``grouped``; another number to the thousandth reports are
    written to, or, below 1, to four significant digits; never in scientific
    notation."""
    comma = "," if grouped else ""
    if float(value).is_integer():
        return f"{int(value):{comma}}"
    if abs(value) >= 1:
        return f"{value:{comma}.3f}".rstrip("0").rstrip(".")
    return format(Decimal(f"{value:.4g}"), "f")


def ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2, 5, 7-8``: a thousand missing shards fit a line."""
    parts: list[str] = []
    start = prev = None
    for n in [*numbers, None]:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ", ".join(parts)
