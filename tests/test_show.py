"""What a person sees while a run goes and at its end (`loadgen.report.show`):
a live view on a terminal, plain progress lines in a log, and a summary that
reads whole at 80 columns."""

from __future__ import annotations

import copy
import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from loadgen.load.runner import Progress, merge_progress
from loadgen.load.workers import RunTiming
from loadgen.metrics.stats import RunStats
from loadgen.report.build import build
from loadgen.report.show import LiveRun, arrival_rate, fit, print_capacity, print_report, say
from tests.conftest import run_loadgen
from tests.test_html_report import CAPACITY
from tests.test_report_merge import _plan
from tests.test_stats import _results

WIDTH = 80


def _progress(
    started: int,
    in_flight: int,
    connected: int,
    finished: int = 0,
    *,
    per_second: float | None = None,
    at: float = 0.0,
) -> Progress:
    """A worker's progress; with ``per_second``, its ``started`` devices
    started at that rate from the schedule's start, measured ``at``."""
    stats = RunStats()
    for i, result in enumerate(_results(finished, 5)):
        stats.started(i * 0.01)
        stats.add(result, i * 0.01, i * 0.01 + 0.5)
    if per_second is not None:
        stats.started_per_second.clear()
        for i in range(started):
            stats.started(i / per_second)
    return Progress(started, in_flight, connected, stats.to_wire(since=0), at=at)


def _report(devices: int, scale: float = 1.0) -> dict[str, Any]:
    results = _results(devices, 3)
    for result in results:
        if result.provision is not None:
            result.provision *= scale
        result.phases = [(phase, value * scale) for phase, value in result.phases]
    stats = RunStats()
    for i, result in enumerate(results):
        stats.started(i * 0.01)
        stats.add(result, i * 0.01, i * 0.01 + 0.5)
    return build(_plan(devices), stats, RunTiming(0.0, 212.3))


def _lines(console: Console) -> list[str]:
    return console.export_text().splitlines()


def _assert_fits(lines: list[str], *phrases: str) -> None:
    """Every line fits the width, and each phrase is whole on one line."""
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    for phrase in phrases:
        assert any(phrase in line for line in lines), (phrase, lines)


def _terminal() -> Console:
    return Console(width=WIDTH, force_terminal=True, file=io.StringIO())


def test_without_a_terminal_a_run_prints_a_plain_progress_line_every_five_seconds() -> None:
    out = io.StringIO()
    live = LiveRun(Console(file=out, width=WIDTH), _plan(200))
    with live:
        for tick in range(25):  # 12 s of progress, every half second
            elapsed = tick * 0.5
            live.update(
                merge_progress([_progress(int(elapsed * 10), 5, 2, per_second=10, at=elapsed)]),
                elapsed,
            )
    lines = out.getvalue().splitlines()
    assert [line.split(" s ")[0].strip() for line in lines] == ["5.0", "10.0"]
    assert "started 50/200" in lines[0] and "in flight 5" in lines[0]
    assert "connected 2" in lines[0] and "failed 0" in lines[0]
    assert "rate 10/s" in lines[0] and "(target 100/s)" in lines[0]
    assert "\x1b" not in out.getvalue()  # plain text: no cursor moves, no colours


def test_on_a_dumb_terminal_the_run_prints_plain_progress_lines_too() -> None:
    out = io.StringIO()
    console = Console(file=out, width=WIDTH, force_terminal=True, _environ={"TERM": "dumb"})
    with LiveRun(console, _plan(200)) as live:
        for tick in range(12):
            live.update(merge_progress([_progress(tick * 5, 5, 2)]), tick * 0.5)
    assert "started 50/200" in out.getvalue()


def test_the_first_frame_shows_no_rate_until_a_second_has_been_measured() -> None:
    live = LiveRun(_terminal(), _plan(200))
    first = merge_progress([_progress(7, 7, 0, per_second=100, at=0.3)])
    frame = " ".join(live.frame(first, 0.3, arrival_rate(first, 0.3)))
    assert "rate" not in frame and "target 100/s" in frame
    later = merge_progress([_progress(107, 7, 0, per_second=100, at=1.3)])
    assert arrival_rate(later, 1.3) == pytest.approx(100.0)


def test_the_live_rate_counts_only_seconds_every_worker_has_measured() -> None:
    # Two workers at 50/s each: one has just reported (3.9 s), the other's last
    # report is 0.45 s old. Devices started since the older report are left
    # out on both sides, not counted for one worker alone (which read 117/s).
    fresh = _progress(195, 0, 0, per_second=50, at=3.9)
    stale = _progress(172, 0, 0, per_second=50, at=3.45)
    assert arrival_rate(merge_progress([fresh, stale]), 3.9) == pytest.approx(100.0)


def test_before_the_schedule_starts_the_view_shows_zero_seconds_and_no_target() -> None:
    live = LiveRun(_terminal(), _plan(200))
    total = merge_progress([_progress(0, 0, 0)])
    frame = live.frame(total, -0.2, arrival_rate(total, -0.2))
    assert frame[0].split()[:2] == ["0.0", "s"]
    assert "target" not in " ".join(frame) and "rate" not in " ".join(frame)


def test_the_live_view_fits_80_columns_breaking_only_between_phrases() -> None:
    console = _terminal()
    plan = _plan(1_000_000)
    live = LiveRun(console, plan)
    total = merge_progress([_progress(987_654, 25_600, 12_345, finished=3000)])
    frame = live.frame(total, 2345.6, 493_827.0)
    _assert_fits(
        frame,
        "2345.6 s",
        "started 987654/1000000",
        "in flight 25600",
        "failed ",
        "rate 493,827/s (target 100/s)",
        "done: connected",
    )
    assert any(re.search(r"provision p50 [\d,.]+ ms", line) for line in frame)


def test_the_summary_fits_80_columns_breaking_only_between_phrases() -> None:
    report = _report(20_000, scale=100.0)
    report["scenario"] = "a-fairly-long-scenario-name-for-the-factory-floor"
    report["jitp"] = {
        "first_connect_rejected": 19_999,
        "provisioning": {"provisioned": 19_000, "throttled": 999, "failed": 0},
        "provisioning_failures": {},
    }
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_report(console, report)
    _assert_fits(
        _lines(console),
        "20,000 devices in 212.3 s,",
        "schedule lag p99",
        "JITP: 19,999 first connects rejected",
        "emulator provisioning:",
        "phase (ms)",
        "tls_handshake",
    )


def test_a_long_reason_wraps_between_words_under_its_outcome() -> None:
    report = _report(30)
    reason = "connack: " + "the server said something long about why " * 4
    report["reasons"] = {"error": {reason: 2}}
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_report(console, report)
    lines = _lines(console)
    _assert_fits(lines, "  error: 2 devices: connack:")
    assert " ".join(" ".join(lines).split()).count(" ".join(reason.split())) == 1


def test_the_capacity_table_and_verdict_fit_80_columns() -> None:
    capacity = copy.deepcopy(CAPACITY)
    capacity["verdict"] = (
        "highest sustainable rate: 40/s; at 80/s the generator, not the endpoint, was the "
        "limit: 120 devices waited for a free slot: load.max_in_flight (256) was reached "
        "(run more workers or machines, or raise the limit)"
    )
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_capacity(console, capacity)
    _assert_fits(
        _lines(console), "highest sustainable rate: 40/s;", "load.max_in_flight (256) was reached"
    )


def test_one_device_is_one_device_not_one_devices() -> None:
    report = _report(1)
    report["reasons"] = {"throttled": {"connack: quota": 1}}
    report["jitp"] = {
        "first_connect_rejected": 1,
        "provisioning": None,
        "provisioning_failures": {"no CommonName": 1},
    }
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_report(console, report)
    text = console.export_text()
    assert "1 device in" in text and "1 devices" not in text
    assert "1 first connect rejected" in text and "1 provisioning failed" in text
    assert "throttled: 1 device: connack: quota" in text


def test_a_phrase_longer_than_the_line_is_broken_between_its_words() -> None:
    lines = fit(["short:", "word " * 30], 40, indent=2)
    assert all(len(line) <= 40 for line in lines) and lines[0].startswith("  short:")
    assert " ".join(" ".join(lines).split()) == "short: " + " ".join(["word"] * 30)


def _mosquitto_scenario(
    tmp_path: Path, mosquitto: Any, device_ca: Any, count: int, rate: str
) -> Path:
    """A run of ``count`` devices against mosquitto at ``rate``."""
    from tests.test_run import _scenario

    return _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        fleet={"ca": str(device_ca.directory), "store": "fleet", "count": count},
        load={"executor": "constant-arrival-rate", "rate": rate, "max_in_flight": count},
    )


def test_a_run_whose_output_is_not_a_terminal_logs_its_progress(
    tmp_path: Path, mosquitto: Any, device_ca: Any
) -> None:
    """End to end: `loadgen run | tee` in a CI job sees how the run goes."""
    path = _mosquitto_scenario(tmp_path, mosquitto, device_ca, 35, "5/s")
    result = run_loadgen("run", path, "--workers", "1", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    progress = [line for line in result.err.splitlines() if "started " in line]
    assert progress and "/35" in progress[0] and "\x1b" not in result.err
    assert json.loads((tmp_path / "r.json").read_text())["devices"] == 35


def _on_a_terminal(*args: str | Path, timeout: float = 120) -> str:
    """Run the real command with a pseudo-terminal as its stdout and stderr
    (what a person at a shell has); return everything it wrote."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": str(WIDTH), "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the pty closes when the process and its children are gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=max(deadline - time.monotonic(), 1)) == 0
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return b"".join(chunks).decode(errors="replace")


def test_a_mint_with_nothing_to_mint_shows_no_progress_bar(tmp_path: Path, ca: Any) -> None:
    args = ("certs", "mint", "--ca", ca.directory, "--count", "30", "--out", tmp_path / "fleet")
    first = _on_a_terminal(*args, "--workers", "1")
    assert "minting" in first  # the bar shows while there is something to mint
    again = _on_a_terminal(*args, "--workers", "1")
    assert "minting" not in again and "already holds 30 devices; nothing to mint" in again


def test_a_run_whose_fleet_is_minted_already_shows_no_minting_bar(
    tmp_path: Path, mosquitto: Any, device_ca: Any
) -> None:
    path = _mosquitto_scenario(tmp_path, mosquitto, device_ca, 20, "100/s")
    assert "minting fleet" in _on_a_terminal("run", path, "--workers", "1")
    assert "minting fleet" not in _on_a_terminal("run", path, "--workers", "1")


def test_the_plain_progress_line_says_failed_for_devices_done_in_other_outcomes() -> None:
    out = io.StringIO()
    live = LiveRun(Console(file=out, width=WIDTH), _plan(300))
    finished = _progress(300, 0, 0, finished=300)
    outcomes = RunStats.from_wire(finished.stats).outcomes
    with live:
        live.update(merge_progress([finished]), 5.0)
    failed = sum(n for name, n in outcomes.items() if name != "connected")
    assert f"connected {outcomes['connected']}" in out.getvalue()
    assert f"failed {failed}" in out.getvalue()


def test_empty_phrases_add_no_blank_lines() -> None:
    assert fit(["", "a", "  ", "b"], 10) == ["a b"]


def test_once_every_device_has_started_no_arrival_rate_is_shown() -> None:
    live = LiveRun(_terminal(), _plan(200))
    frame = " ".join(live.frame(merge_progress([_progress(200, 50, 20)]), 12.0, 20.0))
    assert "started 200/200" in frame and "rate" not in frame and "target" not in frame


def test_a_capacity_step_line_fits_80_columns() -> None:
    from loadgen.capacity.command import _step_phrases
    from tests.test_capacity import _step

    console = Console(width=WIDTH, record=True, file=io.StringIO())
    say(console, *_step_phrases(_step(slot_waits=3)), indent=0)
    lines = _lines(console)
    _assert_fits(lines, "step 1:", "generator CPU")
    assert len(lines) > 1  # the whole line is longer than 80: it was broken, not cut


def test_a_fleet_of_one_is_one_device_when_minted_and_inspected(tmp_path: Path, ca: Any) -> None:
    fleet = tmp_path / "fleet"
    minted = run_loadgen("certs", "mint", "--ca", ca.directory, "--count", "1", "--out", fleet)
    assert minted.code == 0, minted.err
    assert "minted 1, 1 device" in minted.out and "devices" not in minted.out
    # By a relative path: the line names the fleet, and a long temporary path
    # (an xdist worker's is longer) would wrap it at the console's width.
    inspected = run_loadgen("certs", "inspect", "fleet", "--verify", cwd=tmp_path)
    assert ": 1 device\n" in inspected.out and "verified 1 certificate file " in inspected.out


def test_the_summary_says_where_the_planned_devices_went_and_what_was_expected() -> None:
    report = _report(100)
    report["accounting"] = {
        "planned": 120,
        "started": 100,
        "not_started": 20,
        "expected": {"tls_rejected": 3},
        "unexpected": 2,
        "notes": {"interrupted during hold": 1},
        "workers_lost": {},
    }
    report["outcomes"] = {"connected": 95, "tls_rejected": 3, "error": 2}
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_report(console, report)
    lines = _lines(console)
    _assert_fits(
        lines,
        "planned 120,",
        "not started 20;",
        "unexpected outcomes 2;",
        "1 device interrupted during hold",
    )
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()}
    assert rows["connected"] == ["95", "-"]
    assert rows["tls_rejected"] == ["3", "3"] and rows["error"] == ["2", "0"]


def test_without_a_terminal_minting_prints_a_plain_progress_line_every_five_seconds() -> None:
    from loadgen.cli.certs import MintBar

    now = [0.0]
    out = io.StringIO()
    with MintBar(Console(file=out, width=WIDTH), clock=lambda: now[0]) as bar:
        for second, done in ((0.0, 0), (2.0, 10_000), (5.5, 27_500), (8.0, 40_000), (11.0, 55_000)):
            now[0] = second
            bar.update(done, 60_000)
    lines = out.getvalue().splitlines()
    assert [line for line in lines if line.strip()] == [
        "5.5 s minting: 27,500/60,000 5,000 certs/s",
        "11.0 s minting: 55,000/60,000 5,000 certs/s",
    ]


def test_report_words_that_look_like_markup_are_shown_as_written() -> None:
    """An outcome or a limit named "[/]" (a hand-edited report, say) is text,
    not rich markup that fails to parse."""
    report = _report(30)
    report["outcomes"] = {"[/]": 1, "[bold]connected[/]": 29}
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_report(console, report)
    text = console.export_text()
    assert "[/]" in text and "[bold]connected[/]" in text


def test_counts_of_a_million_and_more_are_written_out_in_full() -> None:
    from loadgen.report.ci import summary_markdown
    from loadgen.report.gates import parse

    report = _report(30)
    report["outcomes"] = {"connected": 1_234_567}
    result = parse("count(connected) >= 1234001").evaluate(report)
    assert "(measured 1234567)" in result.describe()
    summary = summary_markdown(report, [result])
    assert "| connected | 1,234,567 |" in summary and "e+06" not in summary


def test_the_markdown_summary_of_a_run_without_a_target_rate_says_none_of_python() -> None:
    from loadgen.report.ci import summary_markdown

    burst = _report(30)
    burst["rate"] = {"target_per_s": None, "achieved_per_s": 1500.5}
    assert "arrival rate 1,500.5/s." in summary_markdown(burst, [])
    nothing = _report(30)
    nothing["rate"] = {"target_per_s": None, "achieved_per_s": None}
    summary = summary_markdown(nothing, [])
    assert "no arrival rate." in summary and "None" not in summary


def test_a_report_stopped_early_says_so_in_show_and_in_the_summary() -> None:
    from loadgen.report.ci import summary_markdown

    report = {**_report(30), "partial": True}
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    print_report(console, report)
    assert "(partial: stopped early" in " ".join(console.export_text().split())
    heading = summary_markdown(report, []).splitlines()[0]
    assert heading.endswith("no gates (partial: stopped early, see accounting)")


def test_a_count_read_from_json_as_a_float_is_still_a_whole_count() -> None:
    from loadgen.words import counted

    assert counted(60.0, "device") == "60 devices" and counted(1.0, "device") == "1 device"
