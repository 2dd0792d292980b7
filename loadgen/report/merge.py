"""Merging reports of shards that ran side by side (worker groups, machines):
counts add up, and percentiles come from the merged HDR histograms, so the merge
of N reports equals one run over the union of their devices."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loadgen.errors import UserError
from loadgen.files import REPORT_LIMIT, read_limited
from loadgen.load.shard import Shard
from loadgen.metrics.histogram import LatencyHistogram
from loadgen.metrics.intervals import LogBuckets
from loadgen.metrics.stats import BREAKDOWN, PHASES, fold_reasons, name_devices, ranked
from loadgen.nesting import parse_json
from loadgen.report import fields
from loadgen.report.build import (
    FORMAT,
    achieved_rate,
    breakdown_ms,
    generator_cpu,
    jitp_section,
    latency_series,
)
from loadgen.report.fields import Needs


def load_report(path: Path, needs: Needs | None = None) -> dict[str, Any]:
    """A report file, with the fields ``needs`` names checked: anything else is a
    one-line ``UserError`` naming the file (and the field)."""
    try:
        data = read_limited(path, REPORT_LIMIT, "report")
    except FileNotFoundError:
        raise UserError(f"{path}: no such report") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a report") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_report(data, str(path), needs)


def parse_report(data: bytes, name: str, needs: Needs | None = None) -> dict[str, Any]:
    """A report's bytes (from a file or an S3 object called ``name``), checked as
    ``load_report`` checks a file."""
    try:
        report = parse_json(data)
    except ValueError as exc:
        raise UserError(f"{name}: not a JSON report: {exc}") from None
    if not isinstance(report, dict):
        raise UserError(f"{name}: not a {FORMAT} report (JSON, but not an object)")
    if "format" not in report:
        raise UserError(f"{name}: not a {FORMAT} report (JSON without a format field)")
    if report["format"] != FORMAT:
        raise UserError(f"{name}: not a {FORMAT} report (format {report['format']!r})")
    if needs is not None:
        fields.check(report, name, needs)
    return report


def run_ids(report: dict[str, Any]) -> list[str]:
    """The runs a report holds: a merge's ``run_ids``, a run's ``run_id``; for a
    report written before run ids existed, a digest of what it measured."""
    if "run_ids" in report:
        return list(report["run_ids"])
    if "run_id" in report:
        return [report["run_id"]]
    measured = json.dumps(
        [report.get("started_at"), report.get("ended_at"), report.get("histograms")],
        sort_keys=True,
    )
    return ["sha256:" + hashlib.sha256(measured.encode()).hexdigest()[:32]]


def merge_named(
    named: list[tuple[str, dict[str, Any]]],
    series_of: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Reports, each with the name it was read from, merged once each: no run
    twice (the same file, a copy, or a merge that holds it already). With
    ``series_of``, the reports come without their ``series`` (most of a long
    run's report), and it gives each one's by name when the merge folds it in:
    then only one report's series is in memory at a time."""
    seen: dict[str, str] = {}
    for name, report in named:
        for run_id in run_ids(report):
            if run_id in seen:
                first = seen[run_id]
                if first == name:
                    raise UserError(f"{name}: given twice: a run is merged only once")
                raise UserError(
                    f"{name}: run {run_id} is already in {first}: a run is merged only once"
                )
        for run_id in run_ids(report):
            seen[run_id] = name
    check_shards(named)
    check_start(named)
    check_overlap(named)
    reports = [report for _, report in named]
    names = [name for name, _ in named]
    if series_of is None:
        return merge(reports, names)
    return merge_folded(reports, lambda i: series_of(names[i]), names)


def shards_of(report: dict[str, Any]) -> list[tuple[int, int]]:
    """The (index, count) of each ``--shard I/N`` shard a report holds: a run's
    ``shard``, a merge's ``shards``; none for a run that was not one."""
    if report.get("shard"):
        return [(int(report["shard"]["index"]), int(report["shard"]["count"]))]
    if report.get("shards"):
        count = int(report["shards"]["count"])
        return [(int(index), count) for index in report["shards"]["indices"]]
    return []


def whole_run_of(report: dict[str, Any]) -> dict[str, Any] | None:
    """The run a shard's report, or a merge of shards, is a part of (``of``);
    None for a report from before it, and for one that is no shard."""
    held = report.get("shard") or report.get("shards") or {}
    of: dict[str, Any] | None = held.get("of")
    return of


def check_shards(sources: list[tuple[str, dict[str, Any]]]) -> None:
    """Shards of one run merge once each, and all of one N and one run (their
    ``of``, where they have it): two reports of the same shard, shards of
    different splits, or of different runs, are one line naming the report."""
    seen: dict[int, str] = {}
    split: tuple[int, str] | None = None
    whole: tuple[dict[str, Any], str] | None = None
    for name, report in sources:
        if (of := whole_run_of(report)) is not None:
            if whole is None:
                whole = (of, name)
            elif of != whole[0]:
                raise UserError(
                    f"{name}: a shard of {_run(of)}, but {whole[1]} is a shard of "
                    f"{_run(whole[0])}: the shards of one run share its scenario, fleet "
                    "and settings (is it a report of another run?)"
                )
        for index, count in shards_of(report):
            if not 0 <= index < count:
                raise UserError(f"{name}: field shard is {index}/{count}: not a shard of {count}")
            if split is None:
                split = (count, name)
            elif count != split[0]:
                raise UserError(
                    f"{name}: shard {index}/{count}, but {split[1]} is a shard of {split[0]}: "
                    "the shards of one run are split by the same N"
                )
            if index in seen:
                raise UserError(
                    f"{name}: shard {index}/{count} is already in {seen[index]}: "
                    "each shard is merged once"
                )
            seen[index] = name


def _run(of: dict[str, Any]) -> str:
    return f"{of['scenario']!r} (a fleet of {of['fleet']}, settings {of['digest']})"


def _start_at(report: dict[str, Any]) -> float | None:
    start = report.get("start")
    return float(start["at"]) if start else None


def check_start(sources: list[tuple[str, dict[str, Any]]]) -> None:
    """The shards of one run were started by one ``--start-at``: a report that
    started at another (one left over from an earlier run in the folder merged)
    is one line naming it, as is a report without ``start`` (a run without
    ``--start-at``) among reports with one. Reports that all lack it (none was
    started at an agreed time) merge as before."""
    starts = [_start_at(report) for _, report in sources]
    if not starts:
        return
    # The start most reports share is the run's (the first's, on a tie): the
    # report named is then the odd one out, wherever it sorts.
    common = Counter(starts).most_common(1)[0][0]
    holder = next(name for (name, _), at in zip(sources, starts, strict=True) if at == common)
    for (name, _), at in zip(sources, starts, strict=True):
        if at == common:
            continue
        mine = "no start (a run without --start-at)" if at is None else f"started at {_when(at)}"
        theirs = "has none" if common is None else f"started at {_when(common)}"
        raise UserError(
            f"{name}: {mine}, but {holder} {theirs}: the shards of one run share one "
            "--start-at (is it a report of another run?)"
        )


def _ran(report: dict[str, Any]) -> tuple[float, float]:
    """When a report's run began and ended (seconds since the epoch), reaching
    to its agreed start: a shard stopped while it waited for ``--start-at``
    began and ended before it, yet it is a part of the run that started then."""
    began = dt.datetime.fromisoformat(report["started_at"]).timestamp()
    ended = dt.datetime.fromisoformat(report["ended_at"]).timestamp()
    agreed = _start_at(report)
    if agreed is not None:
        began, ended = min(began, agreed), max(ended, agreed)
    return began, ended


def check_overlap(sources: list[tuple[str, dict[str, Any]]]) -> None:
    """A merge adds up runs that ran side by side: a report whose run began
    after every earlier one had ended (a copy of a run shifted a day later, a
    run of last week in the folder merged) is one line naming it and the run it
    followed. Runs that ran one after another make one report as a capacity
    search's steps do (``loadgen capacity``), not by a merge."""
    timed = sorted(((*_ran(report), name) for name, report in sources), key=lambda t: t[0])
    if not timed:
        return
    _, reach, last = timed[0]
    for began, ended, name in timed[1:]:
        if began > reach:
            raise UserError(
                f"{name}: ran from {_utc(began)}, after {last} had ended at {_utc(reach)}: "
                "a merge adds up runs that ran side by side (is it a report of another run?)"
            )
        if ended > reach:
            reach, last = ended, name


def _utc(at: float) -> str:
    return f"{dt.datetime.fromtimestamp(at, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _when(at: float) -> str:
    return f"--start-at {at:.3f} ({dt.datetime.fromtimestamp(at, dt.UTC):%Y-%m-%d %H:%M:%S} UTC)"


def _merged_shards(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    held = [shard for report in reports for shard in shards_of(report)]
    if not held:
        return None
    count = held[0][1]
    indices = sorted(index for index, _ in held)
    missing = sorted(set(range(count)) - set(indices))
    merged: dict[str, Any] = {"count": count, "indices": indices, "missing": missing}
    # One run's (check_shards), where a report says it: older reports do not.
    wholes = [of for report in reports if (of := whole_run_of(report)) is not None]
    if wholes:
        merged["of"] = wholes[0]
    fleet = wholes[0]["fleet"] if wholes else None
    merged["missing_devices"] = (
        None if fleet is None else sum(Shard(i, count).size(fleet) for i in missing)
    )
    return merged


def _merged_start(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The agreed start (one: ``check_start``), and the latest shard's lateness
    past it."""
    starts = [r.get("start") for r in reports]
    if not all(starts):
        return None
    return {
        "at": min(s["at"] for s in starts if s),
        "late_s": max(s["late_s"] for s in starts if s),
    }


def _counts(reports: list[dict[str, Any]], *keys: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for report in reports:
        node: Any = report
        for key in keys:
            node = node.get(key) or {}
        total.update(node)
    return dict(total)


class _SeriesFold:
    """The reports' per-second series added up, each shifted by its start
    second, one report's at a time."""

    def __init__(self) -> None:
        self.target: list[int] = []
        self.started: list[int] = []
        self.outcomes: dict[str, list[int]] = {}
        self.buckets: dict[str, dict[int, LogBuckets]] = {}
        # Every series runs at least to the latest start: a report without an
        # outcome still lengthens that outcome's series to its own start.
        self.length = 0

    def add(self, shift: int, series: dict[str, Any]) -> None:
        self.length = max(self.length, shift)
        # Null, as absent: no plan to add (fields.MERGE lets either through).
        _add_shifted(self.target, shift, series.get("target_per_s") or [])
        _add_shifted(self.started, shift, series["started_per_s"])
        for name, values in series["outcomes_per_s"].items():
            _add_shifted(self.outcomes.setdefault(name, []), shift, values)
        for phase, seconds in (series.get("latency_buckets") or {}).items():
            mine = self.buckets.setdefault(phase, {})
            for i, data in enumerate(seconds):
                if data:
                    mine.setdefault(shift + i, LogBuckets()).merge(LogBuckets.from_wire(data))

    def json(self) -> dict[str, Any]:
        return {
            "interval_s": 1,
            "target_per_s": self._padded(self.target),
            "started_per_s": self._padded(self.started),
            "outcomes_per_s": {
                name: self._padded(values) for name, values in sorted(self.outcomes.items())
            },
            **latency_series(self.buckets),
        }

    def _padded(self, values: list[int]) -> list[int]:
        return values + [0] * (self.length - len(values))


def _add_shifted(total: list[int], shift: int, values: list[int]) -> None:
    if len(total) < shift + len(values):
        total.extend([0] * (shift + len(values) - len(total)))
    for i, v in enumerate(values):
        total[shift + i] += v


def merge(reports: list[dict[str, Any]], names: list[str] | None = None) -> dict[str, Any]:
    """Reports merged, all of them in memory."""
    return merge_folded(reports, lambda i: reports[i]["series"], names)


def merge_folded(
    reports: list[dict[str, Any]],
    series_of: Callable[[int], dict[str, Any]],
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Reports merged, the ``series`` of report ``i`` being ``series_of(i)``:
    asked for once each, in order, and added up at once. ``names``: what each
    report was read from, for the error a histogram that is none is."""
    # Before the series: those may be read from elsewhere, one report at a time.
    histograms = {}
    for name in (*PHASES, "schedule_lag"):
        merged = LatencyHistogram()
        for i, report in enumerate(reports):
            try:
                merged.merge(LatencyHistogram.decode(report["histograms"][name]))
            except ValueError as exc:
                where = names[i] if names is not None else f"report {i + 1}"
                raise UserError(f"{where}: field histograms.{name}: {exc}") from None
        histograms[name] = merged
    starts = [dt.datetime.fromisoformat(r["started_at"]) for r in reports]
    ends = [dt.datetime.fromisoformat(r["ended_at"]) for r in reports]
    start = _merged_start(reports)
    # Shards started together begin at the agreed start: one stopped while it
    # waited for it began and ended when it was stopped, earlier.
    t0 = dt.datetime.fromtimestamp(start["at"], dt.UTC) if start is not None else min(starts)
    ended = max(*ends, t0)
    series = _SeriesFold()
    for i, report in enumerate(reports):
        if report["devices"]:  # one that started nothing has nothing in time to add
            series.add(max(0, int((starts[i] - t0).total_seconds())), series_of(i))
    merged_report: dict[str, Any] = {
        "format": FORMAT,
        "run_ids": [run_id for r in reports for run_id in run_ids(r)],
        "scenario": " + ".join(dict.fromkeys(r["scenario"] for r in reports)),
        "endpoint": " + ".join(dict.fromkeys(r["endpoint"] for r in reports)),
        "started_at": t0.isoformat(timespec="milliseconds"),
        "ended_at": ended.isoformat(timespec="milliseconds"),
        "duration_s": round((ended - t0).total_seconds(), 3),
        # One shard stopped early and the fleet's run is: not every device ran.
        "partial": any(r.get("partial") for r in reports),
        "devices": sum(r["devices"] for r in reports),
        "accounting": _merge_accounting(reports),
        "outcomes": _counts(reports, "outcomes"),
        "attempts": {
            "total": sum(r["attempts"]["total"] for r in reports),
            "per_device": dict(
                sorted(
                    _counts(reports, "attempts", "per_device").items(), key=lambda kv: int(kv[0])
                )
            ),
            "provisioning_triggered": sum(r["attempts"]["provisioning_triggered"] for r in reports),
            # Null when a report lacks it (older than this field): a sum of
            # some would read as the whole.
            "throttled": _known_sum(r["attempts"].get("throttled") for r in reports),
        },
        "latency_ms": {phase: histograms[phase].summary_ms() for phase in PHASES},
        "rate": _merged_rates(reports, t0),
        "schedule_lag_ms": histograms["schedule_lag"].summary_ms(),
        **_merge_reasons(reports),
        "provision_breakdown_ms": _merge_breakdown(reports),
        "series": series.json(),
        "histograms": {name: h.encode() for name, h in histograms.items()},
        "generator": generator_cpu(
            sum((r.get("generator") or {}).get("cpu_s", 0.0) for r in reports),
            sum(r["devices"] for r in reports),
            sum((r.get("generator") or {}).get("ahead_cpu_s", 0.0) for r in reports),
            _coordinators_cpu(reports),
        ),
        "load": {
            "executor": " + ".join(dict.fromkeys(r["load"]["executor"] for r in reports)),
            "count": sum(r["load"]["count"] for r in reports),
            "max_in_flight": sum(r["load"]["max_in_flight"] for r in reports),
            "workers": sum(r["load"]["workers"] for r in reports),
            "mqtt_version": " + ".join(dict.fromkeys(r["load"]["mqtt_version"] for r in reports)),
        },
        # The runs merged, as run_ids counts them: a merge of merges counts the
        # runs inside, not the files given.
        "environment": {
            **reports[0]["environment"],
            "merged_from": sum(len(run_ids(r)) for r in reports),
        },
        "shard": None,
        "shards": _merged_shards(reports),
    }
    if start is not None:
        merged_report["start"] = start
    if (jitp := _merge_jitp(reports, merged_report)) is not None:
        merged_report["jitp"] = jitp
    return merged_report


def _merged_rates(reports: list[dict[str, Any]], t0: dt.datetime) -> dict[str, Any]:
    """Shards run side by side: their rates add up. A shard with no rate of its
    own (fewer than two devices: one arrival spans no time) still ran its part
    of the schedule, and every shard of ``--shard I/N`` runs at 1/N of the
    fleet's rates: it counts at the mean rate of the shards that have one. A
    rate is unknown (None) when no shard has one (a burst has no target), or a
    report that is no shard has none.

    ``from_shards`` keeps, per rate, what the shards measured before any such
    estimate (the sum of their own rates, how many had one): a merge of merges
    counts from it, and comes to the same rate however the merges were grouped.

    Where every report has its planned arrivals (``rate.planned``), the target
    is measured as the achieved rate is: all of them over the union of their
    planned spans (shards of different sizes, each on its schedule, ask for
    less than their peaks added up). ``t0`` is the merge's start, from which its
    own planned offsets count."""
    rates: dict[str, Any] = {}
    from_shards: dict[str, dict[str, float]] = {}
    for key in ("target_per_s", "achieved_per_s"):
        others, measured, known, unknown = _rate_parts(reports, key)
        if known + unknown:
            from_shards[key] = {"sum": round(measured, 6), "shards": known}
        if others is None or (unknown and not known):
            rates[key] = None
        else:
            estimated = measured + unknown * measured / known if unknown else measured
            rates[key] = round(others + estimated, 3)
    arrivals = _merged_arrivals(reports)
    if arrivals is not None:
        # Measured over the reports' arrivals together: a shard that started
        # late stretched the fleet's span, which its own rate cannot show.
        rates["achieved_per_s"] = achieved_rate(
            arrivals["count"], arrivals["first_at"], arrivals["last_at"]
        )
        rates["arrivals"] = arrivals
    planned = _merged_planned(reports, t0)
    if planned is not None:
        if rates["target_per_s"] is not None:
            rates["target_per_s"] = achieved_rate(
                planned["count"], planned["first_s"], planned["last_s"]
            )
        rates["planned"] = planned
    return {**rates, "from_shards": from_shards}


def _planned_start(report: dict[str, Any]) -> float:
    """When a report's schedule was planned to start: its agreed ``--start-at``
    (a shard that started late planned to start then), else its start."""
    at = _start_at(report)
    return at if at is not None else dt.datetime.fromisoformat(report["started_at"]).timestamp()


def _merged_planned(reports: list[dict[str, Any]], t0: dt.datetime) -> dict[str, Any] | None:
    """Every report's planned arrivals together, their offsets from ``t0``
    (None when a report predates them)."""
    parts = [(report["rate"].get("planned"), _planned_start(report)) for report in reports]
    if not all(part for part, _ in parts):
        return None
    zero = t0.timestamp()
    firsts = [at - zero + p["first_s"] for p, at in parts if p and p["first_s"] is not None]
    lasts = [at - zero + p["last_s"] for p, at in parts if p and p["last_s"] is not None]
    return {
        "count": sum(p["count"] for p, _ in parts if p),
        "first_s": round(min(firsts), 6) if firsts else None,
        "last_s": round(max(lasts), 6) if lasts else None,
    }


def _merged_arrivals(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every report's arrivals together (None when a report predates them)."""
    parts = [report["rate"].get("arrivals") for report in reports]
    if not all(parts):
        return None
    firsts = [p["first_at"] for p in parts if p and p["first_at"] is not None]
    lasts = [p["last_at"] for p in parts if p and p["last_at"] is not None]
    return {
        "count": sum(p["count"] for p in parts if p),
        "first_at": min(firsts) if firsts else None,
        "last_at": max(lasts) if lasts else None,
    }


def _rate_parts(reports: list[dict[str, Any]], key: str) -> tuple[float | None, float, int, int]:
    """(the rates of reports that are no shards, None when one has none; the sum
    of the shards' own rates; how many shards had one; how many had none)."""
    others: float | None = 0.0
    measured, known, unknown = 0.0, 0, 0
    for report in reports:
        rate = report["rate"][key]
        held = len(shards_of(report))
        basis = (report["rate"].get("from_shards") or {}).get(key)
        if held and basis is not None:
            measured += basis["sum"]
            known += int(basis["shards"])
            unknown += held - int(basis["shards"])
        elif rate is not None:
            if held:
                measured += rate
                known += held
            elif others is not None:
                others += rate
        elif held:
            unknown += held
        else:
            others = None
    return others, measured, known, unknown


def _merge_jitp(reports: list[dict[str, Any]], merged: dict[str, Any]) -> dict[str, Any] | None:
    """The ``jitp`` sections added up, when any report has one. What devices saw
    comes from the merged attempts, as for one run. Each embedded emulator (a
    shard's, a capacity step's) counted its own provisionings: they add up, over
    the reports that have them (null when none does)."""
    parts = [r["jitp"] for r in reports if r.get("jitp")]
    if not parts:
        return None
    stopped = [
        (i, r["jitp"]["emulator_stopped"])
        for i, r in enumerate(reports)
        if (r.get("jitp") or {}).get("emulator_stopped")
    ]
    if len(reports) > 1:
        why = "; ".join(f"report {i + 1} of {len(reports)}: {line}" for i, line in stopped)
    else:
        why = "; ".join(line for _, line in stopped)
    section = jitp_section(merged, None, why or None)
    for key in ("provisioning", "provisioning_failures", "emulator_closes"):
        known = [part[key] for part in parts if part.get(key) is not None]
        if known:
            total: Counter[str] = Counter()
            for counts in known:
                total.update(counts)
            if key == "provisioning_failures":
                # Bounded as one emulator's are, whatever the merged reports held.
                total = fold_reasons(total, {})
            # The results in the order one run gives them; reasons most common first.
            section[key] = dict(total) if key == "provisioning" else dict(total.most_common())
    processes = [part.get("emulator_processes") or 0 for part in parts]
    section["emulator_processes"] = sum(processes) or None
    missing = [
        part["emulator_missing"] for part in parts if part.get("emulator_missing") is not None
    ]
    if missing:
        section["emulator_missing"] = [process for part in missing for process in part]
    return section


def _coordinators_cpu(reports: list[dict[str, Any]]) -> float | None:
    """The coordinating processes' CPU added up; unknown (None) when a report
    does not say it (from before the field, or itself a merge with such a part):
    counted as nothing, it would understate what a device costs."""
    return _known_sum((r.get("generator") or {}).get("coordinator_cpu_s") for r in reports)


def _known_sum(values: Iterable[float | None]) -> float | None:
    """The sum of the reports' values of a field; None when any of them is
    unknown (a report older than the field, or a merge with such a part)."""
    known: list[float | None] = list(values)
    if any(v is None for v in known):
        return None
    return sum(v for v in known if v is not None)


def _merge_accounting(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' accounting added up. A report from before accounting existed
    counts its devices as started, and leaves ``unexpected`` unknown (null)."""
    parts = [
        r.get("accounting")
        or {"planned": r["load"]["count"], "started": r["devices"], "unexpected": None}
        for r in reports
    ]
    planned = sum(p["planned"] for p in parts)
    started = sum(p["started"] for p in parts)
    return {
        "planned": planned,
        "started": started,
        "not_started": planned - started,
        "expected": _counts(parts, "expected"),
        "unexpected": _known_sum(p.get("unexpected") for p in parts),
        "notes": _counts(parts, "notes"),
        "workers_lost": {
            key: why
            for i, report in enumerate(reports)
            for key, why in _workers_lost(report, i, parts[i]).items()
        },
    }


def _workers_lost(report: dict[str, Any], place: int, accounting: dict[str, Any]) -> dict[str, str]:
    """A report's lost workers keyed ``SHARD.WORKER``: by the shard's index, so
    a key says which shard whatever order the reports came in; a merge's keys
    have their shard already. A report that is no shard is numbered by its place
    among the merge's inputs (from 1, as ``emulator_stopped`` numbers them); in a
    merge of merges, such keys are nested under their merge's place (``report
    2.1.0``: input 2's report 1, worker 0), or two merges' ``report 1.0`` would be
    one."""
    lost: dict[str, str] = accounting.get("workers_lost") or {}
    if "run_ids" in report:
        return {
            f"report {place + 1}.{key.removeprefix('report ')}"
            if key.startswith("report ")
            else key: why
            for key, why in lost.items()
        }
    shard = report["shard"]["index"] if report.get("shard") else f"report {place + 1}"
    return {f"{shard}.{worker}": why for worker, why in lost.items()}


def _merge_breakdown(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Means weighted by each report's provisioned devices."""
    devices = untimed = 0
    totals = dict.fromkeys(BREAKDOWN, 0)
    for report in reports:
        part = report.get("provision_breakdown_ms")
        if not part:
            continue
        devices += part["devices"]
        if any(part[name] is None for name in BREAKDOWN):
            untimed += part["devices"]
        for name in BREAKDOWN:
            totals[name] += round((part[name] or 0) * part["devices"] * 1000)
    return breakdown_ms(devices, totals, untimed)


def _merge_reasons(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """``reasons`` and ``reason_devices`` over every report (older reports name
    no devices): counts added, the least common folded as a run folds them."""
    counts: dict[str, Counter[str]] = {}
    named: dict[str, dict[str, list[int]]] = {}
    for report in reports:
        for outcome, reasons in report["reasons"].items():
            counts.setdefault(outcome, Counter()).update(reasons)
        for outcome, devices in (report.get("reason_devices") or {}).items():
            name_devices(named.setdefault(outcome, {}), devices)
    reasons = {
        outcome: ranked(fold_reasons(counts[outcome], named.setdefault(outcome, {})))
        for outcome in sorted(counts)
    }
    return {
        "reasons": reasons,
        "reason_devices": {
            outcome: {reason: named[outcome][reason] for reason in kept if reason in named[outcome]}
            for outcome, kept in reasons.items()
            if named[outcome]
        },
    }
