"""The pipe between a worker and the run's parent process."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import threading
from collections import Counter

import uvloop

from loadgen.load.runner import Progress, Worker
from loadgen.load.workers import _Tally, listen_to
from tests.test_report_merge import _plan
from tests.test_stats import _results


def test_a_worker_s_last_message_larger_than_the_pipe_waits_for_the_parent_while_its_loop_listens():
    parent, child = multiprocessing.Pipe()
    results = b"r" * (8 * 1024 * 1024)  # far past any socket buffer
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(parent.recv_bytes()))

    async def worker() -> None:
        listen_to(child, lambda: None)
        asyncio.get_running_loop().remove_reader(child.fileno())
        reader.start()  # the parent reads when it gets to it
        child.send_bytes(results)  # blocks until it has; never EAGAIN

    uvloop.run(worker())
    reader.join(timeout=60)
    assert received == [results]


def _progress_after(seconds: int) -> Progress:
    """A worker's progress message after ``seconds`` of one device a second."""

    async def measure() -> Progress:
        worker = Worker(_plan(seconds), 0, lambda _message: None)
        result = _results(1, 3)[0]  # alike: the histograms hold one value
        for second in range(seconds):
            worker.stats.started(second + 0.5)
            worker.stats.add(result, second + 0.5, second + 0.9)
        return worker.progress(seconds + 0.2)

    return asyncio.run(measure())


def test_a_progress_message_does_not_grow_with_the_seconds_run():
    minute, day = _progress_after(60), _progress_after(86_400)
    # Only the counts' own digits grow (86400 takes more bytes than 60): a
    # day's per-second series would be over a hundred times the minute's message.
    assert len(pickle.dumps(day)) < 2 * len(pickle.dumps(minute))


def test_a_lost_worker_is_reported_with_every_second_its_progress_messages_told():
    tally = _Tally()
    for seconds in range(10, 61, 10):  # each message tells its last 10 s
        tally.heard(0, _progress_after(seconds))
    tally.lose(0, "was killed by SIGKILL")
    assert tally.results[0].started_per_second == Counter(dict.fromkeys(range(60), 1))
    assert (
        sum(tally.results[0].outcomes_per_second["connected"].values())
        == (tally.results[0].outcomes["connected"])
    )
