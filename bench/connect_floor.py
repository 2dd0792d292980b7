"""How far the transport's connect path is from the least Python a connect can
cost on uvloop: `openssl s_time -new`, the native transport, and a bare callback
state machine (no MQTT codec, no timestamps, no error handling; CONNECT encoded
ahead, CONNACK recognised by its first byte), with and without a task per device,
at each of several counts of connects in flight.

    .venv/bin/python -m bench.connect_floor [--devices 1500] [--rounds 8]
        [--in-flight 1,16,64,256]

Each round measures `s_time`, then every variant in a rotating order; ratios are
medians of per-round ratios. The bare machine is a yardstick, not a client: it
tells what any pure-Python connect path on this event loop would cost.

The count in flight matters: `s_time` is serial, and a client that has one
connect at a time wakes up for each step of it alone, with the interpreter cold
in the CPU's caches; with more in flight one wake-up serves several connects.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import time
from collections.abc import Callable

import uvloop

from bench.connect import _native, _sessions, mosquitto_bed, s_time
from loadgen import mqtt
from loadgen.certs.store import Device
from loadgen.transport.tls import TlsSession


class _Bare:
    """TCP, TLS, CONNECT and CONNACK on the loop's callbacks, and nothing else."""

    __slots__ = ("connect_bytes", "done", "fd", "handshaken", "loop", "sock", "tls")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tls: TlsSession,
        connect_bytes: bytes,
        done: Callable[[], None],
    ) -> None:
        self.loop, self.tls, self.connect_bytes, self.done = loop, tls, connect_bytes, done
        self.handshaken = False

    def start(self, address: tuple[str, int]) -> None:
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, self._readable)
        sock.connect_ex(address)
        try:
            sock.getpeername()
        except OSError:
            self.loop.add_writer(self.fd, self._writable)
            return
        self._hello()

    def _writable(self) -> None:
        self.loop.remove_writer(self.fd)
        self._hello()

    def _hello(self) -> None:
        try:
            self.tls.sslobj.do_handshake()
        except ssl.SSLWantReadError:  # always: the ClientHello is out, the answer awaited
            self.sock.send(self.tls.outgoing.read())

    def _readable(self) -> None:
        tls = self.tls
        tls.incoming.write(self.sock.recv(65536))
        if not self.handshaken:
            try:
                tls.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                return
            self.handshaken = True
            tls.sslobj.write(self.connect_bytes)
            self.sock.send(tls.outgoing.read())
            return
        try:
            plain = tls.sslobj.read(65536)
        except ssl.SSLWantReadError:
            return
        if plain[:1] == b"\x20":
            self.loop.remove_reader(self.fd)
            self.sock.close()
            self.done()


def _connect_bytes(devices: list[Device]) -> list[bytes]:
    return [
        mqtt.Connection(mqtt.Role.CLIENT).send(mqtt.Connect(d.client_id, keepalive=60))
        for d in devices
    ]


async def _bare_callbacks(
    port: int, packets: list[bytes], sessions: list[TlsSession], in_flight: int
) -> float:
    """CPU seconds per connect, ``in_flight`` chains of callbacks, no task at all."""
    loop = asyncio.get_running_loop()
    pending = iter(zip(packets, sessions, strict=True))
    left = len(packets)
    finished = loop.create_future()

    def start_next() -> None:
        for packet, session in pending:
            _Bare(loop, session, packet, on_done).start(("127.0.0.1", port))
            return

    def on_done() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            finished.set_result(None)
        else:
            start_next()

    cpu = time.process_time()
    for _ in range(in_flight):
        start_next()
    await asyncio.wait_for(finished, 300)  # bounded: a lost connection must not hang the run
    return (time.process_time() - cpu) / len(packets)


async def _bare_tasks(
    port: int, packets: list[bytes], sessions: list[TlsSession], in_flight: int
) -> float:
    """CPU seconds per connect, a task with a timeout per device behind a
    semaphore, as `bench.connect` drives the transport."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(in_flight)

    async def one(packet: bytes, session: TlsSession) -> None:
        async with slots, asyncio.timeout(30):
            done: asyncio.Future[None] = loop.create_future()
            _Bare(loop, session, packet, lambda: done.set_result(None)).start(("127.0.0.1", port))
            await done

    cpu = time.process_time()
    await asyncio.gather(*(one(p, s) for p, s in zip(packets, sessions, strict=True)))
    return (time.process_time() - cpu) / len(packets)


_KINDS = (
    "transport (bench.connect's harness)",
    "bare machine, a task per device",
    "bare machine, callbacks only",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--s-time-seconds", type=int, default=3)
    parser.add_argument(
        "--in-flight",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 16, 64, 256],
        help="connects in flight, comma-separated (default 1,16,64,256)",
    )
    args = parser.parse_args()
    with mosquitto_bed(args.devices) as bed:
        fleet, devices, server_ca, port = bed.fleet, bed.devices, bed.server_ca, bed.broker.tls_port
        packets = _connect_bytes(devices)

        def sessions() -> list[TlsSession]:
            return _sessions(fleet, devices, server_ca)

        def variant(kind: str, c: int) -> Callable[[], float]:
            if kind == _KINDS[0]:
                return lambda: uvloop.run(_native(port, devices, sessions(), c, False))[1]
            bare = _bare_tasks if kind == _KINDS[1] else _bare_callbacks
            return lambda: uvloop.run(bare(port, packets, sessions(), c))

        variants = {(kind, c): variant(kind, c) for c in args.in_flight for kind in _KINDS}
        keys = list(variants)
        runs: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
        base: list[float] = []
        for i in range(args.rounds):
            base.append(s_time(bed.broker, fleet, devices[0], args.s_time_seconds))
            for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                runs[key].append(variants[key]())
    _print(base, runs, args)


def _print(
    base: list[float], runs: dict[tuple[str, int], list[float]], args: argparse.Namespace
) -> None:
    def ratios(values: list[float], against: list[float]) -> list[float]:
        return [v / b for v, b in zip(values, against, strict=True)]

    print(
        f"{args.devices} devices, mosquitto on loopback, TLS 1.3, EC P-256; "
        f"{args.rounds} rounds; ratios are medians of per-round ratios"
    )
    print()
    print(
        "| client | in flight | CPU per connect (median) "
        "| ratio to `s_time -new` per round | ratio |"
    )
    print("| --- | ---: | ---: | --- | ---: |")
    print(
        f"| `openssl s_time -new` | 1 (serial) | {statistics.median(base) * 1e3:.3f} ms | | 1.00x |"
    )
    for (kind, c), values in runs.items():
        each = ratios(values, base)
        print(
            f"| {kind} | {c} | {statistics.median(values) * 1e3:.3f} ms "
            f"| {', '.join(f'{r:.2f}' for r in each)} | {statistics.median(each):.2f}x |"
        )
    print()
    print("| the transport against | in flight | per round | ratio |")
    print("| --- | ---: | --- | ---: |")
    for c in args.in_flight:
        transport = runs[(_KINDS[0], c)]
        for kind in _KINDS[1:]:
            each = ratios(transport, runs[(kind, c)])
            print(
                f"| {kind} | {c} | {', '.join(f'{r:.2f}' for r in each)} "
                f"| {statistics.median(each):.2f}x |"
            )


if __name__ == "__main__":
    main()
