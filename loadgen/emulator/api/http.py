"""A small HTTP/1.1 server for the control plane, in the emulator's own asyncio
loop (h11 parses; this module does the I/O and the bounds).

Keep-alive, since botocore pools its connections. Bounded, so that whatever a
client sends the emulator stays up and everyone else goes on being served: the
request line and headers, their count, the body, the time a request may take to
arrive (a slowloris is cut), the time an idle connection is kept, how many
connections are open at once, and what is queued to a client that does not read.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import h11


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024  # request line and headers
    max_headers: int = 100
    max_body: int = 1024 * 1024  # AWS IoT's largest requests are tens of KiB
    request_timeout: float = 10.0  # from a request's first byte to its last
    idle_timeout: float = 60.0  # between requests on a kept-alive connection
    max_connections: int = 256
    write_buffer: int = 256 * 1024  # queued to a client before its requests stop being read


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query string, as sent (still percent-encoded)
    headers: dict[str, str]  # names in lower case; repeated ones joined by ","
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Handler = Callable[[Request], Response]
# After a request is handled: None, or what to wait for before answering it
# (the emulator's serving processes trusting a CA the call registered).
Settle = Callable[[], Awaitable[None] | None]
# How long an answer may wait for its settling.
SETTLE_TIMEOUT = 15.0


def error_response(status: int, code: str, message: str) -> Response:
    """A REST-JSON error, for what is refused before any service reads it."""
    body = json.dumps({"message": message}).encode()
    return Response(status, {"x-amzn-ErrorType": code, "content-type": "application/json"}, body)


class HttpServer:
    """The connections of one listening socket, and what they share."""

    def __init__(
        self, handler: Handler, limits: HttpLimits | None = None, *, settle: Settle | None = None
    ) -> None:
        self.handler = handler
        self.settle = settle
        self.limits = limits or HttpLimits()
        self.connections: set[_HttpConnection] = set()
        self.refused = 0  # connections closed at once: over max_connections

    async def start(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _HttpConnection(self), host, port, backlog=256)


class _HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.in_request = False  # a request's first byte has come, its last not yet
        # An answer waiting for its settling: nothing more is read or parsed.
        self.settling: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.server.connections) >= self.limits.max_connections:
            self.server.refused += 1
            self.transport.abort()
            return
        self.server.connections.add(self)
        self.transport.set_write_buffer_limits(high=self.limits.write_buffer)
        self._arm(self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        # Its answers are not read: read no more of its questions either.
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _arm(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        # Idle past the keep-alive, or a request that takes too long to arrive.
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.in_request:
            self.in_request = True
            self._arm(self.limits.request_timeout)
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._process()
        return None

    def _process(self) -> None:
        while (
            self.transport is not None and not self.transport.is_closing() and self.settling is None
        ):
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self._fail(status, "InvalidRequestException", f"malformed HTTP request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # (h11 bounds what it buffers; a whole block arrives in one read.)
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if (
                    len(event.headers) > self.limits.max_headers
                    or size > self.limits.max_header_bytes
                ):
                    self._fail(431, "InvalidRequestException", "request headers too large")
                    return
                length = _content_length(event)
                if length is not None and length > self.limits.max_body:
                    self._fail(413, "InvalidRequestException", "request body too large")
                    return
                self.request = event
                self.body.clear()
                if self.conn.they_are_waiting_for_100_continue:
                    # (A client may ask before a large body; botocore does not.)
                    self.transport.write(
                        self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                        or b""
                    )
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.limits.max_body:
                    self._fail(413, "InvalidRequestException", "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _respond(self) -> None:
        assert self.request is not None and self.transport is not None
        headers: dict[str, str] = {}
        for name, value in self.request.headers:
            key = name.decode("latin-1")  # h11 gives names lower-cased
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        request = Request(
            self.request.method.decode("ascii", "replace"),
            self.request.target.decode("latin-1"),
            headers,
            bytes(self.body),
        )
        self.request = None
        self.body.clear()
        try:
            response = self.server.handler(request)
        except Exception as exc:  # a bug: this request fails, the server goes on
            traceback.print_exception(exc, file=sys.stderr)
            response = error_response(500, "InternalFailureException", "the emulator failed")
        if request.method == "HEAD":
            response = Response(response.status, response.headers)
        pending = self.server.settle() if self.server.settle is not None else None
        if pending is None:
            self._finish(response)
            return
        self.transport.pause_reading()
        self.settling = self.loop.create_task(self._settle(pending, response))

    async def _settle(self, pending: Awaitable[None], response: Response) -> None:
        try:
            await asyncio.wait_for(pending, SETTLE_TIMEOUT)
        except Exception as exc:  # answered anyway: what the call did is done
            print(f"loadgen emulator: not settled: {exc!r}", file=sys.stderr, flush=True)
        self.settling = None
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.resume_reading()
        self._finish(response)
        self._process()  # a request pipelined behind it

    def _finish(self, response: Response) -> None:
        assert self.transport is not None
        self._send(response)
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        try:
            self.conn.start_next_cycle()
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.in_request = False
        self._arm(self.limits.idle_timeout)

    def _send(self, response: Response) -> None:
        assert self.transport is not None
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        headers += [
            ("content-length", str(len(response.body))),
            ("date", email.utils.formatdate(usegmt=True)),
        ]
        try:
            data = self.conn.send(h11.Response(status_code=response.status, headers=headers))
            data = (data or b"") + (self.conn.send(h11.Data(data=response.body)) or b"")
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.transport.abort()
            return
        self.transport.write(data)

    def _fail(self, status: int, code: str, message: str) -> None:
        """Answer what cannot be served, then close: the rest of what it sent
        cannot be trusted to be where the next request starts."""
        assert self.transport is not None
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            response = error_response(status, code, message)
            response.headers["connection"] = "close"
            self._send(response)
        self.transport.close()


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
