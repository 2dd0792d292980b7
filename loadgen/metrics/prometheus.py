"""The run's metrics for Prometheus, from the workers' merged measurements.

Read at scrape time from the latest snapshot of every worker (each snapshot is
cumulative, and the last one is what the report is built from), so /metrics shows
the whole run exactly once: nothing counted twice, nothing missing. Names follow
Prometheus conventions (docs/metrics.md); labels stay bounded (scenario, outcome,
phase, never a device).
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from loadgen.errors import UserError
from loadgen.load.plan import RunPlan
from loadgen.load.runner import RunSnapshot
from loadgen.load.schedule import span, target_rate
from loadgen.metrics.histogram import LatencyHistogram
from loadgen.metrics.http import serve_metrics
from loadgen.metrics.stats import PHASES, RunStats

PREFIX = "loadgen"
# From 1 ms to 60 s: what provisioning latency spans, from loopback to throttled.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LiveRun:
    """What the collector reads: replaced, never mutated, so a scrape from the
    server's thread always sees one consistent snapshot."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        # When the last arrival is planned (seconds in): computed once, a
        # ramping schedule of a million devices takes a while to walk.
        self.arrivals_end = span(plan.executor, plan.count)
        # The finished steps of a capacity search (counters go on from them, so
        # they never reset between steps) and the current snapshot, as one pair
        # replaced at once: a scrape (another thread) reading one of them as it
        # changed and the other as it was saw a counter go back, or count twice.
        self._view: tuple[RunStats | None, RunSnapshot | None] = (None, None)
        self.started_at: float | None = None  # wall clock
        self.finished = False
        # A capacity search's current (step, rate).
        self.step: tuple[int, float] | None = None
        # Which of several generators running side by side (a label, when set).
        self.shard: str | None = None

    @property
    def before(self) -> RunStats | None:
        return self._view[0]

    @property
    def snapshot(self) -> RunSnapshot | None:
        return self._view[1]

    @snapshot.setter
    def snapshot(self, snapshot: RunSnapshot | None) -> None:
        self._view = (self._view[0], snapshot)

    def show(self, before: RunStats | None, snapshot: RunSnapshot | None) -> None:
        """Both at once (never changed in place: readers hold the old ones)."""
        self._view = (before, snapshot)

    def view(self) -> tuple[RunStats | None, RunSnapshot | None, RunStats | None]:
        """The finished steps, the current snapshot and everything measured so
        far, all of one moment."""
        before, snapshot = self._view
        if snapshot is None:
            return before, snapshot, before
        if before is None:
            return before, snapshot, snapshot.stats
        total = RunStats()
        total.merge(before)
        total.merge(snapshot.stats)
        return before, snapshot, total


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add(family: HistogramMetricFamily, values: list[str], h: LatencyHistogram) -> None:
    cumulative = h.cumulative(BUCKETS)
    buckets = [(f"{b:g}", c) for b, c in zip(BUCKETS, cumulative, strict=True)]
    buckets.append(("+Inf", h.count))
    family.add_metric(values, buckets, h.sum_seconds)


class RunCollector(Collector):
    def __init__(self, live: LiveRun) -> None:
        self.live = live

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        live = self.live
        before_steps, snap, stats = live.view()
        if snap is None or stats is None:
            return
        names, values = ["scenario"], [live.plan.scenario]
        if live.shard is not None:
            names, values = [*names, "shard"], [*values, live.shard]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        before = before_steps.devices if before_steps is not None else 0
        yield counter("devices_started", "Devices started", before + snap.started)
        yield counter("devices_finished", "Devices that ended in an outcome", stats.devices)
        yield counter("connect_attempts", "Connection attempts, retries included", stats.attempts)
        yield counter(
            "throttled_answers",
            "CONNECTs, PUBLISHes and SUBSCRIBEs answered with a throttling code",
            stats.throttled,
        )
        outcomes = CounterMetricFamily(
            f"{PREFIX}_device_outcomes", "Devices by outcome", labels=[*names, "outcome"]
        )
        for outcome, n in stats.outcome_counts().items():
            outcomes.add_metric([*values, outcome], n)
        yield outcomes
        expected = CounterMetricFamily(
            f"{PREFIX}_device_outcomes_expected",
            "Devices that failed as the fault injected on purpose predicts, by outcome",
            labels=[*names, "outcome"],
        )
        for outcome in stats.outcome_counts():
            if outcome != "connected":
                expected.add_metric([*values, outcome], stats.expected[outcome])
        yield expected
        yield counter(
            "devices_unexpected",
            "Devices whose outcome no injected fault predicted (the CI gate's surprises)",
            stats.unexpected,
        )
        phases = _histogram(
            f"{PREFIX}_phase_duration_seconds",
            "Duration of each phase (provision: from the scheduled start)",
            [*names, "phase"],
        )
        for phase in PHASES:
            _add(phases, [*values, phase], stats.phases[phase])
        yield phases
        lag = _histogram(
            f"{PREFIX}_schedule_lag_seconds",
            "How late devices started against the schedule",
            names,
        )
        _add(lag, values, stats.lag)
        yield lag
        yield gauge(
            "devices_in_flight",
            "Devices connecting or connected now",
            0 if live.finished else snap.in_flight,
        )
        yield gauge(
            "devices_connected",
            "Devices connected now (past an accepted CONNACK)",
            0 if live.finished else snap.connected,
        )
        elapsed = time.time() - live.started_at if live.started_at is not None else 0.0
        # After the last planned arrival nothing more is planned (devices may
        # still be holding or draining): the target drops to 0. Before the start
        # (waiting for --start-at) nothing is planned yet either.
        arriving = 0.0 <= elapsed <= live.arrivals_end + 1.0
        target = None if live.finished or not arriving else target_rate(live.plan.executor, elapsed)
        yield gauge("arrival_rate_target", "Planned device arrivals per second", target or 0.0)
        # The last second whole in the snapshot, from the snapshot's own time:
        # workers measure twice a second, so the second before the scrape's own
        # may not all be in the snapshot yet, and would read low.
        achieved = None if live.finished else snap.arrival_rate(elapsed, 1)
        yield gauge(
            "arrival_rate_achieved", "Device arrivals in the last whole second", achieved or 0
        )
        if live.step is not None:
            step, rate = live.step
            yield gauge("capacity_step", "The capacity search's current step (from 1)", step)
            yield gauge(
                "capacity_step_rate",
                "The capacity search's current step: its arrivals per second",
                rate,
            )


def registry_for(live: LiveRun) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RunCollector(live))
    return registry


def serve(live: LiveRun, port: int, host: str = "127.0.0.1") -> threading.Thread:
    _, thread = serve_metrics(registry_for(live), host, port)
    return thread


class Pusher:
    """Pushes the run's metrics to a Pushgateway every ``interval`` seconds and at
    the end, for runs too short for Prometheus to scrape. A push that fails is
    retried at the next interval: the run goes on. That pushes began failing, and
    that they succeed again, are noted once each (``take_notices``), not at every
    push: a gateway down for the whole run is one line, not one every 5 s.

    Pushes are made from a thread of their own, one at a time: the caller is the
    loop that coordinates the workers, and a gateway slow to answer (each push
    may take ``timeout`` seconds per read) held it up, and with it the run's
    progress and timing. Each push reads the run as it is when it is made, so
    the newest values win; the final push waits for the one in flight."""

    def __init__(
        self, live: LiveRun, url: str, job: str, interval: float = 5.0, timeout: float = 5.0
    ) -> None:
        self.registry = registry_for(live)
        self.url, self.job, self.interval, self.timeout = url, job, interval, timeout
        # Shards pushing under one job keep a group each instead of replacing
        # each other's.
        self.grouping = {"shard": live.shard} if live.shard is not None else None
        # When the last push ended (monotonic): the interval counts from there,
        # so a gateway that takes the whole timeout is not pushed to back to back.
        self.last = -math.inf
        self.error: str | None = None
        self.pushing: threading.Thread | None = None
        # Written by the pushing thread, read by the caller's: under the lock.
        self.lock = threading.Lock()
        self.notices: list[str] = []

    def push_due(self) -> None:
        """Start a push if one is due and none is in flight; never waits."""
        if self.pushing is not None and self.pushing.is_alive():
            return
        if time.monotonic() - self.last < self.interval:
            return
        self.pushing = threading.Thread(target=self._push, name="pushgateway", daemon=True)
        self.pushing.start()

    def push_final(self) -> str | None:
        """The last push, once the one in flight has ended, waited for; why it
        failed, if it did. Each is bounded by the timeout of its reads, and past
        a generous wait the final values are given up rather than the run held."""
        if not self.wait(self.timeout * 4):
            return (
                f"pushgateway {self.url}: a push still unanswered after "
                f"{self.timeout * 4:g} s; the final values were not pushed"
            )
        self._push(final=True)
        return f"{self.error}; the final values were not pushed" if self.error else None

    def wait(self, timeout: float) -> bool:
        """Until no push is in flight (False: one still is after ``timeout`` s)."""
        if self.pushing is not None:
            self.pushing.join(timeout)
            return not self.pushing.is_alive()
        return True

    def take_notices(self) -> list[str]:
        """What changed since the last call: pushes began failing, or succeed again."""
        with self.lock:
            notices, self.notices = self.notices, []
        return notices

    def _push(self, *, final: bool = False) -> None:
        error: str | None = None
        try:
            push_to_gateway(
                self.url,
                job=self.job,
                registry=self.registry,
                grouping_key=self.grouping,
                timeout=self.timeout,
            )
        # A gateway that cannot be reached or refuses (OSError: urllib's errors
        # are), one that answers other than HTTP (HTTPException), a URL that
        # http.client cannot send (InvalidURL, UnicodeEncodeError): each is a
        # failed push, never the run's end.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"pushgateway {self.url}: {_failure(exc)}"
        with self.lock:
            if error is not None and self.error is None and not final:
                self.notices.append(f"{error}; retrying every {self.interval:g} s, the run goes on")
            elif error is None and self.error is not None:
                self.notices.append(f"pushgateway {self.url}: pushes succeed again")
            self.error = error
        self.last = time.monotonic()


def _failure(exc: Exception) -> str:
    """Why a push failed, on one line (a non-HTTP answer's first line may hold
    anything, CR LF included)."""
    # RemoteDisconnected is one too, but an OSError saying what happened.
    if isinstance(exc, http.client.BadStatusLine) and not isinstance(exc, OSError):
        line = str(exc.args[0]) if exc.args else ""
        return f"answered, but not in HTTP: {line[:60]!r}"
    return " ".join(str(exc).split()) or type(exc).__name__


class Exporter:
    """What ``--metrics-port`` and ``--pushgateway`` ask of a run (or a capacity
    search): a live view of it for Prometheus, served, pushed, or both."""

    def __init__(
        self,
        plan: RunPlan,
        port: int | None,
        pushgateway: str | None,
        job: str,
        shard: str | None = None,
        host: str = "127.0.0.1",
        *,
        say: Callable[[str], None],
    ) -> None:
        self.live = LiveRun(plan)
        self.live.shard = shard
        self.say = say  # a line for the user: a push's failure, its recovery
        self.pusher = Pusher(self.live, pushgateway, job) if pushgateway is not None else None
        if port is not None:
            try:
                serve(self.live, port, host)
            except OSError as exc:
                raise UserError(f"--metrics-port {port}: {exc.strerror}") from None

    def progress(self, snapshot: RunSnapshot, elapsed: float) -> None:
        self.live.started_at = time.time() - elapsed
        self.live.snapshot = snapshot
        if self.pusher is not None:
            # Said here, from the caller's thread, not the pushing one: the
            # caller also draws the live view on the same terminal.
            for notice in self.pusher.take_notices():
                self.say(notice)
            self.pusher.push_due()

    def step_begins(self, plan: RunPlan, number: int, rate: float) -> None:
        """A capacity search's next step: its plan, number and rate."""
        self.live.plan = plan
        self.live.arrivals_end = span(plan.executor, plan.count)
        self.live.step = (number, rate)

    def step_done(self, stats: RunStats) -> None:
        """A step's final measurements join the finished steps' (counters go on)."""
        before = RunStats()
        if self.live.before is not None:
            before.merge(self.live.before)
        before.merge(stats)
        self.live.show(before, RunSnapshot(0, 0, 0, RunStats(), at=0.0))

    def finish(self, stats: RunStats) -> None:
        """The final values, served and pushed (why the push failed, said)."""
        self.live.show(None, RunSnapshot(stats.devices, 0, 0, stats, at=math.inf))
        self.live.finished = True
        if self.pusher is None:
            return
        error = self.pusher.push_final()
        for notice in self.pusher.take_notices():
            self.say(notice)
        if error is not None:
            self.say(error)
