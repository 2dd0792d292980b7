"""/metrics over HTTP from a thread of its own, bounded.

prometheus-client's own server keeps a thread and a socket for each connection
for as long as the client holds it open: 2,000 idle connections to an
emulator's metrics port took 2,000 threads, and near its open-files limit the
process's control plane and /metrics stopped answering. Here a connection that
sends nothing for ``TIMEOUT`` seconds is closed, and past ``MAX_CONNECTIONS`` at
once a new one takes the place of the one that has waited longest without a
whole request: a client holding connections open cannot lock a scraper out.

The metrics are at ``/metrics`` alone (every other path is 404, as a mistyped
scrape path should be told), for GET and HEAD (RFC 9110: HEAD is a GET without
its body; prometheus-client's app answers it 405).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

MAX_CONNECTIONS = 64
TIMEOUT = 10.0
PATH = "/metrics"
ALLOW = "GET, HEAD, OPTIONS"

# WSGI's shapes (PEP 3333), as far as this module uses them.
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _Handler(WSGIRequestHandler):
    server: MetricsServer

    def setup(self) -> None:
        super().setup()
        # A read or write stuck this long ends the connection.
        self.connection.settimeout(self.server.timeout_s)

    def parse_request(self) -> bool:
        whole = super().parse_request()
        # Its request line and headers are in: it is served now, not waiting.
        self.server.busy(self.request)
        return whole

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape is noise


class MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: socketserver's 5 made connects wait

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
    ) -> None:
        self._max = max_connections
        self._slots = threading.Condition()
        self._open = 0  # connections with a thread of their own
        # Those still waiting for their whole request, the longest waiting first.
        self._waiting: dict[socket.socket, None] = {}
        self.timeout_s = timeout
        self.address_family = family  # read as the socket is made, below
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._take_slot(request):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def busy(self, request: socket.socket) -> None:
        with self._slots:
            self._waiting.pop(request, None)

    def _take_slot(self, request: socket.socket) -> bool:
        """A slot for ``request``; when all are taken, the slot of the connection
        that has waited longest for its request, closed. False when every slot
        serves a request."""
        with self._slots:
            if self._open >= self._max:
                if not self._waiting:
                    return False
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                with contextlib.suppress(OSError):  # its thread closed it meanwhile
                    # Its thread's read ends at once, and the thread with it.
                    oldest.shutdown(socket.SHUT_RDWR)
                # The slot is taken once that thread has ended: never more
                # threads than the bound.
                if not self._slots.wait_for(lambda: self._open < self._max, self.timeout_s):
                    return False
            self._open += 1
            self._waiting[request] = None
            return True

    def _release(self, request: socket.socket) -> None:
        with self._slots:
            self._waiting.pop(request, None)
            self._open -= 1
            self._slots.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went silent or away is no error of the server's.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def metrics_only(app: App) -> App:
    """``app`` (prometheus-client's, which answers any path, and HEAD with 405)
    at ``PATH``, for GET and HEAD; 404 elsewhere, 405 for other methods."""

    def routed(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method == "GET" and environ.get("PATH_INFO") == PATH:
            return app(environ, start_response)
        if environ.get("PATH_INFO") != PATH:
            status, headers = "404 Not Found", [("Content-Type", "text/plain; charset=utf-8")]
            body = f"# HTTP 404: the metrics are at {PATH}\n".encode()
        elif method == "HEAD":
            answer: list[tuple[str, list[tuple[str, str]]]] = []
            get = {**environ, "REQUEST_METHOD": "GET"}
            body = b"".join(app(get, lambda s, h: answer.append((s, h))))
            status, headers = answer[0]
        elif method == "OPTIONS":
            status, headers, body = "200 OK", [("Allow", ALLOW)], b""
        else:
            status, headers = "405 Method Not Allowed", [("Allow", ALLOW)]
            body = f"# HTTP 405: {method}; use {ALLOW}\n".encode()
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers = [*headers, ("Content-Length", str(len(body)))]
        start_response(status, headers)
        # HEAD: the headers a GET would have, its length among them, no body.
        return [] if method == "HEAD" else [body]

    return routed


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = TIMEOUT,
) -> tuple[MetricsServer, threading.Thread]:
    """Serve ``registry`` on ``host:port`` from a daemon thread."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    httpd = MetricsServer((host, port), family, max_connections, timeout)
    httpd.set_app(metrics_only(make_wsgi_app(registry)))
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    return httpd, thread
