"""Pushgateways that misbehave, on a free loopback port, for the pusher's tests:
one that answers in another protocol, one that holds every push until told to
answer it. (tests/test_run_metrics.py starts a real Pushgateway for the rest.)"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Self

_ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Gateway:
    """A listening socket served one connection at a time by a daemon thread."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(30)  # only a hung test waits this long
                with contextlib.suppress(OSError):  # a pusher that went away
                    self.answer(conn)

    def answer(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        # Wakes the thread from accept(), which close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=60)


def _read_request(conn: socket.socket) -> bytes:
    """A whole PUT: its headers, then the body their Content-Length gives."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class NotHttp(_Gateway):
    """Answers every push with an SSH banner and closes the connection (once the
    push is read: closed before, its pusher could meet a broken pipe instead);
    after ``recover()``, as a Pushgateway does."""

    def __init__(self) -> None:
        super().__init__()
        self.http = False

    def answer(self, conn: socket.socket) -> None:
        _read_request(conn)
        self.requests += 1
        conn.sendall(_ACCEPTED if self.http else b"SSH-2.0-x\r\n")

    def recover(self) -> None:
        self.http = True


class Holding(_Gateway):
    """Reads each push, then holds it unanswered until ``release()``; answers 202
    (as a Pushgateway does) after. ``abandoned`` counts the pushes whose pusher
    had given up (closed its connection) by the time the answer was due."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.received = threading.Condition()
        self.answered = 0
        self.abandoned = 0

    def answer(self, conn: socket.socket) -> None:
        _read_request(conn)
        with self.received:
            self.requests += 1
            self.received.notify_all()
        self.released.wait(timeout=60)
        if _hung_up(conn):
            self.abandoned += 1
            return
        self.answered += 1  # counted first: the pusher may go on once it is sent
        conn.sendall(_ACCEPTED)

    def wait_for_requests(self, n: int, timeout: float = 30.0) -> bool:
        with self.received:
            return self.received.wait_for(lambda: self.requests >= n, timeout=timeout)

    def release(self) -> None:
        self.released.set()

    def __exit__(self, *exc: object) -> None:
        self.release()  # a push held now ends, and with it the serving thread
        super().__exit__(*exc)


def _hung_up(conn: socket.socket) -> bool:
    """The peer closed its side (a pusher that timed out): readable, at its end."""
    readable, _, _ = select.select([conn], [], [], 0)
    return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
