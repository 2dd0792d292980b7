"""Durations ("100ms", "5s", "2m", "1h") and rates ("200/s", "3000/m") as
people write them in scenarios."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration like 100ms, 5s, 2m or 1h")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like 100ms, 5s, 2m or 1h")
    return float(match.group(1)) * _SECONDS[match.group(2)]


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
    if rate <= 0:
        raise ValueError("a rate must be above zero")
    return rate


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(lambda s: f"{s:g}s", return_type=str)
]
Rate = Annotated[
    float, BeforeValidator(parse_rate), PlainSerializer(lambda r: f"{r:g}/s", return_type=str)
]
