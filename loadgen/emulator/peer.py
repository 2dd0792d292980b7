"""One end of the account process's socketpair to a serving process, on
asyncio: `rpc`'s frames, requests answered by handlers, and calls whose answers
go to a callback (no task, no future per call: a connect costs two calls).

Writes made during one turn of the loop leave in one send: under a connect
storm, many sessions' questions share a system call.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, cast

from loadgen.emulator import rpc

Handler = Callable[..., Any]
Answer = Callable[[Any], None]


class PeerLost(ConnectionError):
    """The other end is gone before it answered."""


class PeerStalled(PeerLost):
    """This end gave up on the other, alive but not reading or not answering:
    its link is cut as if it were gone (the message says why)."""


class Peer(asyncio.Protocol):
    def __init__(
        self,
        handlers: dict[str, Handler],
        on_lost: Callable[[Exception | None], None],
        max_buffer: int | None = None,
    ) -> None:
        self.handlers = handlers
        self.on_lost = on_lost
        # Bytes written and not yet taken by the other end past which it is
        # taken for stalled (None: no bound).
        self.max_buffer = max_buffer
        self.failure: PeerStalled | None = None
        self.transport: asyncio.Transport | None = None
        self._decoder = rpc.Decoder()
        self._next_id = 1
        self._pending: dict[int, Answer] = {}
        self._out: list[bytes] = []
        self._out_bytes = 0  # what _out holds
        self.lost = False
        self._tasks: set[asyncio.Future[None]] = set()

    @classmethod
    async def on_socket(
        cls,
        sock: Any,
        handlers: dict[str, Handler],
        on_lost: Callable[[Exception | None], None],
        max_buffer: int | None = None,
    ) -> Peer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_unix_connection(
            lambda: cls(handlers, on_lost, max_buffer), sock=sock
        )
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer(self.failure or PeerLost("the other process is gone"))
        self.on_lost(self.failure or exc)

    def fail(self, failure: PeerStalled) -> None:
        """Give up on the other end: the link is cut, and ``on_lost`` hears
        ``failure`` as the reason."""
        if self.lost or self.failure is not None:
            return
        self.failure = failure
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except rpc.FrameError as exc:
            print(f"loadgen emulator: a broken RPC stream ({exc})", file=sys.stderr, flush=True)
            assert self.transport is not None
            self.transport.abort()
            return
        for message in messages:
            ident = message[0]
            if ident < 0:
                answer = self._pending.pop(-ident, None)
                if answer is not None:
                    self._deliver(answer, message[1])
                continue
            result = self._handle(message[1], message[2])
            if inspect.isawaitable(result):
                # A handler that has to wait (start serving, stop): answered when done.
                task = asyncio.ensure_future(self._answer_later(ident, result))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif ident > 0:
                self._send((-ident, result))

    def _deliver(self, answer: Answer, result: Any) -> None:
        # A bug in one answer's callback (one client's session) fails that
        # callback alone: raised out of here, it would end the link between the
        # processes, and the serving process with it.
        try:
            answer(result)
        except Exception as exc:
            traceback.print_exception(exc, file=sys.stderr)

    def _handle(self, method: str, args: tuple[Any, ...]) -> Any:
        try:
            return self.handlers[method](*args)
        except Exception as exc:  # a bug: this call fails, the process goes on
            traceback.print_exception(exc, file=sys.stderr)
            return None

    async def _answer_later(self, ident: int, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            traceback.print_exception(exc, file=sys.stderr)
            result = None
        if ident > 0 and not self.lost:
            self._send((-ident, result))

    def call(self, method: str, args: tuple[Any, ...], answer: Answer) -> None:
        """Ask; ``answer`` gets the result, or a `PeerLost` if the other end goes."""
        if self.lost:
            answer(PeerLost("the other process is gone"))
            return
        ident = self._next_id
        self._next_id += 1
        self._pending[ident] = answer
        self._send((ident, method, args))

    def notify(self, method: str, args: tuple[Any, ...]) -> None:
        if not self.lost:
            self._send((0, method, args))

    async def ask(self, method: str, *args: Any) -> Any:
        """`call`, awaited; raises `PeerLost`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answer(result: Any) -> None:
            if not future.done():
                if isinstance(result, PeerLost):
                    future.set_exception(result)
                else:
                    future.set_result(result)

        self.call(method, args, answer)
        return await future

    def backlog(self) -> int:
        """Bytes sent to the other end that it has not taken yet."""
        transport = self.transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        return queued + self._out_bytes

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        frame = rpc.encode(message)
        self._out.append(frame)
        self._out_bytes += len(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._out_bytes = 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(b"".join(out))
        # What the other end does not read stays here, in memory, without end:
        # past the bound it is stalled (stopped, hung, or too slow to keep up).
        queued = transport.get_write_buffer_size()
        if self.max_buffer is not None and queued > self.max_buffer:
            self.fail(PeerStalled(f"left {queued:,} bytes unread (the bound: {self.max_buffer:,})"))

    def close(self) -> None:
        if self.transport is not None:
            self._flush()
            self.transport.close()
