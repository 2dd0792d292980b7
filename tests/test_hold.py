"""Devices held at scale: prepared a bounded window ahead of their start (never
the whole fleet at once), kept alive by PINGREQs a server enforces, and
connected for as long as they hold."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadgen.load.plan import build_plan
from loadgen.load.runner import Worker
from loadgen.run import ensure_fleet
from loadgen.scenario.schema import load_scenario
from tests.brokers import free_port
from tests.test_run import _scenario

# More than a worker's window: a run that prepared its whole fleet ahead shows.
WINDOW_FLEET = 1500


class CountingWorker(Worker):
    """A worker that counts the devices it prepared and has not started yet."""

    prepared = 0
    most_ahead = 0
    ahead_at_start = -1

    def prepare(self, device, offset):  # type: ignore[no-untyped-def]
        self.prepared += 1
        self.most_ahead = max(self.most_ahead, self.prepared - self.started)
        return super().prepare(device, offset)

    def start_at(self) -> float:
        self.ahead_at_start = self.prepared
        return time.monotonic()


@pytest.fixture(scope="module")
def window_plan(tmp_path_factory, mosquitto, device_ca):
    root = tmp_path_factory.mktemp("window")
    path = _scenario(
        root,
        mosquitto,
        device_ca,
        fleet={"ca": str(device_ca.directory), "store": "fleet", "count": WINDOW_FLEET},
        # Every device allowed in flight at once, as when all are to be held.
        load={"executor": "constant-arrival-rate", "rate": "5000/s", "max_in_flight": 20_000},
        retry={"max_attempts": 1},
    )
    scenario = load_scenario(path)
    ensure_fleet(scenario, WINDOW_FLEET, 2)
    # Nothing listens there: each device is refused at once, no broker needed.
    return build_plan(scenario, endpoint=("127.0.0.1", free_port()), workers=1)


def test_a_worker_prepares_a_bounded_window_ahead_not_its_whole_fleet(window_plan):
    async def run() -> CountingWorker:
        worker = CountingWorker(window_plan, 0, lambda _message: None)
        async with asyncio.timeout(120):
            await worker.run(worker.start_at)
        return worker

    worker = asyncio.run(run())
    assert worker.stats.devices == WINDOW_FLEET  # every device ran
    assert worker.ahead_at_start == worker.window < WINDOW_FLEET
    # The queue's window, the one the dispatcher holds until its time, the one
    # being prepared.
    assert worker.most_ahead <= worker.window + 2
