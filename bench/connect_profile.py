"""Where a connect's CPU goes inside the transport, measured in place: thread CPU
time around each step of ``loadgen.transport.client`` and each call into Python's
``ssl``, during connects against mosquitto as `bench.connect` makes them.

    .venv/bin/python -m bench.connect_profile [--devices 1500] [--repeats 3]
    .venv/bin/python -m bench.connect_profile --bytecodes [--devices 300]
    .venv/bin/python -m bench.connect_profile --whole-life [--devices 300]
    .venv/bin/python -m bench.connect_profile --in-run [--devices 3000] [--rate 125] [--repeats 3]

``--bytecodes`` counts instead the Python bytecodes and calls each connect runs,
for the transport and for `bench.connect_floor`'s bare machine: a figure this
machine's noise cannot move, to check a change to the connect path by.
``--whole-life`` counts them over a device's whole life in a run: one
`loadgen run` worker (``loadgen.load.runner.Worker``) in this process prepares,
connects, disconnects and records every device of the fleet, at ``--rate``
devices a second (40: the tracer slows the interpreter about tenfold; a device
that timed out and retried runs its connect twice, so a run should show as many
attempts as devices), progress messages included. ``--in-run`` times instead
the steps of that whole life (thread CPU around each, as above) in the same
one-worker run, at a rate a worker of a two-worker run keeps (125: 250/s in all):
preparing, starting a connect, the event loop's readable callbacks, DISCONNECT
and close, recording, and the rest (the event loop, the tasks, the schedule).

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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from bench.connect import _native, _sessions, mosquitto_bed, scenario_file
from bench.connect_floor import _bare_tasks, _connect_bytes
from loadgen import mqtt
from loadgen.load.runner import Worker
from loadgen.metrics.stats import RunStats
from loadgen.scenario.planning import build_plan, endpoint_of
from loadgen.scenario.schema import load_scenario
from loadgen.transport import client
from loadgen.transport.tls import TlsSession

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


# A run's whole life, step by step (--in-run): where each is entered.
_RUN_STEPS: list[tuple[Any, str, str]] = [
    (Worker, "prepare", "preparing a device (files, certificate, key, SSLObject)"),
    (client._Channel, "start", "start: encode CONNECT, register, TCP, ClientHello"),
    (client._Channel, "_readable", "readable callbacks (handshake, tickets, CONNACK)"),
    (client.MqttClient, "disconnect", "DISCONNECT and close"),
    (RunStats, "started", "recording a start"),
    (RunStats, "add", "recording a result"),
]
# Inside start and the readable callbacks (so not in "the rest" below): OpenSSL's
# part of the connect. The rest of those two is what a connect path off the
# interpreter could save.
_RUN_INNER_STEPS: list[tuple[Any, str, str]] = [
    (ssl.SSLObject, "do_handshake", "  of which ssl: do_handshake"),
    (ssl.SSLObject, "read", "  of which ssl: read (session tickets, CONNACK)"),
    (ssl.SSLObject, "write", "  of which ssl: write (CONNECT, DISCONNECT)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes instead")
    parser.add_argument(
        "--whole-life", action="store_true", help="count bytecodes over a run's whole device life"
    )
    parser.add_argument(
        "--in-run", action="store_true", help="time the steps of a run's whole life instead"
    )
    parser.add_argument(
        "--rate", type=float, default=None, help="devices/s (--whole-life: 40, --in-run: 125)"
    )
    args = parser.parse_args()
    if args.in_run:
        _time_whole_life(args.devices, args.rate or 125.0, args.repeats)
        return
    if args.bytecodes:
        _count_bytecodes(args.devices)
        return
    if args.whole_life:
        _count_whole_life(args.devices, args.rate or 40.0)
        return
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
    _print_steps("whole connect (process CPU)", [(c * 1e6, steps) for c, steps in runs], _STEPS)


def _print_steps(
    whole: str, runs: list[tuple[float, dict[str, float]]], steps: list[tuple[Any, str, str]]
) -> None:
    """A table of µs: the whole (process CPU) and each step's, a column a run."""
    print()
    print("| step | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
    print("| --- |" + " ---: |" * len(runs))
    print(f"| {whole} | " + " | ".join(f"{c:.0f}" for c, _ in runs) + " |")
    for _, _, label in steps:
        print(f"| {label} | " + " | ".join(f"{each[label]:.1f}" for _, each in runs) + " |")


def _tracer(
    ops: collections.Counter[str], calls: collections.Counter[str]
) -> Callable[[FrameType, str, object], Any]:
    def trace(frame: FrameType, event: str, _arg: object) -> Any:
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
        if event == "call":
            frame.f_trace_opcodes = True
            calls[where] += 1
        elif event == "opcode":
            ops[where] += 1
        return trace

    return trace


def _time_whole_life(count: int, rate: float, repeats: int) -> None:
    spent: collections.Counter[str] = collections.Counter()
    timed = _RUN_STEPS + _RUN_INNER_STEPS
    for owner, name, label in timed:
        setattr(owner, name, _timed(spent, label, getattr(owner, name)))
    runs: list[tuple[float, dict[str, float]]] = []
    with mosquitto_bed(count) as bed:
        scenario = load_scenario(scenario_file(bed, rate=rate))
        plan = build_plan(scenario, endpoint=endpoint_of(scenario, None))

        async def one_worker() -> float:
            worker = Worker(plan, 0, lambda message: None)

            def start_at() -> float:
                # From the schedule's start on, as the report's cpu_s: the first
                # window is prepared before it, and not counted.
                spent.clear()
                return time.monotonic()

            stats = await worker.run(start_at)
            assert stats.outcomes["connected"] == count, stats.outcomes
            return stats.cpu_us / 1e6

        for _ in range(repeats):
            cpu = uvloop.run(one_worker())
            steps = {label: spent[label] / count / 1e3 for _, _, label in timed}
            runs.append((cpu / count * 1e6, steps))
    print(
        f"{count} devices at {rate:g}/s, one worker in this process, mosquitto on loopback; "
        "CPU µs per device from the schedule's start (the first window, prepared before "
        "it, left out)"
    )
    _print_steps("whole life (process CPU)", runs, timed)
    rest = [c - sum(steps[label] for _, _, label in _RUN_STEPS) for c, steps in runs]
    print("| the rest: event loop, tasks, schedule | " + " | ".join(f"{r:.0f}" for r in rest), "|")


def _count_whole_life(count: int, rate: float) -> None:
    ops: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    with mosquitto_bed(count) as bed:
        scenario = load_scenario(scenario_file(bed, rate=rate))
        plan = build_plan(scenario, endpoint=endpoint_of(scenario, None))

        async def one_worker() -> RunStats:
            worker = Worker(plan, 0, lambda message: None)
            return await worker.run(time.monotonic)

        sys.settrace(_tracer(ops, calls))
        try:
            stats = uvloop.run(one_worker())
        finally:
            sys.settrace(None)
    connected = stats.outcomes["connected"]
    print(
        f"{count} devices ({connected} connected, {stats.attempts} attempts), one worker: "
        f"{sum(ops.values()) / count:,.0f} bytecodes and {sum(calls.values()) / count:.0f} "
        "Python calls per device, whole life"
    )
    by_file: collections.Counter[str] = collections.Counter()
    for where, n in ops.items():
        by_file[where.partition(":")[0]] += n
    print("  by file: " + ", ".join(f"{f} {n / count:.0f}" for f, n in by_file.most_common(12)))
    for where, n in ops.most_common(30):
        print(f"    {n / count:7.1f}  {calls[where] / count:5.2f} calls  {where}")


def _count_bytecodes(count: int) -> None:
    ops: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    trace = _tracer(ops, calls)

    with mosquitto_bed(count) as bed:
        port = bed.broker.tls_port
        packets = _connect_bytes(bed.devices)
        clients: dict[str, Callable[[list[TlsSession]], object]] = {
            "transport (bench.connect's harness)": lambda s: uvloop.run(
                _native(port, bed.devices, s, 16, False)
            ),
            "bare machine, a task per device": lambda s: uvloop.run(
                _bare_tasks(port, packets, s, 16)
            ),
        }
        for name, run in clients.items():
            sessions = _sessions(bed.fleet, bed.devices, bed.server_ca)
            ops.clear()
            calls.clear()
            sys.settrace(trace)
            try:
                run(sessions)
            finally:
                sys.settrace(None)
            print(
                f"{name}: {sum(ops.values()) / count:,.0f} bytecodes and "
                f"{sum(calls.values()) / count:.0f} Python calls per connect"
            )
            for where, n in ops.most_common(12):
                print(f"    {n / count:7.1f}  {calls[where] / count:5.2f} calls  {where}")


if __name__ == "__main__":
    main()
