"""The connect path against mosquitto: client CPU per mutual-TLS connect and
CONNACK next to `openssl s_time -new`, a device's whole life in `loadgen run`
next to it, the connect rate through a 50 ms round trip next to none (native
transport and aiomqtt), and memory per idle device.

    .venv/bin/python -m bench.connect [--devices 1500] [--repeats 3]

Everything is measured in one run, side by side; figures are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import re
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import uvloop
import yaml

from bench import trees
from loadgen import mqtt
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.store import Device, FleetStore
from loadgen.load.plan import AUTO
from loadgen.run import planned_workers, workers_for
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import load_scenario
from loadgen.transport.client import Target, connect
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import ClientTls, TlsSession, device_context
from tests.brokers import Mosquitto, free_port, start_mosquitto, wait_for_port

RTT_DELAY = 0.025  # each way: 50 ms round trip


def _contexts(fleet: FleetStore, devices: list[Device], ca: Path) -> list[ssl.SSLContext]:
    """A context per device: what aiomqtt needs."""
    return [device_context(fleet.path / d.cert, fleet.path / d.key, ca_file=ca) for d in devices]


def _sessions(fleet: FleetStore, devices: list[Device], ca: Path) -> list[TlsSession]:
    """What the native path prepares ahead: one shared context, a session each."""
    shared = ClientTls(ca_file=ca)
    return [shared.session(fleet.path / d.cert, fleet.path / d.key, "localhost") for d in devices]


async def _native(
    port: int, devices: list[Device], sessions: list[TlsSession], c: int, disconnect: bool = True
):
    """(connects/s, CPU seconds per connect) for connect + CONNACK, then DISCONNECT
    and close, or (``disconnect=False``) only close, as `s_time` does."""
    target = Target("127.0.0.1", port, "localhost")
    slots = asyncio.Semaphore(c)

    async def one(device: Device, session: TlsSession) -> None:
        async with slots, asyncio.timeout(30):
            packet = mqtt.Connect(device.client_id, keepalive=60)
            client = await connect(target, session, packet, AttemptTimes(time.monotonic()))
            if disconnect:
                client.disconnect()
            else:
                client.abort()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(d, x) for d, x in zip(devices, sessions, strict=True)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(devices) / wall, cpu / len(devices)


async def _aiomqtt(port: int, devices: list[Device], contexts: list[ssl.SSLContext], c: int):
    slots = asyncio.Semaphore(c)

    async def one(device: Device, context: ssl.SSLContext) -> None:
        async with slots, asyncio.timeout(60):
            client = aiomqtt.Client(
                "127.0.0.1",
                port,
                identifier=device.client_id,
                tls_context=context,
                protocol=aiomqtt.ProtocolVersion.V5,
            )
            async with client:
                pass

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(d, x) for d, x in zip(devices, contexts, strict=True)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(devices) / wall, cpu / len(devices)


def s_time(
    broker: Mosquitto, fleet: FleetStore, device: Device, seconds: int, *, www: bool = False
) -> float:
    """CPU seconds (user + system) per full handshake of `openssl s_time -new`.

    With ``www``, `s_time` also writes a request after each handshake and reads
    until the server closes (mosquitto closes on a request that is not MQTT): it
    then reads the server's two TLS 1.3 session tickets, as an MQTT client must
    before its CONNACK, and which plain `s_time` never reads."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "openssl",
            "s_time",
            "-connect",
            f"127.0.0.1:{broker.tls_port}",
            "-new",
            "-cert",
            str(fleet.path / device.cert),
            "-key",
            str(fleet.path / device.key),
            "-CAfile",
            str(broker.server_ca.directory / "ca.pem"),
            "-time",
            str(seconds),
            *(["-www", "/"] if www else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"(\d+) connections in [\d.]+s", out)
    if not match:
        raise SystemExit(f"cannot parse s_time output:\n{out}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / int(match.group(1))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


async def _memory(port: int, devices: list[Device], fleet: FleetStore, ca: Path):
    """(KiB per device for its prepared TLS session, KiB per idle TLS+MQTT
    connection)."""
    gc.collect()
    base = _rss()
    sessions = _sessions(fleet, devices, ca)
    gc.collect()
    with_contexts = _rss()
    target = Target("127.0.0.1", port, "localhost")
    slots = asyncio.Semaphore(200)
    clients = []

    async def one(device: Device, session: TlsSession) -> None:
        async with slots, asyncio.timeout(30):
            packet = mqtt.Connect(device.client_id, keepalive=600)
            clients.append(await connect(target, session, packet, AttemptTimes(0.0)))

    await asyncio.gather(*(one(d, x) for d, x in zip(devices, sessions, strict=True)))
    await asyncio.sleep(1)
    gc.collect()
    connected = _rss()
    for client in clients:
        client.disconnect()
    n = len(devices)
    return (with_contexts - base) / n / 1024, (connected - with_contexts) / n / 1024


def _raise_fd_limit() -> None:
    """Room for every device of a benchmark's fleet connected at once."""
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (20000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


def _memory_in_child(port: int, fleet_path: Path, ca: Path, count: int) -> tuple[float, float]:
    _raise_fd_limit()
    fleet = FleetStore(fleet_path)
    devices = list(fleet.devices())[:count]
    return uvloop.run(_memory(port, devices, fleet, ca))


def _proxy(upstream: int, delay: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.delay_proxy",
            "--listen",
            str(port),
            "--upstream",
            str(upstream),
            "--delay",
            str(delay),
            "--seconds",
            "900",
        ],
    )
    wait_for_port(port, process=process)
    return process, port


def _median(runs: list[float]) -> float:
    return statistics.median(runs)


@dataclass
class Bed:
    """A fleet minted to tmpfs and mosquitto trusting its CA, for one benchmark."""

    fleet: FleetStore
    devices: list[Device]
    broker: Mosquitto
    server_ca: Path  # what the devices trust for mosquitto's certificate
    ca: Path  # the fleet's CA folder
    root: Path  # the benchmark's scratch folder (tmpfs)


@contextlib.contextmanager
def mosquitto_bed(count: int) -> Iterator[Bed]:
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        mint(MintRequest(root / "fleet", ca.directory, count, workers=2))
        fleet = FleetStore(root / "fleet")
        broker = start_mosquitto(root / "broker", ca.directory / "ca.pem")
        try:
            yield Bed(
                fleet,
                list(fleet.devices()),
                broker,
                broker.server_ca.directory / "ca.pem",
                ca.directory,
                root,
            )
        finally:
            broker.stop()


def loadgen_run(
    bed: Bed,
    *,
    rate: float,
    workers: int | str | None,
    after_connect: list[dict[str, Any]] | None = None,
    name: str = "run",
    tree: Path | None = None,
) -> dict[str, Any]:
    """The report of one `loadgen run` of the bed's whole fleet against its
    mosquitto, at ``rate`` devices per second on ``workers`` workers (``auto``,
    or None for `loadgen run`'s default; its report's ``load.workers`` says how
    many ran): each device
    is prepared, connects (TCP, TLS, CONNECT, CONNACK), does ``after_connect``,
    disconnects and is recorded, as in any run. The report's
    ``generator.whole_cpu_ms_per_device`` is that whole life's CPU. With
    ``tree``, the `loadgen` of that checkout runs (a worktree of the code before
    a change, say), started from it so that nothing else is imported."""
    path = scenario_file(bed, rate=rate, after_connect=after_connect, name=name)
    report = bed.root / f"{name}.json"
    subprocess.run(
        [
            trees.python(tree),
            "-m",
            "loadgen",
            "run",
            str(path),
            *(["--workers", str(workers)] if workers is not None else []),
            "--report",
            str(report),
        ],
        check=True,
        capture_output=True,
        **trees.started_in(tree),
    )
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def worker_count(
    bed: Bed, *, rate: float, after_connect: list[dict[str, Any]], workers: int | str | None
) -> int:
    """How many workers `loadgen run --workers WORKERS` runs for the bed's fleet
    at ``rate``: ``auto`` as the rate needs, None as many as the cores."""
    if isinstance(workers, int):
        return workers
    path = scenario_file(bed, rate=rate, after_connect=after_connect, name="planned")
    plan = build_plan(load_scenario(path), endpoint=("127.0.0.1", bed.broker.tls_port))
    return workers_for(plan) if workers == AUTO else planned_workers(plan.max_in_flight)


def scenario_file(
    bed: Bed, *, rate: float, after_connect: list[dict[str, Any]] | None = None, name: str = "run"
) -> Path:
    """A scenario of the bed's whole fleet against its mosquitto at ``rate``."""
    scenario = {
        "name": f"bench-{name}",
        "endpoint": f"127.0.0.1:{bed.broker.tls_port}",
        "tls": {"ca_file": str(bed.server_ca), "server_name": "localhost"},
        "fleet": {"ca": str(bed.ca), "store": str(bed.fleet.path), "count": len(bed.devices)},
        "load": {
            "executor": "constant-arrival-rate",
            "rate": f"{rate}/s",
            "max_in_flight": 1000,
        },
        "after_connect": after_connect or [],
    }
    path = bed.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--aiomqtt-devices", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=200, help="for the rate runs")
    parser.add_argument(
        "--cpu-concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[16, 64, 256],
        help="connects in flight for the CPU runs, comma-separated (default 16,64,256)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s-time-seconds", type=int, default=5)
    parser.add_argument(
        "--run-rate", type=float, default=250.0, help="devices/s of the whole-life `loadgen run`"
    )
    parser.add_argument("--run-workers", type=int, default=2)
    args = parser.parse_args()
    with mosquitto_bed(args.devices) as bed:
        plain_proxy, plain_port = _proxy(bed.broker.tls_port, 0.0)
        slow_proxy, slow_port = _proxy(bed.broker.tls_port, RTT_DELAY)
        try:
            results = _run_all(args, bed, plain_port, slow_port)
        finally:
            for process in (plain_proxy, slow_proxy):
                process.terminate()
                process.wait()
    _print(results, args)


def _run_all(args, bed: Bed, plain_port: int, slow_port: int) -> dict[str, object]:
    broker, fleet, devices, server_ca = bed.broker, bed.fleet, bed.devices, bed.server_ca
    runs: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    few = devices[: args.aiomqtt_devices]
    for repeat in range(args.repeats):
        # CPU per connect, next to s_time (serial), at a few counts in flight: the
        # fewer in flight, the fewer connects share each wake-up of the event loop
        # (bench.connect_floor measures 1 in flight too).
        # s_time before and after the native runs, averaged: this machine's speed
        # drifts by several percent within a minute.
        first = args.cpu_concurrency[0]
        before = s_time(broker, fleet, devices[0], args.s_time_seconds)
        for c in args.cpu_concurrency:
            sessions = _sessions(fleet, devices, server_ca)
            _, cpu = uvloop.run(_native(broker.tls_port, devices, sessions, c, disconnect=False))
            add(f"native_cpu_{c}", cpu)
        sessions = _sessions(fleet, devices, server_ca)
        _, cpu = uvloop.run(_native(broker.tls_port, devices, sessions, first))
        add("native_disconnect_cpu", cpu)
        # A device's whole life in `loadgen run`: prepared, connected, disconnected
        # and recorded by the workers, inside the same s_time bracket.
        generator = loadgen_run(bed, rate=args.run_rate, workers=args.run_workers)["generator"]
        add("run_whole_cpu", generator["whole_cpu_ms_per_device"] / 1e3)
        add("run_cpu", generator["cpu_ms_per_device"] / 1e3)
        after = s_time(broker, fleet, devices[0], args.s_time_seconds)
        add("s_time_cpu", (before + after) / 2)
        add("s_time_drift", after / before)
        for c in args.cpu_concurrency:
            add(f"cpu_ratio_{c}", runs[f"native_cpu_{c}"][-1] / runs["s_time_cpu"][-1])
        add("disconnect_cpu_ratio", cpu / runs["s_time_cpu"][-1])
        add("whole_cpu_ratio", runs["run_whole_cpu"][-1] / runs["s_time_cpu"][-1])
        add("run_cpu_ratio", runs["run_cpu"][-1] / runs["s_time_cpu"][-1])
        add("s_time_www_cpu", s_time(broker, fleet, devices[0], args.s_time_seconds, www=True))
        add("www_cpu_ratio", runs[f"native_cpu_{first}"][-1] / runs["s_time_www_cpu"][-1])
        # The two proxies take turns going first: the machine drifts within a run.
        proxies = [("proxy0", plain_port), ("rtt50", slow_port)][:: 1 if repeat % 2 else -1]
        for name, port in (("direct", broker.tls_port), *proxies):
            sessions = _sessions(fleet, devices, server_ca)
            rate, cpu = uvloop.run(_native(port, devices, sessions, args.concurrency))
            add(f"native_{name}_rate", rate)
            add(f"native_{name}_cpu", cpu)
        add("rtt_ratio", runs["native_rtt50_rate"][-1] / runs["native_proxy0_rate"][-1])
        add("rtt_cpu_ratio", runs["native_rtt50_cpu"][-1] / runs["native_proxy0_cpu"][-1])
        few_contexts = _contexts(fleet, few, server_ca)
        for name, port in (("proxy0", plain_port), ("rtt50", slow_port)):
            rate, cpu = asyncio.run(_aiomqtt(port, few, few_contexts, args.concurrency))
            add(f"aiomqtt_{name}_rate", rate)
        add("aiomqtt_ratio", runs["aiomqtt_rtt50_rate"][-1] / runs["aiomqtt_proxy0_rate"][-1])
        del sessions, few_contexts
    # A fresh process: this one's allocator already holds what earlier runs freed.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        context_kib, connection_kib = pool.apply(
            _memory_in_child, (broker.tls_port, fleet.path, server_ca, args.devices)
        )
    return {"runs": runs, "context_kib": context_kib, "connection_kib": connection_kib}


def _print(results: dict[str, object], args: argparse.Namespace) -> None:
    runs: dict[str, list[float]] = results["runs"]  # type: ignore[assignment]
    m = {k: _median(v) for k, v in runs.items()}

    def each(key: str, scale: float = 1.0, form: str = "{:,.0f}") -> str:
        return ", ".join(form.format(v * scale) for v in runs[key])

    ms = "{:.3f}"
    print(
        f"{args.devices} devices (aiomqtt: {args.aiomqtt_devices}), mosquitto on loopback, "
        f"TLS 1.3, EC P-256; {args.repeats} runs; ratios are medians of per-run ratios"
    )
    print()
    print("| measurement | median | runs | ratio |")
    print("| --- | ---: | --- | ---: |")
    rows = [
        (
            "`openssl s_time -new`: CPU per handshake (serial; mean of a run before and "
            "one after the native runs)",
            f"{m['s_time_cpu'] * 1e3:.3f} ms",
            each("s_time_cpu", 1e3, ms),
            "1.00",
        ),
        (
            "`s_time` after / before, within a run (the machine's drift)",
            "",
            each("s_time_drift", 1, "{:.2f}"),
            "",
        ),
        *(
            (
                f"native: CPU per connect + CONNACK, then close as `s_time` closes ({c} in flight)",
                f"{m[f'native_cpu_{c}'] * 1e3:.3f} ms",
                each(f"native_cpu_{c}", 1e3, ms),
                f"**{m[f'cpu_ratio_{c}']:.2f}x** s_time",
            )
            for c in args.cpu_concurrency
        ),
        (
            f"native: CPU per connect + CONNACK + DISCONNECT ({args.cpu_concurrency[0]} in flight)",
            f"{m['native_disconnect_cpu'] * 1e3:.3f} ms",
            each("native_disconnect_cpu", 1e3, ms),
            f"{m['disconnect_cpu_ratio']:.2f}x s_time",
        ),
        (
            f"`loadgen run` ({args.devices} devices at {args.run_rate:g}/s, {args.run_workers} "
            "workers): whole-life generator CPU per device (prepare, TCP, TLS, CONNECT, "
            "CONNACK, DISCONNECT, record; `generator.whole_cpu_ms_per_device`)",
            f"{m['run_whole_cpu'] * 1e3:.3f} ms",
            each("run_whole_cpu", 1e3, ms),
            f"**{m['whole_cpu_ratio']:.2f}x** s_time",
        ),
        (
            "`loadgen run`: the same from the schedule's start on (`generator.cpu_ms_per_device`)",
            f"{m['run_cpu'] * 1e3:.3f} ms",
            each("run_cpu", 1e3, ms),
            f"{m['run_cpu_ratio']:.2f}x s_time",
        ),
        (
            "`openssl s_time -new -www /`: the same, reading the session tickets and an answer",
            f"{m['s_time_www_cpu'] * 1e3:.3f} ms",
            each("s_time_www_cpu", 1e3, ms),
            "",
        ),
        (
            "native (connect + CONNACK, then close) against `s_time -new -www /`",
            "",
            each("www_cpu_ratio", 1, "{:.2f}"),
            f"{m['www_cpu_ratio']:.2f}x",
        ),
        (
            f"native: connects/s direct ({args.concurrency} in flight)",
            f"{m['native_direct_rate']:,.0f}",
            each("native_direct_rate"),
            "",
        ),
        (
            "native: connects/s through a proxy adding 0 ms",
            f"{m['native_proxy0_rate']:,.0f}",
            each("native_proxy0_rate"),
            "1.00",
        ),
        (
            "native: connects/s through a proxy adding 50 ms RTT",
            f"{m['native_rtt50_rate']:,.0f}",
            each("native_rtt50_rate"),
            f"**{m['rtt_ratio']:.0%}**",
        ),
        (
            "native: client CPU per connect, 50 ms RTT / 0 ms",
            "",
            each("rtt_cpu_ratio", 1, "{:.2f}"),
            f"{m['rtt_cpu_ratio']:.2f}x",
        ),
        (
            "aiomqtt: connects/s through a proxy adding 0 ms",
            f"{m['aiomqtt_proxy0_rate']:,.0f}",
            each("aiomqtt_proxy0_rate"),
            "1.00",
        ),
        (
            "aiomqtt: connects/s through a proxy adding 50 ms RTT",
            f"{m['aiomqtt_rtt50_rate']:,.0f}",
            each("aiomqtt_rtt50_rate"),
            f"**{m['aiomqtt_ratio']:.0%}**",
        ),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    context, connection = results["context_kib"], results["connection_kib"]
    total = context + connection  # type: ignore[operator]
    print(
        f"| memory per idle connected device | {total:.1f} KiB | "
        f"prepared TLS session {context:.1f} + TLS/MQTT connection {connection:.1f} | |"
    )


if __name__ == "__main__":
    main()
