"""One device's life as an explicit state machine.

    PENDING -> CONNECTING -> (rejected) BACKING_OFF -> CONNECTING -> ...
            -> CONNECTED -> ACTING -> DONE

Every device ends DONE with exactly one ``Outcome``. Latency counts from the
device's *scheduled* start, so a generator that falls behind shows it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from loadgen import mqtt
from loadgen.device.outcome import HOLD_INTERRUPTED, PROVISIONING_TRIGGERS, Outcome, classify
from loadgen.device.retry import RetryPolicy
from loadgen.transport.client import MqttClient, Target, connect, describe_error
from loadgen.transport.errors import DeviceFilesError, TransportError
from loadgen.transport.keepalive import Holds
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import DeviceTls


class Phase(StrEnum):
    PENDING = "pending"
    CONNECTING = "connecting"
    BACKING_OFF = "backing_off"
    CONNECTED = "connected"
    ACTING = "acting"
    DONE = "done"


@dataclass(frozen=True)
class PublishStep:
    topic: str  # already formatted for the device
    qos: int = 0
    count: int = 1
    payload_bytes: int = 0


@dataclass(frozen=True)
class SubscribeStep:
    topic_filter: str
    qos: int = 0


@dataclass(frozen=True)
class HoldStep:
    seconds: float
    keepalive: float = 60.0
    # Instead of ``seconds``: until this long after the schedule's start.
    until: float | None = None

    def length(self, origin: float, now: float) -> float:
        """How long to hold from ``now``, the schedule having started at ``origin``."""
        if self.until is None:
            return self.seconds
        return max(0.0, origin + self.until - now)


Step = PublishStep | SubscribeStep | HoldStep


@dataclass(frozen=True)
class DeviceConfig:
    """What all devices of a run share."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    expect_first_connect_rejected: bool = False
    connect_timeout: float = 10.0
    step_timeout: float = 10.0
    keepalive: int = 60
    steps: tuple[Step, ...] = ()


@dataclass
class DeviceSpec:
    """One device, ready to go: everything built off the timed path."""

    index: int
    client_id: str
    target: Target
    tls: DeviceTls | None
    version: int
    scheduled: float  # monotonic time of its scheduled start
    steps: tuple[Step, ...] = ()
    fault: str | None = None  # what its profile injected on purpose (manifest)
    # Why it could not be made ready (a corrupt key, say): it then ends as
    # ``error`` in phase ``preparing`` when its time comes, without connecting.
    failure: str | None = None
    origin: float = 0.0  # monotonic time of the schedule's start (hold.until)


@dataclass(slots=True)
class DeviceResult:
    index: int
    outcome: Outcome = Outcome.ERROR
    reason: str | None = None
    phase: str | None = None  # where the deciding failure happened
    attempts: int = 0
    provisioning_triggered: bool = False  # a first rejection was taken as JITP's
    lag: float = 0.0  # actual start minus scheduled start
    provision: float | None = None  # scheduled start to accepted CONNACK
    # Per attempt, each phase reached: (phase name, seconds).
    phases: list[tuple[str, float]] = field(default_factory=list)
    publish_acks: list[float] = field(default_factory=list)  # QoS 1 round trips
    # Seconds it waited on the endpoint: its connect attempts, answered or not
    # (a timed-out one too), and its back-offs after the endpoint refused one.
    # The back-off after JITP's trigger is not counted: every JITP device takes
    # it, at the pace its retry policy sets.
    endpoint_wait: float = 0.0
    publishes: int = 0
    # Its CONNECTs, PUBLISHes and SUBSCRIBEs the endpoint answered with a
    # throttling code, whatever it ended in (one it retried past counts too).
    throttled: int = 0
    fault: str | None = None
    note: str | None = None  # about a connect cut short, e.g. interrupted in hold
    # Whether the deciding failure was an answer of an endpoint that speaks TLS
    # (not a port that never did): only such a failure can be a fault's verdict.
    judged: bool = True
    started_offset: float = 0.0  # seconds after the schedule's start it began
    # Its connect's latencies are recorded (as it connected, not when it ends:
    # a device holding for an hour shows them meanwhile).
    connect_recorded: bool = False


Clock = Callable[[], float]


class RetryState:
    """What a failed attempt means: JITP's provisioning trigger (expected, not a
    failure), a failure to retry after a back-off, or the last attempt."""

    def __init__(self, config: DeviceConfig, result: DeviceResult, rng: random.Random) -> None:
        self.config = config
        self.result = result
        self.rng = rng
        self.expecting_trigger = config.expect_first_connect_rejected
        self.failures = 0

    def failed(
        self, outcome: Outcome, reason: str, phase: str | None, may_be_trigger: bool = True
    ) -> float | None:
        """Seconds to back off before the next attempt; None when none is left.
        The back-off after a failure is time waiting on the endpoint (the one
        after JITP's trigger every JITP device takes, at its retry policy's pace)."""
        result = self.result
        last = result.attempts >= self.config.retry.max_attempts
        if self.expecting_trigger and may_be_trigger and outcome in PROVISIONING_TRIGGERS:
            self.expecting_trigger = False
            result.provisioning_triggered = True
            if not last:
                return self.config.retry.delay(max(self.failures, 1), self.rng)
            # The trigger took the last attempt allowed: the device ends refused.
        self.failures += 1
        result.outcome, result.reason, result.phase = outcome, reason, phase
        result.judged = may_be_trigger
        if last:
            return None
        delay = self.config.retry.delay(self.failures, self.rng)
        result.endpoint_wait += delay
        return delay


class Census:
    """Devices of a worker past an accepted CONNACK and not yet finished, counted
    as they go (progress asks twice a second; counting the devices in flight
    each time cost a worker holding 5,000 about 1% of a core)."""

    __slots__ = ("arrived", "connected")

    def __init__(self) -> None:
        self.connected = 0
        # Results of the devices that connected since the worker last recorded
        # (their connect's latencies count from then, not from their end).
        self.arrived: list[DeviceResult] = []


class DeviceDriver:
    """What every driver of a device's life holds: its spec, the run's config,
    the clock, the back-off's random numbers, and the result it fills in."""

    def __init__(
        self,
        spec: DeviceSpec,
        config: DeviceConfig,
        clock: Clock,
        rng: random.Random,
        holds: Holds | None = None,
        census: Census | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.clock = clock
        self.rng = rng
        self.result = DeviceResult(spec.index, fault=spec.fault)
        self.step: str | None = None  # the step under way once connected
        self.holds = holds  # the worker's held connections, kept alive on one timer
        self.census = census

    def connected(self, provision: float) -> None:
        """Past an accepted CONNACK, ``provision`` seconds after its schedule."""
        self.result.provision = provision
        if self.census is not None:
            self.census.connected += 1
            self.census.arrived.append(self.result)

    def finished(self) -> None:
        """Its life is over (whatever the outcome): no longer counted connected."""
        if self.census is not None and self.result.provision is not None:
            self.census.connected -= 1

    def classify(self, error: TransportError) -> Outcome:
        """What ``error`` makes of the device; an answer that throttled it is
        counted, whatever the device does next."""
        outcome = classify(error)
        if outcome is Outcome.THROTTLED:
            self.result.throttled += 1
        return outcome

    def where(self) -> str:
        """The phase of the device's life it is in now, for a failure nothing
        more specific explains."""
        if self.step is not None:
            return self.step
        return "acting" if self.result.provision is not None else "connecting"

    def fail_unexpectedly(self, exc: BaseException) -> DeviceResult:
        """End the device as ``error`` for an exception its life did not expect:
        whatever a device raises ends that device, never its worker."""
        # A device's files that would not load when it needed them again (a
        # reconnect's session, aiomqtt's context): its preparation failed.
        where = "preparing" if isinstance(exc, DeviceFilesError) else self.where()
        self._fail(Outcome.ERROR, describe_error(exc), where)
        return self.result

    def interrupted(self) -> DeviceResult:
        """End the device cut short by a stop past the grace period. One that
        connected and was holding its connection did all it was asked to before
        the hold, and counts as connected."""
        result = self.result
        if result.provision is not None and self.step == "hold":
            result.outcome, result.note = Outcome.CONNECTED, HOLD_INTERRUPTED
            result.reason = result.phase = None
        else:
            self._fail(Outcome.ERROR, "interrupted before it finished", self.where())
        return result

    def _fail(self, outcome: Outcome, reason: str, phase: str | None) -> None:
        self.result.outcome = outcome
        self.result.reason = reason
        self.result.phase = phase


class Device(DeviceDriver):
    """The native driver: this project's timed transport."""

    phase = Phase.PENDING
    times = AttemptTimes(0.0)  # the attempt under way
    _open = staticmethod(connect)  # TCP, TLS, CONNECT and CONNACK: one attempt

    async def run(self) -> DeviceResult:
        result = self.result
        result.lag = max(0.0, self.clock() - self.spec.scheduled)
        try:
            client = await self._connect()
            if client is not None:
                self.phase = Phase.ACTING
                try:
                    await self._act(client)
                    result.outcome = Outcome.CONNECTED
                except TransportError as exc:
                    self._fail(self.classify(exc), exc.reason, exc.phase)
                except TimeoutError:
                    self._fail(Outcome.TIMEOUT, "no answer in time", client.phase)
                finally:
                    client.disconnect()
        except Exception as exc:  # a bug or a resource out: this device's end only
            self.fail_unexpectedly(exc)
        self.phase = Phase.DONE
        return result

    def where(self) -> str:
        if self.phase is Phase.CONNECTING:
            return _reached(self.times)
        return super().where()

    async def _connect(self) -> MqttClient | None:
        spec, config, result = self.spec, self.config, self.result
        retry = RetryState(config, result, self.rng)
        packet = mqtt.Connect(
            spec.client_id, protocol_version=spec.version, keepalive=config.keepalive
        )
        while True:
            self.phase = Phase.CONNECTING
            # Its files loaded, or the device failed preparing (DeviceFilesError)
            # with no attempt made.
            session = spec.tls.session() if spec.tls is not None else None
            result.attempts += 1
            times = self.times = AttemptTimes(self.clock())
            client = None
            trigger = True
            try:
                client = await self._open(
                    spec.target, session, packet, times, timeout=config.connect_timeout
                )
            except TimeoutError:
                outcome, reason, where = Outcome.TIMEOUT, "no answer in time", _reached(times)
            except TransportError as exc:
                outcome, reason, where = self.classify(exc), exc.reason, exc.phase
                trigger = exc.may_be_jitp_trigger
            self._record_phases(times)
            result.endpoint_wait += self.clock() - times.started
            if client is not None:
                if spec.tls is not None:
                    spec.tls.drop_spares()  # connected: no retry to make ready for
                self.connected((times.connack or self.clock()) - spec.scheduled)
                self.phase = Phase.CONNECTED
                return client
            delay = retry.failed(outcome, reason, where, trigger)
            if delay is None:
                return None
            self.phase = Phase.BACKING_OFF
            await asyncio.sleep(delay)

    def _record_phases(self, times: AttemptTimes) -> None:
        self.result.phases.extend(times.durations().items())

    async def _act(self, client: MqttClient) -> None:
        timeout = self.config.step_timeout
        for step in self.spec.steps:
            if isinstance(step, PublishStep):
                self.step = "publish"
                payload = bytes(step.payload_bytes)
                for _ in range(step.count):
                    sent = self.clock()
                    async with asyncio.timeout(timeout):
                        await client.publish(step.topic, payload, step.qos)
                    self.result.publishes += 1
                    if step.qos == 1:
                        self.result.publish_acks.append(self.clock() - sent)
            elif isinstance(step, SubscribeStep):
                self.step = "subscribe"
                async with asyncio.timeout(timeout):
                    await client.subscribe(step.topic_filter, step.qos)
            else:
                self.step = "hold"
                # Bounded without a timer of its own: the wheel ends the hold, and
                # fails it when a PINGREQ is still unanswered a step timeout after
                # it went out, at the end (at most seconds + timeout, as before).
                seconds = step.length(self.spec.origin, self.clock())
                await client.hold(seconds, step.keepalive, self.holds, timeout)


def _reached(times: AttemptTimes) -> str:
    """The phase an attempt was in when it stopped."""
    if times.tcp_connected is None:
        return "tcp"
    if times.connect_sent is None:
        return "tls"
    return "connack"
