"""/metrics served from a thread of its own stays bounded whatever clients do:
idle connections are closed, and only so many are served at once, a new one
taking the place of the one idle longest. It answers
at /metrics alone, to GET and HEAD."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.request

import pytest
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


def _answer(sock: socket.socket) -> bytes:
    """What the server says to one request on ``sock``, read to its close."""
    sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_scrape_past_the_bound_takes_the_place_of_the_connection_idle_longest():
    server, port = _served(max_connections=4, timeout=30)
    before = set(threading.enumerate())
    idle = []
    for held in range(1, 5):  # one at a time: the server takes them in this order
        idle.append(socket.create_connection(("127.0.0.1", port)))
        idle[-1].settimeout(30)
        assert _wait_for(lambda held=held: _serving_threads(before) == held)
    try:
        assert "scraped_things_total 3.0" in _scrape(port)
        assert idle[0].recv(1) == b""  # closed for the scrape, nothing sent
        for sock in idle[1:]:  # the others are still served
            assert b"scraped_things_total 3.0" in _answer(sock)
    finally:
        for sock in idle:
            sock.close()
    server.shutdown()


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout():
    server, port = _served(timeout=0.5)
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.settimeout(30)
        assert idle.recv(1) == b""  # closed by the server, nothing sent
    assert "scraped_things_total 3.0" in _scrape(port)
    server.shutdown()


def _ask(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (names lowercased) and body of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        headers = {name.lower(): value for name, value in answer.getheaders()}
        return answer.status, headers, answer.read()
    finally:
        conn.close()


def test_head_answers_with_the_headers_of_a_get_and_no_body():
    server, port = _served()
    status, headers, body = _ask(port, "HEAD", "/metrics")
    _, got, got_body = _ask(port, "GET", "/metrics")
    server.shutdown()
    assert (status, body) == (200, b"")
    assert headers["content-type"] == got["content-type"]
    assert int(headers["content-length"]) == len(got_body)


@pytest.mark.parametrize("path", ["/", "/nope", "/metrics/extra"])
def test_a_path_other_than_metrics_is_not_found(path):
    server, port = _served()
    status, _, body = _ask(port, "GET", path)
    server.shutdown()
    assert status == 404
    assert b"/metrics" in body
