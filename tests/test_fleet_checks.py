"""The fleet is checked on every run, and a mint or a CA refuses bad input before
it writes anything: one line naming what differs, exit 2, no connection made."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loadgen.certs.ca import init_ca
from loadgen.certs.profile import max_validity_days
from tests.conftest import assert_user_error, run_loadgen


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP endpoint that only counts: a refused run must never connect to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def _scenario(root: Path, listener: socket.socket, **fleet: object) -> Path:
    for ca in (root / "ca", root / "server-ca"):
        if not (ca / "ca.pem").exists():
            init_ca(ca)
    scenario = {
        "name": "fleet-check",
        "endpoint": f"127.0.0.1:{listener.getsockname()[1]}",
        "tls": {"ca_file": "server-ca/ca.pem", "server_name": "localhost"},
        "fleet": {"ca": "ca", "store": "fleet", "count": 5, **fleet},
        "load": {"executor": "constant-arrival-rate", "rate": "10/s", "max_in_flight": 5},
        "timeouts": {"connect": "2s"},
    }
    path = root / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def _mint(root: Path, *args: str | Path) -> None:
    result = run_loadgen("certs", "mint", "--ca", root / "ca", "--out", root / "fleet", *args)
    assert result.code == 0, result.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_fleet_minted_with_another_profile_names_the_field_that_differs(tmp_path, listener):
    (tmp_path / "profile.yaml").write_text("subject:\n  common_name: 'bulb-{index}'\n")
    path = _scenario(tmp_path, listener, profile="profile.yaml")
    _mint(tmp_path, "--count", "5")  # the default profile
    before = _snapshot(tmp_path / "fleet")
    result = run_loadgen("run", path)
    assert_user_error(
        result,
        "minted with a different profile",
        "subject.common_name is 'device-{index:07d}' in the fleet, 'bulb-{index}' in fleet.profile",
    )
    assert _nobody_connected(listener)
    assert _snapshot(tmp_path / "fleet") == before


def test_a_fleet_minted_with_another_seed_is_refused_on_run(tmp_path, listener):
    path = _scenario(tmp_path, listener, seed=7)
    _mint(tmp_path, "--count", "5", "--seed", "3")
    assert_user_error(run_loadgen("run", path), "minted with seed 3, not fleet.seed 7")
    assert _nobody_connected(listener)


def test_a_profile_file_that_does_not_exist_is_refused_though_the_fleet_is_there(
    tmp_path, listener
):
    path = _scenario(tmp_path, listener, profile="gone.yaml")
    _mint(tmp_path, "--count", "5")
    result = run_loadgen("run", path)
    assert_user_error(result, "fleet.profile: ", "gone.yaml: profile file not found")
    assert _nobody_connected(listener)


def test_a_profile_file_that_does_not_exist_is_refused_before_minting(tmp_path, listener):
    path = _scenario(tmp_path, listener, profile="gone.yaml")
    assert_user_error(run_loadgen("run", path), "fleet.profile: ", "profile file not found")
    assert not (tmp_path / "fleet").exists()


def test_a_ca_whose_key_does_not_match_its_certificate_is_refused(tmp_path, listener):
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    other = init_ca(tmp_path / "other")
    (tmp_path / "ca" / "ca.key").write_bytes((other.directory / "ca.key").read_bytes())
    result = run_loadgen("run", path)
    assert_user_error(result, "fleet.ca: ", "ca.key: the key does not match the certificate")
    assert _nobody_connected(listener)


def test_a_fleet_signed_by_another_ca_than_the_scenarios_is_refused(tmp_path, listener):
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    (tmp_path / "ca").rename(tmp_path / "first-ca")
    init_ca(tmp_path / "ca")  # the same folder, another CA
    result = run_loadgen("run", path)
    assert_user_error(result, "minted with another CA", "not fleet.ca")
    assert _nobody_connected(listener)


def test_a_missing_ca_is_not_recreated_for_a_fleet_that_exists(tmp_path, listener):
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    (tmp_path / "ca").rename(tmp_path / "moved-ca")
    result = run_loadgen("run", path)
    assert_user_error(result, "fleet.ca: no CA in", "was minted with CN=jitp-loadgen fleet CA")
    assert not (tmp_path / "ca").exists()
    assert _nobody_connected(listener)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda device: {**device, "colour": "red"}, "unknown field 'colour'"),
        (lambda device: [device], "not a JSON object"),
        (lambda device: {**device, "index": 7}, "device 7 where device 2 belongs"),
    ],
    ids=["unknown field", "a list", "out of order"],
)
def test_a_damaged_middle_line_of_the_manifest_stops_the_run_before_any_load(
    tmp_path, listener, damage, problem
):
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    manifest = tmp_path / "fleet" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[2] = json.dumps(damage(json.loads(lines[2])))
    manifest.write_text("\n".join(lines) + "\n")
    result = run_loadgen("run", path, "--report", tmp_path / "r.json")
    assert_user_error(result, f"{manifest}:3: ", problem)
    assert _nobody_connected(listener)
    assert not (tmp_path / "r.json").exists()


def _damage_line(manifest: Path, number: int) -> None:
    """Line ``number`` given an unknown field, the file's size unchanged."""
    lines = manifest.read_bytes().splitlines(keepends=True)
    lines[number - 1] = lines[number - 1].replace(b'"client_id"', b'"Klient_id"')
    manifest.write_bytes(b"".join(lines))


def test_a_line_damaged_after_the_manifest_was_checked_is_found_by_the_next_run(tmp_path, listener):
    # Lines already checked are not parsed again when they are the same bytes:
    # a change that keeps the file's size is still a change.
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    _mint(tmp_path, "--count", "5")  # nothing to mint: the manifest is checked
    manifest = tmp_path / "fleet" / "manifest.jsonl"
    _damage_line(manifest, 3)
    result = run_loadgen("run", path, "--report", tmp_path / "r.json")
    assert_user_error(result, f"{manifest}:3: ", "unknown field 'Klient_id'")
    assert _nobody_connected(listener)


def test_lines_appended_after_the_manifest_was_checked_are_checked_too(tmp_path, listener):
    path = _scenario(tmp_path, listener, count=8)
    _mint(tmp_path, "--count", "5")
    _mint(tmp_path, "--count", "8")  # checks the 5, then appends 3
    manifest = tmp_path / "fleet" / "manifest.jsonl"
    _damage_line(manifest, 7)
    result = run_loadgen("run", path, "--report", tmp_path / "r.json")
    assert_user_error(result, f"{manifest}:7: ", "unknown field 'Klient_id'")
    assert _nobody_connected(listener)


@pytest.mark.parametrize(
    "change", [{"rules": 0}, {"step": 2}], ids=["checked under older rules", "another stride"]
)
def test_a_check_record_made_under_other_terms_means_the_whole_manifest_is_checked(
    tmp_path, listener, change
):
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    _mint(tmp_path, "--count", "5")
    fleet = tmp_path / "fleet"
    manifest = fleet / "manifest.jsonl"
    _damage_line(manifest, 2)
    # The record vouches for the damaged bytes, but not under today's terms.
    record = json.loads((fleet / ".checked").read_text())
    record["sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    (fleet / ".checked").write_text(json.dumps({**record, **change}))
    result = run_loadgen("run", path, "--report", tmp_path / "r.json")
    assert_user_error(result, f"{manifest}:2: ", "unknown field 'Klient_id'")


@pytest.mark.parametrize("kind", ["nested", "endless"])
def test_a_fleet_json_no_reader_can_hold_is_one_line_before_any_load(tmp_path, listener, kind):
    # It was read whole and parsed recursively: /dev/zero filled the memory, a
    # nest of lists was a RecursionError's traceback.
    path = _scenario(tmp_path, listener)
    _mint(tmp_path, "--count", "5")
    meta = tmp_path / "fleet" / "fleet.json"
    meta.unlink()
    if kind == "nested":
        meta.write_text("[" * 100_000 + "]" * 100_000)
    else:
        meta.symlink_to("/dev/zero")
    result = run_loadgen("run", path, "--report", tmp_path / "r.json")
    assert_user_error(result, str(meta))
    assert _nobody_connected(listener)


# certs mint and ca init: refused before anything is written


def test_a_validity_x509_cannot_encode_is_refused_and_nothing_is_left(tmp_path):
    profile = tmp_path / "long.yaml"
    profile.write_text("validity_days: 3000000\n")
    result = run_loadgen(
        "certs",
        "mint",
        "--init-ca",
        "--ca",
        tmp_path / "ca",
        "--count",
        "3",
        "--out",
        tmp_path / "fleet",
        "--profile",
        profile,
    )
    assert_user_error(result, f"{profile}:1: validity_days: ", "9999-12-31", "at most")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.yaml"]


def test_the_longest_validity_x509_can_hold_mints_every_fault_included(tmp_path):
    most = max_validity_days(dt.datetime.now(dt.UTC)) - 1  # a day's margin for the clock
    profile = tmp_path / "p.yaml"
    profile.write_text(f"validity_days: {most}\nfaults: {{expired: 0.25, not_yet_valid: 0.25}}\n")
    result = run_loadgen(
        "certs", "mint", "--init-ca", "--ca", tmp_path / "ca", "--count", "8",
        "--out", tmp_path / "fleet", "--profile", profile,
    )  # fmt: skip
    assert result.code == 0, result.err
    devices = [json.loads(line) for line in (tmp_path / "fleet" / "manifest.jsonl").open()]
    by_fault = {d["fault"]: d for d in devices}
    assert by_fault[None]["not_after"].startswith("9999-")
    assert by_fault["not_yet_valid"]["not_after"].startswith("9999-")
    # An expired device's lifetime would start before year 1: it starts in 1950.
    assert by_fault["expired"]["not_before"].startswith("1950-01-01")


def test_a_refused_mint_leaves_no_fleet_so_the_corrected_profile_mints(tmp_path):
    # 61 characters and the index: device 1000 is one character too long, which
    # only the last device shows.
    profile = tmp_path / "p.yaml"
    profile.write_text("subject:\n  common_name: '" + "x" * 61 + "{index}'\n")
    mint = ("certs", "mint", "--init-ca", "--ca", tmp_path / "ca", "--out", tmp_path / "fleet")
    result = run_loadgen(*mint, "--count", "1001", "--profile", profile)
    assert_user_error(result, "device 1000: subject.common_name", "got 65")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]
    profile.write_text("subject:\n  common_name: '" + "x" * 60 + "{index}'\n")
    assert run_loadgen(*mint, "--count", "1001", "--profile", profile).code == 0


@pytest.mark.parametrize("count", ["0", "-3"])
def test_a_count_of_no_devices_leaves_no_ca_behind(tmp_path, count):
    result = run_loadgen(
        "certs",
        "mint",
        "--init-ca",
        "--ca",
        tmp_path / "ca",
        "--count",
        count,
        "--out",
        tmp_path / "fleet",
    )
    assert_user_error(result, "--count must be positive")
    assert list(tmp_path.iterdir()) == []


def test_ca_init_refuses_a_validity_x509_cannot_encode(tmp_path):
    result = run_loadgen("ca", "init", "--out", tmp_path / "ca", "--days", "99999999")
    assert_user_error(result, "--days 99999999", "9999-12-31", "at most")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("subject", ["", "  ", "CN="])
def test_ca_init_refuses_an_empty_subject(tmp_path, subject):
    result = run_loadgen("ca", "init", "--out", tmp_path / "ca", "--subject", subject)
    assert_user_error(result, "--subject")
    assert list(tmp_path.iterdir()) == []


def test_a_new_fleet_whose_mint_fails_before_its_first_device_is_removed(tmp_path, monkeypatch):
    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.minter import Minter
    from loadgen.errors import WriteError

    def disk_full(*_args: object) -> bytes:
        raise OSError(28, "No space left on device")

    request = MintRequest(tmp_path / "fleet", tmp_path / "ca", 5, init_ca=True)
    with monkeypatch.context() as patch:
        patch.setattr(Minter, "mint", disk_full)
        with pytest.raises(WriteError, match="No space left on device"):
            mint(request)
    assert list(tmp_path.iterdir()) == []
    assert mint(request).total == 5
