"""The pipe between a worker and the run's parent process."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading

import uvloop

from loadgen.load.workers import listen_to


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
