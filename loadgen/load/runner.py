"""One worker's share of a run, on its own uvloop event loop.

A worker owns the devices whose index ≡ worker (mod workers): the union of the
workers' schedules is the run's schedule. It prepares devices (SSL contexts are
the costly part) a bounded window ahead, starts each at its scheduled time while
fewer than ``max_in_flight`` are running, and reports progress and, at the end,
everything it measured.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadgen.certs.store import Device as FleetDevice
from loadgen.certs.store import FleetStore
from loadgen.device.lifecycle import Census, Device, DeviceDriver, DeviceResult, DeviceSpec
from loadgen.device.outcome import Outcome
from loadgen.heap import Heap
from loadgen.load.chaos import device_class
from loadgen.load.plan import RunPlan, device_client_id, device_steps
from loadgen.load.schedule import offsets
from loadgen.load.shard import part_of
from loadgen.metrics.stats import RunStats
from loadgen.transport.client import Target, describe_error, family_of
from loadgen.transport.keepalive import Holds
from loadgen.transport.tls import ClientTls, DeviceTls

if TYPE_CHECKING:
    from loadgen.device.aiomqtt_driver import AiomqttDevice

# Devices prepared ahead of their start, per device allowed in flight: enough to
# keep up with a burst, bounded so a million-device fleet never sits in memory.
_WINDOW_PER_IN_FLIGHT = 2
_MIN_WINDOW = 64
# ... and never more than this, whatever max_in_flight allows: a run holding
# every device (max_in_flight = its fleet) prepared them all before its start, at
# about 17 KiB each. 1,024 cover a second of any schedule a worker keeps (about
# 1,000 connects a second on a core), and the producer refills it as devices start.
_MAX_WINDOW = 1024
# Devices are prepared in batches: once the window has room for this many (a
# quarter of the window at most), the producer fills it, one device after
# another, with only the event loop's poll between them. A preparation then
# costs about half what it costs between two handshakes, whose crypto evicts its
# code and data from the caches (120-150 µs against 280-300 µs in place,
# docs/benchmarks.md).
_BATCH = 16
# A preparation is put off while a device is due within this many seconds (about
# a preparation's CPU between two handshakes, with room): the device starts
# first, then the batch goes on. Without it, a device due during a batch started
# after one or two preparations, and the schedule lag p99 at 350/s rose from
# about 1.5 to 2.5 ms (docs/benchmarks.md).
_QUIET_BEFORE_DUE = 0.001
PROGRESS_INTERVAL = 0.5
# Every this many progress reports, the heap is trimmed if devices started since.
_TRIM_EVERY = 10  # 5 s


# The whole seconds before its time that a progress message carries of the
# per-second series: those the live rates read (RunSnapshot.arrival_rate), with
# room for workers whose latest messages are a few seconds apart. More would
# grow the messages, and the coordinator's work on each, with the run's length.
PROGRESS_SECONDS = 10


@dataclass
class Progress:
    """A worker's cumulative measurements, sent while it runs."""

    started: int
    in_flight: int
    connected: int
    # RunStats.to_wire(): exact, so snapshots merge exactly; of the per-second
    # series, the last PROGRESS_SECONDS before ``at`` only.
    stats: dict[str, Any]
    # When it was measured, in seconds since the schedule's start: every start
    # before then is in ``stats``.
    at: float


def my_devices(plan: RunPlan, worker: int) -> Iterator[tuple[FleetDevice, float]]:
    """This worker's devices with their schedule offsets, in schedule order."""
    schedule = offsets(plan.executor, plan.count, plan.phase)
    store = FleetStore(plan.fleet)
    every, start = plan.workers, worker
    if plan.shard is not None and store.read_meta().shard is None:
        # A shard run over a whole fleet's store: its devices are every N-th line.
        every, start = plan.workers * plan.shard.count, plan.shard.index + plan.shard.count * worker
    mine = store.devices(every=every, start=start, skip=plan.first_device)
    for index, offset in enumerate(schedule):
        if index % plan.workers != worker:
            continue
        device = next(mine, None)
        if device is None:
            return
        yield device, offset


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (devices take them in turn), or
    ``[host]`` when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return [host]
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return addresses or [host]


class Routes:
    """Where devices connect to and from: the endpoint's ``addresses`` in turn,
    each with the next of the ``sources`` of its family (a socket of one family
    cannot bind an address of the other). Addresses of a family no source has
    are left out, unless no address has a source's family."""

    def __init__(self, addresses: list[str], sources: tuple[str, ...]) -> None:
        families = {family_of(source) for source in sources}
        if sources:
            addresses = [a for a in addresses if family_of(a) in families] or addresses
        self._addresses = itertools.cycle([(a, family_of(a)) for a in addresses])
        self._sources = {
            family: itertools.cycle(
                [s for s in sources if family_of(s) == family] or list(sources) or [None]
            )
            for family in (socket.AF_INET, socket.AF_INET6)
        }

    def next(self) -> tuple[str, str | None]:
        address, family = next(self._addresses)
        return address, next(self._sources[family])


class Worker:
    # Resolved when the last device in flight ends, while run() waits for that.
    drained: asyncio.Future[None] | None = None

    def __init__(
        self,
        plan: RunPlan,
        worker: int,
        send: Callable[[tuple[str, Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.worker = worker
        self.send = send
        self.clock = clock
        self.stats = RunStats()
        # Monotonic time ``hold: {until}`` counts from, when not the schedule's
        # start: a shard ready late starts its schedule late, yet lets go with
        # the shards that started at --start-at.
        self.hold_origin: float | None = None
        self.in_flight = 0
        self.started = 0
        # Back-off jitter exists to spread retries: seeded by the worker's
        # index alone, the same worker of every shard (and of every run) drew
        # the same delays in the same order, and the shards retried together.
        self.rng = random.Random()
        # Never 0: a run plans no more workers than max_in_flight.
        limit = self.limit = part_of(plan.max_in_flight, plan.workers, worker)
        # Resolved when a device ends while the dispatcher waits for a free
        # in-flight slot (an asyncio.Semaphore cost about 60 bytecodes a device).
        self.slot_freed: asyncio.Future[None] | None = None
        self.window = min(_MAX_WINDOW, max(_MIN_WINDOW, limit * _WINDOW_PER_IN_FLIGHT))
        # The producer is woken when the queue is down to this many prepared.
        self.low_water = self.window - min(_BATCH, self.window // 4)
        self.room = asyncio.Event()
        # When the dispatcher's next device is due (monotonic; inf: none waits),
        # and the producer's wait for it to have started.
        self.due = math.inf
        self.dispatched: asyncio.Future[None] | None = None
        # Devices that ended and are not yet in ``stats``: recorded together, at
        # each progress report and at the end (``measured``), which costs about a
        # quarter of recording each as it ends, between handshakes.
        self.ended: list[tuple[DeviceResult, float, float]] = []
        self.starts: list[float] = []  # as ``ended``: when devices started, not yet in it
        # Device files by name as text: a Path per file cost more than reading it.
        self.fleet = str(plan.fleet)
        # Resolved with the grace period (seconds) when the run is to stop early.
        self.stop: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()  # devices in flight
        self.dispatcher: asyncio.Task[None] | None = None  # starts the devices
        self.drivers: set[DeviceDriver] = set()
        self.holds = Holds(asyncio.get_running_loop())  # every held device's keepalive
        self.census = Census()
        self.driver: type[Device | AiomqttDevice] = (
            Device if plan.chaos is None else device_class(plan.chaos)
        )
        if plan.driver == "aiomqtt":
            # Only then: aiomqtt and paho are 13 MB of every worker's memory.
            from loadgen.device.aiomqtt_driver import AiomqttDevice

            self.driver = AiomqttDevice
        self.tls = ClientTls(
            ca_file=plan.tls.ca_file,
            alpn=list(plan.tls.alpn) if plan.tls.alpn else None,
            verify_server=plan.tls.verify_server,
        )
        # Resolved once, here: a resolver on the timed path would add its latency
        # (and a thread pool's queue) to every device's connect. A name that does
        # not resolve stays a name, and each device reports the DNS failure.
        self.routes = Routes(resolve(plan.host, plan.port), plan.source_addresses)
        self.targets: dict[tuple[str, str | None], Target] = {}

    def prepare(self, device: FleetDevice, offset: float) -> tuple[DeviceSpec, float]:
        """The device ready to go, and its offset in the schedule (its ``scheduled``
        time is set when the schedule's start is known)."""
        plan = self.plan
        where = self.routes.next()
        target = self.targets.get(where)
        if target is None:
            # One per address and source, shared by the devices: making one parses
            # its address (ipaddress), about 15 µs.
            target = Target(where[0], plan.port, plan.tls.server_name, where[1])
            self.targets[where] = target
        try:
            if plan.chaos is not None:
                plan.chaos.strike("preparing", device.index)
            tls = DeviceTls(
                self.tls,
                f"{self.fleet}/{device.cert}",
                f"{self.fleet}/{device.key}",
                plan.tls.server_name,
                # aiomqtt takes a context of the device's own, made when it connects.
                ahead=plan.driver != "aiomqtt",
                retry_ahead=plan.device.expect_first_connect_rejected,
            )
            client_id = device_client_id(plan.client_id, device)
            steps = device_steps(plan.steps, device, client_id)
        except Exception as exc:  # its files, not the run: this device fails alone
            failed = DeviceSpec(
                index=device.index,
                client_id=device.client_id,
                target=target,
                tls=None,
                version=plan.version,
                scheduled=0.0,
                fault=device.fault,
                failure=describe_error(exc),
            )
            return failed, offset
        spec = DeviceSpec(
            index=device.index,
            client_id=client_id,
            target=target,
            tls=tls,
            version=plan.version,
            scheduled=0.0,
            steps=steps,
            fault=device.fault,
        )
        return spec, offset

    async def run(self, start_at: Callable[[], float]) -> RunStats:
        """Prepare the first window, then ask ``start_at()`` for the schedule's
        start (monotonic) and keep the schedule."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[DeviceSpec, float] | None] = asyncio.Queue(maxsize=self.window)
        items = my_devices(self.plan, self.worker)
        ahead = time.process_time()
        for device, offset in itertools.islice(items, self.window):
            queue.put_nowait(self.prepare(device, offset))
        self.stats.ahead_cpu_us = round((time.process_time() - ahead) * 1_000_000)
        t0 = start_at()
        cpu0 = time.process_time()
        self.room.set()  # the fleet may be all in the window already: its end is due
        producer = loop.create_task(self._produce(items, queue))
        reporter = loop.create_task(self._report(t0))
        self.dispatcher = loop.create_task(self._dispatch(queue, t0))
        tasks = self.tasks
        try:
            # A stop cancels the dispatcher; waiting does not raise its cancellation.
            await asyncio.wait({self.dispatcher})
            if not self.dispatcher.cancelled():
                self.dispatcher.result()  # what went wrong in it, if anything did
            while tasks:
                if self.stop.done():
                    _, pending = await asyncio.wait(set(tasks), timeout=self.stop.result())
                    for task in pending:
                        task.cancel()
                    if pending:
                        await asyncio.wait(pending)
                    break
                # One future for the last one's end: waiting on every task in
                # flight again each time one ended cost work per device in flight
                # for every device that ended (a run holding many, quadratic).
                self.drained = loop.create_future()
                waiters: set[asyncio.Future[Any]] = {self.drained, self.stop}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if producer.done() and not producer.cancelled():
                producer.result()  # the fleet could not be read on: the worker fails
        finally:
            self.dispatcher.cancel()
            producer.cancel()
            reporter.cancel()
            self.measured()  # inside the CPU counted: recording is part of a device
            self.stats.cpu_us = round((time.process_time() - cpu0) * 1_000_000)
        return self.stats

    def measured(self) -> RunStats:
        """Everything this worker measured so far, the devices that ended since
        the last call recorded now."""
        self._record(None)
        return self.stats

    async def _record_ended(self) -> None:
        """Record the devices that ended, a batch at a time, the event loop polled
        between two batches: a worker ending a thousand devices a second has 500
        to record at each report, which in one go would hold up the devices in
        flight (and those due) for several milliseconds. Only what waits now:
        devices ending faster than this records must not hold up the report."""
        waiting = max(len(self.starts), len(self.census.arrived), len(self.ended))
        for _ in range(0, waiting, _BATCH):
            self._record(_BATCH)
            await asyncio.sleep(0)

    def _record(self, most: int | None) -> None:
        """Record the first ``most`` starts and results waiting (None: all)."""
        arrivals = self.census.arrived
        starts, arrived, ended = self.starts[:most], arrivals[:most], self.ended[:most]
        del self.starts[:most], arrivals[:most], self.ended[:most]
        for started in starts:
            self.stats.started(started)
        for result in arrived:
            self.stats.arrived(result)
        add = self.stats.add
        for result, started, finished in ended:
            add(result, started, finished)
            # Recorded whole: its arrival, if still waiting in a later batch, is not.
            result.connect_recorded = True

    async def _dispatch(
        self, queue: asyncio.Queue[tuple[DeviceSpec, float] | None], t0: float
    ) -> None:
        """Start each device at its time, within the in-flight bound. A stop
        cancels this task wherever it waits: racing every wait against the stop
        instead cost a task and an ``asyncio.wait`` apiece: about 25 µs of CPU per
        device here, against 3 µs now."""
        loop = asyncio.get_running_loop()
        tasks = self.tasks
        room, low_water = self.room, self.low_water
        origin = t0 if self.hold_origin is None else self.hold_origin
        while not self.stop.done() and (item := await queue.get()) is not None:
            if queue.qsize() <= low_water:
                room.set()
            spec, offset = item
            spec.scheduled = t0 + offset
            spec.origin = origin
            delay = spec.scheduled - self.clock()
            if delay > 0.0005:
                self.due = spec.scheduled
                await asyncio.sleep(delay)
            if self.in_flight >= self.limit:
                self.stats.slot_waits += 1
                while self.in_flight >= self.limit:
                    self.slot_freed = loop.create_future()
                    await self.slot_freed
            self.started += 1
            self.in_flight += 1
            started = self.clock() - t0
            self.starts.append(started)
            task = loop.create_task(self._one(spec, t0, started), name=f"device-{spec.index}")
            tasks.add(task)
            task.add_done_callback(self._ended)
            self.due = math.inf
            dispatched = self.dispatched
            if dispatched is not None and not dispatched.done():
                # The producer's turn comes after the device's first step,
                # already scheduled.
                dispatched.set_result(None)

    def _ended(self, task: asyncio.Task[None]) -> None:
        tasks = self.tasks
        tasks.discard(task)
        if not tasks and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def request_stop(self, grace: float) -> None:
        """Stop starting devices; give those in flight ``grace`` seconds."""
        if self.dispatcher is not None:
            self.dispatcher.cancel()
        if not self.stop.done():
            self.stop.set_result(grace)
        elif grace < self.stop.result():
            # A second request (a second Ctrl-C) shortens the grace period.
            self.stop = asyncio.get_running_loop().create_future()
            self.stop.set_result(grace)
            for task in list(self.tasks):
                task.cancel()

    async def _produce(
        self,
        items: Iterator[tuple[FleetDevice, float]],
        queue: asyncio.Queue[tuple[DeviceSpec, float] | None],
    ) -> None:
        room = self.room
        try:
            while True:
                # Woken when the window has room for a batch: never more than the
                # window prepared ahead.
                await room.wait()
                room.clear()
                for _ in range(self.window - queue.qsize()):
                    if self.due - self.clock() < _QUIET_BEFORE_DUE:
                        self.dispatched = asyncio.get_running_loop().create_future()
                        await self.dispatched
                    item = next(items, None)
                    if item is None:
                        return
                    queue.put_nowait(self.prepare(*item))
                    # What arrived meanwhile is handled between two preparations
                    # (about 120 µs each), not after the batch: a device in flight
                    # waits for one preparation at most, as when each was
                    # prepared alone.
                    await asyncio.sleep(0)
        finally:
            # Also when the fleet could not be read on: the devices queued still
            # run, and run() then says why the rest did not.
            await queue.put(None)

    async def _one(self, spec: DeviceSpec, t0: float, started: float) -> None:
        """One device's life, ending in exactly one result whatever happens in it."""
        if self.plan.chaos is not None:
            self.plan.chaos.strike("worker", spec.index)
        driver = self.driver(spec, self.plan.device, self.clock, self.rng, self.holds, self.census)
        driver.result.started_offset = started
        self.drivers.add(driver)
        try:
            if spec.failure is not None:
                result = driver.result
                result.outcome, result.reason, result.phase = (
                    Outcome.ERROR,
                    spec.failure,
                    "preparing",
                )
            else:
                result = await driver.run()
        except asyncio.CancelledError:
            # Interrupted past the grace period: what was measured still counts.
            self.ended.append((driver.interrupted(), started, self.clock() - t0))
            raise
        except Exception as exc:
            result = driver.fail_unexpectedly(exc)
        finally:
            driver.finished()
            self.drivers.discard(driver)
            self.in_flight -= 1
            freed = self.slot_freed
            if freed is not None and not freed.done():
                freed.set_result(None)
        self.ended.append((result, started, self.clock() - t0))

    async def _report(self, t0: float) -> None:
        heap, trimmed = Heap(), (0, 0)
        for report in itertools.count(1):
            await asyncio.sleep(PROGRESS_INTERVAL)
            await self._record_ended()
            progress = self.progress(self.clock() - t0)  # and what ended meanwhile
            self.send(("progress", progress))
            # What the connects of the last seconds freed goes back to the system
            # (held devices keep a fraction of what connecting them took).
            churned = (progress.started, progress.connected)
            if report % _TRIM_EVERY == 0 and churned != trimmed:
                trimmed = churned
                heap.trim()

    def progress(self, at: float) -> Progress:
        """What was measured until ``at`` (seconds since the schedule's start: now)."""
        return Progress(
            self.started,
            self.in_flight,
            self.census.connected,
            self.measured().to_wire(since=math.floor(at) - PROGRESS_SECONDS),
            at,
        )


@dataclass
class RunSnapshot:
    """All workers' latest progress, merged."""

    started: int
    in_flight: int
    connected: int
    stats: RunStats
    # When the oldest of the workers' measurements was taken (seconds since the
    # schedule's start): every second before it is whole in ``stats``.
    at: float

    def arrival_rate(self, elapsed: float, seconds: int) -> float | None:
        """Devices started a second over the last ``seconds`` whole seconds of
        the schedule that every worker has measured (``at``, and ``elapsed`` of
        the run); None before the first such second. A second not yet whole in
        every worker's count would read low. Progress messages carry only the
        last PROGRESS_SECONDS of the series: ``seconds`` must be fewer."""
        end = math.floor(min(self.at, elapsed))
        if end < 1:
            return None
        begin = max(0, end - seconds)
        series = self.stats.started_per_second
        return sum(series.get(second, 0) for second in range(begin, end)) / (end - begin)


def merge_progress(parts: list[Progress]) -> RunSnapshot:
    stats = RunStats()
    for part in parts:
        stats.merge(RunStats.from_wire(part.stats))
    return RunSnapshot(
        sum(p.started for p in parts),
        sum(p.in_flight for p in parts),
        sum(p.connected for p in parts),
        stats,
        min(p.at for p in parts),
    )


def merged_for(
    *receivers: Callable[[RunSnapshot, float], None],
) -> Callable[[list[Progress], float], None]:
    """A run's progress callback: the workers' latest progress merged once (a
    merge decodes every worker's histograms) and handed to each of ``receivers``
    (the live view, the metrics exporter)."""

    def on_progress(parts: list[Progress], elapsed: float) -> None:
        snapshot = merge_progress(parts)
        for receive in receivers:
            receive(snapshot, elapsed)

    return on_progress
