"""What CI systems read: JUnit XML (one test case per gate) and a markdown
summary for a job's summary page."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from loadgen.files import each_output
from loadgen.metrics.stats import PHASES
from loadgen.report.gates import GateResult, in_unit
from loadgen.report.show import PARTIAL, accounting_phrases, expected_cell, missing_shards_line
from loadgen.report.store import MARKDOWN, XML, Destination
from loadgen.words import counted, number

# What XML 1.0 cannot hold at all, even escaped: C0 controls but tab and newlines.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    """``text`` with what XML cannot hold replaced (a report from elsewhere, say,
    named before names were checked): a JUnit file that does not parse is lost."""
    return _NOT_XML.sub("\ufffd", text)


def junit(report: dict[str, Any], results: list[GateResult]) -> bytes:
    suite = ET.Element(
        "testsuite",
        name=_xml(f"loadgen {report['scenario']}"),
        tests=str(len(results)),
        failures=str(sum(not r.passed for r in results)),
        time=f"{report['duration_s']:.3f}",
        timestamp=report["started_at"],
    )
    for result in results:
        case = ET.SubElement(suite, "testcase", classname="loadgen.gates", name=_xml(result.gate))
        if not result.passed:
            failure = ET.SubElement(case, "failure", message=_xml(result.describe()))
            failure.text = _xml(result.describe())
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data


def summary_markdown(report: dict[str, Any], results: list[GateResult]) -> str:
    failed = [r for r in results if not r.passed]
    verdict = "❌ gates failed" if failed else ("✅ gates passed" if results else "no gates")
    if report.get("partial"):
        verdict += f" {PARTIAL}"
    lines = [f"## loadgen: {report['scenario']} — {verdict}", ""]
    if (missing := missing_shards_line(report)) is not None:
        lines += [f"**{missing[:1].upper()}{missing[1:]}.**", ""]
    lines += [
        f"{counted(report['devices'], 'device')} against `{report['endpoint']}` in "
        f"{report['duration_s']:.1f} s; {_rates(report['rate'])}.",
        "",
    ]
    if results:
        lines += ["| gate | measured | verdict |", "| --- | ---: | --- |"]
        for r in results:
            measured = "-" if r.measured is None else in_unit(r.measured, r.unit)
            verdict = "pass" if r.passed else "**FAIL**"
            note = f" ({r.note})" if r.note else ""
            lines.append(f"| `{r.gate}` | {measured} | {verdict}{note} |")
        lines.append("")
    accounting = report.get("accounting")
    if accounting is not None:
        lines += [" ".join(accounting_phrases(accounting)) + ".", ""]
    expected = (accounting or {}).get("expected") or {}
    lines += ["| outcome | devices | expected |", "| --- | ---: | ---: |"]
    lines += [
        f"| {k} | {number(v)} | {expected_cell(expected, k)} |"
        for k, v in report["outcomes"].items()
        if v
    ]
    lines += ["", "| phase (ms) | p50 | p90 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for phase in PHASES:
        s = report["latency_ms"][phase]
        cells = ["-" if s[k] is None else f"{s[k]:,.1f}" for k in ("p50", "p90", "p99", "max")]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_ci_files(
    report: dict[str, Any],
    results: list[GateResult],
    junit_path: Destination | None,
    summary_path: Destination | None,
) -> None:
    writes: list[Callable[[], None]] = []
    if junit_path is not None:
        writes.append(lambda: junit_path.write(junit(report, results), XML))
    if summary_path is not None:
        writes.append(
            lambda: summary_path.write(summary_markdown(report, results).encode(), MARKDOWN)
        )
    each_output(writes)


def _rates(rate: dict[str, Any]) -> str:
    """The arrival rate, and its target where the run had one (a burst has
    none; a run where no device started, no rate at all)."""
    achieved, target = rate.get("achieved_per_s"), rate.get("target_per_s")
    said = "no arrival rate" if achieved is None else f"arrival rate {number(achieved)}/s"
    return said if target is None else f"{said} (target {number(target)}/s)"
