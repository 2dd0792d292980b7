"""Where a connect's CPU goes inside the transport, measured in place: thread CPU
time around each step of ``loadgen.transport.client`` and each call into Python's
``ssl``, during connects against mosquitto as `bench.connect` makes them.

    .venv/bin/python -m bench.connect_profile [--devices 1500] [--repeats 3]

In place matters: between handshakes OpenSSL pushes the interpreter's code and
data out of the CPU's caches, so a step costs several times what a loop of it
costs alone (decoding a CONNACK: about 7 µs alone, 30 µs in place before the
property cache). Each timed step adds about 1 µs of its own (two clock reads);
nested steps are inside their parents' figures.
"""

from __future__ import annotations

import argparse
import collections
import ssl
import time
from collections.abc import Callable
from typing import Any

import uvloop

from bench.connect import _native, _sessions, mosquitto_bed
from loadgen import mqtt
from loadgen.transport import client

_STEPS: list[tuple[Any, str, str]] = [
    (client._Channel, "start", "start: encode CONNECT, register, TCP, ClientHello"),
    (client._Channel, "_readable", "each readable callback (handshake, reads, CONNACK)"),
    (client._Channel, "_flush", "sending (socket send calls)"),
    (client._Channel, "_received", "MQTT: CONNACK decoded and dispatched"),
    (client._Channel, "close", "close (unregister, socket close)"),
    (mqtt.Connection, "send", "MQTT: CONNECT encoded"),
    (mqtt.Connection, "receive", "MQTT: CONNACK decoded"),
    (ssl.SSLObject, "do_handshake", "ssl: do_handshake"),
    (ssl.SSLObject, "read", "ssl: read (session tickets, CONNACK)"),
    (ssl.SSLObject, "write", "ssl: write (CONNECT)"),
]


def _timed(
    spent: collections.Counter[str], label: str, f: Callable[..., Any]
) -> Callable[..., Any]:
    clock = time.thread_time_ns

    def step(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return f(*args, **kwargs)
        finally:
            spent[label] += clock() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spent: collections.Counter[str] = collections.Counter()
    for owner, name, label in _STEPS:
        setattr(owner, name, _timed(spent, label, getattr(owner, name)))
    runs: list[tuple[float, dict[str, float]]] = []
    with mosquitto_bed(args.devices) as bed:
        for _ in range(args.repeats):
            spent.clear()
            sessions = _sessions(bed.fleet, bed.devices, bed.server_ca)
            _, cpu = uvloop.run(_native(bed.broker.tls_port, bed.devices, sessions, 16, False))
            n = len(bed.devices)
            runs.append((cpu, {label: spent[label] / n / 1e3 for _, _, label in _STEPS}))
    print(f"{args.devices} devices, 16 in flight, mosquitto on loopback; µs per connect")
    print()
    print("| step | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
    print("| --- |" + " ---: |" * len(runs))
    print("| whole connect (process CPU) | " + " | ".join(f"{c * 1e6:.0f}" for c, _ in runs) + " |")
    for _, _, label in _STEPS:
        print(f"| {label} | " + " | ".join(f"{steps[label]:.1f}" for _, steps in runs) + " |")


if __name__ == "__main__":
    main()
