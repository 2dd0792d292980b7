"""`--pushgateway`: pushes are made beside the run, never in its way; a
gateway slow to answer holds up neither the coordinating loop nor the report."""

from __future__ import annotations

import threading

from loadgen.load.runner import RunSnapshot
from loadgen.metrics.prometheus import Exporter, LiveRun, Pusher
from loadgen.metrics.stats import RunStats
from tests.fake_gateways import Holding
from tests.test_report_merge import _plan


def _snapshot(started: int) -> RunSnapshot:
    stats = RunStats()
    for i in range(started):
        stats.started(i * 0.01)
    return RunSnapshot(started, started, 0, stats)


def test_progress_goes_on_while_the_gateway_holds_a_push():
    with Holding() as gateway:
        exporter = Exporter(_plan(10), None, gateway.url, "job")
        exporter.progress(_snapshot(5), 1.0)
        assert gateway.wait_for_requests(1)
        # Only now does the gateway answer: had progress waited for it, its
        # push would have timed out and hung up by then.
        gateway.release()
        assert exporter.finish(RunStats()) is None
        assert (gateway.answered, gateway.abandoned) == (2, 0)
    assert not [t for t in threading.enumerate() if t.name == "pushgateway"]


def test_a_push_due_while_one_is_in_flight_is_not_made():
    with Holding() as gateway:
        live = LiveRun(_plan(10))
        live.snapshot = _snapshot(5)
        pusher = Pusher(live, gateway.url, "job", interval=0.0)
        pusher.push_due()
        assert gateway.wait_for_requests(1)
        pusher.push_due()  # the first still unanswered
        gateway.release()
        assert pusher.push_final() is None
        assert gateway.requests == 2  # the first, and the final one
