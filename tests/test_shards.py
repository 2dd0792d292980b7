"""Shards (`--shard I/N`) started together (`--start-at`): a local rehearsal of a
Kubernetes Indexed Job. Each shard runs as a pod would: its own process in its
own folder holding only the fleet CA (as from a Secret) and its scenario (as
from a ConfigMap); it mints its own devices, waits for the agreed time, runs its
part, and writes its report. Merged, the shards are the whole fleet."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.certs.ca import CA
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.load.plan import RunPlan
from loadgen.load.runner import my_devices
from loadgen.load.schedule import ConstantArrival, RampingArrival, Stage, offsets, scaled
from loadgen.load.shard import Shard, parse_shard
from loadgen.load.start import parse_start
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import Scenario
from tests.conftest import assert_user_error, run_loadgen

FLEET = 90
SHARDS = 3
RATE = 60.0  # the whole fleet's devices a second: each shard runs 20
# Time for three shard processes to start, mint and spawn their workers on a
# loaded two-core machine before the agreed start.
START_MARGIN = 20.0


# --- the rehearsal ---------------------------------------------------------------


def _pod_folder(root: Path, shard: int, fleet_ca: CA, scenario: dict[str, Any], tag: str) -> Path:
    """What a pod has: the fleet CA (only ca.pem and ca.key) and the scenario
    with its profile. ``tag`` names this test's devices (the broker's log is
    the session's)."""
    folder = root / f"shard-{shard}"
    (folder / "ca").mkdir(parents=True)
    for name in ("ca.pem", "ca.key"):
        shutil.copy2(fleet_ca.directory / name, folder / "ca" / name)
    (folder / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    (folder / "profile.yaml").write_text(
        yaml.safe_dump({"subject": {"common_name": f"{tag}-{{index:05d}}"}})
    )
    return folder


def _scenario(endpoint: str, server_ca: Path, jitp: bool) -> dict[str, Any]:
    return {
        "name": "shards",
        "endpoint": endpoint,
        "tls": {"ca_file": str(server_ca), "server_name": "localhost"},
        "mqtt": {"version": 5, "client_id": "{common_name}"},
        "fleet": {
            "ca": "ca",
            "store": "fleet",
            "count": FLEET,
            "profile": "profile.yaml",
        },
        "jitp": {"expect_first_connect_rejected": jitp},
        "retry": {"initial": "50ms", "max": "500ms", "max_attempts": 6},
        "load": {"executor": "constant-arrival-rate", "rate": f"{RATE:g}/s", "max_in_flight": 90},
        "after_connect": [{"publish": {"topic": "dt/{client_id}/shards", "qos": 1}}],
        "timeouts": {"connect": "20s"},
    }


def _run_shards(
    root: Path, fleet_ca: CA, scenario: dict[str, Any], tag: str
) -> tuple[float, list[Path]]:
    """N shard processes side by side, as the Job's pods; their report files."""
    start_at = round(time.time() + START_MARGIN, 3)
    folders = [_pod_folder(root, shard, fleet_ca, scenario, tag) for shard in range(SHARDS)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadgen",
                "run",
                "scenario.yaml",
                *("--shard", f"{shard}/{SHARDS}"),
                *("--start-at", f"{start_at}"),
                *("--report", "report.json"),
                *("--workers", "1"),
            ],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard, folder in enumerate(folders)
    ]
    try:
        for process in processes:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, (out, err)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return start_at, [folder / "report.json" for folder in folders]


def _manifest(fleet: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (fleet / "manifest.jsonl").open()]


def _whole_fleet(root: Path, fleet_ca: CA, tag: str) -> list[dict[str, Any]]:
    """The fleet as one generator would have minted it."""
    profile = Profile.model_validate({"subject": {"common_name": f"{tag}-{{index:05d}}"}})
    mint(MintRequest(root / "whole", fleet_ca.directory, FLEET, profile))
    return _manifest(root / "whole")


def _identities(devices: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, str]]]:
    return sorted((d["index"], d["client_id"], d["subject"]) for d in devices)


def _merged(root: Path, reports: list[Path]) -> dict[str, Any]:
    result = run_loadgen("report", "merge", *reports, "-o", root / "merged.json")
    assert result.code == 0, result.err
    return json.loads((root / "merged.json").read_text())


@pytest.fixture(scope="module")
def mosquitto_rehearsal(tmp_path_factory, mosquitto, device_ca):
    root = tmp_path_factory.mktemp("rehearsal")
    tag = f"bulb{uuid.uuid4().hex[:8]}"
    scenario = _scenario(
        f"127.0.0.1:{mosquitto.tls_port}", mosquitto.server_ca.directory / "ca.pem", jitp=False
    )
    start_at, reports = _run_shards(root, device_ca, scenario, tag)
    return root, tag, start_at, reports


def test_the_shards_merged_are_the_whole_fleet_every_device_once(mosquitto_rehearsal, device_ca):
    root, tag, _, reports = mosquitto_rehearsal
    merged = _merged(root, reports)
    assert merged["devices"] == FLEET
    assert merged["outcomes"]["connected"] == sum(merged["outcomes"].values()) == FLEET
    assert merged["accounting"]["planned"] == FLEET
    assert (merged["shards"]["count"], merged["shards"]["indices"]) == (SHARDS, [0, 1, 2])
    minted = [d for i in range(SHARDS) for d in _manifest(root / f"shard-{i}" / "fleet")]
    assert sorted(d["index"] for d in minted) == list(range(FLEET))
    # The same devices, ids and subjects as one generator's fleet of 90.
    assert _identities(minted) == _identities(_whole_fleet(root, device_ca, tag))


def test_each_shard_minted_only_its_slice_into_its_own_folder(mosquitto_rehearsal):
    root, _, _, _ = mosquitto_rehearsal
    for shard in range(SHARDS):
        indices = [d["index"] for d in _manifest(root / f"shard-{shard}" / "fleet")]
        assert indices == list(range(shard, FLEET, SHARDS))


def test_no_two_shards_used_one_client_id(mosquitto_rehearsal, mosquitto):
    _, tag, _, _ = mosquitto_rehearsal
    log = [line for line in mosquitto.log.read_text().splitlines() if tag in line]
    # mosquitto takes a second connect of a client id over, closing the first.
    assert not [line for line in log if "already connected" in line]
    connected = [line.rsplit(" as ", 1)[1].split()[0] for line in log if "New client" in line]
    assert sorted(connected) == sorted(f"{tag}-{i:05d}" for i in range(FLEET))


def test_each_shard_ran_a_third_of_the_rate_and_together_the_whole(mosquitto_rehearsal):
    root, _, _, reports = mosquitto_rehearsal
    for path in reports:
        report = json.loads(path.read_text())
        assert report["accounting"]["planned"] == FLEET // SHARDS
        assert report["rate"]["target_per_s"] == pytest.approx(RATE / SHARDS, rel=0.01)
    merged = _merged(root, reports)
    assert merged["rate"]["target_per_s"] == pytest.approx(RATE, rel=0.01)
    # Planned arrivals a second, merged: the whole fleet's 60 a second.
    assert merged["series"]["target_per_s"][:1] == [RATE]
    assert sum(merged["series"]["target_per_s"]) == FLEET


def test_every_shard_says_which_run_it_is_a_part_of(mosquitto_rehearsal):
    root, _, _, reports = mosquitto_rehearsal
    wholes = [json.loads(path.read_text())["shard"]["of"] for path in reports]
    assert all(whole == wholes[0] for whole in wholes)
    assert wholes[0]["fleet"] == FLEET and wholes[0]["digest"].startswith("sha256:")
    assert _merged(root, reports)["shards"]["of"] == wholes[0]


def test_every_shard_started_its_schedule_at_the_agreed_time(mosquitto_rehearsal):
    _, _, start_at, reports = mosquitto_rehearsal
    for number, path in enumerate(reports):
        report = json.loads(path.read_text())
        assert (report["shard"]["index"], report["shard"]["count"]) == (number, SHARDS)
        assert report["start"]["at"] == pytest.approx(start_at)
        started = dt.datetime.fromisoformat(report["started_at"]).timestamp()
        # At the agreed time, or as late as it says it was ready (a loaded box).
        assert started == pytest.approx(start_at + report["start"]["late_s"], abs=0.01)
        assert report["start"]["late_s"] < START_MARGIN


@pytest.fixture(scope="module")
def emulator_rehearsal(tmp_path_factory, device_ca):
    """The same, against one `loadgen emulator serve` that every shard shares."""
    from loadgen.emulator.serve import start_embedded

    root = tmp_path_factory.mktemp("rehearsal-emulator")
    emulator = start_embedded(
        device_ca.directory,
        None,
        root / "emulator",
        quotas={"provision": "off", "connect-per-client": "off"},
        processes=1,
    )
    try:
        tag = f"lamp{uuid.uuid4().hex[:8]}"
        scenario = _scenario(f"{emulator.host}:{emulator.port}", emulator.server_ca, jitp=True)
        _, reports = _run_shards(root, device_ca, scenario, tag)
    finally:
        stats = emulator.stop()
    return root, reports, stats


def test_shards_sharing_one_emulator_provision_every_device_once(emulator_rehearsal):
    root, reports, stats = emulator_rehearsal
    merged = _merged(root, reports)
    assert merged["devices"] == FLEET
    assert merged["outcomes"]["connected"] == sum(merged["outcomes"].values()) == FLEET
    # JITP: each device's first connect was refused while it was provisioned.
    assert merged["attempts"]["provisioning_triggered"] == FLEET
    assert stats is not None
    assert stats["provision"]["Success"] == FLEET
    assert not stats.get("provision_failures")


# --- how a shard's part is chosen ------------------------------------------------


@pytest.mark.parametrize(
    "executor",
    [
        ConstantArrival(30.0),
        RampingArrival((Stage(40.0, 2.0), Stage(40.0, 1.0), Stage(10.0, 2.0)), 5.0),
    ],
    ids=["constant", "ramping"],
)
def test_the_shards_schedules_interleave_into_the_whole_fleets(executor):
    whole = list(offsets(executor, 200))
    for index in range(4):
        shard = Shard(index, 4)
        mine = list(offsets(scaled(executor, 1 / 4), shard.size(200), shard.phase))
        assert mine == pytest.approx([whole[i] for i in shard.indices(200)], abs=1e-6)


def _plan(
    tmp_path: Path, fleet: Path, shard: Shard, workers: int, rate: float | None = None
) -> RunPlan:
    scenario = Scenario.model_validate(
        {
            "name": "plan",
            "endpoint": "127.0.0.1:8883",
            "fleet": {"ca": str(tmp_path / "ca"), "store": str(fleet), "count": 40},
            "load": {"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 9},
        }
    )
    return build_plan(
        scenario, endpoint=("127.0.0.1", 8883), rate=rate, workers=workers, shard=shard
    )


def test_a_shard_plan_is_its_share_of_the_count_rate_and_in_flight(tmp_path):
    plan = _plan(tmp_path, tmp_path / "fleet", Shard(1, 3), workers=1)
    assert plan.count == 13  # 1, 4, ..., 37
    assert isinstance(plan.executor, ConstantArrival)
    assert plan.executor.rate == pytest.approx(40 / 3)
    assert plan.max_in_flight == 3


def test_a_shard_runs_a_third_of_a_rate_given_with_rate_too(tmp_path):
    plan = _plan(tmp_path, tmp_path / "fleet", Shard(0, 3), workers=1, rate=30.0)
    assert plan.executor == ConstantArrival(10.0)


@pytest.mark.parametrize("store", ["shard", "whole"])
def test_a_shards_workers_run_its_devices_from_its_own_store_or_a_whole_one(
    tmp_path, device_ca, store
):
    shard = Shard(1, 3)
    fleet = tmp_path / "fleet"
    mint(MintRequest(fleet, device_ca.directory, 40, shard=shard if store == "shard" else None))
    plan = _plan(tmp_path, fleet, shard, workers=2)
    ran = sorted(d.index for w in range(2) for d, _ in my_devices(plan, w))
    assert ran == list(range(1, 40, 3))


@pytest.mark.parametrize(
    "text",
    ["1796148000", "1796148000.0", "2026-12-01T18:00:00Z", "2026-12-01T19:00:00+01:00"],
)
def test_start_at_takes_epoch_seconds_or_iso_8601_with_a_zone(text):
    start = parse_start(text, "5s", now=1796148000.0 - 60)
    assert start is not None
    assert (start.at, start.tolerance) == (1796148000.0, 5.0)


def test_a_start_within_the_tolerance_is_late_by_how_much_it_missed():
    start = parse_start("1000", "30s", now=1010.0)
    assert start is not None
    assert start.late_by(1012.5) == 12.5
    assert start.late_by(990.0) == 0.0


def test_shard_names_without_a_slash_are_labels_only():
    assert parse_shard("eu-west").slice is None
    assert parse_shard("2/5").slice == Shard(2, 5)
    assert parse_shard("2/5").label == "2"


# --- mistakes ----------------------------------------------------------------------


@pytest.fixture
def pod(tmp_path, device_ca):
    """A pod's folder with a scenario whose endpoint nobody serves."""
    scenario = _scenario("127.0.0.1:1", device_ca.directory / "ca.pem", jitp=False)
    return _pod_folder(tmp_path, 0, device_ca, scenario, "x")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--shard", "3/2"), "--shard 3/2: I must be from 0 to 1"),
        (("--shard", "x/2"), "--shard x/2: not I/N"),
        (("--shard", "-1/4"), "--shard -1/4: I must be from 0 to 3"),
        (("--shard", "0/0"), "--shard 0/0: N must be 1 or more"),
        (("--shard", "95/100"), "--shard 95/100: a fleet of 90 leaves this shard no device"),
        (("--start-at", "yesterday"), "--start-at yesterday: not a time"),
        (("--start-at", "2026-12-01T18:00:00"), "no time zone"),
        (("--start-at", "9999999999"), "likely a mistake"),
        (("--start-at", str(time.time() - 120)), "late, more than --start-tolerance 30 s"),
        (("--start-tolerance", "soon"), "--start-tolerance: 'soon' is not a duration"),
    ],
)
def test_a_bad_shard_or_start_is_one_line_before_anything_is_written(pod, args, fragment):
    before = _files(pod)
    result = run_loadgen("run", "scenario.yaml", *args, "--report", "report.json", cwd=pod)
    assert_user_error(result, fragment)
    assert _files(pod) == before


def test_a_shard_never_makes_a_ca_of_its_own(pod):
    for name in ("ca.pem", "ca.key"):
        (pod / "ca" / name).unlink()
    result = run_loadgen("run", "scenario.yaml", "--shard", "0/3", cwd=pod)
    assert_user_error(result, "fleet.ca")
    assert _files(pod) == ["ca", "profile.yaml", "scenario.yaml"]


def test_a_shard_ready_later_than_the_tolerance_fails_without_a_report(pod):
    # The CA key is a FIFO the test holds until --start-at has passed: the check
    # before minting (which comes before the key is read) passes, and the shard
    # is certainly ready late, however fast this machine mints.
    key = pod / "ca" / "ca.key"
    held = pod / "ca.key.held"
    key.rename(held)
    os.mkfifo(key)
    start_at = time.time() + 10.0
    with subprocess.Popen(
        [
            sys.executable, "-m", "loadgen", "run", "scenario.yaml",
            *("--shard", "0/3"),
            *("--start-at", f"{start_at}", "--start-tolerance", "0s"),
            *("--report", "report.json"),
        ],
        cwd=pod, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as run:  # fmt: skip
        fifo = _open_when_read(key, run, deadline=start_at)
        time.sleep(max(0.0, start_at - time.time()) + 0.1)
        # Later readers (the minting processes) find the regular file.
        held.replace(key)
        with os.fdopen(fifo, "wb") as writer:
            writer.write(key.read_bytes())
        err = run.communicate(timeout=300)[1]
    assert run.returncode == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"loadgen: error: --start-at {start_at}: ready "), last
    assert "late, more than --start-tolerance 0 s" in last
    assert not (pod / "report.json").exists()


def _open_when_read(fifo: Path, run: subprocess.Popen[str], deadline: float) -> int:
    """The FIFO's write end, once ``run`` has opened it to read; fails the test
    when ``run`` ends first or is not there by ``deadline``."""
    while time.time() < deadline and run.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
        time.sleep(0.01)
    run.kill()
    _, err = run.communicate()
    pytest.fail(f"the run did not read the CA key before --start-at: {err}")


def test_certs_mint_takes_a_slice_not_a_name(tmp_path, device_ca):
    result = run_loadgen(
        "certs", "mint", "--ca", device_ca.directory, "--count", "9", "--out", tmp_path / "f",
        "--shard", "eu",
    )  # fmt: skip
    assert_user_error(result, "--shard eu: certs mint takes I/N")
    assert not (tmp_path / "f").exists()


def test_capacity_refuses_a_slice(pod):
    result = run_loadgen(
        "capacity", "scenario.yaml", "--slo", "p99(provision) < 2s", "--shard", "0/3", cwd=pod
    )
    assert_user_error(result, "--shard 0/3: loadgen capacity does not split a fleet")


def _copy(report: Path, to: Path, **changes: Any) -> Path:
    """Another run's report of the same shape (its own run id)."""
    data = {**json.loads(report.read_text()), "run_id": uuid.uuid4().hex, **changes}
    to.write_text(json.dumps(data))
    return to


def test_a_merge_refuses_one_shard_twice(mosquitto_rehearsal, tmp_path):
    _, _, _, reports = mosquitto_rehearsal
    again = _copy(reports[0], tmp_path / "again.json")
    result = run_loadgen("report", "merge", *reports, again, "-o", tmp_path / "m.json")
    assert_user_error(result, f"{again}: shard 0/3 is already in {reports[0]}")
    assert not (tmp_path / "m.json").exists()


def test_a_merge_refuses_shards_of_different_splits(mosquitto_rehearsal, tmp_path):
    _, _, _, reports = mosquitto_rehearsal
    other = _copy(reports[1], tmp_path / "other.json", shard={"index": 3, "count": 4})
    result = run_loadgen("report", "merge", reports[0], other, "-o", tmp_path / "m.json")
    assert_user_error(result, f"{other}: shard 3/4, but {reports[0]} is a shard of 3")
    assert not (tmp_path / "m.json").exists()


def test_a_merge_of_merged_shards_still_sees_each_shard_once(mosquitto_rehearsal, tmp_path):
    _, _, _, reports = mosquitto_rehearsal
    first = tmp_path / "first.json"
    part = run_loadgen("report", "merge", *reports[:2], "-o", first)
    assert part.code == 1 and "shard 2 of 3 missing" in part.err  # written, and said
    again = _copy(reports[1], tmp_path / "again.json")
    result = run_loadgen("report", "merge", first, again, "-o", tmp_path / "m.json")
    assert_user_error(result, f"{again}: shard 1/3 is already in {first}")


def test_certs_mint_a_shard_then_inspect_it_and_never_mix_in_another(tmp_path, device_ca):
    fleet = tmp_path / "fleet"
    mint_args = ("certs", "mint", "--ca", device_ca.directory, "--out", fleet, "--workers", "1")
    result = run_loadgen(*mint_args, "--count", "10", "--shard", "1/3")
    assert result.code == 0, result.err
    assert result.out.startswith(f"{fleet} (shard 1/3): minted 3, 3 devices")
    assert [d["index"] for d in _manifest(fleet)] == [1, 4, 7]
    grown = run_loadgen(*mint_args, "--count", "16", "--shard", "1/3")
    assert grown.code == 0, grown.err
    assert [d["index"] for d in _manifest(fleet)] == [1, 4, 7, 10, 13]
    shown = run_loadgen("certs", "inspect", fleet)
    assert "shard    1/3" in shown.out
    other = run_loadgen(*mint_args, "--count", "16", "--shard", "2/3")
    assert_user_error(other, f"{fleet}: holds shard 1/3 of a fleet, not --shard 2/3")
    whole = run_loadgen(*mint_args, "--count", "16")
    assert_user_error(whole, f"{fleet}: holds shard 1/3 of a fleet, not the whole fleet")
