"""The cert factory's worker processes: jobs handed out one at a time, over a
pipe of each worker's own, and their results handed back in the jobs' order.

``multiprocessing.Pool`` lost the job of a worker that died (a SIGKILL, the OOM
killer) and waited for it for ever, and restarted a worker whose set-up failed
for ever, a traceback each time. Here either ends the work at once: the other
workers are killed and ``WorkerFailed`` says in one line which worker, and how.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Generic, TypeVar

from loadgen import lifeline
from loadgen.errors import LoadgenError

Arg = TypeVar("Arg")
State = TypeVar("State")
Job = TypeVar("Job")
Result = TypeVar("Result")

# A worker's end, once its pipe is closed: long enough for the kernel to reap it.
_REAP_TIMEOUT = 5.0


class WorkerFailed(LoadgenError):
    """A worker died, or its set-up or a job failed; the others are stopped."""


@dataclass(frozen=True)
class _Failed:
    reason: str


@dataclass(frozen=True)
class Task(Generic[Arg, State, Job, Result]):
    """What every worker does: ``setup(argument)`` once, then ``work(state, job)``
    for each job it is handed. All are pickled for a spawned worker: the
    functions must be a module's own."""

    setup: Callable[[Arg], State]
    argument: Arg
    work: Callable[[State, Job], Result]


@contextlib.contextmanager
def started(
    task: Task[Arg, State, Job, Result], jobs: Sequence[Job], workers: int, who: str
) -> Iterator[Iterator[Result]]:
    """Up to ``workers`` processes (``who`` N in errors), all started on entry,
    doing ``task``; the iterator gives the results of ``jobs`` in their order.
    On the way out, the workers still busy (after a failure, Ctrl-C) are killed."""
    team = _Team(task, min(workers, len(jobs)), who)
    try:
        yield team.results(jobs)
    finally:
        team.stop()


def _context() -> ForkContext | SpawnContext:
    """fork: a worker starts in milliseconds, with the parent's imports. But a
    process forked while another thread holds a lock (rich's refresh thread, a
    metrics server) may deadlock in its first import: then spawn, which costs
    each worker its imports (0.7 s measured on 2 loaded cores: cryptography,
    pydantic)."""
    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    # It unblocks the stop signals as it starts: before they are blocked.
    resource_tracker.ensure_running()
    return multiprocessing.get_context("spawn")


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    pipe: Connection
    job: int | None = None  # the position of the job it is doing
    retired: bool = False  # told there is nothing left: it exits by itself


class _Team(Generic[Arg, State, Job, Result]):
    def __init__(self, task: Task[Arg, State, Job, Result], count: int, who: str) -> None:
        self.who = who
        self.workers: list[_Worker] = []
        context = _context()
        # A stop signal while a worker starts waits until it ignores them: a
        # spawned one interrupted in its imports died with a traceback.
        try:
            with lifeline.stop_signals_blocked():
                for number in range(1, count + 1):
                    parent_end, child_end = context.Pipe()
                    process = context.Process(
                        target=_serve,
                        args=(task, child_end, f"{who} {number}"),
                        name=f"loadgen-{who.replace(' ', '-')}-{number}",
                    )
                    self.workers.append(_Worker(number, process, parent_end))
                    process.start()
                    child_end.close()  # the worker's end: its death is EOF on ours
        except BaseException:
            self.stop()
            raise

    def results(self, jobs: Sequence[Job]) -> Iterator[Result]:
        waiting = iter(range(len(jobs)))
        done: dict[int, Result] = {}
        busy: dict[Connection, _Worker] = {}
        for worker in self.workers:
            self._hand(worker, waiting, jobs, busy)
        for position in range(len(jobs)):
            while position not in done:
                for pipe in multiprocessing.connection.wait(list(busy)):
                    assert isinstance(pipe, Connection)
                    worker = busy.pop(pipe)
                    assert worker.job is not None
                    done[worker.job] = self._answer(worker)
                    self._hand(worker, waiting, jobs, busy)
            yield done.pop(position)

    def _hand(
        self,
        worker: _Worker,
        waiting: Iterator[int],
        jobs: Sequence[Job],
        busy: dict[Connection, _Worker],
    ) -> None:
        job = next(waiting, None)
        if job is None:
            worker.pipe.send(None)
            worker.retired = True
            return
        worker.job = job
        try:
            worker.pipe.send(jobs[job])
        except OSError:  # it died since its last answer (a set-up that failed, say)
            self._answer(worker)  # what it said before, when it said anything
            raise WorkerFailed(f"{self.who} {worker.number} {self._death(worker)}") from None
        busy[worker.pipe] = worker

    def _answer(self, worker: _Worker) -> Result:
        try:
            answer: Result | _Failed = worker.pipe.recv()
        except (EOFError, OSError):
            raise WorkerFailed(f"{self.who} {worker.number} {self._death(worker)}") from None
        if isinstance(answer, _Failed):
            raise WorkerFailed(answer.reason)
        return answer

    def _death(self, worker: _Worker) -> str:
        process = worker.process
        process.join(_REAP_TIMEOUT)
        code = process.exitcode
        if code is None:
            return f"(pid {process.pid}) closed its pipe"
        if code < 0:
            return f"(pid {process.pid}) was killed by {signal.Signals(-code).name}"
        return f"(pid {process.pid}) exited with code {code}"

    def stop(self) -> None:
        """Workers told there is nothing left exit by themselves; the others
        (after a failure, or Ctrl-C) are killed: their jobs are for nobody."""
        for worker in self.workers:
            if not worker.retired and worker.process.pid is not None:
                worker.process.kill()
        for worker in self.workers:
            if worker.process.pid is not None:
                worker.process.join()
            worker.pipe.close()


def _serve(task: Task[Arg, State, Job, Result], pipe: Connection, name: str) -> None:
    """A worker: set up, then one job at a time until told there is none left.
    A failure is sent as one line, and the worker exits."""
    # Ctrl-C reaches the whole process group: the parent alone handles it, and
    # kills the workers it no longer needs.
    lifeline.ignore_stop_signals()
    lifeline.die_with_multiprocessing_parent(signal.SIGKILL)
    # A job runs for a while without reading from the parent: watch it apart.
    lifeline.exit_when_multiprocessing_parent_exits(f"loadgen {name}")
    try:
        state = task.setup(task.argument)
        while (job := pipe.recv()) is not None:
            pipe.send(task.work(state, job))
    except EOFError:
        lifeline.parent_lost(f"loadgen {name}")
    except LoadgenError as exc:
        pipe.send(_Failed(str(exc)))
    except Exception as exc:
        pipe.send(_Failed(f"{name} failed: {type(exc).__name__}: {exc}"))
