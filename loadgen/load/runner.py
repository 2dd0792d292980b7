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
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from loadgen.certs.store import Device as FleetDevice
from loadgen.certs.store import FleetStore
from loadgen.device.aiomqtt_driver import AiomqttDevice
from loadgen.device.lifecycle import Device, DeviceSpec
from loadgen.load.plan import RunPlan, device_client_id, device_steps
from loadgen.load.schedule import offsets
from loadgen.metrics.stats import RunStats
from loadgen.transport.client import Target
from loadgen.transport.tls import ClientTls, DeviceTls

# Devices prepared ahead of their start, per device allowed in flight: enough to
# keep up with a burst, bounded so a million-device fleet never sits in memory.
_WINDOW_PER_IN_FLIGHT = 2
_MIN_WINDOW = 64
PROGRESS_INTERVAL = 0.5


@dataclass
class Progress:
    """A worker's cumulative measurements, sent while it runs."""

    started: int
    in_flight: int
    stats: dict[str, Any]  # RunStats.to_wire(): exact, so snapshots merge exactly


def my_devices(plan: RunPlan, worker: int) -> Iterator[tuple[FleetDevice, float]]:
    """This worker's devices with their schedule offsets, in schedule order."""
    schedule = offsets(plan.executor, plan.count)
    mine = FleetStore(plan.fleet).devices(every=plan.workers, start=worker)
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


def share(total: int, workers: int, worker: int) -> int:
    """This worker's part of ``total`` (in-flight slots), at least one."""
    return max(1, total // workers + (1 if worker < total % workers else 0))


class Worker:
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
        self.in_flight = 0
        self.started = 0
        self.rng = random.Random(worker)
        limit = share(plan.max_in_flight, plan.workers, worker)
        self.slots = asyncio.Semaphore(limit)
        self.window = max(_MIN_WINDOW, limit * _WINDOW_PER_IN_FLIGHT)
        self.sources = itertools.cycle(plan.source_addresses or (None,))
        self.tls = ClientTls(
            ca_file=plan.tls.ca_file,
            alpn=list(plan.tls.alpn) if plan.tls.alpn else None,
            verify_server=plan.tls.verify_server,
        )
        # Resolved once, here: a resolver on the timed path would add its latency
        # (and a thread pool's queue) to every device's connect. A name that does
        # not resolve stays a name, and each device reports the DNS failure.
        self.addresses = itertools.cycle(resolve(plan.host, plan.port))

    def prepare(self, device: FleetDevice, offset: float) -> tuple[DeviceSpec, float]:
        """The device ready to go, and its offset in the schedule (its ``scheduled``
        time is set when the schedule's start is known)."""
        plan = self.plan
        tls = DeviceTls(
            self.tls,
            plan.fleet / device.cert,
            plan.fleet / device.key,
            plan.tls.server_name,
            # aiomqtt takes a context of the device's own, made when it connects.
            ahead=plan.driver != "aiomqtt",
        )
        client_id = device_client_id(plan.client_id, device)
        spec = DeviceSpec(
            index=device.index,
            client_id=client_id,
            target=Target(
                next(self.addresses), plan.port, plan.tls.server_name, next(self.sources)
            ),
            tls=tls,
            version=plan.version,
            scheduled=0.0,
            steps=device_steps(plan.steps, device, client_id),
        )
        return spec, offset

    async def run(self, start_at: Callable[[], float]) -> RunStats:
        """Prepare the first window, then ask ``start_at()`` for the schedule's
        start (monotonic) and keep the schedule."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[DeviceSpec, float] | None] = asyncio.Queue(maxsize=self.window)
        items = my_devices(self.plan, self.worker)
        for device, offset in itertools.islice(items, self.window):
            queue.put_nowait(self.prepare(device, offset))
        t0 = start_at()
        producer = loop.create_task(self._produce(items, queue))
        reporter = loop.create_task(self._report())
        tasks: set[asyncio.Task[None]] = set()
        try:
            while (item := await queue.get()) is not None:
                spec, offset = item
                spec.scheduled = t0 + offset
                delay = spec.scheduled - self.clock()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                await self.slots.acquire()
                self.started += 1
                self.in_flight += 1
                self.stats.started(self.clock() - t0)
                task = loop.create_task(self._one(spec, t0))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            producer.cancel()
            reporter.cancel()
        return self.stats

    async def _produce(
        self,
        items: Iterator[tuple[FleetDevice, float]],
        queue: asyncio.Queue[tuple[DeviceSpec, float] | None],
    ) -> None:
        for device, offset in items:
            # Waiting here for queue room keeps the window bounded; preparing a
            # context blocks the loop ~1.5 ms, and only while the queue has room.
            await queue.put(self.prepare(device, offset))
        await queue.put(None)

    async def _one(self, spec: DeviceSpec, t0: float) -> None:
        try:
            driver = AiomqttDevice if self.plan.driver == "aiomqtt" else Device
            result = await driver(spec, self.plan.device, self.clock, self.rng).run()
            self.stats.add(result, self.clock() - t0)
        finally:
            self.in_flight -= 1
            self.slots.release()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self.send(("progress", self.progress()))

    def progress(self) -> Progress:
        return Progress(self.started, self.in_flight, self.stats.to_wire())


@dataclass
class RunSnapshot:
    """All workers' latest progress, merged."""

    started: int
    in_flight: int
    stats: RunStats


def merge_progress(parts: list[Progress]) -> RunSnapshot:
    stats = RunStats()
    for part in parts:
        stats.merge(RunStats.from_wire(part.stats))
    return RunSnapshot(sum(p.started for p in parts), sum(p.in_flight for p in parts), stats)
