"""`loadgen report merge` judges the whole run, not only its gates: a shard that
was stopped before its end makes the merge fail (exit 1) with one line naming
it, as `loadgen run` fails for it in the shard's own pod, and the merged report,
its HTML and its summary say so."""

from __future__ import annotations

import json
from pathlib import Path

from loadgen.report.merge import merge
from loadgen.report.shortfalls import shortfalls
from tests.conftest import run_loadgen
from tests.test_merge_sources import PASSES, of_run, shard_reports, write_reports


def _merge_files(folder: Path, *args: str | Path) -> tuple[int, str, dict, Path]:
    """Merge every report in ``folder`` with a passing gate: its exit code,
    stderr, merged report and the folder its outputs went to."""
    outputs = folder.parent / "merged"
    outputs.mkdir(exist_ok=True)
    result = run_loadgen(
        "report", "merge", folder, "-o", outputs / "merged.json", "--gate", PASSES,
        "--html", outputs / "merged.html", "--summary-md", outputs / "summary.md", *args,
    )  # fmt: skip
    merged = json.loads((outputs / "merged.json").read_text())
    return result.code, result.err, merged, outputs


def _named(reports: list[dict]) -> tuple[list[tuple[str, dict]], dict]:
    """The reports as the merge reads them (named shard-I.json), and their merge."""
    named = [(f"shard-{r['shard']['index']}.json", r) for r in reports]
    return named, merge(reports)


def test_a_merge_of_a_partial_shard_is_partial():
    reports = shard_reports(3)
    reports[1]["partial"] = True
    assert merge(reports)["partial"] is True
    assert merge(shard_reports(3))["partial"] is False


def test_a_merge_of_a_partial_shard_exits_1_naming_it_whatever_the_gates_say(tmp_path):
    reports = shard_reports(3)
    reports[1]["partial"] = True
    paths = write_reports(tmp_path / "results", reports)
    code, err, merged, outputs = _merge_files(tmp_path / "results", "--expect", "3")
    assert code == 1, err
    assert [g["passed"] for g in merged["gates"]] == [True]
    assert err.splitlines() == [
        f"loadgen: partial: shard 1/3 ({paths[1]}) stopped before the end of the run; "
        "the merge holds what ran"
    ]
    assert "partial: stopped early" in (outputs / "summary.md").read_text()
    assert "PARTIAL" in (outputs / "merged.html").read_text()


def test_a_merge_of_whole_shards_has_no_shortfall():
    assert shortfalls(*_named(shard_reports(3))) == []


def test_a_shard_that_lost_a_worker_is_a_shortfall_naming_the_shard_and_why():
    reports = shard_reports(3)
    reports[2]["accounting"]["workers_lost"] = {"1": "died (exit code -9)"}
    assert shortfalls(*_named(reports)) == [
        "shard 2/3 (shard-2.json): worker 1 died (exit code -9); its unfinished devices are errors"
    ]


def test_a_shard_whose_embedded_emulator_stopped_is_a_shortfall_naming_the_shard_and_why():
    reports = shard_reports(2)
    reports[0]["jitp"] = {"emulator_stopped": "serving process 1 was killed (SIGKILL)"}
    (line,) = shortfalls(*_named(reports))
    assert line.startswith(
        "shard 0/2 (shard-0.json): the embedded emulator stopped during the run: "
        "serving process 1 was killed (SIGKILL)."
    )


def test_a_merge_of_a_shard_that_lost_a_worker_exits_1_whatever_the_gates_say(tmp_path):
    reports = shard_reports(2)
    reports[1]["accounting"]["workers_lost"] = {"0": "died (exit code -9)"}
    paths = write_reports(tmp_path / "results", reports)
    code, err, merged, _ = _merge_files(tmp_path / "results")
    assert code == 1, err
    assert [g["passed"] for g in merged["gates"]] == [True]
    assert f"loadgen: shard 1/2 ({paths[1]}): worker 0 died (exit code -9)" in err


def test_a_merge_of_part_of_the_shards_lists_those_missing_and_their_devices():
    shards = merge(of_run(shard_reports(3, devices=61), fleet=61)[:2])["shards"]
    assert (shards["indices"], shards["missing"], shards["missing_devices"]) == ([0, 1], [2], 20)


def test_a_merge_of_older_shards_lists_those_missing_without_their_devices():
    shards = merge(shard_reports(4)[1:3])["shards"]
    assert (shards["missing"], shards["missing_devices"]) == ([0, 3], None)


def test_a_merge_of_part_of_the_shards_exits_1_naming_those_missing(tmp_path):
    write_reports(tmp_path / "results", of_run(shard_reports(3))[:2])
    code, err, merged, outputs = _merge_files(tmp_path / "results")
    assert code == 1, err
    assert [g["passed"] for g in merged["gates"]] == [True]
    line = (
        "shard 2 of 3 missing (40 devices): the merge, and a verdict on it, covers part of "
        "the fleet"
    )
    assert err.splitlines() == [f"loadgen: {line}"]
    assert line[1:] in (outputs / "summary.md").read_text()
    assert line[1:] in (outputs / "merged.html").read_text()


def test_report_show_of_a_merge_of_part_of_the_shards_names_those_missing(tmp_path):
    path = tmp_path / "merged.json"
    path.write_text(json.dumps(merge(shard_reports(5)[1:4])))
    shown = run_loadgen("report", "show", path)
    assert shown.code == 0, shown.err
    assert "shards 0, 4 of 5 missing: the merge, and a verdict on it, covers part" in " ".join(
        shown.out.split()
    )
