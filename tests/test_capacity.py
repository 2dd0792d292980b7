"""`loadgen capacity`: step the arrival rate up until an SLO breaks, and say
which limit broke first: throttling, latency, failures, or the generator."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadgen.capacity.search import EmulatorCpu, Search, Step, throttles, verdict
from loadgen.cores import cores
from loadgen.metrics.stats import RunStats
from loadgen.report import gates
from tests.brokers import free_port, scrape_once_written
from tests.conftest import ROOT, assert_user_error, run_loadgen

QUOTA = 40  # the emulator's provisioning quota, per second

# A search's verdict says whether the generator kept its schedule: with the
# suite's other tests running beside it on 2 cores, it did not (under xdist).
pytestmark = pytest.mark.alone


def _scenario(root: Path) -> Path:
    (root / "profile.yaml").write_text(
        "subject:\n  common_name: 'bulb-{index:05d}'\n  serial_number: '{uuid}'\n"
        "  country: {choice: [US, DE]}\n"
    )
    scenario = {
        "name": "capacity-test",
        "endpoint": "embedded",
        "mqtt": {"version": 5, "client_id": "{common_name}"},
        "fleet": {"ca": "ca", "store": "fleet", "count": 10, "profile": "profile.yaml"},
        "jitp": {"expect_first_connect_rejected": True},
        "retry": {"initial": "200ms", "max": "2s", "max_attempts": 5},
        "load": {"executor": "constant-arrival-rate", "rate": "10/s", "max_in_flight": 300},
        "after_connect": [{"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1}}],
        "emulator": {
            "template": str(ROOT / "scenarios" / "templates" / "lightbulb.yaml"),
            "quotas": {"provision": f"{QUOTA}/s"},
        },
    }
    path = root / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


class Searched(NamedTuple):
    report: dict[str, Any]
    samples: dict[tuple[str, str | None], float]
    out: str
    html: Path


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A search from 20/s by 20/s against an emulator that provisions 40/s, with
    its metrics served and scraped once it is over."""
    root = tmp_path_factory.mktemp("capacity")
    port = free_port()
    report = root / "report.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "capacity", str(_scenario(root))),
            *("--slo", "p99(provision) < 1s", "--slo", "ratio(failed) < 1%"),
            *("--start", "20/s", "--step", "20/s", "--step-duration", "4s"),
            *("--max-rate", "200/s", "--workers", "1", "--report", str(report)),
            *("--metrics-port", str(port), "--linger", "30", "--html", str(root / "r.html")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = scrape_once_written(proc, report, port, timeout=180)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    samples = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    return Searched(json.loads(report.read_text()), samples, out, root / "r.html")


def test_the_search_finds_the_provisioning_quota_within_one_step(search):
    capacity = search.report["capacity"]
    assert capacity["highest_sustainable_per_s"] <= QUOTA < capacity["first_broken_per_s"]
    assert capacity["first_broken_per_s"] - capacity["highest_sustainable_per_s"] == 20


def test_the_search_names_throttling_as_the_limit_that_broke(search):
    capacity = search.report["capacity"]
    assert capacity["limit"] == "throttling"
    last = capacity["steps"][-1]
    assert last["throttles"]["emulator provision quota"] > 0 and last["broken"]
    assert all(step["passed"] and step["throttled"] == 0 for step in capacity["steps"][:-1])


def test_the_search_prints_every_step_and_its_verdict(search):
    report, out = search.report, search.out
    for step in report["capacity"]["steps"]:
        assert f"step {step['step']}: {step['rate_per_s']:g}/s" in out
    said = " ".join(out.split())  # the verdict is said at the console's width
    assert "highest sustainable rate: 40/s" in said and "by throttling" in said


def test_every_step_provisions_fresh_devices(search):
    report = search.report
    devices = sum(step["devices"] for step in report["capacity"]["steps"])
    assert report["devices"] == devices
    assert report["jitp"]["first_connect_rejected"] == devices


def test_metrics_count_the_whole_search_and_show_its_last_step(search):
    report, samples = search.report, search.samples
    steps = report["capacity"]["steps"]
    assert samples[("loadgen_devices_finished_total", None)] == report["devices"]
    assert samples[("loadgen_capacity_step", None)] == len(steps)
    assert samples[("loadgen_capacity_step_rate", None)] == steps[-1]["rate_per_s"]


def test_the_report_holds_the_steps_one_after_another(search):
    report = search.report
    steps = report["capacity"]["steps"]
    assert [s["rate_per_s"] for s in steps] == [20.0 * (i + 1) for i in range(len(steps))]
    assert all(a["started_at_s"] < b["started_at_s"] for a, b in itertools.pairwise(steps))
    assert sum(report["series"]["started_per_s"]) == report["devices"]


def test_each_step_says_how_many_workers_ran_it(search):
    # With --workers auto each step's rate plans its own (below).
    assert [step["workers"] for step in search.report["capacity"]["steps"]] == [1] * len(
        search.report["capacity"]["steps"]
    )


def test_report_show_prints_the_steps_and_the_verdict(search):
    shown = run_loadgen("report", "show", search.html.parent / "report.json")
    assert shown.code == 0, shown.err
    # The verdict is said at the console's width, broken between its clauses.
    verdict = " ".join(search.report["capacity"]["verdict"].split())
    assert "capacity search" in shown.out and verdict in " ".join(shown.out.split())


def test_the_html_report_plots_the_steps(search):
    page = search.html.read_text()
    assert 'data-plot="capacity-steps"' in page and "highest sustainable rate: 40/s" in page


def test_a_search_that_never_breaks_stops_at_max_rate_against_any_endpoint(
    tmp_path, mosquitto, device_ca
):
    from tests.test_run import _scenario as mosquitto_scenario

    path = mosquitto_scenario(tmp_path, mosquitto, device_ca)
    result = run_loadgen(
        *("capacity", path, "--slo", "p99(provision) < 10s", "--start", "50/s"),
        *("--step", "50/s", "--step-duration", "1s", "--max-rate", "100/s"),
        *("--workers", "1", "--report", tmp_path / "r.json"),
    )
    assert result.code == 0, result.err
    capacity = json.loads((tmp_path / "r.json").read_text())["capacity"]
    assert [s["rate_per_s"] for s in capacity["steps"]] == [50.0, 100.0]
    assert capacity["highest_sustainable_per_s"] == 100.0 and capacity["limit"] is None
    assert "no SLO broke up to 100/s" in " ".join(result.out.split())


def test_a_later_step_past_the_fleets_end_ends_the_search_with_the_steps_that_ran(
    tmp_path, mosquitto, device_ca
):
    """The first step is checked before anything runs; the second, of about
    100,000,000 devices, would pass the fleet's last index."""
    from tests.test_run import _scenario as mosquitto_scenario

    path = mosquitto_scenario(tmp_path, mosquitto, device_ca)
    result = run_loadgen(
        *("capacity", path, "--slo", "p99(provision) < 10s", "--start", "5/s"),
        *("--step", "99999999/s", "--step-duration", "1s"),
        *("--workers", "1", "--report", tmp_path / "r.json"),
    )
    assert result.code == 0, result.err
    assert "no step at 100,000,004/s" in result.err and "the search ends here" in result.err
    capacity = json.loads((tmp_path / "r.json").read_text())["capacity"]
    assert [s["rate_per_s"] for s in capacity["steps"]] == [5.0]


def test_with_workers_auto_each_step_plans_its_own_from_its_rate(tmp_path, mosquitto, device_ca):
    from tests.test_run import _scenario as mosquitto_scenario

    # A connect and a publish a device: 110 connects a second at 100/s (one
    # worker), 330 at 300/s (two, where the machine has two cores).
    path = mosquitto_scenario(tmp_path, mosquitto, device_ca)
    result = run_loadgen(
        *("capacity", path, "--slo", "p99(provision) < 10s", "--start", "100/s"),
        *("--step", "200/s", "--step-duration", "1s", "--max-rate", "300/s"),
        *("--workers", "auto", "--report", tmp_path / "r.json"),
    )
    assert result.code == 0, result.err
    steps = json.loads((tmp_path / "r.json").read_text())["capacity"]["steps"]
    planned = [(s["rate_per_s"], s["workers"]) for s in steps]
    assert planned == [(100.0, 1), (300.0, min(2, cores()))]


def test_a_search_held_back_by_max_in_flight_says_the_generator_was_the_limit(tmp_path):
    path = _scenario(tmp_path)
    scenario = yaml.safe_load(path.read_text())
    scenario["load"]["max_in_flight"] = 2
    scenario["after_connect"] = [{"hold": {"duration": "1s"}}]
    path.write_text(yaml.safe_dump(scenario))
    result = run_loadgen(
        *("capacity", path, "--slo", "ratio(failed) < 1%", "--start", "10/s"),
        *("--step-duration", "2s", "--workers", "1", "--report", tmp_path / "r.json"),
    )
    assert result.code == 0, result.err
    capacity = json.loads((tmp_path / "r.json").read_text())["capacity"]
    assert capacity["limit"] == "generator" and capacity["first_broken_per_s"] is None
    said = " ".join(result.out.split())  # the verdict is said at the console's width
    assert "the generator, not the endpoint, was the limit" in said
    assert "load.max_in_flight (2) was reached" in said


def _step(
    *,
    cpu: float = 0.1,
    lag_ms: float = 2.0,
    slot_waits: int = 0,
    results=(),
    throttles=(),
    rate: float = 10.0,
    interrupted: bool = False,
    workers_lost=None,
    outcomes=None,
    target_rate: float = 10.0,
    endpoint_wait: float = 0.1,
) -> Step:
    # endpoint_wait: the share of the devices' time in flight spent waiting on
    # the endpoint (1,000 s in flight in all).
    stats = RunStats(
        cpu_us=round(cpu * 10 * 1_000_000),
        slot_waits=slot_waits,
        in_flight_us=1_000_000_000,
        endpoint_wait_us=round(endpoint_wait * 1_000_000_000),
    )
    report = {
        "devices": 100,
        "outcomes": outcomes or {"connected": 100},
        "rate": {"achieved_per_s": 10.0, "target_per_s": target_rate},
        "latency_ms": {"provision": {"p50": 10.0, "p99": 20.0}},
        "schedule_lag_ms": {"p99": lag_ms},
        "load": {"max_in_flight": 50},
        "accounting": {"workers_lost": workers_lost or {}},
    }
    checked = [gates.parse(g).evaluate(report) for g in results]
    return Step(
        1, rate, 0.0, 10.0, 1, report, stats, checked, Counter(dict(throttles)), interrupted
    )


def _quotas(**throttled: int) -> dict:
    """The embedded emulator's stats line, as far as its quotas' throttles go."""
    return {"throttles": {name.replace("_", "-"): n for name, n in throttled.items()}}


def test_devices_throttled_then_connected_are_throttling_against_any_endpoint():
    # No emulator's counts: only the devices' own, 36 CONNACKs 0x9F they retried past.
    seen = throttles(RunStats(throttled=36), None, None, mqtt_5=True)
    assert seen == Counter({"throttled answers": 36})
    step = _step(results=["p99(provision) < 10ms"], throttles=seen)
    assert step.limit == "throttling" and step.row()["throttled"] == 36


def test_a_throttled_mqtt_5_connect_counts_once_not_again_as_the_emulators_quota():
    # The emulator's connect quota answered each of them CONNACK 0x9F.
    before, after = _quotas(connect=10), _quotas(connect=122)
    seen = throttles(RunStats(throttled=112), before, after, mqtt_5=True)
    assert seen == Counter({"throttled answers": 112})


def test_throttles_the_devices_could_not_tell_are_the_emulators_to_count():
    # A throttled provisioning closes the connection as JITP's trigger does; a
    # throttled MQTT 3.1.1 connect closes it too: no code tells the device.
    before = _quotas(provision=5, connect=0)
    after = _quotas(provision=35, connect=12, connect_per_client=0)
    assert throttles(RunStats(), before, after, mqtt_5=False) == Counter(
        {"emulator provision quota": 30, "emulator connect quota": 12}
    )


def test_a_step_cut_short_is_interrupted_never_passed():
    step = _step(interrupted=True)
    assert not step.passed and step.limit == "interrupted"
    assert step.row()["interrupted"] is True


def test_the_verdict_ignores_a_step_cut_short():
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0)
    found = verdict(search, [_step(rate=10.0), _step(rate=20.0, interrupted=True)], True)
    assert found.highest_sustainable == 10.0 and found.first_broken is None
    assert "interrupted" in found.why


def test_a_search_ended_by_the_embedded_emulator_stopping_says_so_and_leaves_that_step_out():
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0)
    ended = "the embedded emulator stopped during the step at 20/s: it was killed by SIGKILL"
    steps = [_step(rate=10.0), _step(rate=20.0, interrupted=True)]
    found = verdict(search, steps, ended=ended)
    assert found.highest_sustainable == 10.0 and found.first_broken is None
    assert found.why == f"{ended}; the search ended there, before any step broke"


def test_a_step_that_lost_a_worker_names_each_lost_worker_and_why():
    step = _step(workers_lost={"1": "died (exit code -9)", "2": "failed: MemoryError"})
    assert step.workers_lost == "worker 1 died (exit code -9); worker 2 failed: MemoryError"
    assert _step().workers_lost is None


def test_a_step_whose_workers_were_busy_measured_the_generator_not_the_endpoint():
    step = _step(cpu=0.95)
    assert not step.passed and step.limit == "generator"
    assert "95% busy" in (step.generator_limit or "")


def test_a_step_that_fell_behind_schedule_with_free_slots_is_the_generators_limit():
    assert _step(lag_ms=800.0).limit == "generator"


def test_failures_that_break_an_slo_are_the_endpoints_even_when_the_generator_was_late():
    step = _step(lag_ms=800.0, results=["ratio(failed) < 0%"])
    assert step.limit == "failures"


def test_devices_waiting_for_a_slot_are_the_generators_limit_even_if_latency_broke():
    step = _step(slot_waits=12, results=["p99(provision) < 10ms"])
    assert step.limit == "generator" and "max_in_flight (50)" in (step.generator_limit or "")


def test_an_slo_broken_with_no_throttling_is_named_latency_or_failures():
    assert _step(results=["p99(provision) < 10ms"]).limit == "latency"


def _emulator_stats(serving_cpu_s: list[float], account_cpu_s: float) -> dict:
    """What the embedded emulator's STATS line says of its processes' CPU."""
    processes = [{"index": i, "pid": 100 + i, "cpu_s": s} for i, s in enumerate(serving_cpu_s)]
    return {"processes": processes, "account_cpu_s": account_cpu_s}


def test_emulator_cpu_over_a_step_is_its_serving_processes_mean_and_its_account():
    before = _emulator_stats([1.0, 2.0], 0.5)
    after = _emulator_stats([10.0, 11.5], 1.5)
    cpu = EmulatorCpu.between(before, after, 10.0)
    assert cpu == EmulatorCpu(serving=0.925, account=0.1, processes=2)


def test_an_emulator_of_one_process_counts_its_cpu_once_on_the_machine():
    # emulator.processes 1: the one process serves and keeps the account, and
    # its stats line gives its CPU time as both, naming it the account process.
    before = _emulator_stats([1.0], 1.0) | {"account_pid": 100}
    after = _emulator_stats([4.0], 4.0) | {"account_pid": 100}
    step = _step(cpu=0.35, results=["p99(provision) < 10ms"])
    step.cores = 1
    step.emulator_cpu = EmulatorCpu.between(before, after, 10.0)
    assert step.row()["machine_cpu"] == 0.65  # the workers' 0.35 and the emulator's 0.3
    assert step.limit == "latency"


def test_a_serving_process_that_gave_no_counts_is_left_out_of_the_emulators_cpu():
    # Its last CPU time, shown again, would count it idle and lower the mean.
    before = {"processes": [{"pid": 1, "cpu_s": 1.0}, {"pid": 2, "cpu_s": 1.0}]}
    before["account_cpu_s"] = 0.5
    after = {
        "processes": [{"pid": 1, "cpu_s": 10.0}, {"pid": 2, "cpu_s": 1.0}],
        "missing": [{"index": 1, "pid": 2, "why": "no answer in 5 s"}],
        "account_cpu_s": 1.5,
    }
    assert EmulatorCpu.between(before, after, 10.0) == EmulatorCpu(
        serving=0.9, account=0.1, processes=1
    )


def test_a_broken_step_whose_emulator_processes_were_saturated_names_the_emulator():
    step = _step(results=["p99(provision) < 10ms"])
    step.emulator_cpu = EmulatorCpu(serving=0.97, account=0.2, processes=2)
    assert step.limit == "emulator"
    assert "2 serving processes were 97% busy" in (step.emulator_limit or "")
    search = Search((gates.parse("p99(provision) < 10ms"),), 10.0, 10.0, 1.0)
    found = verdict(search, [step])
    assert found.limit == "emulator" and "the emulator itself the limit" in found.why
    assert step.row()["emulator_cpu"]["serving"] == 0.97


def test_a_saturated_account_process_is_the_emulators_limit_too():
    step = _step(results=["p99(provision) < 10ms"])
    step.emulator_cpu = EmulatorCpu(serving=0.5, account=0.95, processes=4)
    assert step.limit == "emulator" and "account process was 95% busy" in str(step.emulator_limit)


def test_a_busy_emulator_under_a_step_that_holds_its_slos_passes():
    step = _step()
    step.emulator_cpu = EmulatorCpu(serving=0.99, account=0.2, processes=2)
    assert step.passed and step.limit is None


def test_a_search_where_nothing_breaks_stops_at_its_max_rate():
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0, max_rate=30.0)
    assert list(search.rates()) == [10.0, 20.0, 30.0]
    found = verdict(search, [_step(), _step()])
    assert found.first_broken is None and "no SLO broke" in found.why


def test_a_search_without_an_slo_is_a_one_line_error(tmp_path):
    assert_user_error(run_loadgen("capacity", _scenario(tmp_path)), "capacity needs an SLO")


def test_a_malformed_step_is_a_one_line_error(tmp_path):
    result = run_loadgen(
        "capacity", _scenario(tmp_path), "--slo", "p99(provision) < 2s", "--step", "fast"
    )
    assert_user_error(result, "--step 'fast'")


def test_a_step_where_generator_and_emulator_share_every_core_names_the_machine():
    # At 300/s on a 2-core box: the workers 44% busy each, the serving
    # processes 49%, the account 10%: neither side saturated, every core busy.
    step = _step(cpu=0.88, lag_ms=831.0, rate=300.0)  # the two workers' CPU over 1
    step.workers, step.cores = 2, 2
    step.emulator_cpu = EmulatorCpu(serving=0.49, account=0.1, processes=2)
    assert step.generator_limit is not None and step.emulator_limit is None
    assert step.limit == "machine"
    assert "together kept this machine's 2 cores 98% busy" in str(step.machine_limit)
    assert step.row()["machine_cpu"] == 0.98
    search = Search((gates.parse("p99(provision) < 2s"),), 100.0, 50.0, 20.0)
    found = verdict(search, [step])
    assert found.limit == "machine" and found.first_broken is None
    assert "this machine, not the endpoint, was the limit" in found.why


def test_a_generator_behind_on_a_machine_with_cores_to_spare_is_the_generators_limit():
    step = _step(cpu=0.88, lag_ms=831.0)
    step.workers, step.cores = 2, 8
    step.emulator_cpu = EmulatorCpu(serving=0.49, account=0.1, processes=2)
    assert step.limit == "generator" and step.machine_limit is None


def test_the_scenarios_own_schedule_does_not_bound_a_search_that_replaces_it(tmp_path):
    # 1,000 devices at 1/h would take 41 days to start: the steps run their own.
    path = _scenario(tmp_path)
    scenario = yaml.safe_load(path.read_text())
    scenario["load"]["rate"] = "1/h"
    scenario["fleet"]["count"] = 1000
    path.write_text(yaml.safe_dump(scenario))
    result = run_loadgen(
        *("capacity", path, "--slo", "ratio(failed) < 50%", "--start", "5/s"),
        *("--step-duration", "1s", "--max-steps", "1", "--workers", "1"),
        *("--report", tmp_path / "r.json"),
    )
    assert result.code == 0, result.err
    [step] = json.loads((tmp_path / "r.json").read_text())["capacity"]["steps"]
    assert step["devices"] == 5


def test_a_step_longer_than_a_schedule_may_span_is_refused_naming_its_option(tmp_path):
    result = run_loadgen(
        *("capacity", _scenario(tmp_path), "--slo", "p99(provision) < 2s"),
        *("--step-duration", "745h", "--report", tmp_path / "r.json"),
    )
    assert_user_error(result, "--step-duration '745h': more than 30 days")
    assert not (tmp_path / "r.json").exists()


def test_an_slo_on_a_phase_the_scenario_never_measures_is_refused_before_any_load(tmp_path):
    path = _scenario(tmp_path)
    scenario = yaml.safe_load(path.read_text())
    del scenario["after_connect"]  # nothing published: no PUBACK to time
    path.write_text(yaml.safe_dump(scenario))
    result = run_loadgen(
        *("capacity", path, "--slo", "p99(publish_ack) < 100ms", "--report", tmp_path / "r.json")
    )
    assert_user_error(result, "--slo: 'p99(publish_ack) < 100ms': publish_ack is never measured")
    assert result.out == ""
    assert not any((tmp_path / name).exists() for name in ("ca", "fleet", "r.json"))


def test_a_max_rate_below_the_start_is_refused_before_anything_is_written(tmp_path):
    result = run_loadgen(
        *("capacity", _scenario(tmp_path), "--slo", "p99(provision) < 2s"),
        *("--start", "10/s", "--max-rate", "5/s", "--report", tmp_path / "r.json"),
    )
    assert_user_error(result, "--max-rate 5/s is below --start 10/s")
    assert result.out == ""
    assert not any((tmp_path / name).exists() for name in ("ca", "fleet", "r.json"))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--start", "100000000000/s", "--step-duration", "1s"), "--start 100000000000/s"),
        # Refused first as longer than a schedule may span.
        (("--step-duration", "99999999999999999999h"), "--step-duration '99999999999999999999h'"),
        (("--first-device", "99999999", "--step-duration", "1s"), "--first-device 99999999"),
    ],
)
def test_a_step_past_the_fleets_end_names_the_capacity_option_before_printing(
    tmp_path, options, named
):
    result = run_loadgen("capacity", _scenario(tmp_path), "--slo", "p99(provision) < 2s", *options)
    assert_user_error(result, named)
    assert "--count" not in result.err and result.out == ""


def test_busy_workers_on_a_busy_machine_name_the_generator_not_the_machine():
    # Two workers 97% busy beside an emulator 30% busy, on 2 cores: the
    # generator alone was saturated.
    step = _step(cpu=1.94, rate=300.0)  # the two workers' CPU over 1
    step.workers, step.cores = 2, 2
    step.emulator_cpu = EmulatorCpu(serving=0.3, account=0.05, processes=1)
    assert step.machine_limit is not None
    assert step.limit == "generator" and "97% busy" in str(step.generator_limit)


def test_a_step_where_no_device_connected_is_named_failures_even_with_a_latency_slo_only():
    # A closed port: every device refused, so the latency SLO measured nothing.
    step = _step(results=["p99(provision) < 2s"], outcomes={"connected": 0, "refused": 100})
    assert step.limit == "failures"
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0)
    assert "by failures (failed: refused 100)" in verdict(search, [step]).why


def test_a_broken_arrival_rate_slo_is_named_rate_not_latency():
    step = _step(results=["achieved_rate >= 1.5 * target_rate"])
    assert step.broken and step.limit == "rate"


def test_slots_held_by_devices_waiting_on_the_endpoint_are_the_endpoints_limit():
    # Idle workers; the devices in flight spent 95% of their time in connects
    # the endpoint answered slowly, so the late starts were the endpoint's.
    step = _step(
        cpu=0.02,
        slot_waits=15,
        lag_ms=1900.0,
        endpoint_wait=0.95,
        results=["p99(provision) < 10ms"],
    )
    assert step.generator_limit is None and step.limit == "latency"
    assert "spent 95% of their time waiting on the endpoint" in str(step.endpoint_held)
    assert step.row()["endpoint_wait_share"] == 0.95


def test_an_endpoint_that_stalls_every_connect_is_named_not_the_generator(tmp_path):
    # Accepts TCP (the kernel's backlog) and never answers the TLS handshake.
    with socket.socket() as stalling:
        stalling.bind(("127.0.0.1", 0))
        stalling.listen(100)
        path = _scenario(tmp_path)
        scenario = yaml.safe_load(path.read_text())
        scenario["endpoint"] = f"127.0.0.1:{stalling.getsockname()[1]}"
        scenario["load"]["max_in_flight"] = 5
        scenario["retry"]["max_attempts"] = 1
        scenario["timeouts"] = {"connect": "1s"}
        del scenario["emulator"]
        path.write_text(yaml.safe_dump(scenario))
        result = run_loadgen(
            *("capacity", path, "--slo", "p99(provision) < 2s", "--start", "10/s"),
            *("--step-duration", "1s", "--workers", "1", "--report", tmp_path / "r.json"),
        )
    assert result.code == 0, result.err
    capacity = json.loads((tmp_path / "r.json").read_text())["capacity"]
    assert capacity["limit"] == "failures" and capacity["first_broken_per_s"] == 10.0
    said = " ".join(result.out.split())  # the verdict is said at the console's width
    assert "the generator, not the endpoint" not in said
    assert "of their time waiting on the endpoint" in said


def test_a_search_where_no_step_ran_does_not_say_the_first_step_broke():
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0)
    assert verdict(search, []).text() == "highest sustainable rate: none; no step ran"


def test_a_first_step_cut_short_says_the_search_was_interrupted_before_any_step_finished():
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0)
    found = verdict(search, [_step(interrupted=True)], interrupted=True)
    assert found.text() == ("highest sustainable rate: none; interrupted before any step finished")


def test_a_first_step_that_measured_the_generator_does_not_say_it_broke():
    search = Search((gates.parse("p99(provision) < 2s"),), 10.0, 10.0, 1.0)
    text = verdict(search, [_step(cpu=0.95)]).text()
    assert text.startswith(
        "highest sustainable rate: none; at 10/s the generator, not the endpoint, was the limit"
    )


def test_capacity_help_says_its_shard_is_a_name_not_a_slice_of_the_fleet():
    result = run_loadgen("capacity", "--help")
    text = " ".join(result.out.split())
    assert "It runs the whole fleet: I/N is refused." in text
    assert "runs only its part of the fleet" not in text
