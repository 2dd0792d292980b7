"""The whole box at full stretch: N devices through JITP against the embedded
emulator on all cores, every one held at once; what each side costs per held
device, in memory and CPU, and (``--knee``) the JITP rate this box sustains.

    .venv/bin/python -m bench.box [--devices 100000] [--rate 250/s] [--plateau 60] [--knee]
    .venv/bin/python -m bench.box --knee-only [--knee-start 100] [--knee-step 50] [--knee-steps 8]

It runs the real `loadgen run` (and `loadgen capacity` for the knee) on a fleet
in /dev/shm, and watches the process tree from outside: the generator (the run
and its workers) and the emulator (its account and serving processes). Devices
held are the emulator's ESTABLISHED TCP sockets, read from /proc; memory is the
processes' RSS summed (shared pages counted in each process, so an upper bound;
PSS beside it), sampled while every device is held.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import hold

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "scenarios" / "profiles" / "lightbulb-healthy.yaml"
TEMPLATE = ROOT / "scenarios" / "templates" / "lightbulb.yaml"
# One destination port from one source address gives about 28,000 ephemeral
# ports (BRIEF); stay well under it per source address.
_PER_SOURCE = 20_000
# What a device costs the box besides the two sides' processes (its files in
# /dev/shm, the kernel's socket buffers): a rough bound for choosing N.
_BYTES_PER_DEVICE = 2 * 48 * 1024 + 16 * 1024


@dataclass(frozen=True)
class Proc:
    pid: int
    cmdline: str
    rss: int  # bytes
    cpu: float  # seconds, user + system

    def pss(self) -> int:
        """Its proportional share of memory (pages shared with other processes,
        the interpreter's and the libraries', split among them), in bytes."""
        try:
            for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def procs(root: int) -> list[Proc]:
    """``root`` and its living descendants (bench.hold's tree), each read once."""
    found = []
    for pid in hold.tree(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        rss, cpu = hold.rss_and_cpu(pid)
        found.append(Proc(pid, cmdline, rss, cpu))
    return found


@dataclass
class Sample:
    at: float
    held: int
    generator_rss: int
    emulator_rss: int
    generator_pss: int
    emulator_pss: int
    generator_processes: int
    emulator_processes: int


@dataclass
class Watch:
    """Samples the run's process tree every ``every`` seconds."""

    root: int
    # Reading /proc/net/tcp for 200,000 sockets costs a fraction of a second of
    # the box's CPU: seldom enough that the box's numbers are its own.
    every: float = 10.0
    samples: list[Sample] = field(default_factory=list)
    generator_cpu: dict[int, float] = field(default_factory=dict)
    emulator_cpu: dict[int, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sides(self) -> tuple[list[Proc], list[Proc]]:
        everything = procs(self.root)
        emulator_roots = [p.pid for p in everything if "emulator serve" in p.cmdline]
        emulator = [p for root in emulator_roots for p in procs(root)]
        ids = {p.pid for p in emulator}
        return [p for p in everything if p.pid not in ids], emulator

    def sample(self) -> None:
        generator, emulator = self.sides()
        # CPU is cumulative per process: the last reading of each is its total so far.
        self.generator_cpu.update({p.pid: p.cpu for p in generator})
        self.emulator_cpu.update({p.pid: p.cpu for p in emulator})
        self.samples.append(
            Sample(
                time.monotonic(),
                len(
                    set().union(*(hold.socket_inodes(p.pid) for p in emulator)) & hold.established()
                ),
                sum(p.rss for p in generator),
                sum(p.rss for p in emulator),
                sum(p.pss() for p in generator),
                sum(p.pss() for p in emulator),
                len(generator),
                len(emulator),
            )
        )

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def plateau(self) -> list[Sample]:
        """The samples with (nearly) the most devices held."""
        if not self.samples:
            return []
        top = max(s.held for s in self.samples)
        return [s for s in self.samples if s.held >= 0.99 * top and top > 0]


def sources(devices: int) -> list[str]:
    return [f"127.0.0.{2 + i}" for i in range(math.ceil(devices / _PER_SOURCE))]


def scenario(tmp: Path, devices: int, rate: float, until_s: float, processes_: int | None) -> Path:
    emulator: dict[str, object] = {
        "template": str(TEMPLATE),
        # The box's own limits are what is measured, not an account's quotas.
        "quotas": {"provision": "off", "connect": "off"},
    }
    if processes_ is not None:
        emulator["processes"] = processes_
    spec = {
        "name": "box",
        "endpoint": "embedded",
        "mqtt": {"version": 5, "client_id": "{common_name}", "keepalive": 60},
        "fleet": {
            "ca": str(tmp / "ca"),
            "store": str(tmp / "fleet"),
            "count": devices,
            "profile": str(PROFILE),
        },
        "jitp": {"expect_first_connect_rejected": True},
        "retry": {
            "initial": "200ms",
            "max": "5s",
            "multiplier": 2,
            "jitter": "full",
            "max_attempts": 8,
        },
        "load": {
            "executor": "constant-arrival-rate",
            "rate": f"{rate}/s",
            "max_in_flight": devices,
            "source_addresses": sources(devices),
        },
        # Every device holds until the same moment: the ramp's end and the plateau.
        "after_connect": [{"hold": {"until": f"{until_s:.0f}s", "keepalive": "60s"}}],
        "timeouts": {"connect": "30s", "step": "60s"},
        "emulator": emulator,
    }
    path = tmp / "box.yaml"
    path.write_text(json.dumps(spec, indent=2))  # JSON is YAML
    return path


def loadgen(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "loadgen", *args], stdout=out, stderr=subprocess.STDOUT
        )


def largest_fleet() -> int:
    """The most devices this machine's memory allows, up to 100,000."""
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    return max(1000, min(100_000, int(available * 0.6 / _BYTES_PER_DEVICE) // 1000 * 1000))


def held_run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    devices = args.devices
    ramp = devices / args.rate
    path = scenario(tmp, devices, args.rate, ramp + args.plateau, args.emulator_processes)
    report = tmp / "report.json"
    mint = subprocess.run(
        [
            *(sys.executable, "-m", "loadgen", "certs", "mint", "--init-ca"),
            *("--ca", str(tmp / "ca"), "--out", str(tmp / "fleet")),
            *("--count", str(devices), "--profile", str(PROFILE)),
        ],
        capture_output=True,
        text=True,
    )
    if mint.returncode != 0:
        raise SystemExit(f"bench.box: minting failed: {mint.stdout}{mint.stderr}")
    started = time.monotonic()
    run = loadgen("run", str(path), "--report", str(report), log=tmp / "run.log")
    watch = Watch(run.pid)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    try:
        # Every device lets go at the plateau's end; then the report.
        run.wait(timeout=ramp + args.plateau + 600)
    except subprocess.TimeoutExpired:
        pass
    finally:
        watch.stop.set()
        thread.join()
        if run.poll() is None:
            run.kill()
            run.wait()
    wall = time.monotonic() - started
    if not report.exists():
        tail = (tmp / "run.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench.box: the run wrote no report (exit {run.returncode}):\n{tail}")
    data = json.loads(report.read_text())
    plateau = watch.plateau()
    held = max((s.held for s in plateau), default=0)

    def per_held(values: list[int]) -> float | None:
        if not values or not held:
            return None
        return sorted(values)[len(values) // 2] / held / 1024

    connected = data["outcomes"].get("connected", 0)
    return {
        "devices": devices,
        "connected": connected,
        "outcomes": data["outcomes"],
        "held": held,
        "generator_processes": max((s.generator_processes for s in plateau), default=0),
        "emulator_processes": max((s.emulator_processes for s in plateau), default=0),
        "generator_kib_per_held": per_held([s.generator_rss for s in plateau]),
        "emulator_kib_per_held": per_held([s.emulator_rss for s in plateau]),
        "generator_pss_kib_per_held": per_held([s.generator_pss for s in plateau]),
        "emulator_pss_kib_per_held": per_held([s.emulator_pss for s in plateau]),
        "target_per_s": data["rate"]["target_per_s"],
        "achieved_per_s": data["rate"]["achieved_per_s"],
        # The report's own count (every worker's CPU, whole life); the emulator's
        # from /proc, its processes' last readings.
        "generator_cpu_ms_per_device": data["generator"]["cpu_ms_per_device"],
        "emulator_cpu_ms_per_device": round(sum(watch.emulator_cpu.values()) * 1000 / devices, 3),
        "provision_p50_ms": data["latency_ms"]["provision"]["p50"],
        "provision_p99_ms": data["latency_ms"]["provision"]["p99"],
        "wall_s": round(wall, 1),
    }


def knee(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """`loadgen capacity` against the embedded emulator on all cores: the highest
    JITP arrival rate whose steps keep p99(provision) < 2 s and no failures."""
    steps = args.knee_steps
    count = int(sum(args.knee_start + i * args.knee_step for i in range(steps)) * 20 * 1.2)
    where = tmp / "knee"
    where.mkdir()
    path = scenario(where, count, args.knee_start, 0, args.emulator_processes)
    spec = json.loads(path.read_text())
    spec["after_connect"] = [
        {"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1, "payload_bytes": 64}}
    ]
    spec["load"].pop("source_addresses")
    spec["load"]["max_in_flight"] = 5000
    spec["gates"] = ["p99(provision) < 2s", "ratio(failed) < 0.5%"]
    path.write_text(json.dumps(spec, indent=2))
    report = where / "capacity.json"
    search = loadgen(
        "capacity",
        str(path),
        "--start",
        f"{args.knee_start}/s",
        "--step",
        f"{args.knee_step}/s",
        "--step-duration",
        "20s",
        "--max-steps",
        str(steps),
        "--report",
        str(report),
        log=where / "capacity.log",
    )
    search.wait(timeout=steps * 120 + 600)
    if not report.exists():
        tail = (where / "capacity.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench.box: the capacity search wrote no report:\n{tail}")
    capacity = json.loads(report.read_text())["capacity"]
    return {
        "steps": [
            {
                "rate_per_s": step["rate_per_s"],
                "achieved_per_s": step["achieved_per_s"],
                "provision_p99_ms": step["latency_ms"]["provision"]["p99"],
                "schedule_lag_p99_ms": step["schedule_lag_p99_ms"],
                "generator_cpu": step["generator_cpu"],
                "emulator_cpu": step["emulator_cpu"],
                "machine_cpu": step["machine_cpu"],
            }
            for step in capacity["steps"]
        ],
        "highest_sustainable_per_s": capacity["highest_sustainable_per_s"],
        "first_broken_per_s": capacity["first_broken_per_s"],
        "limit": capacity["limit"],
        "verdict": capacity["verdict"],
    }


def _kib(value: object) -> str:
    return f"{value:.1f} KiB" if isinstance(value, float) else "n/a"


def _print_held(held: dict[str, object]) -> None:
    print(
        f"devices held together: {held['held']:,} of {held['devices']:,} "
        f"({held['connected']:,} connected; outcomes {held['outcomes']})\n"
        f"generator: {held['generator_processes']} processes, "
        f"{_kib(held['generator_kib_per_held'])} per held device "
        f"(PSS {_kib(held['generator_pss_kib_per_held'])}), "
        f"{held['generator_cpu_ms_per_device']} ms CPU per device (whole life)\n"
        f"emulator: {held['emulator_processes']} processes, "
        f"{_kib(held['emulator_kib_per_held'])} per held device "
        f"(PSS {_kib(held['emulator_pss_kib_per_held'])}), "
        f"{held['emulator_cpu_ms_per_device']} ms CPU per device (JITP + hold)\n"
        f"arrivals: {held['achieved_per_s']}/s achieved of {held['target_per_s']}/s; "
        f"provision p50 {held['provision_p50_ms']} ms, p99 {held['provision_p99_ms']} ms; "
        f"{held['wall_s']} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--devices", type=int, default=None, help="Default: 100,000 where memory allows."
    )
    parser.add_argument("--rate", type=float, default=250.0, help="JITP arrivals per second.")
    parser.add_argument(
        "--plateau", type=float, default=60.0, help="Seconds every device is held together."
    )
    parser.add_argument(
        "--emulator-processes", type=int, default=None, help="Default: the emulator's own."
    )
    parser.add_argument("--knee", action="store_true", help="Also search for the JITP knee.")
    parser.add_argument(
        "--knee-only",
        action="store_true",
        help="Search for the JITP knee without the held run first (--devices, --rate and "
        "--plateau then do nothing).",
    )
    parser.add_argument("--knee-start", type=float, default=100.0)
    parser.add_argument("--knee-step", type=float, default=50.0)
    parser.add_argument("--knee-steps", type=int, default=8)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument(
        "--dir", type=Path, help="Work (and leave its logs) here, not in a temporary folder."
    )
    args = parser.parse_args()
    args.knee = args.knee or args.knee_only
    if args.devices is None and not args.knee_only:
        args.devices = largest_fleet()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        "bench.box: the JITP knee only"
        if args.knee_only
        else f"bench.box: {args.devices:,} devices at {args.rate:g}/s, held {args.plateau:g} s "
        "together",
        f"; {os.cpu_count()} cores, open files per process {hard:,}",
        sep="",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="loadgen-box-", dir="/dev/shm") as name:
        tmp = args.dir or Path(name)
        tmp.mkdir(parents=True, exist_ok=True)
        results: dict[str, object] = {}
        if not args.knee_only:
            results["held"] = held = held_run(args, tmp)
            _print_held(held)
        if args.knee:
            found = results["knee"] = knee(args, tmp)
            steps = found["steps"]
            assert isinstance(steps, list)
            for step in steps:
                print(
                    f"  step {step['rate_per_s']:g}/s: achieved {step['achieved_per_s']}/s, "
                    f"p99(provision) {step['provision_p99_ms']} ms, schedule lag p99 "
                    f"{step['schedule_lag_p99_ms']} ms; busy: generator "
                    f"{step['generator_cpu']}, emulator {step['emulator_cpu']}, "
                    f"machine {step['machine_cpu']}",
                    flush=True,
                )
            print(f"JITP knee on this box: {found['verdict']}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
