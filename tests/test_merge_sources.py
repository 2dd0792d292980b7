"""`loadgen report merge` as a merge Job runs it: reports from folders, exactly the
``--expect``ed shards (each once), ``--wait`` for the late ones, and the gates
applied to the merge (``--gate``, ``--scenario``) for one exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadgen.errors import UserError
from loadgen.files import write_atomic
from loadgen.report.merge import merge, merge_named
from loadgen.report.sources import Reader
from loadgen.words import ranges
from tests.conftest import assert_user_error, run_loadgen
from tests.test_report_merge import _report
from tests.test_stats import _results

# Of the fabricated devices below: about a third throttled, provisioning up to 3 s.
PASSES = "ratio(failed) < 50%"
FAILS = "p99(provision) < 1s"


def shard_reports(count: int, devices: int = 120) -> list[dict]:
    """The reports of ``count`` shards of one fleet, each with its ``shard``
    field, as ``loadgen run --shard I/N`` writes it."""
    results = _results(devices, 11)
    return [
        {**_report(results, lambda i, s=s: i % count == s), "shard": {"index": s, "count": count}}
        for s in range(count)
    ]


def write_reports(folder: Path, reports: list[dict], names: str = "shard-{}.json") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for report in reports:
        path = folder / names.format(report["shard"]["index"])
        write_atomic(path, json.dumps(report).encode())  # as loadgen writes reports
        paths.append(path)
    return paths


def test_a_folder_merges_every_report_under_it_and_no_other_file(tmp_path):
    reports = shard_reports(3)
    write_reports(tmp_path / "results", reports[:2])
    write_reports(tmp_path / "results" / "late", reports[2:])
    (tmp_path / "results" / "notes.txt").write_text("not a report")
    (tmp_path / "results" / ".shard-9.json.1234.tmp").write_text("{")  # a write under way
    (tmp_path / "results" / ".cache").mkdir()
    (tmp_path / "results" / ".cache" / "x.json").write_text("[]")
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", tmp_path / "results", "-o", out)
    assert result.code == 0, result.err
    assert f"3 reports merged into {out}: 120 devices" in result.out
    merged = json.loads(out.read_text())
    assert merged["histograms"] == merge(reports)["histograms"]


def started_at(reports: list[dict], at: float) -> list[dict]:
    """The reports as ``loadgen run --start-at AT`` writes them."""
    return [{**report, "start": {"at": at, "late_s": 0.0}} for report in reports]


TODAY, YESTERDAY = 1_800_000_000.0, 1_800_000_000.0 - 86_400


def test_a_shard_report_left_from_another_run_is_one_line_naming_it(tmp_path):
    folder = tmp_path / "results"
    today, yesterday = started_at(shard_reports(3), TODAY), started_at(shard_reports(3), YESTERDAY)
    paths = write_reports(folder, [today[0], yesterday[1], today[2]])
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", folder, "--expect", "3", "-o", out)
    assert_user_error(
        result,
        f"{paths[1]}: started at --start-at 1799913600.000 (2027-01-14 08:00:00 UTC), "
        f"but {paths[0]} started at --start-at 1800000000.000 (2027-01-15 08:00:00 UTC): "
        "the shards of one run share one --start-at",
    )
    assert not out.exists()


def test_a_report_without_a_start_among_shards_started_together_is_one_line(tmp_path):
    reports = started_at(shard_reports(3), TODAY)
    del reports[0]["start"]
    paths = write_reports(tmp_path / "results", reports)
    result = run_loadgen("report", "merge", *paths, "-o", tmp_path / "merged.json")
    assert_user_error(result, f"{paths[0]}: no start (a run without --start-at), but {paths[1]}")


def of_run(reports: list[dict], scenario: str = "shards", fleet: int = 120) -> list[dict]:
    """The reports as shards of one run write them: each says which (``shard.of``)."""
    of = {"scenario": scenario, "fleet": fleet, "digest": f"sha256:{scenario}{fleet}"}
    return [{**r, "shard": {**r["shard"], "of": of}} for r in reports]


def test_a_shard_of_another_run_is_one_line_naming_it_and_nothing_is_written(tmp_path):
    other = of_run(shard_reports(3), "other-scenario", 90)
    reports = [*of_run(shard_reports(3))[:2], other[2]]
    paths = write_reports(tmp_path / "results", reports)
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", tmp_path / "results", "--expect", "3", "-o", out)
    assert_user_error(
        result,
        f"{paths[2]}: a shard of 'other-scenario' (a fleet of 90, settings "
        f"sha256:other-scenario90), but {paths[0]} is a shard of 'shards' (a fleet of 120",
        "the shards of one run share its scenario, fleet and settings",
    )
    assert not out.exists()


def test_a_shard_report_older_than_its_run_field_merges_with_those_that_have_it():
    reports = of_run(shard_reports(3))
    del reports[1]["shard"]["of"]
    merged = merge_named([(f"shard-{i}.json", r) for i, r in enumerate(reports)])
    assert merged["shards"]["of"] == reports[0]["shard"]["of"]
    assert merged["devices"] == 120


def test_a_merge_of_merges_keeps_checking_the_run_its_shards_are_parts_of():
    mine, theirs = of_run(shard_reports(2)), of_run(shard_reports(2), fleet=121)
    with pytest.raises(UserError, match=r"b\.json: a shard of 'shards' \(a fleet of 121"):
        merge_named([("a.json", merge(mine[:1])), ("b.json", theirs[1])])


def test_a_lost_worker_is_keyed_by_its_shard_whatever_place_the_report_has():
    reports = shard_reports(3)
    reports[2]["accounting"]["workers_lost"] = {"1": "died (exit code -9)"}
    merged = merge([reports[2], reports[0], reports[1]])
    assert merged["accounting"]["workers_lost"] == {"2.1": "died (exit code -9)"}


def test_a_merge_of_merges_keeps_the_shard_worker_keys_it_holds():
    reports = shard_reports(3)
    reports[1]["accounting"]["workers_lost"] = {"0": "died (exit code -9)"}
    merged = merge([merge(reports[:2]), reports[2]])
    assert merged["accounting"]["workers_lost"] == {"1.0": "died (exit code -9)"}


def test_a_merge_of_merges_says_it_was_merged_from_every_run_it_holds():
    reports = shard_reports(3)
    assert merge([merge(reports[:2]), reports[2]])["environment"]["merged_from"] == 3


def test_a_shard_of_one_device_counts_at_the_rate_of_the_shards_that_have_one():
    reports = shard_reports(3, devices=4)  # shard 0: devices 0 and 3; shards 1 and 2: one each
    assert reports[1]["rate"]["target_per_s"] is reports[1]["rate"]["achieved_per_s"] is None
    rate = merge(reports)["rate"]
    assert rate["target_per_s"] == pytest.approx(3 * reports[0]["rate"]["target_per_s"])
    # Shard 0's own rate is rounded to 3 decimals: three times it, a little off.
    assert rate["achieved_per_s"] == pytest.approx(
        3 * reports[0]["rate"]["achieved_per_s"], rel=1e-4
    )


def test_a_merge_holding_shards_with_a_rate_gives_one_to_a_shard_without():
    reports = shard_reports(3, devices=4)
    rate = merge([merge(reports[:2]), reports[2]])["rate"]
    assert rate["target_per_s"] == pytest.approx(3 * reports[0]["rate"]["target_per_s"])


def test_reports_wait_for_the_merge_without_their_series_and_fold_in_whole(tmp_path):
    # The series are most of a long run's report: kept for every shard while
    # the merge waits, hundreds of them would not fit a merge Job's memory.
    reports = shard_reports(3)
    paths = write_reports(tmp_path / "results", reports)
    reader = Reader([tmp_path / "results"])
    named = reader.read()
    assert [name for name, _ in named] == [str(p) for p in paths]
    assert not any("series" in report for _, report in named)
    assert reader.series(str(paths[1])) == reports[1]["series"]
    assert merge_named(named, reader.series) == merge(reports)


def test_a_report_replaced_by_another_runs_while_merging_is_one_line(tmp_path):
    first, other = shard_reports(2), shard_reports(2, devices=60)
    write_reports(tmp_path / "results", first)
    reader = Reader([tmp_path / "results"])
    named = reader.read()
    write_reports(tmp_path / "results", other)
    with pytest.raises(UserError, match=r"shard-0\.json: changed while it was being merged"):
        merge_named(named, reader.series)


def test_expect_merges_once_every_shard_is_there_once(tmp_path):
    reports = shard_reports(3)
    write_reports(tmp_path / "results", reports)
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", tmp_path / "results", "--expect", "3", "-o", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["devices"] == 120


def test_a_missing_shard_is_exit_1_naming_it_and_nothing_is_written(tmp_path):
    reports = shard_reports(5)
    write_reports(tmp_path / "results", [reports[0], reports[2], reports[4]])
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", tmp_path / "results", "--expect", "5", "-o", out)
    assert result.code == 1, (result.out, result.err)
    assert result.err.strip().splitlines() == [
        f"loadgen: failed: --expect 5: missing shard 1, 3 (3 of 5 shards found in "
        f"{tmp_path / 'results'}; --wait DURATION waits for them)"
    ]
    assert not out.exists()


def test_a_shard_in_two_reports_is_exit_1_naming_both(tmp_path):
    reports = shard_reports(2)
    again = {**shard_reports(2)[1], "run_id": "f" * 32}  # a second run of shard 1
    first = write_reports(tmp_path / "results", reports)
    (tmp_path / "results" / "shard-1-retry.json").write_text(json.dumps(again))
    result = run_loadgen("report", "merge", tmp_path / "results", "--expect", "2", "-o", "m.json")
    assert result.code == 1, (result.out, result.err)
    retry = tmp_path / "results" / "shard-1-retry.json"
    assert f"--expect 2: shard 1 is in 2 reports: {retry}, {first[1]}" in result.err


def test_expect_counts_the_shards_a_merged_input_holds(tmp_path):
    reports = shard_reports(3)
    partial = {**merge(reports[:2]), "shards": {"count": 3, "indices": [0, 1]}}
    (tmp_path / "first-two.json").write_text(json.dumps(partial))
    write_reports(tmp_path, reports[2:])
    out = tmp_path / "out" / "merged.json"
    out.parent.mkdir()
    result = run_loadgen("report", "merge", tmp_path, "--expect", "3", "-o", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["histograms"] == merge(reports)["histograms"]


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        (None, "not a shard's report (no shard field: a run with --shard I/2 writes one)"),
        ({"index": 0, "count": 3}, "shard 0/3, but --expect 2"),
        ({"index": 2, "count": 2}, "field shard is 2/2: not a shard of 2"),
        ({"index": "0", "count": 2}, "field shard.index is a string, not a number"),
    ],
)
def test_a_report_that_is_no_shard_of_the_expected_count_is_one_line(tmp_path, shard, message):
    report = {**shard_reports(1)[0], "shard": shard}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(report))
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", path, "--expect", "2", "-o", out)
    assert_user_error(result, f"{path}: {message}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--wait", "1m"), "--wait needs --expect N"),
        (("--expect", "0"), "--expect must be positive, got 0"),
        (("--expect", "2", "--wait", "soon"), "--wait: 'soon' is not a duration"),
        (("--gate", "p99(provision) < 2"), "--gate: 'p99(provision) < 2'"),
        (("--scenario", "missing.yaml"), "missing.yaml"),
        (("--html", "https://example.com/r.html"), "--html https://example.com/r.html"),
    ],
)
def test_merge_options_are_checked_before_any_report_is_read(tmp_path, args, message):
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", tmp_path / "nothing-here", "-o", out, *args)
    assert_user_error(result, message)
    assert not out.exists()


def test_gates_on_the_merge_print_as_run_prints_them_and_a_failed_one_exits_1(tmp_path):
    paths = write_reports(tmp_path / "results", shard_reports(2))
    out = tmp_path / "merged.json"
    result = run_loadgen(
        "report", "merge", *paths, "-o", out, "--gate", PASSES, "--gate", FAILS,
        "--junit", tmp_path / "gates.xml",
    )  # fmt: skip
    assert result.code == 1, (result.out, result.err)
    lines = result.out.splitlines()
    assert [line.split("  ")[0] for line in lines[1:]] == [f"pass: {PASSES}", f"FAIL: {FAILS}"]
    merged = json.loads(out.read_text())  # written before the verdict
    assert [(g["gate"], g["passed"]) for g in merged["gates"]] == [(PASSES, True), (FAILS, False)]
    assert 'failures="1"' in (tmp_path / "gates.xml").read_text()


def test_passing_gates_exit_0(tmp_path):
    paths = write_reports(tmp_path / "results", shard_reports(2))
    result = run_loadgen("report", "merge", *paths, "-o", tmp_path / "m.json", "--gate", PASSES)
    assert result.code == 0, (result.out, result.err)


def scenario_with_gates(folder: Path, gates: list[str]) -> Path:
    """A scenario as the shards ran it (the merge reads only its gates)."""
    path = folder / "scenario.yaml"
    scenario = {
        "name": "sharded",
        "endpoint": "embedded",
        "fleet": {"ca": "ca", "store": "fleet", "count": 120},
        "load": {"executor": "constant-arrival-rate", "rate": "50/s"},
        "gates": gates,
    }
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_the_scenarios_gates_apply_to_the_merge(tmp_path):
    paths = write_reports(tmp_path / "results", shard_reports(2))
    scenario = scenario_with_gates(tmp_path, [PASSES, FAILS])
    result = run_loadgen(
        "report", "merge", *paths, "-o", tmp_path / "m.json", "--scenario", scenario
    )
    assert result.code == 1, (result.out, result.err)
    assert f"pass: {PASSES}" in result.out and f"FAIL: {FAILS}" in result.out


def test_a_gate_error_in_the_scenario_names_its_file_and_gate(tmp_path):
    scenario = scenario_with_gates(tmp_path, ["p99(provision) < 2"])
    result = run_loadgen(
        "report", "merge", tmp_path, "-o", tmp_path / "m.json", "--scenario", scenario
    )
    assert_user_error(result, f"{scenario}:", ": gates[0]:")


def test_the_merge_does_not_read_its_own_output_back_from_the_folder(tmp_path):
    write_reports(tmp_path / "results", shard_reports(2))
    out, html = tmp_path / "results" / "merged.json", tmp_path / "results" / "merged.json.html"
    args = ("report", "merge", tmp_path / "results", "--expect", "2", "-o", out, "--html", html)
    for _ in range(2):  # the second merge finds the first one's output in the folder
        result = run_loadgen(*args)
        assert result.code == 0, result.err
    assert json.loads(out.read_text())["devices"] == 120
    assert html.read_text().lstrip().lower().startswith("<!doctype html")


def test_an_output_that_is_a_report_given_to_merge_is_refused_before_anything_is_read(tmp_path):
    paths = write_reports(tmp_path / "a", shard_reports(3))
    before = paths[0].read_bytes()
    result = run_loadgen("report", "merge", *paths, "-o", paths[0])
    assert_user_error(result, f"--out {paths[0]}: the same file as REPORT {paths[0]}")
    assert paths[0].read_bytes() == before


def test_an_output_that_is_a_shard_report_in_the_folder_merged_is_refused_not_left_out(tmp_path):
    paths = write_reports(tmp_path / "a", shard_reports(3))
    before = paths[2].read_bytes()
    result = run_loadgen("report", "merge", tmp_path / "a", "-o", paths[2])
    assert_user_error(
        result, f"--out {paths[2]}: the same file as {paths[2]}, a run's report the merge reads"
    )
    assert paths[2].read_bytes() == before


def test_wait_sees_a_shard_report_written_after_the_merge_started(tmp_path):
    folder = tmp_path / "results"
    first, second = shard_reports(2)
    write_reports(folder, [first])
    out = tmp_path / "merged.json"
    merge_job = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "report", "merge", folder, "--expect", "2",
         "--wait", "2m", "-o", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert merge_job.stderr is not None
        waiting = merge_job.stderr.readline()  # the merge is waiting: a real condition
        assert "1 of 2 shards found" in waiting and "for shard 1" in waiting, waiting
        write_reports(folder, [second])
        out_text, err_text = merge_job.communicate(timeout=120)
    finally:
        merge_job.kill()
        merge_job.wait()
    assert merge_job.returncode == 0, err_text
    assert "2 reports merged" in out_text
    assert json.loads(out.read_text())["devices"] == 120


def test_missing_shards_are_said_as_ranges():
    assert ranges([0, 1, 2, 5, 7, 8, 10]) == "0-2, 5, 7-8, 10"
    assert ranges([3]) == "3"


def test_an_older_shard_without_a_rate_counts_the_same_however_the_merges_are_grouped():
    """Reports older than ``rate.arrivals`` add their rates up. Shards of 10/s,
    no rate (one device) and 12/s: 33/s merged at once, and merged in two
    steps, whichever shards the first step held."""
    from loadgen.report.merge import merge

    reports = shard_reports(3, devices=36)
    for report, achieved in zip(reports, (10.0, None, 12.0), strict=True):
        report["rate"]["achieved_per_s"] = achieved
        del report["rate"]["arrivals"]
    at_once = merge(reports)["rate"]["achieved_per_s"]
    first_two = merge([merge(reports[:2]), reports[2]])["rate"]["achieved_per_s"]
    last_two = merge([reports[0], merge(reports[1:])])["rate"]["achieved_per_s"]
    assert at_once == first_two == last_two == 33.0


def test_runs_that_never_overlapped_are_refused_naming_the_later_one(tmp_path):
    results = _results(60, 5)
    today = _report(results, lambda i: True, started_at=TODAY)
    tomorrow = _report(results, lambda i: True, started_at=TODAY + 86_400)
    paths = [tmp_path / "today.json", tmp_path / "tomorrow.json"]
    for path, report in zip(paths, (today, tomorrow), strict=True):
        path.write_text(json.dumps(report))
    out = tmp_path / "merged.json"
    result = run_loadgen("report", "merge", *paths, "-o", out)
    assert_user_error(
        result,
        f"{paths[1]}: ran from 2027-01-16 08:00:00 UTC, after {paths[0]} had ended at "
        "2027-01-15 08:00:30 UTC: a merge adds up runs that ran side by side",
    )
    assert not out.exists()


def test_runs_that_overlap_one_another_in_a_chain_merge():
    results = _results(60, 5)
    chain = [_report(results, lambda i: True, started_at=TODAY + 20 * k) for k in range(3)]
    named = [(f"run-{k}.json", report) for k, report in enumerate(chain)]
    assert merge_named(named)["duration_s"] == 70.0


def test_a_shard_stopped_while_it_waited_for_the_start_merges_with_those_that_ran():
    ran = started_at(shard_reports(2), TODAY)
    stopped = {
        **ran[1],
        "started_at": "2027-01-15T07:59:56.000+00:00",
        "ended_at": "2027-01-15T07:59:56.000+00:00",
    }
    assert merge_named([("shard-0.json", ran[0]), ("shard-1.json", stopped)])["devices"] > 0
