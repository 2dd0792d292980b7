"""Monotonic timestamps of one connection attempt's phases."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class AttemptTimes:
    """Seconds on the monotonic clock; None for a phase not reached."""

    started: float
    tcp_connected: float | None = None
    tls_done: float | None = None
    connect_sent: float | None = None
    connack: float | None = None
    pubacks: list[float] = field(default_factory=list)
    publishes_sent: list[float] = field(default_factory=list)

    def durations(self) -> dict[str, float]:
        """Each completed phase's duration in seconds, by phase name."""
        out: dict[str, float] = {}
        if self.tcp_connected is not None:
            out["tcp_connect"] = self.tcp_connected - self.started
        if self.tls_done is not None and self.tcp_connected is not None:
            out["tls_handshake"] = self.tls_done - self.tcp_connected
        if self.connack is not None and self.connect_sent is not None:
            out["connack"] = self.connack - self.connect_sent
        return out
