"""The emulator's server CPU per JITP connect (the trigger, provisioning, the
reconnect) and per plain reconnect, next to mosquitto's CPU per plain mutual-TLS
connect, measured in the same run.

    .venv/bin/python -m bench.emulator [--devices 1000] [--repeats 3] [--processes N]

With ``--processes N`` the emulator's CPU (and memory) is all of its processes':
the account process and its N serving processes (N=1: one process serves all).

With ``--hold``: the memory per held device instead, the emulator's and
mosquitto's in the same run (each server's RSS with all the devices connected
and held, divided by the devices held; and its growth from before they
connected, divided by the same).

    .venv/bin/python -m bench.emulator --hold [--devices 3000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

from bench import hold
from loadgen import mqtt
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.store import Device, FleetStore
from loadgen.emulator.serve import EmbeddedEmulator, start_embedded
from loadgen.transport.client import MqttClient, Target, connect
from loadgen.transport.errors import TransportError
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import ClientTls
from tests.brokers import Mosquitto, start_mosquitto


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes, from /proc."""
    return sum(hold.rss_and_cpu(pid)[1] for pid in pids)


def rss_kib(pids: list[int]) -> int:
    """Resident memory of processes, in KiB, from /proc."""
    return sum(hold.rss_and_cpu(pid)[0] for pid in pids) // 1024


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


async def _hold_all(
    pids: list[int], port: int, server_ca: Path, fleet: FleetStore, devices: list[Device]
) -> tuple[int, int, int]:
    """Connect every device and keep them all connected; (the server's RSS before,
    its RSS with them held, how many are held), in KiB."""
    tls = ClientTls(ca_file=server_ca)
    slots = asyncio.Semaphore(50)
    held: list[MqttClient] = []
    before = rss_kib(pids)

    async def one(device: Device) -> None:
        session = tls.session(fleet.path / device.cert, fleet.path / device.key, "localhost")
        async with slots:
            try:
                async with asyncio.timeout(10):
                    # A keepalive longer than the hold: no PINGREQ meanwhile.
                    connect_packet = mqtt.Connect(device.client_id, keepalive=600)
                    client = await connect(
                        Target("127.0.0.1", port),
                        session,
                        connect_packet,
                        AttemptTimes(time.monotonic()),
                    )
            except (TransportError, TimeoutError):
                return
            held.append(client)

    try:
        await asyncio.gather(*(one(d) for d in devices))
        await asyncio.sleep(1.0)  # the server done with the last handshakes
        return before, rss_kib(pids), len(held)
    finally:
        for client in held:
            client.disconnect()


def _rounds(
    args: argparse.Namespace,
) -> Iterator[tuple[FleetStore, list[Device], EmbeddedEmulator, Mosquitto]]:
    """Per repeat: a new fleet, an emulator (quotas off) and mosquitto trusting its
    CA, stopped after the round."""
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        for repeat in range(args.repeats):
            fleet_path = root / f"fleet-{repeat}"
            mint(MintRequest(fleet_path, ca.directory, args.devices, workers=2, seed=repeat))
            fleet = FleetStore(fleet_path)
            state = root / f"emulator-{repeat}"
            off = {"connect": "off", "connect-per-client": "off", "provision": "off"}
            emulator = start_embedded(
                ca.directory, None, state, quotas=off, processes=args.processes
            )
            broker = start_mosquitto(root / f"broker-{repeat}", ca.directory / "ca.pem")
            try:
                yield fleet, list(fleet.devices()), emulator, broker
            finally:
                emulator.stop()
                broker.stop()


def _hold(args: argparse.Namespace) -> None:
    rows: dict[str, list[tuple[int, int, int]]] = {"emulator": [], "mosquitto": []}
    for fleet, devices, emulator, broker in _rounds(args):
        pids = hold.tree(emulator.process.pid)
        uvloop.run(_connect_all(emulator.port, emulator.server_ca, fleet, devices))
        rows["emulator"].append(
            uvloop.run(_hold_all(pids, emulator.port, emulator.server_ca, fleet, devices))
        )
        rows["mosquitto"].append(
            uvloop.run(
                _hold_all(
                    [broker.process.pid],
                    broker.tls_port,
                    broker.server_ca.directory / "ca.pem",
                    fleet,
                    devices,
                )
            )
        )
    print(
        f"{args.devices} devices held, {args.repeats} runs, EC P-256, TLS 1.3, loopback; "
        "server RSS per held device (total, and growth from before they connected)"
    )
    print()
    print("| server | held | KiB per held device (median) | growth per held device | runs |")
    print("| --- | ---: | ---: | ---: | --- |")
    for key in ("mosquitto", "emulator"):
        total = [after / n for _, after, n in rows[key]]
        growth = [(after - before) / n for before, after, n in rows[key]]
        runs = ", ".join(f"{t:.1f} / {g:.1f}" for t, g in zip(total, growth, strict=True))
        print(
            f"| {key} | {min(n for _, _, n in rows[key])} | {statistics.median(total):.1f} "
            f"| {statistics.median(growth):.1f} | {runs} |"
        )
    ratio = statistics.median(
        (e[1] / e[2]) / (m[1] / m[2])
        for e, m in zip(rows["emulator"], rows["mosquitto"], strict=True)
    )
    print(f"\nemulator / mosquitto, KiB per held device, same runs (median): {ratio:.2f}x")


def _measure(pids: list[int], port: int, server_ca: Path, fleet: FleetStore, devices: list[Device]):
    before = tree_cpu_seconds(pids)
    connected = uvloop.run(_connect_all(port, server_ca, fleet, devices))
    time.sleep(0.2)  # let the server finish closing
    return (tree_cpu_seconds(pids) - before) / len(devices), connected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--hold", action="store_true", help="memory per held device instead of CPU per connect"
    )
    parser.add_argument("--processes", type=int, default=1, help="the emulator's --processes")
    args = parser.parse_args()
    if args.hold:
        _hold(args)
        return
    rows: dict[str, list[float]] = {"jitp": [], "reconnect": [], "mosquitto": []}
    for fleet, devices, emulator, broker in _rounds(args):
        port, server_ca = emulator.port, emulator.server_ca
        # The JITP connect: the trigger (provisioning, closed), then the reconnect.
        pids = hold.tree(emulator.process.pid)
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
