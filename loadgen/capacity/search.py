"""The capacity search: raise the arrival rate step by step until an SLO breaks,
or until the generator itself cannot keep up (then the number would be ours, not
the endpoint's, and the search says so instead).

Each step runs fresh devices (never connected before), so every step provisions
as the first day of a fleet would. What a step measured is judged here; running
it is the caller's (see loadgen.capacity.command).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loadgen.cores import cores
from loadgen.metrics.stats import RunStats
from loadgen.report.gates import FUNCTIONS, TERMS, Gate, GateResult, Kind, nothing_measured
from loadgen.words import counted

# The generator is the bottleneck when its workers were this busy...
CPU_BUSY = 0.90
# ...or when devices started this late against the schedule (and no failure
# SLO broke: lateness alone does not make devices fail).
LAG_LIMIT_MS = 250.0
# Devices that waited for a slot, or started late, are the endpoint's doing when
# the workers had time to spare and the devices in flight spent at least this
# share of their time waiting on the endpoint: a slow endpoint fills the slots.
ENDPOINT_HELD = 0.5
LIMITS = ("throttling", "failures", "latency", "rate", "generator", "emulator", "machine")
# A metric in a gate's text: a function (``p99(``, ``ratio(``) or a term.
_METRIC = re.compile(r"\b([a-z][a-z0-9_.]*)\s*(\()?")


def kinds(gate: str) -> set[Kind]:
    """What the metrics of a gate (its text, as the report keeps it) measure."""
    found: set[Kind] = set()
    for name, call in _METRIC.findall(gate):
        if call and name in FUNCTIONS:
            found.add(FUNCTIONS[name].kind)
        elif not call and name in TERMS:
            found.add(TERMS[name].kind)
    return found


def _is_outcome(gate: str) -> bool:
    """A failure SLO: a ratio or a count of outcomes."""
    return bool(kinds(gate) & {Kind.RATIO, Kind.COUNT})


@dataclass(frozen=True)
class Search:
    slos: tuple[Gate, ...]
    start: float  # arrivals per second
    step: float
    step_duration: float  # seconds
    max_rate: float | None = None
    max_steps: int = 50

    def rates(self) -> Iterator[float]:
        """The rates to try, in order: bounded by max_rate and max_steps."""
        for n in range(self.max_steps):
            rate = self.start + n * self.step
            if self.max_rate is not None and rate > self.max_rate + 1e-9:
                return
            yield rate

    def devices(self, rate: float) -> int:
        return max(1, round(rate * self.step_duration))


@dataclass(frozen=True)
class EmulatorCpu:
    """The embedded emulator's CPU during a step, over its wall time."""

    serving: float  # its serving processes' mean (1.0: every one busy)
    account: float  # its account process's
    processes: int  # serving processes
    # The account process is the one serving process (emulator.processes 1):
    # ``account`` is then ``serving``, one process's CPU, not a second one's.
    account_serves: bool = False

    @property
    def cores_busy(self) -> float:
        """How many cores its processes kept busy together, each counted once."""
        return self.serving * self.processes + (0.0 if self.account_serves else self.account)

    @classmethod
    def between(
        cls, before: dict[str, Any] | None, after: dict[str, Any] | None, wall_s: float
    ) -> EmulatorCpu | None:
        """From the emulator's stats before and after the step (None when they
        do not say: an emulator of a version without them, or no step time)."""
        if before is None or after is None or wall_s <= 0:
            return None
        # A process that gave no counts (listed missing) shows its last CPU
        # time: it would count as idle, and lower the mean of those that worked.
        silent = {p["pid"] for stats in (before, after) for p in stats.get("missing", [])}
        start = {p["pid"]: p["cpu_s"] for p in before.get("processes", [])}
        end = {p["pid"]: p["cpu_s"] for p in after.get("processes", []) if p["pid"] not in silent}
        if not end or "account_cpu_s" not in after:
            return None
        busy = [(cpu - start.get(pid, 0.0)) / wall_s for pid, cpu in end.items()]
        account = (after["account_cpu_s"] - before.get("account_cpu_s", 0.0)) / wall_s
        return cls(sum(busy) / len(busy), account, len(busy), after.get("account_pid") in end)


@dataclass
class Step:
    number: int
    rate: float
    started_at_s: float  # since the search began
    duration_s: float
    workers: int
    report: dict[str, Any]  # the step's own run report
    stats: RunStats
    results: list[GateResult]
    # Throttles during the step, each once (see ``throttles``).
    throttles: Counter[str] = field(default_factory=Counter)
    # Cut short (Ctrl-C, SIGTERM): not every device ran, so the step proves
    # nothing either way; it never passes, and the verdict leaves it out.
    interrupted: bool = False
    # With the embedded emulator: how busy its processes were during the step.
    emulator_cpu: EmulatorCpu | None = None
    # The cores the generator and an embedded emulator share.
    cores: int = field(default_factory=cores)

    @property
    def broken(self) -> list[str]:
        return [r.gate for r in self.results if not r.passed]

    @property
    def cpu_busy(self) -> float:
        """The workers' CPU time over their wall time (1.0: every worker busy)."""
        wall = self.duration_s * self.workers
        return self.stats.cpu_us / 1_000_000 / wall if wall > 0 else 0.0

    @property
    def workers_lost(self) -> str | None:
        """The generator's workers that ended without their results (a crash:
        the step measured neither the endpoint nor the generator's capacity)."""
        lost = self.report.get("accounting", {}).get("workers_lost")
        if not lost:
            return None
        return "; ".join(f"worker {worker} {why}" for worker, why in lost.items())

    @property
    def generator_saturated(self) -> str | None:
        """Why the generator alone could not run this step: its workers busy.
        Whatever else was busy, the step measured the generator."""
        if self.cpu_busy >= CPU_BUSY:
            return f"the load generator's workers were {self.cpu_busy:.0%} busy"
        return None

    @property
    def generator_limit(self) -> str | None:
        """Why this step measured the generator rather than the endpoint."""
        if (saturated := self.generator_saturated) is not None:
            return saturated
        # Latency counts from the scheduled start, so starting late (for want of
        # a slot, or of the loop's time) breaks latency SLOs of our own making;
        # it cannot make devices fail, so a broken failure SLO is the endpoint's.
        if any(_is_outcome(g) for g in self.broken) or self.nothing_connected:
            return None
        if self.stats.slot_waits:
            # Workers with time to spare, and the slots full of devices waiting
            # on the endpoint (connects unanswered, slow handshakes): the
            # endpoint kept them, and the lateness the wait for a slot made.
            if self.endpoint_held is not None:
                return None
            return (
                f"{counted(self.stats.slot_waits, 'device')} waited for a free slot: "
                f"load.max_in_flight ({self.report['load']['max_in_flight']}) was reached"
            )
        lag_p99 = self.report["schedule_lag_ms"]["p99"] or 0.0
        if lag_p99 >= LAG_LIMIT_MS:
            return f"the load generator fell behind its schedule (lag p99 {lag_p99:,.0f} ms)"
        return None

    @property
    def endpoint_wait_share(self) -> float | None:
        """The share of the devices' time in flight they spent waiting on the
        endpoint (connect attempts, back-offs after its refusals); None when
        no device ended."""
        stats = self.stats
        return stats.endpoint_wait_us / stats.in_flight_us if stats.in_flight_us > 0 else None

    @property
    def endpoint_held(self) -> str | None:
        """Why devices that waited for a slot (or started late) waited for the
        endpoint, not for the generator: its workers had time to spare while the
        devices holding the slots waited on the endpoint."""
        share = self.endpoint_wait_share
        if share is None or share < ENDPOINT_HELD or self.cpu_busy >= CPU_BUSY:
            return None
        return (
            f"the devices in flight spent {share:.0%} of their time waiting on the "
            f"endpoint, with the load generator's workers {self.cpu_busy:.0%} busy"
        )

    @property
    def nothing_connected(self) -> str | None:
        """Why the step measured nothing (no device connected): every SLO then
        broke on the devices' failures, whatever it measures."""
        return nothing_measured(self.report)

    @property
    def emulator_limit(self) -> str | None:
        """Why a broken step measured the embedded emulator's own processes
        (saturated) rather than what the endpoint does at this rate."""
        cpu = self.emulator_cpu
        if cpu is None:
            return None
        if cpu.serving >= CPU_BUSY:
            processes = counted(cpu.processes, "serving process", "serving processes")
            were = "was" if cpu.processes == 1 else "were"
            return f"the embedded emulator's {processes} {were} {cpu.serving:.0%} busy"
        if cpu.account >= CPU_BUSY:
            return f"the embedded emulator's account process was {cpu.account:.0%} busy"
        return None

    @property
    def machine_busy(self) -> float | None:
        """With the embedded emulator: the share of the machine's cores the
        generator's workers and the emulator's processes kept busy together."""
        cpu = self.emulator_cpu
        if cpu is None or self.cores <= 0:
            return None
        return (self.cpu_busy * self.workers + cpu.cores_busy) / self.cores

    @property
    def machine_limit(self) -> str | None:
        """Why a step that fell short measured the machine the generator and the
        embedded emulator share: neither side alone busy, together every core
        (the generator then falls behind for want of a core, not of work)."""
        busy = self.machine_busy
        if busy is None or busy < CPU_BUSY:
            return None
        return (
            f"the load generator and the embedded emulator together kept this "
            f"machine's {counted(self.cores, 'core')} {busy:.0%} busy"
        )

    @property
    def passed(self) -> bool:
        return not self.interrupted and not self.broken and self.generator_limit is None

    @property
    def limit(self) -> str | None:
        """What stopped the search at this step (None: it passed)."""
        if self.interrupted:
            return "interrupted"
        # A side saturated alone is named before the machine they share: the
        # machine is the limit only when neither the generator (its workers
        # busy) nor the emulator was.
        if self.generator_saturated is not None:
            return "generator"
        fell_short = self.generator_limit is not None or bool(self.broken)
        if fell_short and self.emulator_limit is None and self.machine_limit is not None:
            return "machine"
        if self.generator_limit is not None:
            return "generator"
        if not self.broken:
            return None
        if sum(self.throttles.values()):
            return "throttling"
        if self.emulator_limit is not None:
            return "emulator"
        if self.nothing_connected or any(_is_outcome(g) for g in self.broken):
            return "failures"
        if any(Kind.LATENCY in kinds(g) for g in self.broken):
            return "latency"
        # Only an arrival-rate SLO (achieved_rate) broke: devices started late
        # while the generator kept up.
        return "rate"

    def row(self) -> dict[str, Any]:
        report = self.report
        devices = report["devices"]
        failed = sum(n for outcome, n in report["outcomes"].items() if outcome != "connected")
        return {
            "step": self.number,
            "rate_per_s": self.rate,
            "started_at_s": round(self.started_at_s, 3),
            "duration_s": round(self.duration_s, 3),
            "devices": devices,
            "achieved_per_s": report["rate"]["achieved_per_s"],
            "latency_ms": {
                "provision": {k: report["latency_ms"]["provision"][k] for k in ("p50", "p99")}
            },
            "schedule_lag_p99_ms": report["schedule_lag_ms"]["p99"],
            "failed_ratio": round(failed / devices, 6) if devices else None,
            "throttled": sum(self.throttles.values()),
            "throttles": dict(self.throttles),
            "workers": self.workers,
            "generator_cpu": round(self.cpu_busy, 3),
            "emulator_cpu": None
            if self.emulator_cpu is None
            else {
                "serving": round(self.emulator_cpu.serving, 3),
                "account": round(self.emulator_cpu.account, 3),
                "processes": self.emulator_cpu.processes,
            },
            "machine_cpu": None if self.machine_busy is None else round(self.machine_busy, 3),
            "slot_waits": self.stats.slot_waits,
            "endpoint_wait_share": None
            if self.endpoint_wait_share is None
            else round(self.endpoint_wait_share, 3),
            "slos": [
                {"slo": r.gate, "passed": r.passed, "measured": r.measured} for r in self.results
            ],
            "passed": self.passed,
            "interrupted": self.interrupted,
            "broken": self.broken,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class Verdict:
    highest_sustainable: float | None
    first_broken: float | None
    limit: str | None
    why: str

    def text(self) -> str:
        if self.highest_sustainable is not None:
            highest = f"{self.highest_sustainable:g}/s"
        elif self.first_broken is not None:  # no step passed: the first one broke
            highest = "none (the first step broke)"
        else:  # none ran whole, or the first measured the generator: ``why`` says
            highest = "none"
        return f"highest sustainable rate: {highest}; {self.why}"


def verdict(
    search: Search, steps: list[Step], interrupted: bool = False, ended: str | None = None
) -> Verdict:
    """The search's finding. ``ended``: what cut the search short that is neither
    the user nor the endpoint under test (the embedded emulator stopping, a worker lost)."""
    steps = [s for s in steps if not s.interrupted]  # they measured nothing whole
    passed = [s for s in steps if s.passed]
    highest = passed[-1].rate if passed else None
    stopped = next((s for s in steps if not s.passed), None)
    if stopped is None:
        # Before any step broke; or before any ran whole, which says less.
        before = "before any step broke" if steps else "before any step finished"
        if ended is not None:
            why = f"{ended}; the search ended there, {before}"
        elif interrupted:
            why = f"interrupted {before}"
        elif not steps:
            why = "no step ran"
        else:
            why = f"no SLO broke up to {steps[-1].rate:g}/s (the search's last step)"
        return Verdict(highest, None, None, why)
    limit = stopped.limit
    if limit == "generator":
        why = (
            f"at {stopped.rate:g}/s the generator, not the endpoint, was the limit: "
            f"{stopped.generator_limit} (run more workers or machines, or raise the limit)"
        )
        return Verdict(highest, None, limit, why)
    if limit == "machine":
        why = (
            f"at {stopped.rate:g}/s this machine, not the endpoint, was the limit: "
            f"{stopped.machine_limit} (run the emulator or the generator on other "
            "cores or machines)"
        )
        if stopped.broken:
            why += "; " + "; ".join(r.describe() for r in stopped.results if not r.passed)
        return Verdict(highest, None, limit, why)
    if limit == "emulator":
        why = (
            f"first broken at {stopped.rate:g}/s with the emulator itself the limit: "
            f"{stopped.emulator_limit} (give it more processes or cores: emulator.processes); "
            + "; ".join(r.describe() for r in stopped.results if not r.passed)
        )
        return Verdict(highest, stopped.rate, limit, why)
    detail = ""
    if limit == "throttling":
        throttled = ", ".join(f"{k} {n}" for k, n in sorted(stopped.throttles.items()))
        detail = f" (throttled: {throttled})"
    elif limit == "failures":
        outcomes = stopped.report["outcomes"].items()
        failed = ", ".join(f"{o} {n}" for o, n in outcomes if o != "connected" and n)
        detail = f" (failed: {failed})" if failed else ""
    why = f"first broken at {stopped.rate:g}/s by {limit}{detail}: " + "; ".join(
        r.describe() for r in stopped.results if not r.passed
    )
    if stopped.stats.slot_waits and (held := stopped.endpoint_held) is not None:
        why += f"; {counted(stopped.stats.slot_waits, 'device')} waited for a free slot: {held}"
    return Verdict(highest, stopped.rate, limit, why)


def section(
    search: Search, steps: list[Step], found: Verdict, interrupted: bool = False
) -> dict[str, Any]:
    """The report's ``capacity`` section."""
    return {
        "slos": [g.text for g in search.slos],
        "start_per_s": search.start,
        "step_per_s": search.step,
        "step_duration_s": search.step_duration,
        "max_rate_per_s": search.max_rate,
        "steps": [s.row() for s in steps],
        "highest_sustainable_per_s": found.highest_sustainable,
        "first_broken_per_s": found.first_broken,
        "limit": found.limit,
        "verdict": found.text(),
        "interrupted": interrupted,
    }


# The embedded emulator's quotas whose throttles a device is told of: a CONNACK
# 0x9F with MQTT 5 (3.1.1 has no code for it: the connection just closes).
_TOLD_WITH_MQTT_5 = frozenset({"connect", "connect-per-client"})


def throttles(
    stats: RunStats,
    emulator_before: dict[str, Any] | None,
    emulator_after: dict[str, Any] | None,
    mqtt_5: bool,
) -> Counter[str]:
    """Throttling in a step, each throttle once: the devices' CONNECTs,
    PUBLISHes and SUBSCRIBEs answered with a throttling code (whatever the
    devices ended in), and with the embedded emulator, the throttles of its
    quotas its devices could not tell from other closes (their growth during
    the step): a throttled provisioning closes the connection as JITP's
    trigger does, and so does a throttled MQTT 3.1.1 connect."""
    seen: Counter[str] = Counter()
    if stats.throttled:
        seen["throttled answers"] = stats.throttled
    if emulator_after is not None:
        before = Counter((emulator_before or {}).get("throttles", {}))
        for quota, n in emulator_after.get("throttles", {}).items():
            if mqtt_5 and quota in _TOLD_WITH_MQTT_5:
                continue  # among the devices' answers already
            if n - before.get(quota, 0) > 0:
                seen[f"emulator {quota} quota"] = n - before.get(quota, 0)
    return seen
