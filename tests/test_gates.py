"""Gates: conditions on a report that a CI pipeline acts on."""

from __future__ import annotations

import dataclasses
import json

import pytest

from loadgen.device.lifecycle import PublishStep, SubscribeStep
from loadgen.errors import ConfigError
from loadgen.load.plan import RunPlan
from loadgen.load.schedule import Burst, ConstantArrival
from loadgen.load.shard import Shard
from loadgen.report import gates
from tests.test_report_merge import _plan as merge_plan

REPORT = {
    "devices": 1000,
    "outcomes": {"connected": 990, "throttled": 0, "timeout": 4, "closed": 6},
    "latency_ms": {
        "provision": {"p50": 120.0, "p90": 300.0, "p99": 1800.0, "p99_9": 2500.0, "max": 3000.0},
        "tls_handshake": {"p50": 140.0, "p90": 1.0, "p99": 1.0, "p99_9": 1, "max": 1},
    },
    "rate": {"target_per_s": 100.0, "achieved_per_s": 99.5},
    # Of the 10 failed, 6 closed as their injected missing_* fault predicts.
    "accounting": {"planned": 1000, "started": 1000, "expected": {"closed": 6}, "unexpected": 4},
}


@pytest.mark.parametrize(
    ("text", "passed", "measured"),
    [
        ("p99(provision) < 2s", True, 1800.0),
        ("p99.9(provision) < 2s", False, 2500.0),
        ("p50(tls_handshake) <= 150ms", True, 140.0),
        ("ratio(timeout) < 0.1%", False, 0.004),
        ("ratio(failed) < 1.5%", True, 0.01),
        ("count(throttled) == 0", True, 0.0),
        ("count(failed) == 0", False, 10.0),
        ("achieved_rate >= 0.99 * target_rate", True, 99.5),
        ("achieved_rate >= 0.999 * target_rate", False, 99.5),
        ("count(unexpected) == 0", False, 4.0),
        ("ratio(unexpected) < 0.5%", True, 0.004),
        ("count(expected) == 6", True, 6.0),
        # The number may come first: the metric is still what was measured.
        ("2s > p99(provision)", True, 1800.0),
        ("1ms > p99(provision)", False, 1800.0),
        # A metric scaled is the threshold, on whichever side it stands.
        ("0.99 * target_rate <= achieved_rate", True, 99.5),
    ],
)
def test_gates_measure_the_report(text, passed, measured):
    result = gates.parse(text).evaluate(REPORT)
    assert (result.passed, result.measured) == (passed, pytest.approx(measured))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p99(provision) 2s", "not 'left OP right'"),
        ("p99(startup) < 2s", "unknown phase 'startup'"),
        ("ratio(sad) < 1%", "unknown outcome 'sad'"),
        ("p42(provision) < 1s", "cannot read"),
    ],
)
def test_a_malformed_gate_is_a_configuration_error(text, message):
    with pytest.raises(ConfigError, match=message):
        gates.parse(text)


def test_an_unexpected_gate_on_a_report_without_accounting_fails_as_unmeasured():
    report = {k: v for k, v in REPORT.items() if k != "accounting"}
    result = gates.parse("count(unexpected) == 0").evaluate(report)
    assert not result.passed and result.note == "nothing was measured"


def test_nothing_measured_fails_the_gate():
    report = {**REPORT, "latency_ms": {**REPORT["latency_ms"], "provision": {"p99": None}}}
    result = gates.parse("p99(provision) < 2s").evaluate(report)
    assert not result.passed and result.note == "nothing was measured"


def test_a_gate_with_the_number_first_keeps_the_number_as_its_threshold():
    result = gates.parse("1ms > p99(provision)").evaluate(REPORT)
    assert (result.measured, result.threshold) == (1800.0, 1.0)
    assert "(measured 1800 ms)" in result.describe()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # A ratio of 0.004 beside a threshold of 0.1% read as less than it.
        ("ratio(timeout) < 0.1%", "(measured 0.4%)"),
        ("p99(provision) < 2s", "(measured 1800 ms)"),
        ("achieved_rate >= 0.99 * target_rate", "(measured 99.5/s)"),
        ("count(failed) == 0", "(measured 10)"),
    ],
)
def test_what_a_gate_measured_is_written_in_its_metrics_unit(text, shown):
    assert shown in gates.parse(text).evaluate(REPORT).describe()


def test_devices_that_connected_and_failed_later_measured_something():
    """A broker killed while every device held: all end closed, none connected,
    but each connect was measured."""
    report = {
        **REPORT,
        "outcomes": {"connected": 0, "closed": 1000},
        "latency_ms": {"provision": {"count": 1000, "p99": 1800.0}},
        "accounting": {"planned": 1000, "started": 1000, "expected": {}, "unexpected": 1000},
    }
    assert gates.nothing_measured(report) is None
    assert gates.parse("p99(provision) < 2s").evaluate(report).passed


def test_a_failing_gate_fails_the_run_with_exit_1(tmp_path, mosquitto, device_ca):
    from tests.conftest import run_loadgen
    from tests.test_run import _scenario

    path = _scenario(tmp_path, mosquitto, device_ca)
    result = run_loadgen(
        "run",
        path,
        "--count",
        "40",
        "--workers",
        "1",
        "--report",
        tmp_path / "r.json",
        "--gate",
        "count(connected) == 0",
        "--gate",
        "ratio(connected) > 50%",
    )
    assert result.code == 1, result.err
    assert "FAIL: count(connected) == 0" in result.out
    assert "pass: ratio(connected) > 50%" in result.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert [g["passed"] for g in report["gates"]] == [False, True]


def test_gates_fail_against_a_dead_endpoint_even_when_faulty_devices_fail_as_predicted(
    tmp_path, mosquitto, device_ca
):
    """mosquitto's plain port closes every TLS connection before a byte of TLS:
    the devices missing a subject field end `closed`, as their fault predicts of
    JITP, but no endpoint judged them, so nothing was measured."""
    from tests.conftest import run_loadgen
    from tests.test_run import _scenario

    path = _scenario(tmp_path, mosquitto, device_ca, endpoint=f"127.0.0.1:{mosquitto.plain_port}")
    (tmp_path / "profile.yaml").write_text(
        "subject:\n  common_name: 'bulb-{index:05d}'\n  country: DE\n"
        "faults:\n  missing_country: 0.5\n"
    )
    report_path = tmp_path / "r.json"
    result = run_loadgen(
        "run", path, "--count", "20", "--workers", "1", "--report", report_path,
        "--gate", "count(throttled) == 0",
    )  # fmt: skip
    assert result.code == 1, result.out + result.err
    assert "nothing was measured: no device connected (of 20)" in result.out
    report = json.loads(report_path.read_text())
    assert report["outcomes"]["closed"] == 20
    assert report["accounting"]["unexpected"] == 20
    assert not any(report["accounting"]["expected"].values())


def test_a_malformed_gate_stops_the_run_before_it_starts(tmp_path, mosquitto, device_ca):
    from tests.conftest import assert_user_error, run_loadgen
    from tests.test_run import _scenario

    path = _scenario(tmp_path, mosquitto, device_ca)
    assert_user_error(run_loadgen("run", path, "--gate", "p99(provision) soon"), "--gate")
    assert not (tmp_path / "fleet").exists()


def test_a_gate_on_a_phase_the_scenario_never_times_stops_the_run_before_it_starts(
    tmp_path, mosquitto, device_ca
):
    from tests.conftest import assert_user_error, run_loadgen
    from tests.test_run import _scenario

    qos0 = [{"publish": {"topic": "dt/{client_id}", "qos": 0}}]
    path = _scenario(tmp_path, mosquitto, device_ca, after_connect=qos0)
    result = run_loadgen("run", path, "--gate", "p99(publish_ack) < 100ms")
    assert_user_error(
        result,
        "--gate: 'p99(publish_ack) < 100ms': publish_ack is never measured: "
        "no after_connect step publishes at qos 1 (qos 0 has no PUBACK)",
    )
    assert not (tmp_path / "fleet").exists()


def test_a_scenario_gate_never_measured_is_named_by_its_file_and_line(
    tmp_path, mosquitto, device_ca
):
    from tests.conftest import assert_user_error, run_loadgen
    from tests.test_run import _scenario

    burst = {"executor": "burst", "max_in_flight": 300}
    gate = "achieved_rate >= 0.99 * target_rate"
    path = _scenario(
        tmp_path, mosquitto, device_ca, load=burst, gates=["p99(provision) < 2s", gate]
    )
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "target_rate" in t)
    result = run_loadgen("run", path)
    assert_user_error(
        result, f"{path}:{line}: gates[1]: '{gate}': target_rate is never measured: a burst"
    )
    assert not (tmp_path / "fleet").exists()


def test_junit_and_markdown_summary_for_ci(tmp_path, mosquitto, device_ca):
    from xml.etree import ElementTree as ET

    from tests.conftest import run_loadgen
    from tests.test_run import _scenario

    path = _scenario(tmp_path, mosquitto, device_ca)
    result = run_loadgen(
        "run",
        path,
        "--count",
        "30",
        "--workers",
        "1",
        "--gate",
        "count(connected) == 0",
        "--gate",
        "ratio(connected) > 50%",
        "--junit",
        tmp_path / "gates.xml",
        "--summary-md",
        tmp_path / "summary.md",
    )
    assert result.code == 1
    suite = ET.parse(tmp_path / "gates.xml").getroot()
    assert (suite.tag, suite.get("tests"), suite.get("failures")) == ("testsuite", "2", "1")
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == ["count(connected) == 0", "ratio(connected) > 50%"]
    assert suite.find("testcase/failure") is not None
    summary = (tmp_path / "summary.md").read_text()
    assert "gates failed" in summary and "| `count(connected) == 0` |" in summary
    assert "planned 30, started 30; unexpected outcomes 0." in summary
    # The scenario's profile injects unknown_ca faults: those failures are expected.
    for line in summary.splitlines():
        if line.startswith("| tls_rejected |"):
            _, devices, expected, _ = (cell.strip() for cell in line.split("|")[1:])
            assert devices == expected


def test_junit_of_a_report_named_with_control_characters_still_parses():
    from xml.etree import ElementTree as ET

    from loadgen.report.ci import junit

    report = {"scenario": "hold\x01", "duration_s": 1.0, "started_at": "2026-12-07T00:00:00+00:00"}
    results = [gates.parse("count(failed) == 0").evaluate(REPORT)]
    suite = ET.fromstring(junit(report, results))
    assert suite.get("name") == "loadgen hold\ufffd"


def test_report_compare_fails_on_a_regression_beyond_the_limit(tmp_path):
    from tests.conftest import run_loadgen
    from tests.test_report_merge import _report
    from tests.test_stats import _results

    baseline = _report(_results(500, 1), lambda i: True)
    slower = json.loads(json.dumps(baseline))
    slower["latency_ms"]["provision"]["p99"] = baseline["latency_ms"]["provision"]["p99"] * 1.5
    (tmp_path / "a.json").write_text(json.dumps(baseline))
    (tmp_path / "b.json").write_text(json.dumps(slower))
    same = run_loadgen("report", "compare", tmp_path / "a.json", tmp_path / "a.json")
    assert same.code == 0 and "FAIL" not in same.out
    worse = run_loadgen(
        "report", "compare", tmp_path / "a.json", tmp_path / "b.json", "--max-regression", "10%"
    )
    assert worse.code == 1
    assert "FAIL: p99(provision)" in worse.out and "+50.0%" in worse.out


def test_the_shipped_ci_gate_scenario_runs_and_evaluates_its_gates(tmp_path):
    """Its latency and rate gates judge this machine's speed (a loaded CI box can
    fail them, as it should); what a test can hold is that every gate was
    evaluated and that no device failed or was throttled."""
    import shutil

    from tests.conftest import ROOT, run_loadgen

    shutil.copytree(
        ROOT / "scenarios", tmp_path / "scenarios", ignore=shutil.ignore_patterns(".loadgen")
    )
    result = run_loadgen(
        "run",
        tmp_path / "scenarios" / "ci-gate.yaml",
        "--count",
        "100",
        "--junit",
        tmp_path / "gates.xml",
    )
    assert result.code in (0, 1), result.out + result.err
    assert result.out.count("pass: ") + result.out.count("FAIL: ") == 4
    assert "pass: ratio(failed) < 0.5%" in result.out
    assert "pass: count(throttled) == 0" in result.out
    assert (result.code == 0) == ("FAIL: " not in result.out)


def _plan(**changes) -> RunPlan:
    plan = merge_plan(10)  # the same plan, of 10 devices at 10/s
    plan = dataclasses.replace(plan, executor=ConstantArrival(10.0), max_in_flight=10)
    return dataclasses.replace(plan, **changes)


def _never(gate: str, plan: RunPlan) -> str | None:
    return gates.parse(gate).never_measured(plan.never_measured())


@pytest.mark.parametrize(
    ("gate", "plan"),
    [
        # Without JITP, or only subscribing: every device that connects has a provision.
        ("p99(provision) < 2s", _plan(steps=(SubscribeStep("cmd/{client_id}", qos=1),))),
        ("p99(publish_ack) < 100ms", _plan(steps=(PublishStep("dt/x", qos=1),))),
        ("p50(tls_handshake) < 100ms", _plan()),
        ("count(throttled) == 0", _plan(driver="aiomqtt", executor=Burst())),
        ("achieved_rate >= 0.99 * target_rate", _plan()),
        # One device of a shard: the merge of the shards measures the rate.
        ("achieved_rate >= 0.99 * target_rate", _plan(count=1, shard=Shard(0, 2))),
    ],
)
def test_a_gate_on_what_the_plan_measures_is_never_refused(gate, plan):
    assert _never(gate, plan) is None


@pytest.mark.parametrize(
    ("gate", "plan", "why"),
    [
        ("p99(publish_ack) < 100ms", _plan(), "publish_ack is never measured: no after_connect"),
        ("p99(publish_ack) < 1s", _plan(steps=(PublishStep("dt/x", qos=0),)), "qos 0 has no"),
        ("p99(publish_ack) < 1s", _plan(steps=(PublishStep("dt/x", qos=1, count=0),)), "qos 1"),
        ("max(connack) < 1s", _plan(driver="aiomqtt"), "mqtt.driver aiomqtt times only provision"),
        ("0.9 * target_rate < achieved_rate", _plan(executor=Burst()), "a burst has no target"),
        ("achieved_rate > 0.9 * target_rate", _plan(count=1), "a rate needs two devices"),
    ],
)
def test_a_gate_on_what_the_plan_never_measures_says_why(gate, plan, why):
    assert why in (_never(gate, plan) or "")


def test_a_rate_gate_without_a_target_names_what_was_not_measured():
    """A burst has no target rate: the gate fails on it, not on what it measured."""
    report = {**REPORT, "rate": {"target_per_s": None, "achieved_per_s": 99.5}}
    result = gates.parse("achieved_rate >= 0.99 * target_rate").evaluate(report)
    assert not result.passed and result.measured == 99.5
    assert result.note == "nothing was measured for 0.99 * target_rate"
