"""Gates and `report compare` read thresholds in the unit of what they measure,
and fail, never pass, when the run measured nothing: a CI job against a dead
endpoint must not pass."""

from __future__ import annotations

import copy
import json
import socket

import pytest
import yaml

from loadgen.errors import ConfigError
from loadgen.report import gates
from tests.conftest import assert_user_error, run_loadgen
from tests.test_fleet_checks import _nobody_connected, _scenario, listener  # noqa: F401
from tests.test_gates import REPORT
from tests.test_report_merge import _report
from tests.test_stats import _results


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99(provision) < 2", "'2' is not a latency: a latency needs a unit, 2s or 2000ms"),
        ("p50(connack) <= 0.5", "0.5s or 500ms"),
        ("p99(provision) < 5%", "a latency needs a unit"),
        ("ratio(failed) < 5", "a ratio is a percentage (5%) or a fraction from 0 to 1"),
        ("ratio(failed) < 2s", "'2s' is not a ratio"),
        ("ratio(failed) < 150%", "'150%' is not a ratio: a ratio is at most 100%"),
        ("count(throttled) < 1%", "'1%' is not a count: a count is a plain number"),
        ("achieved_rate > 2ms", "a rate is a plain number or per second (/s)"),
        ("p99(provision) < ratio(failed)", "compares a latency with a ratio"),
        ("2s < 3s", "compares two numbers"),
    ],
)
def test_a_threshold_without_the_unit_of_its_metric_is_refused(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gates.parse(text, "--gate")


@pytest.mark.parametrize(
    ("text", "threshold"),
    [
        ("p99(provision) < 2s", 2000.0),
        ("p99(provision) < 2000ms", 2000.0),
        ("2 * p50(provision) > 100ms", 100.0),
        ("ratio(failed) < 0.5%", 0.005),
        ("ratio(failed) < 0.05", 0.05),
        ("count(failed) <= 3", 3.0),
        ("achieved_rate >= 90/s", 90.0),
        ("achieved_rate >= 90", 90.0),
    ],
)
def test_thresholds_in_the_unit_of_their_metric(text, threshold):
    assert gates.parse(text).evaluate(REPORT).threshold == pytest.approx(threshold)


def _dead(report: dict) -> dict:
    """What a run against an endpoint nobody answers reports: every device timed out."""
    dead = copy.deepcopy(report)
    dead["outcomes"] = {name: 0 for name in dead["outcomes"]} | {"timeout": dead["devices"]}
    devices = dead["devices"]
    dead["accounting"] = {
        "planned": devices,
        "started": devices,
        "expected": {},
        "unexpected": devices,
    }
    for phase in dead["latency_ms"]:
        dead["latency_ms"][phase] = {k: None for k in dead["latency_ms"][phase]} | {"count": 0}
    return dead


@pytest.mark.parametrize("text", ["count(throttled) == 0", "ratio(throttled) < 1%"])
def test_a_gate_that_would_hold_fails_when_no_device_connected(text):
    result = gates.parse(text).evaluate(_dead(REPORT))
    assert not result.passed
    assert "nothing was measured: no device connected (of 1000)" in result.describe()


def test_a_fleet_of_faulty_devices_failing_as_predicted_measured_something():
    report = _dead(REPORT)
    report["outcomes"] = {"tls_rejected": 1000}
    report["accounting"] = {"expected": {"tls_rejected": 1000}, "unexpected": 0}
    assert gates.parse("count(unexpected) == 0").evaluate(report).passed


def test_a_run_against_a_dead_endpoint_fails_its_gates(tmp_path):
    # Bound, never listening, and kept for the run: every connect is refused,
    # and no other test's server can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        path = _scenario(tmp_path, sock)
        scenario = yaml.safe_load(path.read_text())
        scenario["retry"] = {"max_attempts": 1}
        path.write_text(yaml.safe_dump(scenario))
        result = run_loadgen(
            "run", path, "--workers", "1", "--report", tmp_path / "r.json",
            "--gate", "count(throttled) == 0",
        )  # fmt: skip
    assert result.code == 1, result.out + result.err
    assert "FAIL: count(throttled) == 0" in result.out
    assert "no device connected (of 5)" in result.out
    [gate] = json.loads((tmp_path / "r.json").read_text())["gates"]
    assert gate["passed"] is False and "no device connected" in gate["note"]


def test_a_gate_without_a_unit_stops_the_run_before_anything(tmp_path, listener):  # noqa: F811
    path = _scenario(tmp_path, listener)
    result = run_loadgen("run", path, "--gate", "p99(provision) < 2")
    assert_user_error(result, "--gate: 'p99(provision) < 2'", "2s or 2000ms")
    assert not (tmp_path / "fleet").exists()
    assert _nobody_connected(listener)


# report compare


def _files(tmp_path, baseline: dict, current: dict) -> tuple:
    (tmp_path / "base.json").write_text(json.dumps(baseline))
    (tmp_path / "current.json").write_text(json.dumps(current))
    return tmp_path / "base.json", tmp_path / "current.json"


@pytest.fixture(scope="module")
def baseline() -> dict:
    return _report(_results(300, 3), lambda i: True)


def test_compare_fails_when_the_current_run_connected_no_device(tmp_path, baseline):
    base, current = _files(tmp_path, baseline, _dead(baseline))
    result = run_loadgen("report", "compare", base, current)
    assert result.code == 1, result.out + result.err
    assert f"FAIL: {current} measured nothing: no device connected (of 300)" in result.out
    assert "FAIL: p99(provision)" in result.out and "nothing measured" in result.out


def test_compare_fails_on_a_phase_the_baseline_measured_and_the_current_run_did_not(
    tmp_path, baseline
):
    current = copy.deepcopy(baseline)
    current["latency_ms"]["tls_handshake"]["p90"] = None
    base, cur = _files(tmp_path, baseline, current)
    result = run_loadgen("report", "compare", base, cur)
    assert result.code == 1
    assert "FAIL: p90(tls_handshake)" in result.out and "-> nothing measured" in result.out


def test_a_baseline_that_measured_nothing_is_refused(tmp_path, baseline):
    base, current = _files(tmp_path, _dead(baseline), baseline)
    result = run_loadgen("report", "compare", base, current)
    assert_user_error(result, f"{base}: not a baseline to compare against: no device connected")


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("-5%", "cannot be negative"),
        ("-0%", "cannot be negative"),
        ("10", "a percentage like 10%"),
        ("ten%", "a percentage like 10%"),
    ],
)
def test_max_regression_is_a_percentage_that_is_not_negative(tmp_path, baseline, limit, message):
    base, current = _files(tmp_path, baseline, baseline)
    result = run_loadgen("report", "compare", base, current, f"--max-regression={limit}")
    assert_user_error(result, f"--max-regression {limit!r}", message)


def test_compare_shows_a_sub_millisecond_change_in_its_numbers(tmp_path, baseline):
    current = copy.deepcopy(baseline)
    before = baseline["latency_ms"]["tcp_connect"]["p50"]
    current["latency_ms"]["tcp_connect"]["p50"] = before * 1.135
    base, cur = _files(tmp_path, baseline, current)
    result = run_loadgen("report", "compare", base, cur)
    line = next(x for x in result.out.splitlines() if "p50(tcp_connect)" in x)
    assert f"{before:.3g} ms -> {before * 1.135:.3g} ms (+13.5%" in line


def test_an_unchanged_run_passes_compare(tmp_path, baseline):
    base, current = _files(tmp_path, baseline, baseline)
    result = run_loadgen("report", "compare", base, current, "--max-regression", "2.5%")
    assert result.code == 0, result.out + result.err
    assert "FAIL" not in result.out and "limit +2.5%" in result.out


def test_the_html_page_says_why_a_gate_failed_on_nothing_measured(baseline):
    from loadgen.report.html import render

    result = gates.parse("count(throttled) == 0").evaluate(_dead(baseline))
    gate = {"gate": result.gate, "passed": result.passed, "measured": result.measured}
    page = render({**_dead(baseline), "gates": [{**gate, "note": result.note}]})
    assert "FAIL</span> (nothing was measured: no device connected (of 300))" in page
