"""What one client may cost the emulator (docs/emulator.md, "Limits").

AWS IoT bounds every connection; the emulator does too, so that a client that
declares a huge packet, sends nothing, goes silent or stops reading is closed
and everyone else goes on being served.
"""

from __future__ import annotations

from dataclasses import dataclass

# AWS IoT's largest payload, 128 KiB, plus room for the rest of a PUBLISH: the
# fixed header, a topic (AWS allows 256 bytes) and MQTT 5 properties.
AWS_MAX_PAYLOAD = 128 * 1024
MAX_PACKET_SIZE = AWS_MAX_PAYLOAD + 2048
# The most max_packet_size may be: with several serving processes each PUBLISH
# goes to the account whole, in one frame of at most rpc.MAX_FRAME (64 MiB),
# and one larger stopped the emulator. Half of it leaves room for the rest.
LARGEST_PACKET_SIZE = 32 * 1024 * 1024
CONNECT_TIMEOUT = 5.0
# uvloop's own high-water mark for TLS writes: what an ordinary subscriber
# already met before there was a limit.
WRITE_BUFFER = 512 * 1024
SLOW_CONSUMER_TIMEOUT = 10.0
# MQTT and AWS IoT: a server closes a client it has heard nothing from for 1.5
# keepalives. AWS IoT takes a keepalive under 30 s as 30 s, and 0 (off, in MQTT)
# as its longest, 1200 s: no silent client is held forever.
KEEPALIVE_FACTOR = 1.5
MIN_KEEPALIVE = 30
KEEPALIVE_WHEN_OFF = 1200
# AWS IoT holds a longer keepalive to 1200 s too: a client asking for 65535
# (18 h) would otherwise be held silent for a day and more.
MAX_KEEPALIVE = 1200
# AWS IoT's subscriptions per connection (a quota AWS can raise): without a
# bound, one session's filters grew the serving process without end and made
# every PUBLISH slower to route.
MAX_SUBSCRIPTIONS = 50
# How long a connection closed after a DISCONNECT may take to flush it and end
# TLS before it is cut: a peer that neither reads nor closes would otherwise
# hold it for the TLS shutdown timeout (30 s).
CLOSE_LINGER = 1.0
# With --processes N: how long a serving process may go without answering the
# account's heartbeat before it is taken for hung and stops the emulator, as a
# dead one does. Its event loop answers at once, between any two sessions'
# events: seconds of silence are a process stopped or wedged, not a busy one.
# Wide all the same: a false alarm would end a whole soak; a late one costs a
# few seconds of half-serving.
HEARTBEAT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Limits:
    """The bounds on one client's connection, each with its option in
    `loadgen emulator serve` and the scenario's ``emulator`` block."""

    max_packet_size: int = MAX_PACKET_SIZE  # bytes, whole packet: checked from its header
    connect_timeout: float = CONNECT_TIMEOUT  # seconds from the TLS handshake to CONNECT
    write_buffer: int = WRITE_BUFFER  # bytes queued to a client before it is a slow consumer
    slow_consumer_timeout: float = SLOW_CONSUMER_TIMEOUT  # seconds over write_buffer
    min_keepalive: int = MIN_KEEPALIVE  # seconds: a shorter keepalive is raised to it
    max_subscriptions: int = MAX_SUBSCRIPTIONS  # topic filters one session holds
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT  # seconds a serving process may not answer

    def keepalive(self, requested: int) -> int:
        """The keepalive the emulator holds a client to that asked for ``requested``:
        within ``min_keepalive`` and 1200 s (or ``min_keepalive``, if longer)."""
        longest = max(MAX_KEEPALIVE, self.min_keepalive)
        return min(max(requested or KEEPALIVE_WHEN_OFF, self.min_keepalive), longest)

    def keepalive_timeout(self, requested: int) -> float:
        """Seconds of silence after which a client that asked for ``requested`` is closed."""
        return KEEPALIVE_FACTOR * self.keepalive(requested)
