"""Reports for people: the live view while a run goes, the table at its end.

Prose is said in phrases (``started 120/200``, ``in flight 30``) that lines
break between, never inside, so the view and the summary read whole at the
console's width (80 columns when output goes to a file or a pipe).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.load.plan import RunPlan
from loadgen.load.runner import RunSnapshot
from loadgen.load.schedule import target_rate
from loadgen.metrics.stats import PHASES
from loadgen.words import counted, number, ranges

# The live arrival rate: over this many whole seconds, the last ones every
# worker has measured.
_RATE_WINDOW = 2
# Without a terminal (CI logs, `| tee`), or on a dumb one, rich's live view
# prints nothing at all: a plain line says how the run goes, every this many
# seconds of the run.
PLAIN_INTERVAL = 5.0
# Continuation lines of a statement are indented this much further.
_HANG = 2


def fit(phrases: Sequence[str], width: int, indent: int = 0, sep: str = " ") -> list[str]:
    """``phrases`` joined by ``sep`` into lines of at most ``width`` cells,
    broken only between phrases; a phrase too long for any line (free text such
    as a failure's reason) is broken between its words."""
    lines: list[str] = []
    line = ""
    hang = " " * (indent + _HANG)
    for phrase in filter(str.strip, phrases):
        joined = f"{line}{sep}{phrase}" if line else " " * indent + phrase
        if cell_len(joined) <= width:
            line = joined
        elif cell_len(hang + phrase) <= width:
            lines.append(line)
            line = hang + phrase
        else:
            start = f"{line}{sep}" if line else " " * indent
            if line and cell_len(start + phrase.split()[0]) > width:
                lines.append(line)
                start = hang
            *full, line = textwrap.wrap(phrase, width, initial_indent=start, subsequent_indent=hang)
            lines += full
    if line:
        lines.append(line)
    return lines


def say(console: Console, *phrases: str, indent: int = 2, bold: str | None = None) -> None:
    """One statement, fitted to the console's width (``bold``: a phrase to stress)."""
    for line in fit(phrases, console.width, indent):
        text = Text(line, no_wrap=True)
        if bold:
            text.highlight_words([bold], "bold")
        console.print(text, soft_wrap=True, highlight=False)


def status_phrases(total: RunSnapshot, planned: int, elapsed: float) -> list[str]:
    """Where a run stands. Connected counts every device past an accepted
    CONNACK (still holding or done); failed, those done in any other outcome."""
    done_connected = total.stats.outcomes.get("connected", 0)
    return [
        f"{max(elapsed, 0.0):.1f} s",
        f"started {total.started}/{planned}",
        f"in flight {total.in_flight}",
        f"connected {done_connected + total.connected}",
        f"failed {total.stats.devices - done_connected}",
    ]


def rate_phrases(rate: float | None, target: float | None) -> list[str]:
    """The achieved arrival rate (None: not measured long enough) and the plan's."""
    achieved = None if rate is None else f"rate {rate:,.0f}/s"
    planned = None if not target else f"target {target:,.0f}/s"
    if achieved and planned:
        return [f"{achieved} ({planned})"]
    return [p for p in (achieved, planned) if p]


class LiveRun:
    """Target and achieved rate, in flight, outcomes so far, p50/p99 so far: a
    live view on a terminal, a plain line every ``PLAIN_INTERVAL`` seconds
    otherwise."""

    def __init__(self, console: Console, plan: RunPlan) -> None:
        self.console = console
        self.plan = plan
        self.live = (
            Live(console=console, transient=True, refresh_per_second=4)
            if console.is_terminal and not console.is_dumb_terminal
            else None
        )
        self.next_line = PLAIN_INTERVAL

    def __enter__(self) -> LiveRun:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, total: RunSnapshot, elapsed: float) -> None:
        rate = arrival_rate(total, elapsed)
        if self.live is not None:
            lines = self.frame(total, elapsed, rate)
            self.live.update(Group(*(Text(line, no_wrap=True) for line in lines)))
        elif elapsed >= self.next_line:
            self.next_line = (elapsed // PLAIN_INTERVAL + 1) * PLAIN_INTERVAL
            line = self.line(total, elapsed, rate)
            self.console.print(line, soft_wrap=True, markup=False, highlight=False)

    def frame(self, total: RunSnapshot, elapsed: float, rate: float | None) -> list[str]:
        """The live view's lines at the console's width: where the run stands;
        rates and latency; the outcomes of the devices done."""
        width = self.console.width
        measured = self._rates(total, elapsed, rate) + (
            _latency(total) or ["provision: no device connected yet"]
        )
        outcomes = [f"{k} {v}" for k, v in sorted(total.stats.outcomes.items())]
        return [
            *fit(status_phrases(total, self.plan.count, elapsed), width, sep="  "),
            *fit(measured, width, sep="  "),
            *fit(_done(outcomes) or ["no device done yet"], width, sep="  "),
        ]

    def line(self, total: RunSnapshot, elapsed: float, rate: float | None) -> str:
        """The plain progress line: one line, however long, for a log."""
        phrases = status_phrases(total, self.plan.count, elapsed)
        return "  ".join(phrases + self._rates(total, elapsed, rate) + _latency(total))

    def _rates(self, total: RunSnapshot, elapsed: float, rate: float | None) -> list[str]:
        # Once every device has started, the arrival rate has nothing left to say
        # (it falls to 0/s while the target stays): none is shown.
        if total.started >= self.plan.count or elapsed < 0:
            return []
        return rate_phrases(rate, target_rate(self.plan.executor, elapsed))


def arrival_rate(total: RunSnapshot, elapsed: float) -> float | None:
    """The live view's arrival rate, over its last ``_RATE_WINDOW`` whole
    seconds. Counting started devices between progress messages read the rate
    12-17% off: the workers' counts in one snapshot are of different ages (each
    reports twice a second), and which one had just come in decided."""
    return total.arrival_rate(elapsed, _RATE_WINDOW)


def _latency(total: RunSnapshot) -> list[str]:
    provision = total.stats.phases["provision"]
    if not provision.count:
        return []
    return [
        f"provision p50 {provision.percentile_ms(50):,.1f} ms",
        f"p99 {provision.percentile_ms(99):,.1f} ms",
    ]


def _done(outcomes: list[str]) -> list[str]:
    return [f"done: {outcomes[0]}", *outcomes[1:]] if outcomes else []


def listed(items: list[str]) -> list[str]:
    """Items as the phrases of a list: commas between them."""
    return [f"{item}," for item in items[:-1]] + items[-1:]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


# What a report stopped early says of itself, wherever it is shown.
PARTIAL = "(partial: stopped early, see accounting)"


def print_report(console: Console, report: dict[str, Any]) -> None:
    """The summary of a run: statements (``say``) and tables, each fitted to the
    console's width."""
    throttled = report["attempts"].get("throttled")  # None before the field
    say(
        console,
        f"{report['scenario']} against {report['endpoint']}:",
        f"{counted(report['devices'], 'device')} in {report['duration_s']:.1f} s,",
        counted(report["attempts"]["total"], "attempt"),
        *([f"({throttled:,} answered throttled)"] if throttled else []),
        *([PARTIAL] if report.get("partial") else []),
        indent=0,
        bold=report["scenario"],
    )
    if (missing := missing_shards_line(report)) is not None:
        say(console, missing)
    rate = report["rate"]
    say(
        console,
        "arrival rate:",
        f"target {_ms(rate['target_per_s'])}/s,",
        f"achieved {_ms(rate['achieved_per_s'])}/s;",
        f"schedule lag p99 {_ms(report['schedule_lag_ms']['p99'])} ms",
    )
    generator = report.get("generator") or {}
    per_device = generator.get("cpu_ms_per_device")
    if per_device is not None:
        coordinator = generator.get("coordinator_cpu_s")
        say(
            console,
            "generator:",
            f"{per_device:,.2f} ms of CPU per device",
            *(
                [f"in its workers, and {coordinator:,.2f} s coordinating them"]
                if coordinator is not None
                else []
            ),
        )
    accounting = report.get("accounting")
    if accounting is not None:
        say(console, *accounting_phrases(accounting))
    expected = (accounting or {}).get("expected") or {}
    outcomes = Table(box=None, pad_edge=False)
    outcomes.add_column("outcome")
    outcomes.add_column("devices", justify="right")
    if expected:
        outcomes.add_column("expected", justify="right")
    for name, n in report["outcomes"].items():
        if n:
            # Text, not markup: a report's words are shown as written ("[/]" too).
            outcomes.add_row(
                Text(name), number(n), *([expected_cell(expected, name)] if expected else [])
            )
    console.print(outcomes)
    latency = Table(box=None, pad_edge=False)
    for column in ("phase (ms)", "count", "p50", "p90", "p99", "p99.9", "max"):
        latency.add_column(
            column, justify="left" if column.startswith("phase") else "right", no_wrap=True
        )
    for phase in PHASES:
        s = report["latency_ms"][phase]
        latency.add_row(
            phase,
            "-" if s["count"] is None else number(s["count"]),
            *(_ms(s[k]) for k in ("p50", "p90", "p99", "p99_9", "max")),
        )
    console.print(latency)
    jitp = report.get("jitp")
    if jitp and jitp["first_connect_rejected"]:
        trigger = f"JITP: {counted(jitp['first_connect_rejected'], 'first connect')} rejected"
        provisioning = jitp.get("provisioning")
        if provisioning is None:
            say(console, trigger, "(the trigger)")
        else:
            done = [f"{k} {v}" for k, v in provisioning.items() if v]
            say(
                console,
                trigger,
                "(the trigger);",
                "emulator provisioning:",
                *(listed(done) or ["none"]),
            )
        for reason, n in list((jitp.get("provisioning_failures") or {}).items())[:3]:
            say(console, f"{counted(n, 'provisioning')} failed:", reason)
        # Reports from before the emulator had limits have no emulator_closes.
        for reason, n in sorted((jitp.get("emulator_closes") or {}).items()):
            say(console, f"the emulator closed {counted(n, 'session')}:", reason)
    for process in (jitp or {}).get("emulator_missing") or []:
        say(
            console,
            f"the emulator's serving process {process['index']} (pid {process['pid']})",
            f"gave no counts ({process['why']}): its sessions' are not in these",
        )
    if jitp and jitp.get("emulator_stopped"):
        say(console, emulator_stopped_line(jitp["emulator_stopped"]))
    named = report.get("reason_devices") or {}
    for outcome, reasons in report["reasons"].items():
        for reason, n in list(reasons.items())[:3]:
            indices = named.get(outcome, {}).get(reason)
            which = [f"({devices_named(indices, n)})"] if indices else []
            say(console, f"{outcome}: {counted(n, 'device')}:", reason, *which)
    if report.get("capacity"):
        print_capacity(console, report["capacity"])


def devices_named(indices: list[int], devices: int) -> str:
    """Which devices a reason's were: their fleet indices (the first few)."""
    listed = ", ".join(str(i) for i in indices)
    if devices <= len(indices):
        return f"device {listed}" if devices == 1 else f"devices {listed}"
    return f"devices {listed}, ..."


def missing_shards_line(report: dict[str, Any]) -> str | None:
    """What a merge of part of a sharded run says of itself: the shards it
    lacks (and their devices, when the shards said how many the fleet had).
    None for any other report."""
    shards = report.get("shards") or {}
    missing = shards.get("missing") or []
    if not missing:
        return None
    devices = shards.get("missing_devices")
    held = f" ({counted(devices, 'device')})" if devices is not None else ""
    which = f"shard {ranges(missing)}" if len(missing) == 1 else f"shards {ranges(missing)}"
    return (
        f"{which} of {shards['count']} missing{held}: the merge, and a verdict on it, "
        "covers part of the fleet"
    )


def emulator_stopped_line(why: str, during: str = "the run") -> str:
    """What a run against the embedded emulator says when the emulator ended
    before the run did (``jitp.emulator_stopped``)."""
    return (
        f"the embedded emulator stopped during {during}: {why}. Devices that connected "
        "after that failed, and its counts may be short"
    )


def expected_cell(expected: dict[str, int], outcome: str) -> str:
    """How many of ``outcome`` were expected, for a table: only failures ever
    are (a connect is what every device is for), so ``connected`` shows "-"."""
    return "-" if outcome == "connected" else str(expected.get(outcome, 0))


def accounting_phrases(accounting: dict[str, Any]) -> list[str]:
    """Where the planned devices went, and how many outcomes were surprises
    (``expected``: failed as the fault injected on purpose predicts)."""
    phrases = [f"planned {accounting['planned']:,},", f"started {accounting['started']:,}"]
    if accounting.get("not_started"):
        phrases[-1] += ","
        phrases.append(f"not started {accounting['not_started']:,}")
    unexpected = accounting.get("unexpected")
    if unexpected is not None:
        phrases[-1] += ";"
        phrases.append(f"unexpected outcomes {unexpected:,}")
    for note, n in (accounting.get("notes") or {}).items():
        phrases[-1] += ";"
        phrases.append(f"{counted(n, 'device')} {note}")
    lost = accounting.get("workers_lost") or {}
    for worker, why in lost.items():
        phrases[-1] += ";"
        phrases.append(f"worker {worker} {why}")
    return phrases


def print_capacity(console: Console, capacity: dict[str, Any]) -> None:
    """A capacity search's steps, and its verdict."""
    table = Table(title="capacity search", box=None, pad_edge=False)
    for name in ("step", "rate/s", "achieved/s", "p50 ms", "p99 ms", "failed", "throttled", "stop"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in capacity["steps"]:
        provision = row["latency_ms"]["provision"]
        failed = row["failed_ratio"]
        table.add_row(
            str(row["step"]),
            "-" if row["rate_per_s"] is None else number(row["rate_per_s"]),
            _ms(row["achieved_per_s"]),
            _ms(provision["p50"]),
            _ms(provision["p99"]),
            "-" if failed is None else f"{failed:.2%}",
            "-" if row["throttled"] is None else number(row["throttled"]),
            # A step judged before limits were named has none.
            "ok" if row["passed"] else Text(str(row.get("limit") or "-")),
        )
    console.print(table)
    say(console, *clauses(capacity["verdict"]), indent=0)


def clauses(sentence: str) -> list[str]:
    """A sentence's clauses (each ending at a ``,``, ``;`` or ``:``), the
    phrases a long verdict breaks between."""
    return re.split(r"(?<=[,;:]) ", sentence)
