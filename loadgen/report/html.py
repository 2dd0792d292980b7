"""The run report as one self-contained HTML page (docs/html-report.md).

Everything is inline (CSS, SVG plots drawn by loadgen.report.svg) so the page
opens from a CI artifact or an e-mail with no network. Every string taken from
the report is escaped: scenario names and failure reasons are user data.
Reports from before a field existed still render; what they lack is said, not
drawn empty.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from types import MappingProxyType
from typing import Any

from loadgen.device.outcome import HOLD_INTERRUPTED
from loadgen.files import write_output
from loadgen.report import svg
from loadgen.report.gates import UNITS, in_unit
from loadgen.report.show import devices_named, emulator_stopped_line, missing_shards_line
from loadgen.words import counted, number

OUTCOME_COLORS: Mapping[str, str] = MappingProxyType(
    {
        "connected": "#2f9e44",
        "throttled": "#f08c00",
        "not_authorized": "#c92a2a",
        "tls_rejected": "#e64980",
        "refused": "#495057",
        "closed": "#adb5bd",
        "timeout": "#862e2e",
        "error": "#212529",
    }
)
PERCENTILE_COLORS: Mapping[str, str] = MappingProxyType(
    {"p50": "#1c7ed6", "p90": "#7048e8", "p99": "#e8590c", "max": "#868e96"}
)
PART_COLORS: Mapping[str, str] = MappingProxyType(
    {
        "schedule_lag": "#ced4da",
        "tcp_connect": "#74c0fc",
        "tls_handshake": "#9775fa",
        "connack": "#63e6be",
        "back_off": "#ffd43b",
    }
)
FALLBACK_COLORS = ("#a5d8ff", "#d0bfff", "#b2f2bb", "#ffec99", "#ffc9c9", "#dee2e6")
PHASE_MEANING: Mapping[str, str] = MappingProxyType(
    {
        "provision": "from the device's scheduled start to the accepted CONNACK, "
        "across all attempts and back-offs",
        "tcp_connect": "from an attempt's start to TCP connected, every attempt",
        "tls_handshake": "from TCP connected to the TLS handshake done, "
        "every attempt that got there",
        "connack": "from CONNECT sent to CONNACK received",
        "publish_ack": "from a QoS 1 PUBLISH sent to its PUBACK",
    }
)
# An en dash: what a table shows for nothing measured, and between a span's ends.
DASH = "\u2013"
ACHIEVED = "#748ffc"
TARGET = "#343a40"
# More columns than this would be thinner than a pixel; longer runs are binned.
MAX_COLUMNS = 300


def render(report: dict[str, Any]) -> str:
    """The whole page."""
    timeline = Timeline.of(report)
    sections = [
        _header(report),
        _gates(report),
        _accounting(report),
        _capacity(report),
        _section(
            "Arrivals and outcomes",
            _arrival_plot(report, timeline),
            _outcomes_over_time(report, timeline),
            _outcomes_total(report),
        ),
        _latency(report, timeline),
        _section("Provisioning", _breakdown(report), _attempts_plot(report)),
        _jitp(report),
        _reasons(report),
        _footer(report),
    ]
    title = f"loadgen: {report.get('scenario', '?')}"
    return _page(title, "\n".join(s for s in sections if s))


def write_html(path: Path, report: dict[str, Any]) -> None:
    write_output(path, render(report).encode())


# -- page furniture ----------------------------------------------------------

_CSS = """
:root { color-scheme: light; --ink: #212529; --muted: #6c757d; --line: #e9ecef; }
* { box-sizing: border-box; }
body { margin: 0; background: #f8f9fa; color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 24px; margin: 0 0 2px; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 32px 0 12px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 2px; overflow-wrap: anywhere; }
.sub, .caption, footer { color: var(--muted); }
.caption { margin: 0 0 8px; font-size: 13px; }
.banner { margin: 14px 0; padding: 10px 14px; border-radius: 6px; font-weight: 600;
  background: #fff4e6; border: 1px solid #ffa94d; color: #a64b00; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px;
  margin: 16px 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card b { display: block; font-size: 22px; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: 12px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 16px; }
figure.plot, .plot-empty, .panel { margin: 0; background: #fff; border: 1px solid var(--line);
  border-radius: 8px; padding: 12px 14px; }
.panel { margin-bottom: 16px; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figure.plot svg { display: block; width: 100%; height: auto; margin-top: 6px; }
figure.plot svg text { font-family: inherit; }
figure.plot svg .hover:hover { fill-opacity: 0.06; }
.panel h3 { margin-top: 16px; }
.panel h3:first-child { margin-top: 0; }
.nothing { color: var(--muted); font-style: italic; margin: 6px 0 0; }
table { border-collapse: collapse; background: #fff; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
td.num, th.num { text-align: right; }
td.text { overflow-wrap: anywhere; max-width: 760px; }
.pass { color: #2b8a3e; font-weight: 600; }
.fail { color: #c92a2a; font-weight: 600; }
.interrupted { color: var(--muted); font-weight: 600; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
footer { margin-top: 40px; font-size: 12px; overflow-wrap: anywhere; }
"""


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _section(title: str, *parts: str, grid: bool = True) -> str:
    inner = "".join(p for p in parts if p)
    if not inner:
        return ""
    wrapped = f'<div class="grid">{inner}</div>' if grid else inner
    return f"<section><h2>{escape(title)}</h2>{wrapped}</section>"


def _figure(name: str, title: str, chart: str, caption: str = "") -> str:
    return (
        f'<figure class="plot" data-plot="{escape(name)}"><h3>{escape(title)}</h3>'
        f"{_caption(caption)}{chart}</figure>"
    )


def _nothing(name: str, title: str, why: str) -> str:
    """Instead of an empty chart: the title and why there is nothing to draw."""
    return (
        f'<div class="plot-empty" data-plot-empty="{escape(name)}"><h3>{escape(title)}</h3>'
        f'<p class="nothing">{escape(why)}</p></div>'
    )


def _caption(text: str) -> str:
    return f'<p class="caption">{escape(text)}</p>' if text else ""


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[bool],
    text: Sequence[int] = (),
) -> str:
    """Cells arrive already escaped (some carry markup). Columns ``text`` hold
    free text from the report (failure reasons, gates), which wraps anywhere: a
    reason with no space in it would otherwise widen the page past the screen."""

    def cls(i: int) -> str:
        if i in text:
            return ' class="text"'
        return ' class="num"' if i < len(numeric) and numeric[i] else ""

    ths = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(head))
    trs = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"


def _e(value: Any) -> str:
    return escape(str(value))


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:,.1f}"


def _num(value: float | None) -> str:
    return DASH if value is None else number(value)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else DASH


def _when(iso: Any) -> str:
    try:
        moment = dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _dot(color: str) -> str:
    return f'<span class="dot" style="background:{color}"></span>'


def _color(name: str, palette: Mapping[str, str], index: int) -> str:
    return palette.get(name, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


# -- header, gates, footer ---------------------------------------------------


def _header(report: dict[str, Any]) -> str:
    banner = (
        f'<div class="banner" role="alert">{_e(_partial(report))}</div>'
        if report.get("partial")
        else ""
    )
    if (missing := missing_shards_line(report)) is not None:
        banner += f'<div class="banner" role="alert">{_e(_sentence(missing))}.</div>'
    stopped = (report.get("jitp") or {}).get("emulator_stopped")
    if stopped:
        line = emulator_stopped_line(stopped)
        banner += f'<div class="banner" role="alert">{_e(line[0].upper() + line[1:])}.</div>'

    load = report.get("load") or {}
    rate = report.get("rate") or {}
    facts = [
        ("endpoint", _e(report.get("endpoint", "?"))),
        ("started", _e(_when(report.get("started_at")))),
        ("ended", _e(_when(report.get("ended_at")))),
        ("duration", f"{_num(report.get('duration_s'))} s"),
        ("devices", f"{_num(report.get('devices'))} of {_num(load.get('count'))} planned"),
        (
            "load",
            _e(
                f"{load.get('executor', '?')}, max {load.get('max_in_flight', '?')} in flight, "
                f"{load.get('workers', '?')} workers, MQTT {load.get('mqtt_version', '?')}"
            ),
        ),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    cards = _cards(report, rate)
    return (
        f"<header><h1>{_e(report.get('scenario', '?'))}</h1>"
        f'<p class="sub">loadgen run report · {_e(report.get("format", ""))}</p>'
        f'{banner}<dl class="facts">{dl}</dl>{cards}</header>'
    )


def _partial(report: dict[str, Any]) -> str:
    """What a stop did to the run: kept devices from starting, cut short the
    ones holding their connection, or both (a stop during the hold starts
    every device)."""
    said = "PARTIAL — stopped early: devices in flight got a grace period and everything "
    said += "measured is here."
    accounting = report.get("accounting")
    if accounting is None:
        return (
            said + " This report predates accounting, so how many planned devices ran is unknown."
        )
    planned, started = accounting["planned"], accounting["started"]
    not_started = accounting.get("not_started") or max(planned - started, 0)
    if not_started:
        what = [f"{_num(not_started)} of {_num(planned)} planned devices never started"]
    elif not planned:
        what = ["no device was planned"]
    else:
        what = [
            f"all {_num(planned)} planned devices started"
            if planned != 1
            else "the planned device started"
        ]
    held = (accounting.get("notes") or {}).get(HOLD_INTERRUPTED)
    if held:
        were = "was cut short in its" if held == 1 else "were cut short in their"
        what.append(f"{_num(held)} {were} hold (connected, and counted so)")
    return f"{said} {_sentence('; '.join(what))}."


def _cards(report: dict[str, Any], rate: dict[str, Any]) -> str:
    outcomes = report.get("outcomes") or {}
    devices = report.get("devices") or 0
    provision = (report.get("latency_ms") or {}).get("provision") or {}
    target = rate.get("target_per_s")
    cards = [
        (_num(devices), "devices"),
        (_pct(outcomes.get("connected", 0), devices), "connected"),
        (_with_unit(_ms(provision.get("p50")), " ms"), "provision p50"),
        (_with_unit(_ms(provision.get("p99")), " ms"), "provision p99"),
        (
            _with_unit(_num(rate.get("achieved_per_s")), "/s"),
            "achieved rate" + (f" (target {_num(target)}/s)" if target is not None else ""),
        ),
    ]
    inner = "".join(f'<div class="card"><b>{v}</b><span>{_e(k)}</span></div>' for v, k in cards)
    return f'<div class="cards">{inner}</div>'


def _with_unit(value: str, unit: str) -> str:
    return value if value == DASH else value + unit


def _gates(report: dict[str, Any]) -> str:
    gates = report.get("gates")
    if not gates:
        return ""
    failed = sum(not g.get("passed") for g in gates)
    verdict = (
        f'<p class="fail">{failed} of {len(gates)} gates failed</p>'
        if failed
        else f'<p class="pass">all {len(gates)} gates passed</p>'
    )

    def shown(g: dict[str, Any], key: str) -> str:
        value, unit = g.get(key), str(g.get("unit"))
        if value is None:
            return DASH
        return _e(in_unit(value, unit)) if unit in UNITS.values() else _num(value)

    rows = [
        [
            f"<code>{_e(g.get('gate'))}</code>",
            shown(g, "measured"),
            shown(g, "threshold"),
            '<span class="pass">pass</span>'
            if g.get("passed")
            else '<span class="fail">FAIL</span>'
            + (f" ({_e(g['note'])})" if g.get("note") else ""),
        ]
        for g in gates
    ]
    table = _table(
        ["gate", "measured", "threshold", "verdict"], rows, [False, True, True], text=(0, 3)
    )
    return _section("Gates", verdict + table, grid=False)


def _accounting(report: dict[str, Any]) -> str:
    """Where every planned device went (report-format.md, Accounting)."""
    accounting = report.get("accounting")
    if not accounting:
        return ""
    facts = [("planned", _num(accounting["planned"])), ("started", _num(accounting["started"]))]
    if accounting.get("not_started"):
        facts.append(("not started", f"{_num(accounting['not_started'])} (kept by a stop)"))
    expected = {o: n for o, n in (accounting.get("expected") or {}).items() if n}
    if expected:
        listed = ", ".join(f"{_e(o)} {_num(n)}" for o, n in expected.items())
        facts.append(("expected failures", f"{listed} (as their injected faults predict)"))
    unexpected = accounting.get("unexpected")
    if unexpected is not None:
        facts.append(
            ("unexpected outcomes", f'<span class="fail">{_num(unexpected)}</span>')
            if unexpected
            else ("unexpected outcomes", "0")
        )
    for note, n in (accounting.get("notes") or {}).items():
        facts.append(("note", f"{counted(n, 'device')} {_e(note)}"))
    for worker, why in (accounting.get("workers_lost") or {}).items():
        facts.append(("worker lost", f'<span class="fail">worker {_e(worker)} {_e(why)}</span>'))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return _section(
        "Accounting", f'<div class="panel"><dl class="facts">{dl}</dl></div>', grid=False
    )


def _footer(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    parts = [f"{k} {v}" for k, v in env.items()]
    return f"<footer>{_e(' · '.join(parts))}</footer>"


# -- time series ---------------------------------------------------------------


def interval_of(series: dict[str, Any]) -> float:
    """The series' seconds an entry (1 in every report written; a report edited
    to 0, a negative or a huge number, which no plot could draw, is read as 1)."""
    interval = float(series.get("interval_s") or 1)
    return interval if 0 < interval <= _LONGEST_INTERVAL else 1.0


_LONGEST_INTERVAL = 86_400.0


@dataclass(frozen=True)
class Timeline:
    """The run's time axis: ``intervals`` of ``interval_s`` seconds, and how many
    of them one column holds (long runs are binned to keep columns visible)."""

    interval_s: float
    intervals: int

    @classmethod
    def of(cls, report: dict[str, Any]) -> Timeline:
        series = report.get("series") or {}
        lengths = [len(series.get("started_per_s") or []), len(series.get("target_per_s") or [])]
        lengths += [len(v) for v in (series.get("outcomes_per_s") or {}).values()]
        lengths += [len(v) for v in (series.get("latency_ms") or {}).values()]
        return cls(interval_of(series), max(lengths, default=0))

    @property
    def per_column(self) -> int:
        return max(1, math.ceil(self.intervals / MAX_COLUMNS))

    @property
    def columns(self) -> int:
        return math.ceil(self.intervals / self.per_column)

    def rate(self, counts: Sequence[float]) -> list[float]:
        """Counts per interval as a mean rate per second in each column."""
        k = self.per_column
        out = []
        for c in range(self.columns):
            chunk = counts[c * k : (c + 1) * k]
            seconds = min(k, self.intervals - c * k) * self.interval_s
            out.append(sum(chunk) / seconds)
        return out

    def span(self, column: int, k: int | None = None) -> str:
        k = self.per_column if k is None else k
        start = column * k * self.interval_s
        end = min((column + 1) * k, self.intervals) * self.interval_s
        return f"{_num(start)}{DASH}{_num(end)} s"

    def binned_note(self) -> str:
        k = self.per_column
        return f" Each column is {_num(k * self.interval_s)} s (mean per second)." if k > 1 else ""


def _arrival_plot(report: dict[str, Any], timeline: Timeline) -> str:
    name, title = "arrival-rate", "Target and achieved arrival rate"
    series = report.get("series") or {}
    started = series.get("started_per_s") or []
    if not any(started):
        return _nothing(name, title, "No device started.")
    achieved = timeline.rate(started)
    lines = []
    target = _target_counts(report, len(started))
    if target is not None:
        planned = timeline.rate(target)
        lines.append(svg.Line("target (planned)", TARGET, planned, dashed=True, step=True))
    hover = [
        f"{timeline.span(i)}: started {svg.fmt(a)}/s"
        + (f", planned {svg.fmt(planned[i])}/s" if target is not None else "")
        for i, a in enumerate(achieved)
    ]
    chart = svg.time_chart(
        intervals=timeline.columns,
        interval_s=timeline.per_column * timeline.interval_s,
        y_label="arrivals (devices/s)",
        layers=[svg.Layer("achieved (devices started)", ACHIEVED, achieved)],
        lines=lines,
        hover=hover,
    )
    caption = (
        "Devices started in each second against the schedule's plan. Columns below the "
        "dashed line mean the generator fell behind." + timeline.binned_note()
    )
    if target is None:
        caption += " No target rate: a burst has none."
    return _figure(name, title, chart, caption)


def _target_counts(report: dict[str, Any], length: int) -> list[float] | None:
    """Planned arrivals per interval; older reports only have the mean target rate,
    drawn flat over the seconds devices started in."""
    series = report.get("series") or {}
    if series.get("target_per_s") is not None:
        return [float(v) for v in series["target_per_s"]]
    mean = (report.get("rate") or {}).get("target_per_s")
    if mean is None:
        return None
    return [mean * interval_of(series)] * length


def _outcomes_over_time(report: dict[str, Any], timeline: Timeline) -> str:
    name, title = "outcomes-over-time", "Outcomes over time"
    per_s = (report.get("series") or {}).get("outcomes_per_s") or {}
    order = [*(report.get("outcomes") or {}), *sorted(per_s)]
    names = [o for o in dict.fromkeys(order) if any(per_s.get(o) or [])]
    if not names:
        return _nothing(name, title, "No device reached an outcome.")
    layers = [
        svg.Layer(o, _color(o, OUTCOME_COLORS, i), timeline.rate(per_s[o]))
        for i, o in enumerate(names)
    ]
    hover = [
        f"{timeline.span(c)}: "
        + ", ".join(f"{la.name} {svg.fmt(la.values[c])}" for la in layers if la.values[c])
        for c in range(timeline.columns)
    ]
    chart = svg.time_chart(
        intervals=timeline.columns,
        interval_s=timeline.per_column * timeline.interval_s,
        y_label="devices ending (per s)",
        layers=layers,
        hover=hover,
    )
    caption = (
        "Devices reaching their final outcome in each second, stacked by outcome."
        + timeline.binned_note()
    )
    return _figure(name, title, chart, caption)


def _outcomes_total(report: dict[str, Any]) -> str:
    name, title = "outcomes-total", "Outcomes in total"
    outcomes = report.get("outcomes") or {}
    total = sum(outcomes.values())
    bars = [
        svg.Bar(o, n, _color(o, OUTCOME_COLORS, i), f"({_pct(n, total)})")
        for i, (o, n) in enumerate(outcomes.items())
        if n
    ]
    if not bars:
        return _nothing(name, title, "No device ran.")
    none = [o for o, n in outcomes.items() if not n]
    caption = f"Each device's final outcome, {_num(total)} devices." + (
        f" None were {', '.join(none)}." if none else ""
    )
    return _figure(name, title, svg.hbars(bars=bars, x_label="devices"), caption)


# -- latency -------------------------------------------------------------------


def _latency(report: dict[str, Any], timeline: Timeline) -> str:
    table = _latency_table(report)
    per_s = (report.get("series") or {}).get("latency_ms")
    if per_s is None:
        note = _caption(
            "Latency over time is not in this report (it predates series.latency_ms); "
            "the table has the whole run's percentiles."
        )
        return _section("Latency", table + note, grid=False)
    plots = "".join(
        _latency_plot(phase, seconds or [], timeline) for phase, seconds in per_s.items()
    )
    return _section("Latency", table, f'<div class="grid">{plots}</div>', grid=False)


def _latency_table(report: dict[str, Any]) -> str:
    keys = ("p50", "p90", "p99", "p99_9", "max")
    rows = []
    for phase, s in (report.get("latency_ms") or {}).items():
        s = s or {}
        rows.append(
            [f"<code>{_e(phase)}</code>", _num(s.get("count")), *(_ms(s.get(k)) for k in keys)]
        )
    lag = report.get("schedule_lag_ms")
    if lag:
        rows.append(["schedule lag", _num(lag.get("count")), *(_ms(lag.get(k)) for k in keys)])
    head = ["phase (ms)", "count", "p50", "p90", "p99", "p99.9", "max"]
    return '<div class="panel">' + _table(head, rows, [False] + [True] * 6) + "</div>"


def _latency_plot(phase: str, seconds: Sequence[dict[str, Any]], timeline: Timeline) -> str:
    name, title = f"latency-{phase}", f"{phase} latency over time"
    if not any((s or {}).get("count") for s in seconds):
        return _nothing(name, title, f"Nothing measured for {phase}.")
    # The run's whole time axis, as the other time plots have, for comparison.
    padded = [*(s or {} for s in seconds), *[{}] * (timeline.intervals - len(seconds))]
    k = timeline.per_column
    points = [_envelope(padded[c * k : (c + 1) * k]) for c in range(timeline.columns)]
    keys = [key for key in PERCENTILE_COLORS if any(p.get(key) is not None for p in points)]
    lines = [
        svg.Line(key, PERCENTILE_COLORS[key], [p.get(key) for p in points], dashed=key == "max")
        for key in keys
    ]
    log = svg.wants_log([v for line in lines for v in line.ys if v is not None])
    chart = svg.time_chart(
        intervals=timeline.columns,
        interval_s=k * timeline.interval_s,
        y_label="latency (ms" + (", log scale)" if log else ")"),
        lines=lines,
        hover=[_latency_note(timeline.span(c), p) for c, p in enumerate(points)],
        log_y=log,
    )
    caption = f"{_sentence(PHASE_MEANING.get(phase, phase))}; percentiles of the devices that "
    caption += "started in each second."
    if k > 1:
        caption += (
            f" Each point is the highest per-second value in its {_num(k * timeline.interval_s)} s."
        )
    if log:
        caption += " Log scale: the values span over two decades."
    return _figure(name, title, chart, caption)


def _envelope(seconds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several seconds as one point: their count, and the highest of each
    percentile (percentiles do not merge; spikes are what a reader looks for)."""
    out: dict[str, Any] = {"count": sum(s.get("count") or 0 for s in seconds)}
    for key in PERCENTILE_COLORS:
        values = [s[key] for s in seconds if s.get(key) is not None]
        out[key] = max(values) if values else None
    return out


def _latency_note(span: str, point: dict[str, Any]) -> str:
    if not point.get("count"):
        return f"{span}: nothing measured"
    values = ", ".join(
        f"{k} {_ms(point.get(k))} ms" for k in PERCENTILE_COLORS if point.get(k) is not None
    )
    return f"{span}: {_num(point['count'])} measured; {values}"


# -- phase breakdown, attempts -------------------------------------------------


def _breakdown(report: dict[str, Any]) -> str:
    name, title = "phase-breakdown", "Phase breakdown of a provisioning"
    if "provision_breakdown_ms" not in report:
        return _breakdown_medians(report)
    breakdown = report["provision_breakdown_ms"]
    if not breakdown:
        return _nothing(name, title, "No device provisioned.")
    parts = [(k, float(v)) for k, v in breakdown.items() if k != "devices" and v is not None]
    untimed = [k for k, v in breakdown.items() if k != "devices" and v is None]
    if untimed:
        return _nothing(
            name,
            title,
            f"The driver timed only the whole provisioning, not its parts ({', '.join(untimed)}); "
            "the provision latency is in the latency table.",
        )
    total = sum(v for _, v in parts)
    bars = [
        svg.Bar(k, v, _color(k, PART_COLORS, i), f"ms ({_pct(v, total)})")
        for i, (k, v) in enumerate(parts)
    ]
    chart = svg.stacked_hbar(parts=bars, x_label="mean time per provisioned device (ms)")
    rows = [[_dot(b.color) + _e(b.label), _ms(b.value), _pct(b.value, total)] for b in bars]
    rows.append(["<b>provision (sum)</b>", f"<b>{_ms(total)}</b>", "100%"])
    table = _table(["part", "mean (ms)", "share"], rows, [False, True, True])
    caption = (
        f"Where the mean provision time goes, over {_num(breakdown.get('devices', 0))} provisioned "
        f"devices: the parts add up to the mean provision time, {_ms(total)} ms."
    )
    return _figure(name, title, chart + table, caption)


def _breakdown_medians(report: dict[str, Any]) -> str:
    """Older reports have no breakdown: the phases' medians are the best stand-in."""
    name, title = "phase-breakdown", "Phase breakdown of a provisioning (medians)"
    latency = report.get("latency_ms") or {}
    wanted = ("provision", "tcp_connect", "tls_handshake", "connack")
    bars = [
        svg.Bar(p, latency[p]["p50"], _color(p, PART_COLORS, i), "ms")
        for i, p in enumerate(wanted)
        if (latency.get(p) or {}).get("p50") is not None
    ]
    if not bars:
        return _nothing(name, title, "Nothing measured.")
    caption = (
        "This report predates provision_breakdown_ms, so these are the medians of each phase "
        "from latency_ms. Connection phases count every attempt, so with JITP's extra attempt "
        "and the back-offs they do not add up to provision."
    )
    return _figure(name, title, svg.hbars(bars=bars, x_label="median (ms)"), caption)


def _attempts_plot(report: dict[str, Any]) -> str:
    name, title = "attempts-per-device", "Attempts per device"
    per_device = {
        int(k): int(v) for k, v in ((report.get("attempts") or {}).get("per_device") or {}).items()
    }
    if not any(devices for n, devices in per_device.items() if n > 0):
        return _nothing(name, title, "No device made an attempt.")
    total = sum(per_device.values())
    # Every count up to the highest, zeros included, so gaps read as gaps; from 0
    # when devices failed before any attempt (their files would not load, say):
    # every device is in the plot once.
    first = 0 if per_device.get(0) else 1
    highest = max(per_device)
    counts = range(first, highest + 1) if highest <= 40 else sorted(per_device)
    bars = [
        svg.Bar(
            str(n), per_device.get(n, 0), ACHIEVED, f"devices ({_pct(per_device.get(n, 0), total)})"
        )
        for n in counts
    ]
    chart = svg.columns(
        bars=bars,
        series="devices per attempt count",
        x_label="connection attempts per device",
        y_label="devices",
    )
    triggered = (report.get("attempts") or {}).get("provisioning_triggered")
    total_attempts = (report.get("attempts") or {}).get("total")
    caption = f"How many connection attempts each device made; {_num(total_attempts)} in all."
    if triggered:
        caption += (
            f" {_num(triggered)} devices' first rejection was JITP's trigger, "
            "so 2 is the norm there."
        )
    throttled = (report.get("attempts") or {}).get("throttled")
    if throttled:
        caption += f" {_num(throttled)} CONNECTs, PUBLISHes or SUBSCRIBEs were answered throttled."
    return _figure(name, title, chart, caption)


# -- JITP, reasons -------------------------------------------------------------


def _jitp(report: dict[str, Any]) -> str:
    jitp = report.get("jitp")
    if not jitp:
        return ""
    parts = [
        f"<p>{_num(jitp.get('first_connect_rejected'))} devices had their first connect "
        "rejected, taken as JITP's trigger.</p>"
    ]
    provisioning = jitp.get("provisioning")
    if provisioning:
        rows = [[_e(k), _num(v)] for k, v in provisioning.items()]
        parts.append("<h3>Provisionings by result (emulator)</h3>")
        parts.append(_table(["result", "count"], rows, [False, True], text=(0,)))
    failures = jitp.get("provisioning_failures")
    if failures:
        listed = list(failures.items())
        rows = [[_e(k), _num(v)] for k, v in listed[:_REASONS_SHOWN]]
        if rest := listed[_REASONS_SHOWN:]:
            rows.append([f"{_num(len(rest))} less common reasons", _num(sum(n for _, n in rest))])
        parts.append("<h3>Failed provisionings by reason</h3>")
        parts.append(_table(["reason", "count"], rows, [False, True], text=(0,)))
    if provisioning is None:
        parts.append(
            _caption("The endpoint's provisionings are only counted with endpoint: embedded.")
        )

    return _section("JITP", '<div class="panel">' + "".join(parts) + "</div>", grid=False)


# Reasons listed per outcome; the report may hold up to a thousand.
_REASONS_SHOWN = 20


def _reasons(report: dict[str, Any]) -> str:
    reasons = report.get("reasons") or {}
    named = report.get("reason_devices") or {}
    blocks = []
    for i, (outcome, counts) in enumerate(reasons.items()):
        if not counts:
            continue
        rows = []
        listed = list(counts.items())
        for reason, n in listed[:_REASONS_SHOWN]:
            indices = named.get(outcome, {}).get(reason)
            rows.append([_e(reason), _num(n), _e(devices_named(indices, n)) if indices else DASH])
        if rest := listed[_REASONS_SHOWN:]:
            more = f"{_num(len(rest))} less common reasons"
            rows.append([more, _num(sum(n for _, n in rest)), DASH])
        color = _color(outcome, OUTCOME_COLORS, i)
        blocks.append(
            f"<h3>{_dot(color)}{_e(outcome)}</h3>"
            + _table(["reason", "devices", "fleet index"], rows, [False, True], text=(0,))
        )
    if not blocks:
        return ""
    return _section(
        "Failure reasons", '<div class="panel">' + "".join(blocks) + "</div>", grid=False
    )


# -- capacity ------------------------------------------------------------------


def _capacity(report: dict[str, Any]) -> str:
    capacity = report.get("capacity")
    if not capacity:
        return ""
    facts = [
        ("verdict", _e(capacity.get("verdict", ""))),
        ("highest sustainable", _rate(capacity.get("highest_sustainable_per_s"))),
        ("first broken", _rate(capacity.get("first_broken_per_s"))),
        ("limit", _e(capacity.get("limit") or "none found")),
        ("SLOs", ", ".join(f"<code>{_e(s)}</code>" for s in capacity.get("slos") or []) or DASH),
    ]
    dl = '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    steps = capacity.get("steps") or []
    return _section(
        "Capacity search",
        '<div class="panel">' + dl + _steps_table(steps) + "</div>",
        _capacity_plot(capacity, steps),
        grid=False,
    )


def _rate(value: float | None) -> str:
    return DASH if value is None else f"{_num(value)}/s"


def _step_latency(step: dict[str, Any], key: str) -> float | None:
    value = ((step.get("latency_ms") or {}).get("provision") or {}).get(key)
    return None if value is None else float(value)


def _failed_pct(step: dict[str, Any]) -> float | None:
    ratio = step.get("failed_ratio")
    return None if ratio is None else 100 * float(ratio)


def _share(pct: float | None) -> str:
    return DASH if pct is None else f"{pct:.2f}%"


# A step a stop cut short measured too little to pass or break an SLO: it
# proves nothing either way (the search's verdict leaves it out), so it is
# drawn apart from both.
INTERRUPTED = "#868e96"


def _step_state(step: dict[str, Any]) -> str:
    if step.get("passed"):
        return "passed"
    return "interrupted" if step.get("interrupted") else "broken"


def _step_verdict(step: dict[str, Any]) -> str:
    state = _step_state(step)
    if state == "passed":
        return '<span class="pass">pass</span>'
    if state == "interrupted":
        return '<span class="interrupted">interrupted</span> (cut short by a stop)'
    limit = f" ({_e(step['limit'])})" if step.get("limit") else ""
    broken = ", ".join(f"<code>{_e(b)}</code>" for b in step.get("broken") or [])
    return f'<span class="fail">broken{limit}</span> {broken}'


def _steps_table(steps: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            _num(s.get("step")),
            _rate(s.get("rate_per_s")),
            _rate(s.get("achieved_per_s")),
            _num(s.get("devices")),
            _ms(_step_latency(s, "p50")),
            _ms(_step_latency(s, "p99")),
            _share(_failed_pct(s)),
            _num(s.get("throttled")),
            _step_verdict(s),
        ]
        for s in steps
    ]
    head = [
        "step",
        "rate",
        "achieved",
        "devices",
        "p50 (ms)",
        "p99 (ms)",
        "failed",
        "throttled",
        "verdict",
    ]
    return _table(head, rows, [True] * 8 + [False])


def _capacity_plot(capacity: dict[str, Any], steps: Sequence[dict[str, Any]]) -> str:
    name, title = "capacity-steps", "Latency and failures against the step rate"
    if not steps:
        return _nothing(name, title, "No step ran.")
    xs = [float(s.get("rate_per_s") or 0) for s in steps]
    notes = [_step_note(s) for s in steps]
    marks = [
        svg.Mark(float(capacity[key]), f"{label} {_rate(capacity[key])}", color)
        for key, label, color in (
            ("highest_sustainable_per_s", "highest sustainable", "#2f9e44"),
            ("first_broken_per_s", "first broken", "#c92a2a"),
        )
        if capacity.get(key) is not None
    ]
    p99 = [_step_latency(s, "p99") for s in steps]
    failed = [_failed_pct(s) for s in steps]
    x_label = "step arrival rate (devices/s)"
    charts = [
        svg.xy_chart(
            xs=xs,
            lines=_step_lines("p99 provision", "#e8590c", p99, steps, notes),
            x_label=x_label,
            y_label="p99 provision (ms)",
            marks=marks,
        ),
        svg.xy_chart(
            xs=xs,
            lines=_step_lines("failed devices", "#862e2e", failed, steps, notes),
            x_label=x_label,
            y_label="failed (%)",
            marks=marks,
        ),
    ]
    caption = (
        "Each step's p99 provision latency and failed share; "
        "green points met every SLO, red broke one."
    )
    if any(_step_state(s) == "interrupted" for s in steps):
        caption += " Grey points are steps a stop cut short: they prove nothing either way."
    return _figure(name, title, f'<div class="pair">{"".join(charts)}</div>', caption)


def _step_lines(
    name: str,
    color: str,
    ys: Sequence[float | None],
    steps: Sequence[dict[str, Any]],
    notes: Sequence[str],
) -> list[svg.Line]:
    states = [_step_state(s) for s in steps]
    lines = [svg.Line(name, color, ys)]
    # Passed and broken always in the legend; interrupted only when one was.
    for state, point_color in (
        ("passed", "#2f9e44"),
        ("broken", "#c92a2a"),
        ("interrupted", INTERRUPTED),
    ):
        if state == "interrupted" and state not in states:
            continue
        points = [y if s == state else None for y, s in zip(ys, states, strict=True)]
        lines.append(
            svg.Line(
                f"step {state}",
                point_color,
                points,
                markers=True,
                connect=False,
                marker_notes=notes,
            )
        )
    return lines


def _step_note(step: dict[str, Any]) -> str:
    state = _step_state(step)
    broken = ", ".join(step.get("broken") or [])
    if state == "passed":
        verdict = "passed"
    elif state == "interrupted":
        verdict = "interrupted (cut short by a stop; proves nothing either way)"
    else:
        verdict = f"broken ({step.get('limit') or '?'})" + (f": {broken}" if broken else "")
    return (
        f"step {step.get('step')}: {_rate(step.get('rate_per_s'))}, p99 provision "
        f"{_ms(_step_latency(step, 'p99'))} ms, "
        f"failed {_share(_failed_pct(step))}, {verdict}"
    )
