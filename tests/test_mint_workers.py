"""The cert factory's worker processes (loadgen/certs/workers.py): results in
the jobs' order, and a failure of any kind one line that ends them all."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from loadgen.certs.workers import Task, WorkerFailed, started
from loadgen.errors import FleetError


def _offset(base: int) -> int:
    return base


def _add(base: int, job: int) -> int:
    return base + job


def _refuse(_: int) -> int:
    raise FleetError("keys/ec-p256-0001.key: a damaged pool key (empty)")


def _fail_on_three(base: int, job: int) -> int:
    if job == 3:
        raise ZeroDivisionError("division by zero")
    return base + job


def _start_method(_: int, __: int) -> str:
    return multiprocessing.get_start_method(allow_none=True) or "fork"


def _die_on_three(base: int, job: int) -> int:
    if job == 3:
        os._exit(7)
    return base + job


def _run(task: Task, jobs: int) -> list[int]:
    with started(task, list(range(jobs)), 2, "test worker") as results:
        return list(results)


def test_results_come_in_the_order_of_the_jobs():
    with started(Task(_offset, 100, _add), list(range(40)), 3, "test worker") as results:
        assert list(results) == [100 + n for n in range(40)]


def test_a_set_up_that_fails_ends_the_work_with_its_one_line():
    with (
        pytest.raises(WorkerFailed, match=r"^keys/ec-p256-0001.key: a damaged pool key \(empty\)$"),
        started(Task(_refuse, 0, _add), list(range(10)), 2, "test worker") as results,
    ):
        list(results)


def test_a_job_that_fails_names_the_worker_and_the_error():
    with pytest.raises(WorkerFailed, match=r"^test worker \d failed: ZeroDivisionError"):
        _run(Task(_offset, 0, _fail_on_three), 10)


def test_a_worker_that_dies_names_itself_and_how_and_the_others_are_stopped():
    with pytest.raises(WorkerFailed, match=r"^test worker \d \(pid \d+\) exited with code 7$"):
        _run(Task(_offset, 0, _die_on_three), 10)
    assert multiprocessing.active_children() == []


def test_workers_are_spawned_not_forked_while_another_thread_runs():
    # A fork would copy a lock that thread may hold into each worker.
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        with started(Task(_offset, 0, _start_method), [1, 2], 2, "test worker") as results:
            assert list(results) == ["spawn", "spawn"]
    finally:
        release.set()
        other.join()
