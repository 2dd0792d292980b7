"""The control plane's HTTP side in a thread of the test process, on an asyncio
loop of its own, in front of any handler; and clients for it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import uvloop
from botocore.config import Config

from loadgen.emulator.api.app import Call, ControlPlaneApi
from loadgen.emulator.api.http import HttpLimits, HttpServer
from loadgen.emulator.api.throttle import ApiThrottle


@dataclass
class RunningApi:
    url: str
    port: int
    api: ControlPlaneApi
    http: HttpServer
    loop: asyncio.AbstractEventLoop

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the server's loop (its state is the loop's)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)


@contextmanager
def running_api(
    call: Call, *, rates: dict[str, float | None] | None = None, limits: HttpLimits | None = None
) -> Iterator[RunningApi]:
    loop = uvloop.new_event_loop()  # the emulator's loop
    api = ControlPlaneApi(call, ApiThrottle({"all": None} if rates is None else rates))
    http = HttpServer(api, limits)
    server = loop.run_until_complete(http.start("127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield RunningApi(f"http://127.0.0.1:{port}", port, api, http, loop)
    finally:

        async def close() -> None:
            server.close()
            for connection in list(http.connections):
                if connection.transport is not None:
                    connection.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def client(
    service: str, url: str, *, retries: int = 1, region: str = "us-east-1", **config: Any
) -> Any:
    """A boto3 client of ``service`` for the emulator, with made-up credentials;
    ``retries`` attempts in all (1: none)."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=region,
        aws_access_key_id="AKIDEMULATOR",
        aws_secret_access_key="emulator-secret",
        config=Config(retries={"mode": "standard", "total_max_attempts": retries}, **config),
    )


def raw_http(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """What the server answers ``data`` with, until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        except ConnectionResetError:  # closed at once, unread: as good as closed
            pass
        return b"".join(chunks)
