"""Worker processes: each runs ``runner.Worker`` on its own uvloop loop; the
parent starts them together, follows their progress and merges their results."""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing import resource_tracker
from typing import Any

from loadgen import lifeline
from loadgen.load.plan import RunPlan
from loadgen.load.runner import Progress, Worker
from loadgen.load.start import StartAt
from loadgen.metrics.stats import RunStats

# A worker must have its first window prepared within this: building an SSL
# context costs ~1.3 ms, so even 10,000 devices take ~13 s.
_READY_TIMEOUT = 300.0
# Workers start together a moment after the last is ready, on the wall clock
# (each process turns it into its own monotonic time).
_START_MARGIN = 0.25
# A running worker says how it is doing every PROGRESS_INTERVAL (0.5 s). One
# that says nothing for this long is hung (stopped, or stuck in native code):
# it is killed, and its devices are accounted for as a lost worker's. Without
# it, the run would wait for it for ever.
SILENT_TIMEOUT = 60.0


@dataclass
class RunTiming:
    started_at: float  # wall clock, seconds since the epoch: the schedule's start
    ended_at: float
    partial: bool = False  # stopped early (Ctrl-C, SIGTERM): not every device ran
    # When it was told to stop (wall clock): no device started after it, though
    # those in flight had the grace period to end.
    stopped_at: float | None = None
    # Workers that ended without their results, and why: their devices count as
    # error, and the run has failed whatever the gates say.
    lost: dict[int, str] = field(default_factory=dict)
    # With --start-at: how much later than asked the schedule started (ready late).
    late_s: float = 0.0
    # This process's CPU while the workers ran: receiving and merging their
    # progress, the live view and metrics. The generator's too, not a worker's.
    coordinator_cpu_s: float = 0.0


def listen_to(conn: multiprocessing.connection.Connection, callback: Any) -> None:
    """Call ``callback`` on the running loop whenever ``conn`` has a message.
    The pipe stays blocking: uvloop's reader makes its descriptor non-blocking,
    and a message larger than the pipe's buffer (a big run's results) sent
    while the parent was busy then failed with EAGAIN, read as the parent lost."""
    asyncio.get_running_loop().add_reader(conn.fileno(), callback)
    os.set_blocking(conn.fileno(), True)


def _worker_main(plan: RunPlan, worker: int, conn: multiprocessing.connection.Connection) -> None:
    # The parent handles Ctrl-C, SIGTERM and SIGHUP and tells workers to stop;
    # they must not die first. When the parent itself dies, they go with it.
    lifeline.ignore_stop_signals()
    lifeline.die_with_multiprocessing_parent(signal.SIGKILL)
    import uvloop

    who = f"loadgen worker {worker}"

    def send(message: tuple[str, Any]) -> None:
        try:
            conn.send(message)
        except OSError:
            lifeline.parent_lost(who)

    def recv() -> tuple[str, Any]:
        try:
            message: tuple[str, Any] = conn.recv()
        except (EOFError, OSError):
            lifeline.parent_lost(who)
        return message

    early_stop: list[float] = []

    def start_at() -> float:
        send(("ready", None))
        while True:
            kind, value = recv()
            if kind == "start":
                started_at, agreed_at = value
                now_monotonic, now = time.monotonic(), time.time()
                if agreed_at is not None:
                    runners[0].hold_origin = now_monotonic + (agreed_at - now)
                return float(now_monotonic + (started_at - now))
            early_stop.append(float(value))  # a stop before the start: applied at once

    runners: list[Worker] = []

    async def main() -> RunStats:
        runner = Worker(plan, worker, send)
        runners.append(runner)

        def on_message() -> None:
            kind, grace = recv()
            if kind == "stop":
                runner.request_stop(float(grace))

        def listen() -> None:
            # After the start, the parent only ever sends "stop".
            listen_to(conn, on_message)
            for grace in early_stop:
                runner.request_stop(grace)

        stats_ = None
        try:
            # Runs at the run's first pause, after start_at() has read "start".
            asyncio.get_running_loop().call_soon(listen)
            stats_ = await runner.run(start_at)
        finally:
            asyncio.get_running_loop().remove_reader(conn.fileno())
        return stats_

    try:
        stats = uvloop.run(main())
    except BaseException as exc:
        # What it measured before it failed still counts; the parent accounts
        # for the devices it could not run.
        measured = runners[0].measured().to_wire() if runners else None
        with contextlib.suppress(OSError):
            conn.send(("failed", (f"{type(exc).__name__}: {exc}", measured)))
        return
    send(("done", stats.to_wire()))


class RunSignals:
    """Ctrl-C, SIGTERM and SIGHUP for a command whose workers measure, from just
    before its first run to the last byte of its report.

    - While a run's workers are attached (``run_workers``), a signal tells them
      to stop starting devices and give those in flight ``grace`` seconds; a
      second one: no grace. Workers then send what they measured, as at a normal
      end.
    - Otherwise it is noted (``received``), and the command acts on it at its
      next step: one that landed between the workers' last word and the report's
      last byte used to raise KeyboardInterrupt there, and lost a finished run's
      report. One noted before a run's workers are attached stops them at once.
    - Inside ``abortable()``, around work that measures nothing (minting the
      next step's devices), a signal raises KeyboardInterrupt as without this."""

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self.received: int | None = None
        # When the last run attached was told to stop (wall clock), the first time.
        self.stopped_at: float | None = None
        self._pipes: list[multiprocessing.connection.Connection] | None = None
        self._abortable = False
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self._pipes is not None:
            self._stop(0.0 if self.stopped else self.grace)
        elif self._abortable:
            raise KeyboardInterrupt

    @property
    def stopped(self) -> bool:
        """The last run attached was told to stop."""
        return self.stopped_at is not None

    def _stop(self, grace: float) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.time()
        for pipe in self._pipes or ():
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(("stop", grace))

    def attach(self, pipes: list[multiprocessing.connection.Connection]) -> None:
        """The workers of a run that starts now, each at the end of a pipe."""
        self._pipes, self.stopped_at = pipes, None
        if self.received is not None:
            self._stop(self.grace)

    def detach(self) -> None:
        self._pipes = None

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        if self.received is not None:
            raise KeyboardInterrupt
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

    def __enter__(self) -> RunSignals:
        for sig in lifeline.STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def run_workers(
    plan: RunPlan,
    on_progress: Callable[[list[Progress], float], None] | None = None,
    start: StartAt | None = None,
    silent_timeout: float = SILENT_TIMEOUT,
    signals: RunSignals | None = None,
) -> tuple[RunStats, RunTiming]:
    """Run ``plan`` in ``plan.workers`` processes; return the merged stats. With
    ``start``, the schedule starts at that wall-clock time (at once when the
    workers are ready late, and not at all when later than its tolerance). A
    worker silent for ``silent_timeout`` seconds once started is killed and
    counted lost. Stop signals are ``signals``' (the caller's, when its results
    are to be written whatever comes), or this run's own."""
    if signals is None:
        with RunSignals() as own:
            return run_workers(plan, on_progress, start, silent_timeout, own)
    context = multiprocessing.get_context("spawn")
    pipes: list[multiprocessing.connection.Connection] = []
    processes: list[Any] = []
    finished = False
    try:
        # Started from this thread, which joins them below: PDEATHSIG, tied to
        # the starting thread, cannot fire early. A stop signal meanwhile waits
        # until every worker can be told. (multiprocessing unblocks SIGINT and
        # SIGTERM after it starts its resource tracker: started first, then.)
        resource_tracker.ensure_running()
        with lifeline.stop_signals_blocked():
            for worker in range(plan.workers):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_worker_main,
                    args=(plan, worker, child_end),
                    name=f"loadgen-worker-{worker}",
                )
                process.start()
                child_end.close()
                pipes.append(parent_end)
                processes.append(process)
            signals.attach(pipes)
        tally = _supervise(plan, pipes, processes, on_progress, start, silent_timeout)
        # Every worker has had its last word: a signal from here on is only
        # noted, and does not make this whole run a stopped one.
        signals.detach()
        finished = True
        return tally.stats(plan, stopped=signals.stopped), tally.timing(signals.stopped_at)
    finally:
        signals.detach()
        _end_workers(processes, pipes, finished)


def _end_workers(
    processes: list[Any], pipes: list[multiprocessing.connection.Connection], finished: bool
) -> None:
    """Workers that sent their results exit by themselves; after a failure, the
    rest are killed: left alone they would run the whole schedule for nobody."""
    for process in processes:
        if finished:
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
        process.join()
    for pipe in pipes:
        pipe.close()


@dataclass
class _Series:
    """A worker's arrivals and outcomes per second, from its progress messages:
    each holds its recent seconds' counts so far, which replace the older."""

    started: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, dict[int, int]] = field(default_factory=dict)

    def update(self, wire: dict[str, Any]) -> None:
        self.started.update(wire["started_per_second"])
        for outcome, seconds in wire["outcomes_per_second"].items():
            self.outcomes.setdefault(outcome, {}).update(seconds)

    def fill(self, stats: RunStats) -> None:
        """``stats``' series made whole from what the messages told."""
        stats.started_per_second = Counter(self.started)
        stats.outcomes_per_second = {k: Counter(v) for k, v in self.outcomes.items()}


@dataclass
class _Tally:
    """What the workers sent: each one's results, or why it has none of its own."""

    started_at: float = 0.0
    ended_at: float = 0.0
    results: dict[int, RunStats] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)
    # Each worker's per-second series as its progress messages told them: a
    # message carries only its recent seconds, and a worker lost without its
    # results is reported from all of them.
    series: dict[int, _Series] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)  # worker -> why
    late_s: float = 0.0
    coordinator_cpu_s: float = 0.0

    def finished(self, worker: int) -> bool:
        return worker in self.results or worker in self.lost

    def heard(self, worker: int, progress: Progress) -> None:
        self.progress[worker] = progress
        self.series.setdefault(worker, _Series()).update(progress.stats)

    def lose(self, worker: int, why: str, measured: dict[str, Any] | None = None) -> None:
        """The worker ended without its results: keep what it last said it
        measured, and account for the rest of its devices at the end."""
        self.lost[worker] = why
        if measured is not None:
            self.results[worker] = RunStats.from_wire(measured)
        elif worker in self.progress:
            stats = RunStats.from_wire(self.progress[worker].stats)
            self.series[worker].fill(stats)
            self.results[worker] = stats

    def stats(self, plan: RunPlan, *, stopped: bool) -> RunStats:
        """All workers' results merged; a lost worker's devices that have no
        result end as ``error`` (``worker: ... died``). In a run stopped early,
        those it had not started yet are left not started, like everyone's."""
        stats = RunStats()
        for part in self.results.values():
            stats.merge(part)
        for worker, why in sorted(self.lost.items()):
            mine = self.results.get(worker, RunStats())
            assigned = len(range(worker, plan.count, plan.workers))
            started = sum(mine.started_per_second.values()) if stopped else assigned
            stats.lose(started - mine.devices, f"worker {worker} {why}", "worker")
        return stats

    def timing(self, stopped_at: float | None) -> RunTiming:
        """The run's times; ``stopped_at`` when it was told to stop (None: it was not)."""
        # Stopped before its schedule started (a --start-at still ahead): it
        # lasted nothing, and it began and ended when it was stopped, not at a
        # start that never came.
        ended = self.ended_at or time.time()
        started = min(self.started_at, ended)
        return RunTiming(
            started,
            ended,
            partial=stopped_at is not None,
            stopped_at=stopped_at,
            lost=dict(self.lost),
            late_s=self.late_s,
            coordinator_cpu_s=self.coordinator_cpu_s,
        )


def _supervise(
    plan: RunPlan,
    pipes: list[multiprocessing.connection.Connection],
    processes: list[Any],
    on_progress: Callable[[list[Progress], float], None] | None,
    start: StartAt | None = None,
    silent_timeout: float = SILENT_TIMEOUT,
) -> _Tally:
    tally = _Tally()
    ready: set[int] = set()
    deadline = time.monotonic() + _READY_TIMEOUT
    while len(ready) + len(tally.lost) < len(pipes):
        if time.monotonic() > deadline:
            for worker in range(len(pipes)):
                if worker not in ready and worker not in tally.lost:
                    tally.lose(worker, f"not ready after {_READY_TIMEOUT:.0f} s")
                    processes[worker].kill()
            break
        waiting = {w: p for w, p in enumerate(pipes) if w not in ready and w not in tally.lost}
        for worker, (kind, payload) in _receive(waiting, processes, 0.5):
            if kind == "ready":
                ready.add(worker)
            else:
                _ended(tally, worker, kind, payload)
    tally.started_at = time.time() + _START_MARGIN
    if start is not None:
        start.check(tally.started_at)  # too late: the workers are ended, nothing ran
        tally.late_s = start.late_by(tally.started_at)
        tally.started_at = max(tally.started_at, start.at)
    for worker in ready:
        with contextlib.suppress(OSError):
            pipes[worker].send(("start", (tally.started_at, start.at if start else None)))
    cpu = time.process_time()
    heard = dict.fromkeys(range(len(pipes)), time.monotonic())
    while not all(tally.finished(w) for w in range(len(pipes))):
        waiting = {w: p for w, p in enumerate(pipes) if not tally.finished(w)}
        for worker, (kind, payload) in _receive(waiting, processes, 0.5):
            heard[worker] = time.monotonic()
            if kind == "progress":
                tally.heard(worker, payload)
            else:
                _ended(tally, worker, kind, payload)
        for worker in waiting:
            if not tally.finished(worker) and time.monotonic() - heard[worker] > silent_timeout:
                processes[worker].kill()
                tally.lose(
                    worker, f"stopped answering: nothing from it for {silent_timeout:g} s (killed)"
                )
        if on_progress is not None and tally.progress:
            # A worker that ended starts no more devices: every second of its
            # is whole, and its last measurement's time holds back no one's.
            parts = [
                replace(p, at=math.inf) if tally.finished(w) else p
                for w, p in tally.progress.items()
            ]
            on_progress(parts, time.time() - tally.started_at)
    tally.ended_at = time.time()
    tally.coordinator_cpu_s = time.process_time() - cpu
    return tally


def _ended(tally: _Tally, worker: int, kind: str, payload: Any) -> None:
    """A worker's last message: its results, or why it has none."""
    if kind == "done":
        tally.results[worker] = RunStats.from_wire(payload)
    elif kind == "failed":
        why, measured = payload
        tally.lose(worker, f"failed: {why}", measured)
    elif kind == "died":
        tally.lose(worker, f"died (exit code {payload})")


def _receive(
    pipes: dict[int, multiprocessing.connection.Connection], processes: list[Any], timeout: float
) -> list[tuple[int, tuple[str, Any]]]:
    """The messages that arrived within ``timeout``; a worker whose pipe closed
    without a last word says ("died", its exit code)."""
    out: list[tuple[int, tuple[str, Any]]] = []
    by_pipe = {id(pipe): worker for worker, pipe in pipes.items()}
    for pipe in multiprocessing.connection.wait(list(pipes.values()), timeout=timeout):
        assert isinstance(pipe, multiprocessing.connection.Connection)
        worker = by_pipe[id(pipe)]
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            processes[worker].join(timeout=5)
            message = ("died", processes[worker].exitcode)
        out.append((worker, message))
    return out
