"""The emulator's server CPU per JITP connect (the trigger, provisioning, the
reconnect) and per plain reconnect, next to mosquitto's CPU per plain mutual-TLS
connect, measured in the same run.

    .venv/bin/python -m bench.emulator [--devices 1000] [--repeats 3] [--processes N]

With ``--processes N`` the emulator's CPU is all of its processes': the
account process and its N serving processes (N=1: one process serves all).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from loadgen import mqtt
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.store import Device, FleetStore
from loadgen.emulator.serve import start_embedded
from loadgen.transport.client import Target, connect
from loadgen.transport.errors import TransportError
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import ClientTls
from tests.brokers import start_mosquitto

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _connect_all(port: int, server_ca: Path, fleet: FleetStore, devices: list[Device]) -> int:
    """Connect every device once (CONNECT, CONNACK, DISCONNECT); how many connected."""
    tls = ClientTls(ca_file=server_ca)
    slots = asyncio.Semaphore(50)
    connected = 0

    async def one(device: Device) -> None:
        nonlocal connected
        session = tls.session(fleet.path / device.cert, fleet.path / device.key, "localhost")
        async with slots:
            try:
                async with asyncio.timeout(10):
                    client = await connect(
                        Target("127.0.0.1", port),
                        session,
                        mqtt.Connect(device.client_id),
                        AttemptTimes(time.monotonic()),
                    )
            except (TransportError, TimeoutError):
                return
            connected += 1
            client.disconnect()

    await asyncio.gather(*(one(d) for d in devices))
    return connected


def tree_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def _children(pid: int) -> list[int]:
    """A process's children, from /proc (the emulator's serving processes)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _measure(pids: list[int], port: int, server_ca: Path, fleet: FleetStore, devices: list[Device]):
    before = tree_cpu_seconds(pids)
    connected = uvloop.run(_connect_all(port, server_ca, fleet, devices))
    time.sleep(0.2)  # let the server finish closing
    return (tree_cpu_seconds(pids) - before) / len(devices), connected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1, help="the emulator's --processes")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"jitp": [], "reconnect": [], "mosquitto": []}
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        for repeat in range(args.repeats):
            fleet_path = root / f"fleet-{repeat}"
            mint(MintRequest(fleet_path, ca.directory, args.devices, workers=2, seed=repeat))
            fleet = FleetStore(fleet_path)
            devices = list(fleet.devices())
            state = root / f"emulator-{repeat}"
            off = {"connect": "off", "connect-per-client": "off", "provision": "off"}
            emulator = start_embedded(
                ca.directory, None, state, quotas=off, processes=args.processes
            )
            port, server_ca = emulator.port, emulator.server_ca
            broker = start_mosquitto(root / f"broker-{repeat}", ca.directory / "ca.pem")
            try:
                # The JITP connect: the trigger (provisioning, closed), then the reconnect.
                pids = [emulator.process.pid, *_children(emulator.process.pid)]
                trigger, _ = _measure(pids, port, server_ca, fleet, devices)
                first, connected = _measure(pids, port, server_ca, fleet, devices)
                assert connected == len(devices), connected
                again, connected = _measure(pids, port, server_ca, fleet, devices)
                rows["jitp"].append(trigger + first)
                rows["reconnect"].append(again)
                mosq, connected = _measure(
                    [broker.process.pid],
                    broker.tls_port,
                    broker.server_ca.directory / "ca.pem",
                    fleet,
                    devices,
                )
                assert connected == len(devices), connected
                rows["mosquitto"].append(mosq)
            finally:
                emulator.stop()
                broker.stop()
    m = {k: statistics.median(v) for k, v in rows.items()}
    print(
        f"{args.devices} devices, {args.repeats} runs, EC P-256, TLS 1.3, loopback; "
        f"emulator --processes {args.processes}; server CPU (user + system) per device"
    )
    print()
    print("| server, per device | CPU (median) | runs | vs mosquitto |")
    print("| --- | ---: | --- | ---: |")
    for key, label in (
        ("mosquitto", "mosquitto 2.0.11: plain mutual-TLS connect"),
        ("reconnect", "emulator: reconnect of a provisioned device"),
        ("jitp", "emulator: JITP connect (trigger + provisioning + reconnect)"),
    ):
        runs = ", ".join(f"{v * 1e3:.2f}" for v in rows[key])
        print(f"| {label} | {m[key] * 1e3:.2f} ms | {runs} | {m[key] / m['mosquitto']:.2f}x |")


if __name__ == "__main__":
    main()
