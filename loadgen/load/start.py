"""``--start-at``: shards that start their schedules at one wall-clock time.

An Indexed Job's pods have no start barrier: each prepares (fleet, workers, the
first devices), then waits for the agreed time. Clocks are the nodes' (NTP keeps
them within milliseconds); a shard ready late starts at once and says how late,
and one later than the tolerance fails rather than run out of step.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass

from loadgen.errors import UserError
from loadgen.scenario.units import parse_duration

DEFAULT_TOLERANCE = "30s"
# Further ahead than this is taken for a mistake (milliseconds for seconds, a
# wrong day), not a run meant to wait that long.
MAX_AHEAD = 24 * 3600.0


@dataclass(frozen=True)
class StartAt:
    at: float  # seconds since the epoch
    tolerance: float  # seconds late a shard may still start
    text: str  # as given, for messages

    def late_by(self, now: float) -> float:
        return max(0.0, now - self.at)

    def check(self, now: float) -> None:
        """Refuse to start later than the tolerance allows."""
        late = now - self.at
        if late > self.tolerance:
            raise UserError(
                f"--start-at {self.text}: ready {late:.1f} s late, more than "
                f"--start-tolerance {self.tolerance:g} s: the other shards started without "
                "this one (set a later --start-at, or a larger --start-tolerance)"
            )


def parse_time(text: str) -> float:
    """Epoch seconds (``1767225600.5``) or ISO 8601 with a zone."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise UserError(f"--start-at {text}: not a time (epoch seconds are 0 or more)")
        return seconds
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise UserError(
            f"--start-at {text}: not a time: give epoch seconds (1767225600) or "
            "ISO 8601 with a zone (2026-12-01T18:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise UserError(
            f"--start-at {text}: no time zone: say which, e.g. {text}Z (UTC), "
            "so that every node reads the same instant"
        )
    return when.timestamp()


def parse_start(text: str | None, tolerance_text: str, now: float | None = None) -> StartAt | None:
    """``--start-at`` and ``--start-tolerance`` checked, before anything runs: a
    time already past the tolerance fails now, not after minting."""
    try:
        tolerance = parse_duration(tolerance_text)
    except ValueError as exc:
        raise UserError(f"--start-tolerance: {exc}") from None
    if text is None:
        return None
    start = StartAt(parse_time(text), tolerance, text)
    now = time.time() if now is None else now
    if start.at - now > MAX_AHEAD:
        raise UserError(
            f"--start-at {text}: {_ahead(start.at - now)}more than {MAX_AHEAD / 3600:.0f} h "
            "from now: likely a mistake (milliseconds for seconds, a wrong day)"
        )
    start.check(now)
    return start


def _ahead(seconds: float) -> str:
    """ "25.0 h, ": how far, while hours say something (1e30 epoch seconds gave a
    27-digit count of hours)."""
    hours = seconds / 3600
    return f"{hours:.1f} h, " if hours < 1000 else ""
