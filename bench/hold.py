"""Memory and CPU per held device: N devices connected through `loadgen run` and
held against mosquitto, with mosquitto's own figures as the baseline of the
same run.

    .venv/bin/python -m bench.hold [--devices 10000] [--rate 500] [--repeats 3]

Each run mints nothing new (one fleet for all), starts `loadgen run` with every
device holding its connection (`max_in_flight` = devices, so `loadgen run` plans
its worker processes by the open-files limit), waits for the plateau (every
device connected), then samples both process trees over ``--plateau`` seconds:
RSS per held device (all the generator's worker processes, prepared-but-unstarted
devices included; mosquitto's process) and CPU per second of holding per 1,000
devices (keepalive PINGREQs every ``--keepalive`` seconds). Figures are medians.

With ``--emqtt-bench ESCRIPT`` (`bench/build_emqtt_bench.sh` builds it), each
repeat also holds the same number of clients with emqtt-bench's `conn` (one
certificate for all, the same rate and keepalive), and prints its RSS per held
device and CPU of holding beside the generator's.

``usage(pid, port)`` is the measuring helper other benchmarks reuse: the RSS of
a process tree and the connections it holds to or from a port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import emqtt_bench
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.store import FleetStore
from tests.brokers import start_mosquitto

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()
_ESTABLISHED = "01"
# Open files mosquitto needs besides its connections (listeners, log, epoll).
_BROKER_FD_MARGIN = 64


@dataclass(frozen=True)
class Usage:
    """One look at a process tree."""

    processes: int
    rss: int  # bytes, summed over the processes
    held: int  # ESTABLISHED TCP connections whose local or remote port is the port
    cpu: float  # seconds of user + system time, summed over the living processes
    root_rss: int  # bytes, the root process alone (e.g. `loadgen run`'s parent)

    @property
    def children_rss(self) -> int:
        """Without the root: `loadgen run`'s workers, an emulator's serving processes."""
        return self.rss - self.root_rss


def tree(root: int) -> list[int]:
    """``root`` and every living descendant."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def rss_and_cpu(pid: int) -> tuple[int, float]:
    try:
        with open(f"/proc/{pid}/statm") as f:
            resident = int(f.read().split()[1]) * _PAGE
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0, 0.0  # it ended meanwhile
    return resident, (int(fields[11]) + int(fields[12])) / _TICKS


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def established(port: int | None = None) -> set[int]:
    """Inodes of the ESTABLISHED TCP sockets with ``port`` at either end (any
    port: every ESTABLISHED socket)."""
    inodes = set()
    suffix = None if port is None else f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                local, remote, state = cols[1], cols[2], cols[3]
                if state == _ESTABLISHED and (
                    suffix is None or local.endswith(suffix) or remote.endswith(suffix)
                ):
                    inodes.add(int(cols[9]))
    return inodes


def usage(root: int, port: int) -> Usage:
    """RSS, CPU and connections held to or from ``port`` of ``root``'s process tree.
    Devices held by a generator are its connections to the endpoint's port; a
    server's are its connections on its listening port."""
    pids = tree(root)
    rss = cpu = 0.0
    root_rss = 0
    sockets: set[int] = set()
    for pid in pids:
        resident, seconds = rss_and_cpu(pid)
        rss += resident
        cpu += seconds
        if pid == root:
            root_rss = resident
        sockets |= socket_inodes(pid)
    held = len(sockets & established(port))
    return Usage(len(pids), int(rss), held, cpu, root_rss)


@dataclass
class HoldRun:
    devices: int
    held: int  # by the generator at the plateau's end
    broker_held: int
    workers: int  # processes under `loadgen run`: its workers and the resource tracker
    generator_kib: float  # the workers' RSS per held device
    generator_tree_kib: float  # with `loadgen run`'s parent process
    broker_kib: float  # mosquitto's RSS per held device
    generator_cpu: float  # CPU seconds per second of holding per 1,000 devices
    broker_cpu: float
    ramp: float  # seconds from the start to the plateau


def _scenario(root: Path, ca: Path, port: int, server_ca: Path, args: argparse.Namespace) -> Path:
    ramp = args.devices / args.rate
    hold = ramp * 2 + 30 + args.plateau  # every device still holds when the plateau ends
    scenario = {
        "name": "hold-bench",
        "endpoint": f"127.0.0.1:{port}",
        "tls": {"ca_file": str(server_ca), "server_name": "localhost"},
        "mqtt": {"keepalive": int(args.keepalive)},
        "fleet": {"ca": str(ca), "store": str(root / "fleet"), "count": args.devices},
        "load": {
            "executor": "constant-arrival-rate",
            "rate": f"{args.rate}/s",
            "max_in_flight": args.devices,
        },
        "after_connect": [{"hold": {"duration": f"{hold:.0f}s", "keepalive": args.keepalive}}],
        "timeouts": {"connect": "30s"},
    }
    path = root / "hold.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def _all_held(
    run: subprocess.Popen[bytes], port: int, args: argparse.Namespace, log: Path, who: str
) -> Usage:
    """``run``'s tree once it holds every device (looked at each second): the
    plateau's first look. Ends the benchmark with the tail of ``who``'s log when
    ``run`` ends first, or the ramp takes three times its schedule and two
    minutes more."""
    deadline = time.monotonic() + args.devices / args.rate * 3 + 120
    seen = usage(run.pid, port)
    while seen.held < args.devices:
        ended = run.poll() is not None
        if ended or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            when = "when it ended" if ended else "at the deadline"
            raise SystemExit(f"{who}: {seen.held} of {args.devices} held {when}:\n{tail}")
        time.sleep(1)
        seen = usage(run.pid, port)
    return seen


def _one(scenario: Path, port: int, broker_pid: int, args: argparse.Namespace) -> HoldRun:
    command = [sys.executable, "-m", "loadgen", "run", str(scenario)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    log = scenario.with_suffix(".log")
    with log.open("wb") as out:
        run = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        first = _all_held(run, port, args, log, "loadgen run")
        ramp = time.monotonic() - started
        broker_first = usage(broker_pid, port)
        t0 = time.monotonic()
        time.sleep(args.plateau)
        last, broker_last = usage(run.pid, port), usage(broker_pid, port)
        seconds = time.monotonic() - t0
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
    held = min(first.held, last.held)
    per = 1024 * last.held
    return HoldRun(
        devices=args.devices,
        held=last.held,
        broker_held=broker_last.held,
        workers=last.processes - 1,
        generator_kib=last.children_rss / per,
        generator_tree_kib=last.rss / per,
        broker_kib=broker_last.rss / (1024 * broker_last.held),
        generator_cpu=(last.cpu - first.cpu) / seconds / (held / 1000),
        broker_cpu=(broker_last.cpu - broker_first.cpu) / seconds / (held / 1000),
        ramp=ramp,
    )


@dataclass
class PeerRun:
    held: int
    kib: float  # the peer's RSS per held device
    cpu: float  # CPU seconds per second of holding per 1,000 devices


def _peer(binary: Path, fleet: Path, port: int, args: argparse.Namespace) -> PeerRun:
    """emqtt-bench holding as many clients as the generator does, measured the
    same way: from the plateau (all held), over ``--plateau`` seconds."""
    device = next(FleetStore(fleet).devices())
    log = fleet.parent / "emqtt-bench.log"
    with log.open("wb") as out:
        run = emqtt_bench.start(
            binary,
            port=port,
            cert=fleet / device.cert,
            key=fleet / device.key,
            count=args.devices,
            rate=args.rate,
            keepalive=args.keepalive,
            stdout=out,
        )
    try:
        seen = _all_held(run, port, args, log, "emqtt-bench")
        t0 = time.monotonic()
        time.sleep(args.plateau)
        last = usage(run.pid, port)
        seconds = time.monotonic() - t0
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    held = min(seen.held, last.held)
    return PeerRun(
        held=last.held,
        kib=last.rss / (1024 * last.held),
        cpu=(last.cpu - seen.cpu) / seconds / (held / 1000),
    )


def _row(name: str, values: list[float], form: str) -> str:
    each = ", ".join(form.format(v) for v in values)
    return f"| {name} | **{form.format(statistics.median(values))}** | {each} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=500.0, help="arrivals per second")
    parser.add_argument("--plateau", type=float, default=30.0, help="seconds measured, all held")
    parser.add_argument("--keepalive", type=float, default=10.0, help="seconds between PINGREQs")
    parser.add_argument("--workers", type=int, default=0, help="default: loadgen run plans them")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--emqtt-bench",
        type=Path,
        metavar="ESCRIPT",
        help="also hold as many clients with emqtt-bench's `conn` (bench/build_emqtt_bench.sh)",
    )
    args = parser.parse_args()
    if args.emqtt_bench and not args.emqtt_bench.is_file():
        parser.error(f"--emqtt-bench: {args.emqtt_bench}: no such file")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.devices + _BROKER_FD_MARGIN > hard:
        raise SystemExit(
            f"mosquitto is one process: {args.devices} connections need more than the "
            f"open-files hard limit ({hard}); use --devices {hard - _BROKER_FD_MARGIN} or fewer"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # mosquitto inherits it
    runs: list[HoldRun] = []
    peers: list[PeerRun] = []
    with tempfile.TemporaryDirectory(prefix="loadgen-hold-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        mint(MintRequest(root / "fleet", ca.directory, args.devices, workers=2))
        broker = start_mosquitto(root / "broker", ca.directory / "ca.pem")
        try:
            server_ca = broker.server_ca.directory / "ca.pem"
            scenario = _scenario(root, ca.directory, broker.tls_port, server_ca, args)
            for _ in range(args.repeats):
                runs.append(_one(scenario, broker.tls_port, broker.process.pid, args))
                time.sleep(2)  # mosquitto sees the last disconnects
                if args.emqtt_bench:
                    peers.append(_peer(args.emqtt_bench, root / "fleet", broker.tls_port, args))
                    time.sleep(2)
        finally:
            broker.stop()
    print(
        f"{args.devices} devices held against mosquitto on loopback (TLS 1.3, EC P-256, "
        f"MQTT 5), arrivals at {args.rate:g}/s, PINGREQ every {args.keepalive:g} s, "
        f"{args.plateau:g} s plateau; {len(runs)} runs; {runs[0].workers} processes under "
        "`loadgen run` (its workers, multiprocessing's resource tracker)"
    )
    print()
    print("| measurement | median | runs |")
    print("| --- | ---: | --- |")
    rows = [
        ("devices held by the generator", [float(r.held) for r in runs], "{:,.0f}"),
        ("mosquitto's connections", [float(r.broker_held) for r in runs], "{:,.0f}"),
        ("generator KiB per held device (workers' RSS)", [r.generator_kib for r in runs], "{:.1f}"),
        ("... with `loadgen run`'s parent", [r.generator_tree_kib for r in runs], "{:.1f}"),
        ("mosquitto KiB per held connection", [r.broker_kib for r in runs], "{:.1f}"),
        (
            "generator CPU ms per second of holding per 1,000 devices",
            [r.generator_cpu * 1000 for r in runs],
            "{:.2f}",
        ),
        (
            "mosquitto CPU ms per second of holding per 1,000 devices",
            [r.broker_cpu * 1000 for r in runs],
            "{:.2f}",
        ),
        ("seconds to the plateau", [r.ramp for r in runs], "{:.0f}"),
    ]
    if peers:
        rows += [
            ("emqtt-bench's clients held", [float(p.held) for p in peers], "{:,.0f}"),
            ("emqtt-bench KiB per held device (its VM's RSS)", [p.kib for p in peers], "{:.1f}"),
            (
                "emqtt-bench CPU ms per second of holding per 1,000 devices",
                [p.cpu * 1000 for p in peers],
                "{:.2f}",
            ),
        ]
    for name, values, form in rows:
        print(_row(name, values, form))


if __name__ == "__main__":
    main()
