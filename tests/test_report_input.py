"""`loadgen report show|html|merge|compare` on files that are not reports, or lack
a field the command reads: one line naming the file and the field, exit 2,
nothing written. And a merge adds each run once, by its run id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.report.merge import merge
from tests.conftest import assert_user_error, run_loadgen
from tests.test_report_merge import _report
from tests.test_stats import _results


def _shards(n: int = 2, devices: int = 200) -> list[dict]:
    results = _results(devices, 4)
    return [_report(results, lambda i, s=s: i % n == s) for s in range(n)]


def _write(path: Path, report: object) -> Path:
    path.write_text(json.dumps(report))
    return path


def _parent(report: dict, field: str) -> tuple[dict, str]:
    """The object holding a dotted ``field``, and its last name."""
    *parents, last = field.split(".")
    node = report
    for part in parents:
        node = node[part]
    return node, last


def _commands(report: Path, out: Path) -> dict[str, tuple]:
    return {
        "show": ("report", "show", report),
        "html": ("report", "html", report, "-o", out),
        "merge": ("report", "merge", report, "-o", out),
        "compare": ("report", "compare", report, report),
    }


@pytest.mark.parametrize("command", ["show", "html", "merge", "compare"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("devices: 3\n", "not a JSON report"),
        ("[1, 2]", "not a loadgen-report/1 report (JSON, but not an object)"),
        ('{"devices": 3}', "not a loadgen-report/1 report (JSON without a format field)"),
        ('{"format": "k6-summary"}', "not a loadgen-report/1 report (format 'k6-summary')"),
    ],
)
def test_a_file_that_is_not_a_report_is_one_line_naming_it(tmp_path, command, content, message):
    path = tmp_path / "r.json"
    path.write_text(content)
    out = tmp_path / "out"
    assert_user_error(run_loadgen(*_commands(path, out)[command]), f"{path}: {message}")
    assert not out.exists()


@pytest.mark.parametrize("command", ["show", "html", "merge", "compare"])
def test_a_file_nested_past_what_python_parses_is_one_line_naming_it(tmp_path, command):
    path = tmp_path / "r.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    out = tmp_path / "out"
    result = run_loadgen(*_commands(path, out)[command])
    assert_user_error(result, f"{path}: not a JSON report: nested too deep to read")
    assert not out.exists()


@pytest.mark.parametrize("command", ["show", "html", "merge", "compare"])
def test_a_number_too_large_for_any_count_is_one_line_naming_its_field(tmp_path, command):
    report = _shards(1)[0]
    report["devices"] = 10**400  # no float holds it
    path = _write(tmp_path / "r.json", report)
    result = run_loadgen(*_commands(path, tmp_path / "out")[command])
    assert_user_error(result, f"{path}: field devices is beyond ±1e+18: no count or time is")


@pytest.mark.parametrize("command", ["html", "merge"])
def test_a_count_by_attempts_with_a_key_too_long_for_a_number_is_one_line(tmp_path, command):
    report = _shards(1)[0]
    report["attempts"]["per_device"] = {"9" * 5000: 2}
    path = _write(tmp_path / "r.json", report)
    result = run_loadgen(*_commands(path, tmp_path / "out")[command])
    assert_user_error(result, f"{path}: field attempts.per_device has the key of 5,000 characters")


def test_a_latency_bucket_past_any_latency_is_one_line_naming_it(tmp_path):
    report = _shards(1)[0]
    report["series"]["latency_buckets"] = {"provision": [{"100000": 1}]}
    path = _write(tmp_path / "r.json", report)
    result = run_loadgen("report", "merge", path, "-o", tmp_path / "out")
    assert_user_error(
        result,
        f"{path}: field series.latency_buckets.provision[0] has the key 100000, "
        "not a latency bucket (-10,000 to 10,000)",
    )


@pytest.mark.parametrize("command", ["show", "html"])
def test_partial_given_as_text_is_one_line_not_read_as_true(tmp_path, command):
    report = _shards(1)[0]
    report["partial"] = "no"
    path = _write(tmp_path / "r.json", report)
    result = run_loadgen(*_commands(path, tmp_path / "out")[command])
    assert_user_error(result, f"{path}: field partial is a string, not true or false")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        ("show", "latency_ms.provision.p99"),
        ("show", "attempts"),
        ("merge", "histograms.provision"),
        ("merge", "started_at"),
        ("compare", "outcomes"),
        ("compare", "latency_ms.connack"),
    ],
)
def test_a_report_missing_a_field_the_command_needs_names_it(tmp_path, command, field):
    report = _shards(1)[0]
    node, last = _parent(report, field)
    del node[last]
    path = _write(tmp_path / "r.json", report)
    out = tmp_path / "out"
    result = run_loadgen(*_commands(path, out)[command])
    assert_user_error(result, f"{path}: field {field} is missing (report {command} needs it)")
    assert not out.exists()


def test_a_field_of_the_wrong_shape_is_named_with_what_it_should_be(tmp_path):
    report = {**_shards(1)[0], "devices": "many"}
    path = _write(tmp_path / "r.json", report)
    assert_user_error(
        run_loadgen("report", "show", path), f"{path}: field devices is a string, not a number"
    )


@pytest.mark.parametrize("command", ["show", "html", "merge"])
@pytest.mark.parametrize(
    ("field", "value", "shape"),
    [
        ("accounting.planned", None, "null, not a number"),
        ("accounting.notes", "zz", "a string, not an object"),
        ("outcomes.throttled", None, "null, not a number"),
        ("outcomes.connected", float("nan"), "nan, not a number"),
        ("jitp.provisioning.Success", [1], "a list, not a number"),
    ],
)
def test_a_field_of_the_wrong_shape_is_one_line_for_every_reader(
    tmp_path, command, field, value, shape
):
    report = _shards(1)[0]
    report["jitp"] = {"first_connect_rejected": 0, "provisioning": {"Success": 1}}
    node, last = _parent(report, field)
    node[last] = value
    path = _write(tmp_path / "r.json", report)
    out = tmp_path / "out"
    result = run_loadgen(*_commands(path, out)[command])
    assert_user_error(result, f"{path}: field {field} is {shape}")
    assert not out.exists()


@pytest.mark.parametrize("field", ["accounting", "accounting.expected"])
def test_compare_of_a_report_whose_accounting_is_a_list_is_one_line(tmp_path, field):
    # compare judges whether the current report measured anything from its
    # accounting: a report that connected nothing reads it.
    report = _shards(1)[0]
    node, last = _parent(report, field)
    node[last] = [1]
    path = _write(tmp_path / "r.json", report)
    result = run_loadgen(*_commands(path, tmp_path / "out")["compare"])
    assert_user_error(result, f"{path}: field {field} is a list, not an object")


def test_show_of_a_capacity_step_without_its_verdict_is_one_line(tmp_path):
    report = _shards(1)[0]
    step = {
        "step": 1,
        "rate_per_s": 10,
        "achieved_per_s": 10,
        "latency_ms": {"provision": {"p50": 1, "p99": 2}},
        "failed_ratio": 0,
        "throttled": 0,
    }
    report["capacity"] = {"verdict": "no SLO broke", "steps": [step]}
    path = _write(tmp_path / "r.json", report)
    result = run_loadgen(*_commands(path, tmp_path / "out")["show"])
    assert_user_error(result, f"{path}: field capacity.steps[0].passed is missing")


def test_a_merge_of_a_histogram_that_is_none_names_it(tmp_path):
    path = _write(tmp_path / "r.json", _shards(1)[0])
    report = json.loads(path.read_text())
    report["histograms"]["provision"] = "HISTFAAAgarbage"
    _write(path, report)
    result = run_loadgen("report", "merge", path, "-o", tmp_path / "all.json")
    assert_user_error(result, f"{path}: field histograms.provision: not an HDR histogram")
    assert not (tmp_path / "all.json").exists()


def test_html_of_a_report_with_a_broken_section_writes_nothing(tmp_path):
    path = _write(tmp_path / "r.json", {**_shards(1)[0], "series": 3})
    out = tmp_path / "r.html"
    result = run_loadgen("report", "html", path, "-o", out)
    assert_user_error(result, f"{path}: field series is a number, not an object")
    assert not out.exists()


def test_html_written_over_its_own_report_is_refused_and_the_report_kept(tmp_path):
    path = _write(tmp_path / "r.json", _shards(1)[0])
    before = path.read_bytes()
    result = run_loadgen("report", "html", path, "-o", path)
    assert_user_error(result, f"--out {path}: the same file as REPORT")
    assert path.read_bytes() == before


def test_html_to_dev_stdout_on_a_pipe_is_written_into_the_pipe(tmp_path):
    """The command's standard output is a pipe here, as in `... | gzip`."""
    path = _write(tmp_path / "r.json", _shards(1)[0])
    result = run_loadgen("report", "html", path, "-o", "/dev/stdout")
    assert result.code == 0, result.err
    assert result.out.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "attempts.per_device",
            {"1": 90, "n/a": 10},
            "field attempts.per_device has the key 'n/a', not a whole number",
        ),
        ("gates", ["x"], "field gates[0] is a string, not an object"),
        (
            "gates",
            [{"gate": "count(failed) == 0", "passed": False, "measured": "x", "threshold": 0}],
            "field gates[0].measured is a string, not a number or null",
        ),
        ("series.interval_s", "1s", "field series.interval_s is a string, not a number or null"),
        (
            "series.latency_ms.provision",
            "x",
            "field series.latency_ms.provision is a string, not a list",
        ),
        (
            "series.latency_ms.provision",
            ["x"],
            "field series.latency_ms.provision[0] is a string, not an object",
        ),
        (
            "series.latency_ms.provision",
            [{"count": 3, "p50": 1.0, "p99": "x"}],
            "field series.latency_ms.provision[0].p99 is a string, not a number or null",
        ),
        ("capacity", {"steps": "x"}, "field capacity.steps is a string, not a list"),
        ("capacity", {"steps": ["x"]}, "field capacity.steps[0] is a string, not an object"),
        (
            "capacity",
            {"steps": [{"step": 1, "rate_per_s": "x", "passed": True}]},
            "field capacity.steps[0].rate_per_s is a string, not a number or null",
        ),
    ],
)
def test_a_field_html_draws_in_another_shape_is_one_line(tmp_path, field, value, message):
    report = _shards(1)[0]
    node, last = _parent(report, field)
    node[last] = value
    path = _write(tmp_path / "r.json", report)
    out = tmp_path / "r.html"
    assert_user_error(run_loadgen("report", "html", path, "-o", out), f"{path}: {message}")
    assert not out.exists()


def test_html_refuses_a_time_without_a_zone_rather_than_guess_one(tmp_path):
    path = _write(tmp_path / "r.json", {**_shards(1)[0], "started_at": "2026-01-01T00:00:00"})
    out = tmp_path / "r.html"
    assert_user_error(
        run_loadgen("report", "html", path, "-o", out),
        f"{path}: field started_at is a string, not an ISO 8601 time with a zone",
    )
    assert not out.exists()


def test_a_merge_time_that_is_not_iso_8601_is_named(tmp_path):
    path = _write(tmp_path / "r.json", {**_shards(1)[0], "started_at": "yesterday"})
    result = run_loadgen("report", "merge", path, "-o", tmp_path / "all.json")
    assert_user_error(result, f"{path}: field started_at is a string, not an ISO 8601 time")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "started_at",
            "2027-01-15T08:00:00",
            "field started_at is a string, not an ISO 8601 time with a zone",
        ),
        (
            "attempts.per_device",
            {"1": 90, "n/a": 10},
            "field attempts.per_device has the key 'n/a', not a whole number",
        ),
        (
            "series.started_per_s",
            [3, "3"],
            "field series.started_per_s[1] is a string, not a number",
        ),
        (
            "series.target_per_s",
            [None],
            "field series.target_per_s[0] is null, not a number",
        ),
        (
            "series.outcomes_per_s.connected",
            [1, [2]],
            "field series.outcomes_per_s.connected[1] is a list, not a number",
        ),
        (
            "series.latency_buckets.provision",
            [{"k": 1}],
            "field series.latency_buckets.provision[0] has the key 'k', not a whole number",
        ),
    ],
)
def test_a_field_the_merge_computes_with_in_another_shape_is_one_line(
    tmp_path, field, value, message
):
    first, second = _shards(2)
    node, last = _parent(second, field)
    node[last] = value
    paths = [_write(tmp_path / "a.json", first), _write(tmp_path / "b.json", second)]
    out = tmp_path / "all.json"
    assert_user_error(run_loadgen("report", "merge", *paths, "-o", out), f"{paths[1]}: {message}")
    assert not out.exists()


def test_a_report_whose_planned_series_is_null_merges_as_one_without_a_plan():
    first, second = _shards(2)
    second["series"]["target_per_s"] = None
    merged = merge([first, second])
    assert merged["series"]["target_per_s"] == first["series"]["target_per_s"]


# Run ids: one per run, and a merge adds each run once


def test_every_run_report_has_a_run_id_of_its_own():
    first, second = _shards(2)
    assert len(first["run_id"]) == 32 and int(first["run_id"], 16) >= 0
    assert first["run_id"] != second["run_id"]


def test_a_merged_report_carries_the_run_ids_it_merged():
    shards = _shards(3)
    merged = merge(shards)
    assert merged["run_ids"] == [s["run_id"] for s in shards]
    assert merge([merge(shards[:2]), shards[2]])["run_ids"] == merged["run_ids"]


def test_merging_merges_stays_exact(tmp_path):
    shards = _shards(4)
    paths = [_write(tmp_path / f"s{i}.json", s) for i, s in enumerate(shards)]
    for name, parts in (("ab", paths[:2]), ("cd", paths[2:])):
        assert run_loadgen("report", "merge", *parts, "-o", tmp_path / f"{name}.json").code == 0
    result = run_loadgen(
        "report", "merge", tmp_path / "ab.json", tmp_path / "cd.json", "-o", tmp_path / "all.json"
    )
    assert result.code == 0, result.err
    nested = json.loads((tmp_path / "all.json").read_text())
    flat = merge(shards)
    for key in ("devices", "outcomes", "latency_ms", "histograms", "run_ids"):
        assert nested[key] == flat[key], key


def test_merge_refuses_the_same_report_twice(tmp_path):
    path = _write(tmp_path / "a.json", _shards(1)[0])
    result = run_loadgen("report", "merge", path, path, "-o", tmp_path / "all.json")
    assert_user_error(result, f"{path}: given twice")
    assert not (tmp_path / "all.json").exists()


def test_merge_refuses_a_copy_of_a_run_it_holds(tmp_path):
    report = _shards(1)[0]
    a, b = _write(tmp_path / "a.json", report), _write(tmp_path / "copy.json", report)
    result = run_loadgen("report", "merge", a, b, "-o", tmp_path / "all.json")
    assert_user_error(result, f"{b}: run {report['run_id']} is already in {a}")


def test_merge_refuses_a_run_that_a_merged_report_holds_already(tmp_path):
    first, second = _shards(2)
    merged = _write(tmp_path / "merged.json", merge([first, second]))
    again = _write(tmp_path / "second.json", second)
    result = run_loadgen("report", "merge", merged, again, "-o", tmp_path / "all.json")
    assert_user_error(result, f"{again}: run {second['run_id']} is already in {merged}")


def test_reports_from_before_run_ids_merge_but_not_twice(tmp_path):
    first, second = _shards(2)
    for report in (first, second):
        del report["run_id"]
    a, b = _write(tmp_path / "a.json", first), _write(tmp_path / "b.json", second)
    assert run_loadgen("report", "merge", a, b, "-o", tmp_path / "ab.json").code == 0
    copy = _write(tmp_path / "copy.json", first)
    result = run_loadgen("report", "merge", a, copy, "-o", tmp_path / "twice.json")
    assert_user_error(result, f"{copy}: run sha256:", f"is already in {a}")


def test_merge_into_a_folder_that_does_not_exist_is_one_line(tmp_path):
    path = _write(tmp_path / "a.json", _shards(1)[0])
    result = run_loadgen("report", "merge", path, "-o", tmp_path / "nope" / "all.json")
    assert_user_error(result, "--out", "all.json: folder", "does not exist")
