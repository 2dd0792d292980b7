"""Durations ("100ms", "5s", "2m", "1h") and rates ("200/s", "3000/m") as
people write them in scenarios, parsed. Plain functions: the workers and the
emulator's serving processes use them without the scenario's schema (pydantic),
which holds the scenario's field types made of them."""

from __future__ import annotations

import math
import re

# The patterns also go into the scenario's JSON Schema (ECMA-262 regexes alike).
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
RATE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(RATE_PATTERN)
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration like 100ms, 5s, 2m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{value!r} is not a duration: it must be zero or more")
        return seconds
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like 100ms, 5s, 2m or 1h")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def positive(seconds: float) -> float:
    """For a duration that must be above zero (a timeout of 0 fails every device)."""
    if seconds <= 0:
        raise ValueError("must be above zero, like 100ms or 10s")
    return seconds


def parse_rate(value: object) -> float:
    """Devices per second."""
    if isinstance(value, bool):
        raise ValueError("a rate like 200/s or 3000/m")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        match = _RATE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a rate like 200/s or 3000/m")
        rate = float(match.group(1)) / _PER[match.group(2)]
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError("a rate must be above zero")
    return rate


def parse_rate_or_zero(value: object) -> float:
    """A rate that may be zero: where a ramp starts (the usual case) or pauses."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    match = _RATE.match(value) if isinstance(value, str) else None
    if value == "0" or (match is not None and float(match.group(1)) == 0):
        return 0.0
    return parse_rate(value)
