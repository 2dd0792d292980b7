"""Held connections of one event loop, kept alive on one timer.

A device holding its connection needs a PINGREQ when it has sent nothing for its
keepalive, an answer to each within a bound, and its hold's end. A task sleeping
per device cost a future, a timer handle and a task step for every PINGREQ, and
an ``asyncio.timeout`` (another timer) around each hold. Here every held
connection is an entry in a bucket of a timer wheel (``_RESOLUTION`` wide); one
loop timer is armed, for the earliest bucket, and visits each of its entries:
end the hold, send the PINGREQ that is due, or check the answer came.

A PINGREQ is not sent while the last one awaits its PINGRESP, and a slow answer
does not end the hold early (a loaded server answers late: mosquitto took more
than 10 s during a connect storm): the hold ends as timed out when, at its end,
a PINGREQ has waited longer than its bound for an answer.

PINGREQs go out at most a bucket early, never late (MQTT counts a keepalive from
the client's last packet, whatever it was); a hold ends at most a bucket late,
never early.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import TYPE_CHECKING, Any

from loadgen import mqtt
from loadgen.transport.errors import TransportError

if TYPE_CHECKING:
    from loadgen.transport.client import _Channel

_RESOLUTION = 0.05  # seconds a bucket spans
# Timers fire a little early (uvloop rounds to milliseconds): a bucket counts as
# due from half a bucket before its time, and so does what is due in it.
_EARLY = _RESOLUTION / 2


class NoPingResp(TimeoutError):
    """A PINGREQ was still unanswered at the hold's end, past its bound."""


class _Hold:
    __slots__ = ("answer_within", "channel", "done", "end", "keepalive", "ping_sent", "pongs")

    def __init__(
        self,
        channel: _Channel,
        done: asyncio.Future[Any],
        end: float,
        keepalive: float,
        answer_within: float,
    ) -> None:
        self.channel = channel
        self.done = done
        self.end = end
        self.keepalive = keepalive
        self.answer_within = answer_within
        self.ping_sent: float | None = None  # a PINGREQ awaits its PINGRESP
        self.pongs = 0  # the channel's PINGRESPs when it went out


class Holds:
    """One event loop's held connections: their PINGREQs and ends on one timer."""

    __slots__ = ("_armed", "_buckets", "_loop", "_ticks", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, list[_Hold]] = {}
        self._ticks: list[int] = []  # the buckets' ticks, a heap
        self._armed: int | None = None  # the tick the timer is set for
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(
        self,
        channel: _Channel,
        done: asyncio.Future[Any],
        seconds: float,
        keepalive: float,
        answer_within: float,
    ) -> None:
        """Hold ``channel`` for ``seconds``, then resolve ``done``; PINGREQ every
        ``keepalive`` (0: never) the connection is otherwise silent. At the end,
        a PINGREQ still unanswered is given until ``answer_within`` after it
        went out, then ``done`` gets ``NoPingResp``."""
        now = self._loop.time()
        entry = _Hold(channel, done, now + seconds, keepalive, answer_within)
        self._visit(entry, now)

    def _schedule(self, entry: _Hold, at: float, early: bool) -> None:
        scaled = at / _RESOLUTION
        tick = math.floor(scaled) if early else math.ceil(scaled)
        # Always a later bucket than the one being visited: each visit moves on.
        tick = max(tick, math.floor((self._loop.time() + _EARLY) / _RESOLUTION) + 1)
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.append(entry)
            return
        self._buckets[tick] = [entry]
        heapq.heappush(self._ticks, tick)
        if self._armed is None or tick < self._armed:
            self._arm(tick)

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._timer = self._loop.call_at(tick * _RESOLUTION, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # Armed "for now" while visiting: the buckets the visits add must not arm
        # the timer past a bucket that was already waiting.
        now = self._loop.time()
        due = math.floor((now + _EARLY) / _RESOLUTION)
        self._armed = due
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] <= due:
            for entry in buckets.pop(heapq.heappop(ticks)):
                self._visit(entry, now)
        self._armed = None
        if ticks:
            self._arm(ticks[0])  # the earliest bucket, whoever added it

    def _visit(self, entry: _Hold, now: float) -> None:
        done = entry.done
        if done.done():
            return  # the connection failed, or the hold was cancelled
        channel = entry.channel
        if entry.ping_sent is not None and channel.pingresps != entry.pongs:
            entry.ping_sent = None  # answered
        waiting = entry.ping_sent
        if now >= entry.end - _EARLY:
            if waiting is None:
                done.set_result(None)
            elif now >= waiting + entry.answer_within - _EARLY:
                done.set_exception(NoPingResp("no PINGRESP in time"))
            else:
                self._schedule(entry, waiting + entry.answer_within, early=False)
            return
        if (
            waiting is None
            and entry.keepalive > 0
            and now >= channel.sent_at + entry.keepalive - _RESOLUTION
        ):
            try:
                channel.write(mqtt.PingReq())
            except TransportError as exc:
                if not done.done():
                    done.set_exception(exc)
                return
            if done.done():
                return  # the write found the connection gone
            entry.ping_sent, entry.pongs = now, channel.pingresps
        at, early = entry.end, False
        if entry.keepalive > 0:
            if entry.ping_sent is None:
                at, early = min(at, channel.sent_at + entry.keepalive), True
            else:
                # A slow answer does not end the hold (a loaded server answers
                # late, and a hold is judged at its end): look again within a
                # quarter keepalive, to send the next PINGREQ once it came.
                at = min(at, now + entry.keepalive / 4)
        self._schedule(entry, at, early)
