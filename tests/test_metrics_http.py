"""/metrics served from a thread of its own stays bounded whatever clients do:
idle connections are closed, and only so many are served at once."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from loadgen.metrics.http import serve_metrics
from tests.brokers import free_port


def _served(**bounds):
    registry = CollectorRegistry()
    Counter("scraped_things", "Things", registry=registry).inc(3)
    port = free_port()
    server, _ = serve_metrics(registry, "127.0.0.1", port, **bounds)
    return server, port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        return answer.read().decode()


def _wait_for(condition, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _serving_threads(before: set[threading.Thread]) -> int:
    return sum(
        1
        for t in threading.enumerate()
        if t not in before and "process_request_thread" in t.name and t.is_alive()
    )


def test_idle_connections_take_no_more_threads_than_the_bound():
    server, port = _served(max_connections=8, timeout=30)
    before = set(threading.enumerate())
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        assert _wait_for(lambda: _serving_threads(before) >= 8)
        time.sleep(0.5)  # the other 92 have been taken and closed by now
        assert _serving_threads(before) == 8
    finally:
        for sock in idle:
            sock.close()
    assert _wait_for(lambda: _serving_threads(before) == 0)
    assert "scraped_things_total 3.0" in _scrape(port)
    server.shutdown()


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout():
    server, port = _served(timeout=0.5)
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.settimeout(30)
        assert idle.recv(1) == b""  # closed by the server, nothing sent
    assert "scraped_things_total 3.0" in _scrape(port)
    server.shutdown()
