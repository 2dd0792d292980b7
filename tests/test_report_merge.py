"""`loadgen report merge`: shards that ran side by side merge into what one run
over all their devices would have reported."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from loadgen.device.lifecycle import DeviceConfig
from loadgen.load.plan import RunPlan, TlsPlan
from loadgen.load.schedule import ConstantArrival
from loadgen.load.shard import Shard
from loadgen.load.workers import RunTiming
from loadgen.metrics.stats import REASONS_KEPT, RunStats
from loadgen.report.build import build, jitp_section
from loadgen.report.merge import merge
from tests.conftest import run_loadgen
from tests.test_stats import _results


def _plan(count: int) -> RunPlan:
    return RunPlan(
        scenario="shards",
        host="127.0.0.1",
        port=8883,
        tls=TlsPlan(None, "localhost", None, True),
        version=5,
        client_id="{client_id}",
        fleet=Path("fleet"),
        count=count,
        executor=ConstantArrival(100.0),
        max_in_flight=100,
        device=DeviceConfig(),
        steps=(),
    )


def _report(results, keep, started_at: float = 1_800_000_000.0) -> dict:
    stats = RunStats()
    for i, r in enumerate(results):
        if keep(i):
            stats.started(i * 0.01)
            stats.add(r, i * 0.01, i * 0.01 + 0.3)
    return build(
        _plan(sum(1 for i in range(len(results)) if keep(i))),
        stats,
        RunTiming(started_at, started_at + 30.0),
    )


def test_merging_shards_equals_one_run_over_the_union():
    results = _results(2000, 7)
    union = _report(results, lambda i: True)
    merged = merge([_report(results, lambda i: i % 2 == 0), _report(results, lambda i: i % 2)])
    for key in ("devices", "accounting", "outcomes", "attempts", "latency_ms", "schedule_lag_ms"):
        assert merged[key] == union[key], key
    assert merged["histograms"] == union["histograms"]
    assert merged["series"]["started_per_s"] == union["series"]["started_per_s"]


def test_merged_reasons_and_their_devices_are_those_of_one_run_over_every_device():
    results = _results(3000, 11)
    for i, result in enumerate(results):
        if result.reason is not None:
            result.reason = f"reason {i % 700}"
    union = _report(results, lambda i: True)
    merged = merge([_report(results, lambda i: i % 2 == 0), _report(results, lambda i: i % 2)])
    assert merged["reasons"] == union["reasons"]
    assert merged["reason_devices"] == union["reason_devices"]


def test_merged_reasons_past_the_bound_still_add_up_to_their_outcome():
    results = _results(6000, 12)
    for i, result in enumerate(results):
        if result.reason is not None:
            result.reason = f"reason {i}"  # every device its own: 2,000 or so
    merged = merge([_report(results, lambda i: i % 2 == 0), _report(results, lambda i: i % 2)])
    reasons = merged["reasons"]["throttled"]
    assert len(reasons) == REASONS_KEPT
    assert sum(reasons.values()) == merged["outcomes"]["throttled"]
    assert list(merged["reason_devices"]["throttled"]) == list(reasons)  # each names its devices


def test_series_of_reports_started_apart_add_up_shifted_to_the_latest_start():
    results = _results(100, 3)
    early, late = _report(results, lambda i: i < 50), _report(results, lambda i: i >= 50)
    for field in ("started_at", "ended_at"):  # 2.5 s later: shifted by 2 seconds
        moved = dt.datetime.fromisoformat(late[field]) + dt.timedelta(seconds=2.5)
        late[field] = moved.isoformat(timespec="milliseconds")
    early["series"]["outcomes_per_s"] = {"connected": [1, 1, 1, 1, 1]}
    late["series"]["outcomes_per_s"] = {"throttled": [2]}
    early["series"]["started_per_s"], late["series"]["started_per_s"] = [3, 3], [4]
    series = merge([late, early])["series"]
    assert series["outcomes_per_s"] == {"connected": [1, 1, 1, 1, 1], "throttled": [0, 0, 2]}
    assert series["started_per_s"] == [3, 3, 4]
    late["series"]["started_per_s"] = []  # no start at all: it still runs to its own
    assert merge([early, late])["series"]["started_per_s"] == [3, 3]


def test_a_merge_with_a_report_from_before_accounting_leaves_unexpected_unknown():
    results = _results(100, 3)
    old, new = _report(results, lambda i: i < 50), _report(results, lambda i: i >= 50)
    del old["accounting"]
    accounting = merge([old, new])["accounting"]
    assert (accounting["planned"], accounting["started"], accounting["not_started"]) == (
        100,
        100,
        0,
    )
    assert accounting["unexpected"] is None


def test_merged_generator_cpu_adds_up_and_is_shared_by_all_devices():
    results = _results(300, 5)
    shards = [_report(results, lambda i: i < 100), _report(results, lambda i: i >= 100)]
    shards[0]["generator"]["cpu_s"], shards[1]["generator"]["cpu_s"] = 0.25, 0.35
    shards[0]["generator"]["ahead_cpu_s"], shards[1]["generator"]["ahead_cpu_s"] = 0.1, 0.2
    shards[0]["generator"]["coordinator_cpu_s"] = 0.03
    shards[1]["generator"]["coordinator_cpu_s"] = 0.06
    merged = merge(shards)
    assert merged["generator"] == {
        "cpu_s": 0.6,
        "cpu_ms_per_device": 2.0,
        "ahead_cpu_s": 0.3,
        "whole_cpu_ms_per_device": 3.0,
        "coordinator_cpu_s": 0.09,
        "all_cpu_ms_per_device": 3.3,
    }


def test_a_merge_with_a_report_from_before_the_coordinators_cpu_leaves_it_unknown():
    results = _results(200, 6)
    old, new = _report(results, lambda i: i < 100), _report(results, lambda i: i >= 100)
    del old["generator"]["coordinator_cpu_s"]
    merged = merge([old, new])["generator"]
    assert merged["coordinator_cpu_s"] is None
    assert merged["all_cpu_ms_per_device"] is None
    assert merged["whole_cpu_ms_per_device"] is not None  # the workers' is still known
    # and a merge of that merge stays unknown, not counted as nothing
    assert merge([merge([old, new]), new])["generator"]["coordinator_cpu_s"] is None


def test_throttled_answers_merge_to_the_union_and_are_kept_with_every_device_count():
    results = _results(300, 8)
    union = _report(results, lambda i: True)
    merged = merge([_report(results, lambda i: i < 100), _report(results, lambda i: i >= 100)])
    assert merged["attempts"]["throttled"] == union["attempts"]["throttled"]
    assert union["attempts"]["throttled"] == sum(r.throttled for r in results) > 0


def test_a_merge_with_a_report_from_before_throttled_answers_leaves_them_unknown():
    results = _results(200, 9)
    old, new = _report(results, lambda i: i < 100), _report(results, lambda i: i >= 100)
    del old["attempts"]["throttled"]
    assert merge([old, new])["attempts"]["throttled"] is None
    # and a merge of that merge stays unknown, not counted as nothing
    assert merge([merge([old, new]), new])["attempts"]["throttled"] is None


def test_merged_latency_over_time_equals_one_run_over_the_union():
    results = _results(2000, 9)
    union = _report(results, lambda i: True)
    merged = merge([_report(results, lambda i: i % 2 == 0), _report(results, lambda i: i % 2)])
    assert merged["series"]["latency_ms"] == union["series"]["latency_ms"]


def test_shards_side_by_side_add_up_their_planned_arrivals():
    results = _results(400, 11)
    shards = [_report(results, lambda i: i % 2 == 0), _report(results, lambda i: i % 2)]
    merged = merge(shards)
    assert merged["series"]["target_per_s"] == [200, 200]
    assert [s["series"]["target_per_s"] for s in shards] == [[100, 100], [100, 100]]


AGREED = 1_800_000_000.0  # a --start-at


def _stopped_while_waiting(planned: int) -> dict:
    """A shard's report, as a shard stopped 4 s before --start-at writes it."""
    stopped = AGREED - 4.0
    report = build(_plan(planned), RunStats(), RunTiming(stopped, stopped, partial=True))
    return {**report, "start": {"at": AGREED, "late_s": 0.0}}


def test_a_run_stopped_before_its_start_plans_no_arrival_in_its_series():
    assert _stopped_while_waiting(50)["series"]["target_per_s"] == []


def test_a_merge_of_shards_started_together_begins_at_their_agreed_start():
    results = _results(100, 3)
    ran = {**_report(results, lambda i: i % 2, AGREED), "start": {"at": AGREED, "late_s": 0.0}}
    merged = merge([_stopped_while_waiting(50), ran])
    assert (merged["started_at"], merged["duration_s"]) == (ran["started_at"], ran["duration_s"])
    for name in ("target_per_s", "started_per_s", "outcomes_per_s"):
        assert merged["series"][name] == ran["series"][name], name


def test_a_merge_of_shards_all_stopped_while_waiting_lasted_nothing_from_the_start():
    merged = merge([_stopped_while_waiting(50), _stopped_while_waiting(50)])
    assert merged["started_at"] == merged["ended_at"] == "2027-01-15T08:00:00.000+00:00"
    assert merged["duration_s"] == 0
    assert merged["series"]["started_per_s"] == merged["series"]["target_per_s"] == []


def test_merged_provision_breakdown_is_weighted_by_devices():
    results = _results(2000, 10)
    union = _report(results, lambda i: True)
    merged = merge([_report(results, lambda i: i < 300), _report(results, lambda i: i >= 300)])
    assert merged["provision_breakdown_ms"]["devices"] == union["provision_breakdown_ms"]["devices"]
    for part, mean in union["provision_breakdown_ms"].items():
        assert abs(merged["provision_breakdown_ms"][part] - mean) <= 0.002, part


def test_a_merged_breakdown_keeps_unknown_the_parts_a_shard_did_not_time():
    results = _results(200, 11)
    for r in results[100:]:
        r.phases = []  # an aiomqtt shard: only provision timed
    timed = _report(results, lambda i: i < 100)
    untimed = _report(results, lambda i: i >= 100)
    assert untimed["provision_breakdown_ms"]["tcp_connect"] is None
    merged = merge([timed, untimed])["provision_breakdown_ms"]
    assert merged["devices"] == (
        timed["provision_breakdown_ms"]["devices"] + untimed["provision_breakdown_ms"]["devices"]
    )
    assert merged["schedule_lag"] is not None
    assert merged["tcp_connect"] is None and merged["back_off"] is None


def test_a_shard_that_started_late_lowers_the_merged_achieved_rate():
    # Each shard kept its own pace, so their own rates add up to the fleet's;
    # but the fleet's arrivals took 4 s longer than planned.
    results = _results(200, 5)
    on_time = _report(results, lambda i: i % 2 == 0)
    late = _report(results, lambda i: i % 2 == 1, started_at=1_800_000_004.0)
    own = on_time["rate"]["achieved_per_s"] + late["rate"]["achieved_per_s"]
    merged = merge([on_time, late])["rate"]
    assert merged["arrivals"]["count"] == 200
    span = (1_800_000_004.0 + 1.99) - 1_800_000_000.0
    assert merged["achieved_per_s"] == pytest.approx(199 / span, rel=1e-3)
    assert merged["achieved_per_s"] < own / 2


def test_report_merge_and_show_on_the_command_line(tmp_path):
    results = _results(400, 8)
    paths = []
    for shard in range(2):
        path = tmp_path / f"shard-{shard}.json"
        path.write_text(json.dumps(_report(results, lambda i, s=shard: i % 2 == s)))
        paths.append(path)
    result = run_loadgen("report", "merge", *paths, "-o", tmp_path / "all.json")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "all.json").read_text())["devices"] == 400
    shown = run_loadgen("report", "show", tmp_path / "all.json")
    assert shown.code == 0 and "provision" in shown.out and "400 devices" in shown.out


def test_report_html_renders_a_merged_report(tmp_path):
    results = _results(200, 12)
    shards = [_report(results, lambda i, s=s: i % 2 == s) for s in range(2)]
    (tmp_path / "all.json").write_text(json.dumps(merge(shards)))
    result = run_loadgen("report", "html", tmp_path / "all.json", "-o", tmp_path / "all.html")
    assert result.code == 0, result.err
    page = (tmp_path / "all.html").read_text()
    assert 'data-plot="latency-provision"' in page and "200" in page


def test_a_file_that_is_not_a_report_is_a_one_line_error(tmp_path):
    from tests.conftest import assert_user_error

    (tmp_path / "x.json").write_text("{}")
    assert_user_error(run_loadgen("report", "show", tmp_path / "x.json"), "not a loadgen-report/1")


def _with_jitp(report: dict, provisioned: int, stopped: str | None = None) -> dict:
    emulator = {
        "provision": {"Success": provisioned, "Throttled": 1},
        "provision_failures": {"template: no such parameter": 2},
        "closes": {"connect timeout": 1},
        "processes": [1, 2],
    }
    report["jitp"] = jitp_section(report, emulator, stopped)
    return report


def test_the_jitp_sections_of_shards_against_their_own_emulators_add_up():
    results = _results(200, 5)
    even = _with_jitp(_report(results, lambda i: i % 2 == 0), 40)
    odd = _with_jitp(_report(results, lambda i: i % 2), 30)
    jitp = merge([even, odd])["jitp"]
    assert jitp["first_connect_rejected"] == (
        even["jitp"]["first_connect_rejected"] + odd["jitp"]["first_connect_rejected"]
    )
    assert jitp["provisioning"] == {
        "Success": 70,
        "ClientError": 0,
        "ServerError": 0,
        "Throttled": 2,
    }
    assert jitp["provisioning_failures"] == {"template: no such parameter": 4}
    assert jitp["emulator_closes"] == {"connect timeout": 2}
    assert jitp["emulator_processes"] == 4
    assert jitp["emulator_stopped"] is None


def test_a_report_names_the_serving_processes_that_gave_no_counts_and_a_merge_lists_all():
    # Their sessions' closes are missing from emulator_closes: said, not hidden.
    results = _results(100, 3)
    silent = {"index": 1, "pid": 4242, "why": "no answer in 5 s"}
    first = _report(results, lambda i: i < 50)
    first["jitp"] = jitp_section(first, {"processes": [1, 2], "missing": [silent]})
    second = _with_jitp(_report(results, lambda i: i >= 50), 10)
    assert first["jitp"]["emulator_missing"] == [silent]
    assert second["jitp"]["emulator_missing"] == []
    assert merge([first, second])["jitp"]["emulator_missing"] == [silent]


def test_report_show_names_a_serving_process_that_gave_no_counts(tmp_path):
    results = _results(100, 3)
    report = _report(results, lambda i: True)
    silent = {"index": 1, "pid": 4242, "why": "no answer in 5 s"}
    report["jitp"] = jitp_section(report, {"processes": [1, 2], "missing": [silent]})
    (tmp_path / "r.json").write_text(json.dumps(report))
    shown = run_loadgen("report", "show", tmp_path / "r.json")
    assert shown.code == 0, shown.err
    assert "serving process 1 (pid 4242) gave no counts (no answer in 5 s)" in " ".join(
        shown.out.split()
    )


def test_a_merge_says_which_report_s_emulator_stopped_during_its_run():
    results = _results(100, 3)
    first = _with_jitp(_report(results, lambda i: i < 50), 10)
    second = _with_jitp(_report(results, lambda i: i >= 50), 10, "it was killed by SIGKILL")
    merged = merge([first, second])
    assert merged["jitp"]["emulator_stopped"] == "report 2 of 2: it was killed by SIGKILL"


def test_report_show_of_a_merge_says_that_an_emulator_stopped(tmp_path):
    results = _results(100, 3)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(_with_jitp(_report(results, lambda i: i < 50), 10)))
    stopped = _with_jitp(_report(results, lambda i: i >= 50), 10, "it was killed by SIGKILL")
    paths[1].write_text(json.dumps(stopped))
    # Written, and failed as the run it holds failed (tests/test_merge_verdict.py).
    assert run_loadgen("report", "merge", *paths, "-o", tmp_path / "all.json").code == 1
    shown = run_loadgen("report", "show", tmp_path / "all.json")
    assert shown.code == 0, shown.err
    assert "emulator stopped during the run: report 2 of 2: it was killed by" in " ".join(
        shown.out.split()
    )


def test_a_merge_of_reports_without_jitp_sections_has_none():
    results = _results(100, 3)
    assert "jitp" not in merge(
        [_report(results, lambda i: i < 50), _report(results, lambda i: i >= 50)]
    )


def test_a_lost_worker_of_a_report_that_is_no_shard_is_keyed_by_its_place_from_1():
    results = _results(100, 3)
    first, second = _report(results, lambda i: i < 50), _report(results, lambda i: i >= 50)
    second["accounting"]["workers_lost"] = {"1": "died (exit code -9)"}
    lost = merge([first, second])["accounting"]["workers_lost"]
    assert lost == {"report 2.1": "died (exit code -9)"}


def test_a_merge_of_merges_keeps_every_lost_worker_of_reports_that_are_no_shards():
    """Two merges each hold a 'report 1.0': nested under their place, neither
    is lost."""
    results = _results(200, 3)
    parts = [_report(results, lambda i, k=k: i % 4 == k) for k in range(4)]
    for part in parts:
        part["accounting"]["workers_lost"] = {"0": "died (exit code 9)"}
    whole = merge([merge(parts[:2]), merge(parts[2:])])
    assert sorted(whole["accounting"]["workers_lost"]) == [
        "report 1.1.0", "report 1.2.0", "report 2.1.0", "report 2.2.0"
    ]  # fmt: skip


def _named_shard(count: int, rate: float) -> dict:
    """A shard split by hand (``--shard eu``): its own count at its own rate,
    every device on schedule, started at the agreed start."""
    stats = RunStats()
    for i, r in enumerate(_results(count, 13)):
        stats.started(i / rate)
        stats.add(r, i / rate, i / rate + 0.3)
    plan = dataclasses.replace(_plan(count), executor=ConstantArrival(rate))
    report = build(plan, stats, RunTiming(AGREED, AGREED + count / rate + 1))
    return {**report, "start": {"at": AGREED, "late_s": 0.0}}


def test_unequal_shards_on_schedule_achieve_their_merged_target_rate():
    # 400 and 200 devices at 20/s each: 40/s for 10 s, then 20/s for 10 s.
    merged = merge([_named_shard(400, 20.0), _named_shard(200, 20.0)])["rate"]
    assert merged["planned"] == {"count": 600, "first_s": 0.0, "last_s": 19.95}
    assert merged["target_per_s"] == pytest.approx(599 / 19.95, abs=0.001)
    assert merged["achieved_per_s"] == merged["target_per_s"]


def test_shards_i_of_n_merge_to_the_fleet_s_target_rate_as_their_targets_added_up():
    # Shards 0/2 and 1/2 of 400 devices at 200/s: each 200 at 100/s.
    shards = [
        build(
            dataclasses.replace(_plan(200), shard=Shard(index, 2)),
            RunStats(),
            RunTiming(AGREED, AGREED + 3.0),
        )
        for index in range(2)
    ]
    added_up = sum(shard["rate"]["target_per_s"] for shard in shards)
    assert merge(shards)["rate"]["target_per_s"] == added_up == 200.0


def test_a_merge_of_reports_without_planned_arrivals_adds_their_targets_up():
    older = [_named_shard(400, 20.0), _named_shard(200, 20.0)]
    for report in older:
        del report["rate"]["planned"]
    assert merge(older)["rate"]["target_per_s"] == 40.0


def _sparse(started_at: float = AGREED) -> dict:
    """A report of two devices, started 5 s apart: seconds 1-4 measured nothing."""
    stats = RunStats()
    for i, r in enumerate(_results(2, 4)):
        stats.started(i * 5.0)
        stats.add(r, i * 5.0, i * 5.0 + 0.3)
    return build(_plan(2), stats, RunTiming(started_at, started_at + 6.0))


def test_a_second_without_latency_is_null_in_the_latency_series():
    provision = _sparse()["series"]["latency_ms"]["provision"]
    assert provision[1:5] == [None] * 4
    assert provision[0]["count"] == provision[5]["count"] == 1


def test_a_merge_keeps_a_second_without_latency_null():
    merged = merge([_sparse(), _sparse(AGREED + 1.0)])["series"]["latency_ms"]["provision"]
    assert merged[2:5] == [None] * 3
    assert [merged[s]["count"] for s in (0, 1, 5, 6)] == [1, 1, 1, 1]


def test_report_html_draws_a_latency_series_with_null_seconds(tmp_path):
    (tmp_path / "sparse.json").write_text(json.dumps(_sparse()))
    result = run_loadgen("report", "html", tmp_path / "sparse.json", "-o", tmp_path / "s.html")
    assert result.code == 0, result.err
    assert 'data-plot="latency-provision"' in (tmp_path / "s.html").read_text()


def test_merged_provisioning_failures_are_bounded_as_one_emulator_s():
    results = _results(4, 3)
    shards = [_with_jitp(_report(results, lambda i, s=s: i % 2 == s), 0) for s in range(2)]
    for s, shard in enumerate(shards):
        shard["jitp"]["provisioning_failures"] = {
            f"shard {s}: reason {i}": 1 for i in range(REASONS_KEPT)
        }
    failures = merge(shards)["jitp"]["provisioning_failures"]
    assert len(failures) == REASONS_KEPT and sum(failures.values()) == 2 * REASONS_KEPT
