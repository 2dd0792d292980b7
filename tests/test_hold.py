"""Devices held at scale: prepared a bounded window ahead of their start (never
the whole fleet at once), kept alive by PINGREQs a server enforces, and
connected for as long as they hold."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from loadgen import mqtt
from loadgen.device.lifecycle import Device, DeviceConfig, DeviceSpec, HoldStep
from loadgen.device.outcome import Outcome
from loadgen.load.runner import Worker
from loadgen.run import ensure_fleet
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import load_scenario
from loadgen.transport.client import Target
from loadgen.transport.keepalive import Holds
from loadgen.transport.tls import ClientTls, DeviceTls
from tests.brokers import free_port
from tests.conftest import run_loadgen
from tests.test_run import _scenario

# More than a worker's window: a run that prepared its whole fleet ahead shows.
WINDOW_FLEET = 1500


class CountingWorker(Worker):
    """A worker that counts the devices it prepared and has not started yet, and
    the most it prepared one after another with no device started between."""

    prepared = 0
    most_ahead = 0
    ahead_at_start = -1
    in_a_row = 0
    most_in_a_row = 0
    _started_then = -1

    def prepare(self, device, offset):  # type: ignore[no-untyped-def]
        self.prepared += 1
        self.most_ahead = max(self.most_ahead, self.prepared - self.started)
        if self.ahead_at_start >= 0:  # past the first window, prepared before the start
            self.in_a_row = self.in_a_row + 1 if self.started == self._started_then else 1
            self._started_then = self.started
            self.most_in_a_row = max(self.most_in_a_row, self.in_a_row)
        return super().prepare(device, offset)

    def start_at(self) -> float:
        self.ahead_at_start = self.prepared
        return time.monotonic()


@pytest.fixture(scope="module")
def window_plan(tmp_path_factory, mosquitto, device_ca):
    return _one_worker_plan(
        tmp_path_factory.mktemp("window"),
        mosquitto,
        device_ca,
        WINDOW_FLEET,
        # Every device allowed in flight at once, as when all are to be held.
        load={"executor": "constant-arrival-rate", "rate": "5000/s", "max_in_flight": 20_000},
    )


def _one_worker_plan(root, mosquitto, device_ca, count, *, load, port=None, **settings):
    """A one-worker plan of ``count`` devices connecting to ``port``; without one,
    where nothing listens: each device is refused at once, no broker needed."""
    path = _scenario(
        root,
        mosquitto,
        device_ca,
        fleet={"ca": str(device_ca.directory), "store": "fleet", "count": count},
        load=load,
        **({"retry": {"max_attempts": 1}} | settings),
    )
    scenario = load_scenario(path)
    ensure_fleet(scenario, count, 2)
    return build_plan(scenario, endpoint=("127.0.0.1", port or free_port()), workers=1)


def _ran(make, start_at=None):
    """The worker ``make()`` makes (on the event loop: a worker needs one), once
    it has run its whole fleet, started at once or by ``start_at(worker)``."""

    async def run():
        worker = make()
        async with asyncio.timeout(120):
            await worker.run(time.monotonic if start_at is None else start_at(worker))
        return worker

    return asyncio.run(run())


def _counted_run(plan) -> CountingWorker:
    """A worker that ran ``plan``'s whole fleet, and what it counted."""
    return _ran(lambda: CountingWorker(plan, 0, lambda _message: None), lambda w: w.start_at)


@pytest.fixture(scope="module")
def window_run(window_plan) -> CountingWorker:
    return _counted_run(window_plan)


def test_a_worker_prepares_a_bounded_window_ahead_not_its_whole_fleet(window_run):
    worker = window_run
    assert worker.stats.devices == WINDOW_FLEET  # every device ran
    assert worker.ahead_at_start == worker.window < WINDOW_FLEET
    # The queue's window, the one the dispatcher holds until its time, the one
    # being prepared.
    assert worker.most_ahead <= worker.window + 2


def test_a_worker_prepares_devices_in_batches_between_starts(tmp_path, mosquitto, device_ca):
    plan = _one_worker_plan(
        tmp_path,
        mosquitto,
        device_ca,
        200,
        # A device every 5 ms: time between two starts for several preparations.
        load={"executor": "constant-arrival-rate", "rate": "200/s", "max_in_flight": 8},
    )
    worker = _counted_run(plan)
    assert worker.stats.devices == 200
    # Not one device prepared per device started: a batch, one after another,
    # never more than the window has room for (more than a batch when the
    # producer woke late: a loaded machine).
    assert 1 < worker.most_in_a_row <= worker.window
    assert worker.most_ahead <= worker.window + 2


def test_every_progress_report_counts_each_device_that_ended_before_it(
    tmp_path, mosquitto, device_ca
):
    plan = _one_worker_plan(
        tmp_path,
        mosquitto,
        device_ca,
        60,
        load={"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 10},
    )
    sent = []
    _ran(lambda: Worker(plan, 0, sent.append))
    reports = [progress for kind, progress in sent if kind == "progress"]
    assert len([p for p in reports if p.stats["devices"]]) >= 2  # reports while it ran
    for progress in reports:
        # Results are recorded together, at each report: none is left out of it.
        assert progress.stats["devices"] == progress.started - progress.in_flight


def test_devices_holding_show_their_connect_latency_before_they_end(tmp_path, mosquitto, device_ca):
    """A soak's devices hold for long: their provisioning latency is in the
    progress (the live view, /metrics) from their connect, not from their end."""
    from loadgen.metrics.stats import RunStats

    plan = _one_worker_plan(
        tmp_path,
        mosquitto,
        device_ca,
        5,
        load={"executor": "constant-arrival-rate", "rate": "50/s", "max_in_flight": 10},
        port=mosquitto.tls_port,
        after_connect=[{"hold": {"duration": "3s", "keepalive": 0}}],
    )
    sent = []
    worker = _ran(lambda: Worker(plan, 0, sent.append))
    holding = [
        p for kind, p in sent if kind == "progress" and p.connected == 5 and not p.stats["devices"]
    ]
    assert holding, "no report came while all five held"
    assert RunStats.from_wire(holding[-1].stats).phases["provision"].count == 5
    # Counted once, not again as they ended.
    assert worker.stats.phases["provision"].count == 5


def test_a_worker_never_has_more_devices_in_flight_than_its_share(tmp_path, mosquitto, device_ca):
    plan = _one_worker_plan(
        tmp_path,
        mosquitto,
        device_ca,
        12,
        # Due all at once, each held a while: most wait for a slot.
        load={"executor": "constant-arrival-rate", "rate": "1000/s", "max_in_flight": 3},
        port=mosquitto.tls_port,
        retry={"initial": "10ms", "max": "50ms", "max_attempts": 2},
        after_connect=[{"hold": {"duration": "200ms", "keepalive": 0}}],
    )

    class Watched(Worker):
        most = 0

        async def _one(self, spec, t0, started):  # type: ignore[no-untyped-def]
            self.most = max(self.most, self.in_flight)
            await super()._one(spec, t0, started)

    worker = _ran(lambda: Watched(plan, 0, lambda _message: None))
    assert worker.most == 3
    assert worker.stats.outcomes["connected"] == worker.stats.devices == 12
    assert worker.stats.slot_waits > 0


async def _hold(fleet, mosquitto, devices, *, promise, pings, seconds, holds=None):
    """``devices`` of ``fleet`` connected to mosquitto, each CONNECT promising a
    keepalive of ``promise`` seconds, then held ``seconds`` with a PINGREQ every
    ``pings`` (0: none); their results."""
    shared = ClientTls(ca_file=mosquitto.server_ca.directory / "ca.pem")
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    config = DeviceConfig(keepalive=promise, step_timeout=5.0)
    step = HoldStep(seconds, keepalive=pings)

    async def one(device):
        tls = DeviceTls(shared, fleet.path / device.cert, fleet.path / device.key, "localhost")
        spec = DeviceSpec(
            device.index, device.client_id, target, tls, mqtt.MQTT_5, time.monotonic(), (step,)
        )
        return await Device(spec, config, time.monotonic, random.Random(0), holds).run()

    async with asyncio.timeout(seconds + 30):
        return await asyncio.gather(*(one(d) for d in devices))


def _healthy(fleet, n):
    return [d for d in fleet.devices() if d.fault is None][:n]


async def test_pingreqs_keep_a_held_device_connected_past_the_servers_keepalive(
    small_fleet, mosquitto
):
    # mosquitto closes a client silent for 1.5 times the keepalive its CONNECT
    # promised: held 5 s on a promise of 2 s, only the PINGREQs keep it.
    [result] = await _hold(
        small_fleet, mosquitto, _healthy(small_fleet, 1), promise=2, pings=2, seconds=5
    )
    assert result.outcome is Outcome.CONNECTED, result.reason


async def test_a_held_device_that_never_pings_is_closed_as_its_keepalive_promised(
    small_fleet, mosquitto
):
    # The same hold without PINGREQs: what the test above relies on is real.
    [result] = await _hold(
        small_fleet, mosquitto, _healthy(small_fleet, 1), promise=2, pings=0, seconds=10
    )
    assert result.outcome is Outcome.CLOSED
    assert result.phase == "hold"


async def test_devices_held_together_on_one_wheel_all_stay_connected_to_the_end(
    small_fleet, mosquitto
):
    holds = Holds(asyncio.get_running_loop())
    devices = _healthy(small_fleet, 20)
    held = _hold(small_fleet, mosquitto, devices, promise=2, pings=2, seconds=5, holds=holds)
    holding = asyncio.ensure_future(held)
    async with asyncio.timeout(30):
        while len(holds) < len(devices):  # all on this one wheel at once
            assert not holding.done(), [r.reason for r in holding.result()]
            await asyncio.sleep(0.05)
    results = await holding
    assert [r.outcome for r in results] == [Outcome.CONNECTED] * len(devices)
    assert len(holds) == 0  # every hold ended and left the wheel


class _Accepting(asyncio.Protocol):
    """Accepts every CONNECT; what else a client sends goes to ``heard``."""

    def __init__(self) -> None:
        self.conn = mqtt.Connection(mqtt.Role.SERVER)
        self.keepalive = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for packet in self.conn.receive(data):
            if isinstance(packet, mqtt.Connect):
                self.keepalive = packet.keepalive
                self.transport.write(self.conn.send(mqtt.ConnAck(0)))
            else:
                self.heard(packet)

    def heard(self, packet: mqtt.Packet) -> None:
        pass


class _Enforcing(_Accepting):
    """Answers PINGREQs, and closes a client silent for twice the keepalive its
    CONNECT promised (MQTT allows 1.5: twice leaves a loaded machine room)."""

    def __init__(self) -> None:
        super().__init__()
        self.silence: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.silence is not None:
            self.silence.cancel()
        loop = asyncio.get_running_loop()
        self.silence = loop.call_later(2 * self.keepalive, self.transport.close)

    def heard(self, packet: mqtt.Packet) -> None:
        if isinstance(packet, mqtt.PingReq):
            self.transport.write(self.conn.send(mqtt.PingResp()))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.silence is not None:
            self.silence.cancel()


async def test_a_device_joining_the_wheel_pings_on_its_own_time_whatever_others_do():
    # The first device's PINGREQ (at 4 s) schedules its next one at 8 s; the
    # second device, joined at 2.5 s, is due at 4.5 s: its bucket must still be
    # visited on time, or it stays silent past what the server allows (4 s).
    server = await asyncio.get_running_loop().create_server(_Enforcing, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    holds = Holds(asyncio.get_running_loop())

    async def device(client_id, promise, seconds, after):
        await asyncio.sleep(after)
        step = HoldStep(seconds, keepalive=promise)
        spec = DeviceSpec(0, client_id, target, None, mqtt.MQTT_5, time.monotonic(), (step,))
        config = DeviceConfig(keepalive=promise)
        return await Device(spec, config, time.monotonic, random.Random(0), holds).run()

    async with asyncio.timeout(60):
        first, second = await asyncio.gather(device("a", 4, 10, 0), device("b", 2, 7, 2.5))
    server.close()
    assert first.outcome is Outcome.CONNECTED, first.reason
    assert second.outcome is Outcome.CONNECTED, second.reason


class _DeafToPings(_Accepting):
    """Accepts every CONNECT, never answers a PINGREQ."""

    def __init__(self) -> None:
        super().__init__()
        self.pingreqs = 0

    def heard(self, packet: mqtt.Packet) -> None:
        if isinstance(packet, mqtt.PingReq):
            self.pingreqs += 1


async def test_a_pingreq_still_unanswered_at_the_end_of_the_hold_ends_it_as_timeout():
    server_end = _DeafToPings()
    server = await asyncio.get_running_loop().create_server(lambda: server_end, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    step = HoldStep(2.0, keepalive=0.2)
    spec = DeviceSpec(0, "dev", target, None, mqtt.MQTT_5, time.monotonic(), (step,))
    config = DeviceConfig(step_timeout=0.5)
    async with asyncio.timeout(20):
        result = await Device(spec, config, time.monotonic, random.Random(0)).run()
    server.close()
    assert result.outcome is Outcome.TIMEOUT
    assert result.phase == "hold" and result.reason == "no answer in time"
    assert server_end.pingreqs == 1  # one unanswered PINGREQ, never a second on top


def test_a_hold_until_lasts_what_is_left_of_it_after_the_loads_start():
    until = HoldStep(0.0, keepalive=10, until=60)
    assert until.length(origin=100.0, now=130.0) == 30.0
    assert until.length(origin=100.0, now=175.0) == 0.0  # connected after it: no hold
    assert HoldStep(45.0).length(origin=100.0, now=130.0) == 45.0  # a duration: its own


def _held_until(tmp_path, mosquitto, device_ca, hold: dict, name: str):
    """A scenario of devices arriving at 20/s against mosquitto that ``hold``,
    named ``name-000`` on (a test's own client ids on the shared broker)."""
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        after_connect=[{"hold": hold}],
        load={"executor": "constant-arrival-rate", "rate": "20/s", "max_in_flight": 50},
    )
    (tmp_path / "profile.yaml").write_text(f"subject:\n  common_name: '{name}-{{index:03d}}'\n")
    return path


def test_a_shard_ready_late_lets_go_at_the_time_the_on_time_shards_do(
    tmp_path, mosquitto, device_ca
):
    """``until`` counts from --start-at, not from a late shard's own start: 25 s
    late, a hold until 20 s after --start-at is over before anyone connects
    (it held 20 s more before: the run lasted past 20 s)."""
    path = _held_until(tmp_path, mosquitto, device_ca, {"until": "20s", "keepalive": "0s"}, "late")
    report = tmp_path / "report.json"
    start_at = f"{time.time() - 25:.1f}"
    result = run_loadgen(
        "run", path, "--count", "5", "--report", report, "--start-at", start_at,
        "--start-tolerance", "60s",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["outcomes"]["connected"] == 5
    assert data["start"]["late_s"] >= 25
    assert data["duration_s"] < 20


def test_devices_holding_until_a_time_after_the_start_are_held_to_it(
    tmp_path, mosquitto, device_ca
):
    # 20 devices start over 1 s and hold until 3 s after the load's start: the
    # run cannot end before then, and every one of them connected.
    path = _held_until(tmp_path, mosquitto, device_ca, {"until": "3s", "keepalive": "1s"}, "until")
    report = tmp_path / "report.json"
    result = run_loadgen("run", path, "--count", "20", "--report", report)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["outcomes"]["connected"] == data["devices"] == 20
    assert data["duration_s"] >= 3.0
