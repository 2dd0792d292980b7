"""`--pushgateway`: pushes are made beside the run, never in its way; a
gateway slow to answer holds up neither the coordinating loop nor the report."""

from __future__ import annotations

import threading

from loadgen.load.runner import RunSnapshot
from loadgen.metrics.prometheus import Exporter, LiveRun, Pusher
from loadgen.metrics.stats import RunStats
from tests.fake_gateways import Holding, NotHttp
from tests.test_report_merge import _plan


def _snapshot(started: int) -> RunSnapshot:
    stats = RunStats()
    for i in range(started):
        stats.started(i * 0.01)
    return RunSnapshot(started, started, 0, stats, at=1.0)


def test_progress_goes_on_while_the_gateway_holds_a_push():
    said: list[str] = []
    with Holding() as gateway:
        exporter = Exporter(_plan(10), None, gateway.url, "job", say=said.append)
        exporter.progress(_snapshot(5), 1.0)
        assert gateway.wait_for_requests(1)
        # Only now does the gateway answer: had progress waited for it, its
        # push would have timed out and hung up by then.
        gateway.release()
        exporter.finish(RunStats())
        assert (gateway.answered, gateway.abandoned) == (2, 0)
    assert said == []  # every push answered: nothing to report
    assert not [t for t in threading.enumerate() if t.name == "pushgateway"]


def _pusher(url: str) -> Pusher:
    """A pusher of a run under way, its pushes due at once (no interval)."""
    live = LiveRun(_plan(10))
    live.snapshot = _snapshot(5)
    return Pusher(live, url, "job", interval=0.0)


def _push(pusher: Pusher, times: int) -> None:
    for _ in range(times):
        pusher.push_due()
        assert pusher.wait(timeout=30)


def test_a_push_due_while_one_is_in_flight_is_not_made():
    with Holding() as gateway:
        pusher = _pusher(gateway.url)
        pusher.push_due()
        assert gateway.wait_for_requests(1)
        pusher.push_due()  # the first still unanswered
        gateway.release()
        assert pusher.push_final() is None
        assert gateway.requests == 2  # the first, and the final one


def test_pushes_that_go_on_failing_are_noted_once():
    with NotHttp() as gateway:
        pusher = _pusher(gateway.url)
        _push(pusher, 3)
    assert gateway.requests == 3
    assert pusher.take_notices() == [
        f"pushgateway {gateway.url}: answered, but not in HTTP: 'SSH-2.0-x\\r\\n'; "
        "retrying every 0 s, the run goes on"
    ]


def test_pushes_that_succeed_again_are_noted_once_when_they_do():
    with NotHttp() as gateway:
        pusher = _pusher(gateway.url)
        _push(pusher, 2)
        failing = pusher.take_notices()
        gateway.recover()
        _push(pusher, 2)
    assert len(failing) == 1
    assert pusher.take_notices() == [f"pushgateway {gateway.url}: pushes succeed again"]


def test_a_final_push_that_fails_is_said_and_the_run_goes_on():
    said: list[str] = []
    with NotHttp() as gateway:
        exporter = Exporter(_plan(10), None, gateway.url, "job", say=said.append)
        exporter.finish(RunStats())
    assert said and all(line.startswith(f"pushgateway {gateway.url}") for line in said)
    assert any("not in HTTP" in line for line in said)
