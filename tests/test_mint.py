"""`loadgen certs mint`: fleets of CA-signed device certificates, checked by OpenSSL."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loadgen.certs.ca import CA, init_ca
from loadgen.certs.subject import BY_OID
from tests import openssl
from tests.conftest import LIGHTBULB_PROFILE, assert_user_error, run_loadgen

FAULTY_PROFILE = """\
key_type: {ec-p256: 0.8, ec-p384: 0.1, rsa-2048: 0.1}
subject:
  common_name: "sensor-{index:05d}"
  serial_number: "{digits:12}"
  country: {choice: [US, DE]}
  organization: Acme
faults:
  missing_country: 0.04
  expired: 0.04
  not_yet_valid: 0.04
  unknown_ca: 0.04
"""
FLEET_SIZE = 1200


class Fleet:
    def __init__(self, path: Path, ca: CA) -> None:
        self.path = path
        self.ca = ca
        lines = (path / "manifest.jsonl").read_text().splitlines()
        self.devices = [json.loads(line) for line in lines]

    def cert(self, device: dict) -> Path:
        return self.path / device["cert"]

    def key(self, device: dict) -> Path:
        return self.path / device["key"]

    def with_fault(self, fault: str | None) -> list[dict]:
        return [d for d in self.devices if d["fault"] == fault]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    root = tmp_path_factory.mktemp("mint")
    ca = init_ca(root / "ca")
    profile = root / "profile.yaml"
    profile.write_text(FAULTY_PROFILE)
    result = run_loadgen(
        "certs",
        "mint",
        "--ca",
        ca.directory,
        "--count",
        FLEET_SIZE,
        "--out",
        root / "fleet",
        "--profile",
        profile,
        "--workers",
        "2",
        "--seed",
        "11",
    )
    assert result.code == 0, result.err
    return Fleet(root / "fleet", ca)


def test_the_manifest_lists_every_device_in_index_order(fleet):
    assert [d["index"] for d in fleet.devices] == list(range(FLEET_SIZE))
    for device in fleet.devices[:5]:
        assert set(device) >= {
            "index",
            "client_id",
            "certificate_id",
            "subject",
            "key_type",
            "fault",
            "cert",
            "key",
        }


def test_every_healthy_certificate_verifies_against_the_ca_with_openssl(fleet):
    healthy = [fleet.cert(d) for d in fleet.with_fault(None) + fleet.with_fault("missing_country")]
    assert len(healthy) > FLEET_SIZE * 0.8
    assert openssl.verify_ok(fleet.ca.directory / "ca.pem", healthy) == set(healthy)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("expired", "certificate has expired"),
        ("not_yet_valid", "certificate is not yet valid"),
        ("unknown_ca", "unable to get local issuer certificate"),
    ],
)
def test_faulty_certificates_fail_openssl_for_the_right_reason(fleet, fault, reason):
    devices = fleet.with_fault(fault)
    assert devices
    for device in devices:
        assert reason in openssl.verify_error(fleet.ca.directory / "ca.pem", fleet.cert(device))


def test_unknown_ca_certificates_verify_against_their_own_ca(fleet):
    certs = [fleet.cert(d) for d in fleet.with_fault("unknown_ca")]
    unknown_ca = fleet.path / "unknown-ca" / "ca.pem"
    assert openssl.verify_ok(unknown_ca, certs) == set(certs)


def test_certificate_subjects_match_the_manifest(fleet):
    for device in fleet.devices:
        cert = x509.load_pem_x509_certificate(fleet.cert(device).read_bytes())
        fields = {BY_OID[a.oid.dotted_string].name: a.value for a in cert.subject}
        assert fields == device["subject"]


def test_subjects_follow_the_profile(fleet):
    for device in fleet.devices:
        subject = device["subject"]
        assert subject["common_name"] == f"sensor-{device['index']:05d}"
        assert subject["serial_number"].isdigit() and len(subject["serial_number"]) == 12
        assert subject["organization"] == "Acme"
        assert ("country" in subject) == (device["fault"] != "missing_country")
        assert subject.get("country", "US") in {"US", "DE"}


def test_fault_fractions_land_within_tolerance(fleet):
    counts = Counter(d["fault"] for d in fleet.devices)
    for fault in ("missing_country", "expired", "not_yet_valid", "unknown_ca"):
        assert abs(counts[fault] / FLEET_SIZE - 0.04) < 0.005, (fault, counts[fault])


def test_key_types_follow_the_mix(fleet):
    counts = Counter(d["key_type"] for d in fleet.devices)
    assert abs(counts["ec-p256"] / FLEET_SIZE - 0.8) < 0.05
    assert counts["ec-p384"] and counts["rsa-2048"]


def test_certificate_id_is_the_sha256_of_the_certificate_der(fleet):
    for device in fleet.devices:
        cert = x509.load_pem_x509_certificate(fleet.cert(device).read_bytes())
        der = cert.public_bytes(serialization.Encoding.DER)
        assert device["certificate_id"] == hashlib.sha256(der).hexdigest()


def test_the_cert_file_holds_the_device_certificate_then_its_ca(fleet):
    ca_pem = (fleet.ca.directory / "ca.pem").read_bytes()
    for device in fleet.with_fault(None)[:50]:
        chain = x509.load_pem_x509_certificates(fleet.cert(device).read_bytes())
        assert len(chain) == 2
        assert chain[1].public_bytes(serialization.Encoding.PEM) == ca_pem
        chain[0].verify_directly_issued_by(chain[1])


def test_keys_are_0600_and_belong_to_their_certificates(fleet):
    for device in fleet.devices[::7]:
        key_path = fleet.key(device)
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(fleet.cert(device).read_bytes())
        assert key.public_key() == cert.public_key()


def test_every_device_has_a_key_of_its_own_across_workers(fleet):
    public_keys = {
        x509.load_pem_x509_certificate(fleet.cert(d).read_bytes())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for d in fleet.devices
    }
    assert len(public_keys) == len(fleet.devices)


def test_a_finished_fleet_keeps_no_chunk_parts(fleet):
    assert not (fleet.path / ".parts").exists()


def test_no_folder_holds_more_than_a_thousand_devices(fleet):
    for folder in (fleet.path / "devices").iterdir():
        assert len(list(folder.iterdir())) <= 2 * 1000


def test_inspect_summarizes_the_fleet(fleet):
    result = run_loadgen("certs", "inspect", fleet.path, "--verify")
    assert result.code == 0, result.err
    counts = Counter(d["fault"] for d in fleet.devices)
    assert f"{FLEET_SIZE:,} devices" in result.out
    assert f"verified {FLEET_SIZE:,}" in result.out
    for fault in ("expired", "unknown_ca"):
        assert any(
            line.split()[:2] == [fault, str(counts[fault])] for line in result.out.splitlines()
        )
    valid_now = FLEET_SIZE - counts["expired"] - counts["not_yet_valid"]
    assert f"{valid_now} valid now" in result.out


# Growing and resuming


def _snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl" and not p.name.startswith(".")
    }


def test_minting_more_keeps_existing_devices_byte_for_byte(tmp_path, session_ca):
    out = tmp_path / "fleet"
    args = (
        "certs",
        "mint",
        "--ca",
        session_ca.directory,
        "--out",
        out,
        "--profile",
        LIGHTBULB_PROFILE,
    )
    assert run_loadgen(*args, "--count", "300").code == 0
    before = _snapshot(out)
    manifest = (out / "manifest.jsonl").read_bytes()
    result = run_loadgen(*args, "--count", "700")
    assert result.code == 0, result.err
    assert "minted 400, kept 300" in result.out
    after = _snapshot(out)
    assert {k: after[k] for k in before} == before
    assert (out / "manifest.jsonl").read_bytes().startswith(manifest)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 700


def test_minting_a_count_the_fleet_already_has_changes_nothing(tmp_path, session_ca):
    out = tmp_path / "fleet"
    args = ("certs", "mint", "--ca", session_ca.directory, "--out", out)
    assert run_loadgen(*args, "--count", "50").code == 0
    before = _snapshot(out)
    result = run_loadgen(*args, "--count", "20")
    assert result.code == 0
    assert "nothing to mint" in result.out
    assert _snapshot(out) == before


def test_growing_without_a_profile_keeps_the_fleets_own(tmp_path, session_ca):
    out = tmp_path / "fleet"
    base = ("certs", "mint", "--ca", session_ca.directory, "--out", out)
    assert (
        run_loadgen(*base, "--count", "20", "--profile", LIGHTBULB_PROFILE, "--seed", "5").code == 0
    )
    assert run_loadgen(*base, "--count", "40").code == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["subject"]["common_name"] == "lightbulb-000039"


def _mint_until_the_first_chunk_lands(ca_dir: Path, out: Path, count: int, **popen):
    """A mint of ``count`` devices in the background, once its first chunk is in."""
    args = ["certs", "mint", "--ca", str(ca_dir), "--out", str(out), "--count", str(count)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args, "--workers", "2"],
        start_new_session=True,
        **popen,
    )
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and manifest.stat().st_size > 0:
            break
        time.sleep(0.05)
    return proc, manifest


def test_a_killed_mint_is_completed_on_the_next_run(tmp_path, session_ca):
    out = tmp_path / "fleet"
    proc, manifest = _mint_until_the_first_chunk_lands(
        session_ca.directory, out, 20000, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lines_before = manifest.read_bytes().count(b"\n")
    assert 0 < lines_before < 20000
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "2500"
    )
    assert result.code == 0, result.err
    _assert_complete(out, max(2500, lines_before), session_ca)
    assert not (out / ".parts").exists()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_mint_worker_killed_mid_chunk_ends_the_mint_with_one_line_and_a_rerun_completes_it(
    tmp_path, session_ca
):
    out = tmp_path / "fleet"
    proc, manifest = _mint_until_the_first_chunk_lands(
        session_ca.directory, out, 12000, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert f"(pid {victim}) was killed by SIGKILL" in line
    assert line.startswith(f"loadgen: failed: {out}: mint worker ")
    assert line.endswith("the same mint run again completes the fleet")
    kept = manifest.read_bytes().count(b"\n")
    assert 0 < kept < 12000
    _assert_complete(out, kept, session_ca)
    args = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "12000")
    result = run_loadgen(*args)
    assert result.code == 0, result.err
    assert f"minted {12000 - kept}, kept {kept}" in result.out
    _assert_complete(out, 12000, session_ca)


def test_mint_workers_are_started_before_the_first_progress_is_shown(tmp_path, session_ca):
    import multiprocessing

    from loadgen.certs.mint import MintRequest, mint

    workers_at_first_progress: list[int] = []

    def on_progress(done: int, total: int) -> None:
        if not workers_at_first_progress:
            workers_at_first_progress.append(len(multiprocessing.active_children()))

    request = MintRequest(
        fleet=tmp_path / "fleet", ca_dir=session_ca.directory, count=200, workers=2
    )
    mint(request, on_progress)
    assert workers_at_first_progress == [2]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_damaged_pool_key_is_one_line_naming_it_before_any_device_is_minted(
    tmp_path, session_ca, workers
):
    out = tmp_path / "fleet"
    args = ("certs", "mint", "--ca", session_ca.directory, "--out", out)
    assert run_loadgen(*args, "--count", "200", "--key-pool", "4").code == 0
    damaged = out / "keys" / "ec-p256-0001.key"
    damaged.write_bytes(b"")  # as a mint killed while it wrote the key left it
    manifest = (out / "manifest.jsonl").read_bytes()
    result = run_loadgen(*args, "--count", "400", "--workers", workers)
    assert_user_error(result, f"{damaged}: a damaged pool key (empty)")
    assert (out / "manifest.jsonl").read_bytes() == manifest


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_stops_the_mint_with_one_line_and_a_rerun_completes_it(
    disk, session_ca, workers
):
    out = disk.path / "fleet"
    args = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--workers", workers)
    assert run_loadgen(*args, "--count", "50").code == 0
    disk.fill()
    result = run_loadgen(*args, "--count", "120")
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"loadgen: failed: {out}: cannot write ")
    assert line.endswith(
        ": No space left on device; the 50 devices recorded are kept, "
        "and the same mint run again completes the fleet"
    )
    _assert_complete(out, 50, session_ca)
    disk.free()  # room for 120 devices (a 2 MiB tmpfs holds about 250)
    assert run_loadgen(*args, "--count", "120").code == 0
    _assert_complete(out, 120, session_ca)


def test_ca_init_on_a_full_disk_leaves_no_ca_folder(disk):
    disk.fill()
    result = run_loadgen("ca", "init", "--out", disk.path / "ca")
    assert_user_error(result, "cannot write the CA: No space left on device")
    assert not (disk.path / "ca").exists()


def test_a_partial_last_manifest_line_is_cut_and_that_device_minted_again(tmp_path, session_ca):
    out = tmp_path / "fleet"
    args = ("certs", "mint", "--ca", session_ca.directory, "--out", out)
    assert run_loadgen(*args, "--count", "100").code == 0
    manifest = out / "manifest.jsonl"
    data = manifest.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    manifest.write_bytes(data[: cut + 40])  # device 99's line, torn
    (out / "devices" / "0000" / "0000099.pem").write_bytes(b"half a cert")
    result = run_loadgen(*args, "--count", "100")
    assert result.code == 0, result.err
    _assert_complete(out, 100, session_ca)


def _assert_complete(out: Path, count: int, ca: CA) -> None:
    devices = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [d["index"] for d in devices] == list(range(count))
    for device in devices:
        cert = x509.load_pem_x509_certificate((out / device["cert"]).read_bytes())
        der = cert.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == device["certificate_id"]
    sample = [out / d["cert"] for d in devices[:: max(1, count // 200)]]
    assert openssl.verify_ok(ca.directory / "ca.pem", sample) == set(sample)


def test_a_second_mint_on_the_same_fleet_at_once_is_refused(tmp_path, session_ca):
    out = tmp_path / "fleet"
    args = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count")
    assert run_loadgen(*args, "10").code == 0
    with open(out / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert_user_error(run_loadgen(*args, "20"), "another mint")


def test_a_mint_refused_by_another_on_a_new_fleet_writes_nothing(tmp_path):
    out = tmp_path / "fleet"
    out.mkdir()
    # The other mint holds the lock of a fleet it has yet to create, as a mint does.
    with open(out / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = run_loadgen(
            "certs", "mint", "--ca", tmp_path / "ca", "--init-ca", "--out", out, "--count", "10"
        )
    assert_user_error(result, "another mint")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    assert not (tmp_path / "ca").exists()


def test_a_fleet_another_mint_created_after_the_checks_is_checked_again_under_the_lock(
    tmp_path, session_ca, monkeypatch
):
    from loadgen.certs import mint as mint_mod
    from loadgen.certs.profile import load_profile
    from loadgen.errors import FleetError

    out = tmp_path / "fleet"
    take_lock = mint_mod._lock

    def another_mint_first(plan):
        other = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "10")
        assert run_loadgen(*other).code == 0
        return take_lock(plan)

    monkeypatch.setattr(mint_mod, "_lock", another_mint_first)
    request = mint_mod.MintRequest(
        fleet=out, ca_dir=session_ca.directory, count=20, profile=load_profile(LIGHTBULB_PROFILE)
    )
    with pytest.raises(FleetError, match="minted with a different profile"):
        mint_mod.mint(request)
    meta = json.loads((out / "fleet.json").read_text())
    assert meta["profile"]["subject"]["common_name"] == "device-{index:07d}"
    assert (out / "manifest.jsonl").read_bytes().count(b"\n") == 10


def test_a_run_leaves_a_fleet_alone_while_a_mint_is_writing_it(tmp_path, mosquitto, device_ca):
    from tests.test_run import _scenario

    path = _scenario(tmp_path, mosquitto, device_ca)
    assert run_loadgen("run", path, "--count", "5").code in (0, 1)  # minted, then run
    fleet = tmp_path / "fleet"
    # What a mint writes as it goes: a chunk's part, and a last line half written.
    (fleet / ".parts").mkdir()
    (fleet / ".parts" / "0000000005.jsonl").write_text("{}\n")
    with open(fleet / "manifest.jsonl", "a") as manifest:
        manifest.write('{"index": 5, "cert"')
    before = (fleet / "manifest.jsonl").read_bytes()
    import fcntl

    with open(fleet / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert_user_error(run_loadgen("run", path, "--count", "5"), "another mint is writing")
    assert (fleet / ".parts" / "0000000005.jsonl").exists()
    assert (fleet / "manifest.jsonl").read_bytes() == before


# Key pools


def test_a_key_pool_larger_than_the_fleet_is_refused_and_nothing_is_written(tmp_path, session_ca):
    out = tmp_path / "fleet"
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "2",
        "--key-pool", "3", "--workers", "1",
    )  # fmt: skip
    assert_user_error(result, "--key-pool 3 is more keys than --count 2 devices")
    assert not out.exists()


@pytest.mark.parametrize("name", ["ca.pem", "aws-setup.json"])
def test_an_out_that_is_one_of_the_cas_own_files_is_refused_and_nothing_is_written(tmp_path, name):
    ca = init_ca(tmp_path / "ca")
    (ca.directory / "aws-setup.json").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in ca.directory.iterdir()}
    out = ca.directory / name
    result = run_loadgen(
        "certs", "mint", "--ca", ca.directory, "--out", out, "--count", "2", "--workers", "1"
    )
    assert_user_error(result, f"--out {out}: would overwrite {name} of the CA")
    assert {p.name: p.read_bytes() for p in ca.directory.iterdir()} == before


def test_a_key_pool_shares_keys_across_devices(tmp_path, session_ca):
    out = tmp_path / "fleet"
    profile = tmp_path / "rsa.yaml"
    profile.write_text("key_type: rsa-2048\n")
    result = run_loadgen(
        "certs",
        "mint",
        "--ca",
        session_ca.directory,
        "--out",
        out,
        "--count",
        "40",
        "--profile",
        profile,
        "--key-pool",
        "4",
    )
    assert result.code == 0, result.err
    devices = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len({d["key"] for d in devices}) == 4
    assert len({d["certificate_id"] for d in devices}) == 40
    for device in devices:
        key = serialization.load_pem_private_key((out / device["key"]).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((out / device["cert"]).read_bytes())
        assert key.public_key() == cert.public_key()
        assert stat.S_IMODE((out / device["key"]).stat().st_mode) == 0o600
    certs = [out / d["cert"] for d in devices]
    assert openssl.verify_ok(session_ca.directory / "ca.pem", certs) == set(certs)


def test_a_key_pool_asked_of_a_fleet_minted_without_one_says_what_it_has(tmp_path, session_ca):
    base = ("certs", "mint", "--ca", session_ca.directory, "--out", tmp_path / "fleet")
    assert run_loadgen(*base, "--count", "5").code == 0
    result = run_loadgen(*base, "--count", "10", "--key-pool", "2")
    assert_user_error(result, "minted with a key of its own per device, not key pool 2")


# Bad input: one line, exit 2, nothing written


@pytest.mark.parametrize("count", ["0", "-5"])
def test_count_must_be_positive(tmp_path, session_ca, count):
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--count", count, "--out", tmp_path / "fleet"
    )
    assert_user_error(result, "--count")
    assert not (tmp_path / "fleet").exists()


def test_fault_fractions_above_one_are_refused_before_anything_is_written(tmp_path, session_ca):
    profile = tmp_path / "p.yaml"
    profile.write_text("faults:\n  expired: 0.6\n  unknown_ca: 0.5\n")
    result = run_loadgen(
        "certs",
        "mint",
        "--ca",
        session_ca.directory,
        "--count",
        "10",
        "--out",
        tmp_path / "fleet",
        "--profile",
        profile,
    )
    assert_user_error(result, f"{profile}:1: faults: fault fractions sum to 1.1")
    assert not (tmp_path / "fleet").exists()


def test_an_unknown_profile_field_names_file_line_and_field(tmp_path, session_ca):
    profile = tmp_path / "p.yaml"
    profile.write_text("validity_days: 30\nsubjet:\n  common_name: x\n")
    result = run_loadgen(
        "certs",
        "mint",
        "--ca",
        session_ca.directory,
        "--count",
        "10",
        "--out",
        tmp_path / "fleet",
        "--profile",
        profile,
    )
    assert_user_error(result, f"{profile}:2: subjet: unknown field")


def test_a_template_that_overflows_its_field_names_the_profile_and_the_device(tmp_path, session_ca):
    profile = tmp_path / "p.yaml"
    profile.write_text("subject:\n  common_name: '{uuid}{uuid}'\n")
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--count", "10",
        "--out", tmp_path / "fleet", "--profile", profile,
    )  # fmt: skip
    assert_user_error(result, f"--profile {profile}: device 0: subject.common_name:")
    assert not (tmp_path / "fleet").exists()


@pytest.mark.parametrize(
    ("profile", "where", "problem"),
    [
        (
            "subject: {common_name: 'bulb-{hex:1}'}\n",
            ":1: subject.common_name:",
            "at most 16 distinct values (the client id is the common name), "
            "fewer than the fleet's 100 devices",
        ),
        (
            "subject: {common_name: 'bulb-{index}', country: {choice: [SE, NO]}}\n"
            "client_id: 'bulb-{country}'\n",
            ":2: client_id:",
            "at most 2 distinct values, fewer than the fleet's 100 devices",
        ),
        (
            "subject: {common_name: 'bulb-{index:.0e}'}\n",
            ":1: subject.common_name:",
            "devices 10 and 11 would both connect as 'bulb-1e+01'",
        ),
    ],
    ids=["a short random common name", "a client id of a choice", "an index written as a float"],
)
def test_client_ids_that_devices_would_share_are_refused_before_anything_is_written(
    tmp_path, session_ca, profile, where, problem
):
    path = tmp_path / "profile.yaml"
    path.write_text(profile)
    out = tmp_path / "fleet"
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "100",
        "--profile", path,
    )  # fmt: skip
    assert_user_error(result, f"{path}{where} {problem}", "disconnect each other")
    assert not out.exists()


def test_an_unwritable_output_folder_is_a_one_line_error(tmp_path, session_ca):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--count", "10", "--out", blocker / "fleet"
    )
    assert_user_error(result, str(blocker / "fleet"))


def test_a_fleet_minted_with_another_profile_is_refused(tmp_path, session_ca):
    out = tmp_path / "fleet"
    base = ("certs", "mint", "--ca", session_ca.directory, "--out", out)
    assert run_loadgen(*base, "--count", "10").code == 0
    before = _snapshot(out)
    result = run_loadgen(*base, "--count", "20", "--profile", LIGHTBULB_PROFILE)
    assert_user_error(result, "different profile")
    assert _snapshot(out) == before


def test_a_fleet_minted_with_another_ca_is_refused(tmp_path, session_ca):
    out = tmp_path / "fleet"
    assert (
        run_loadgen(
            "certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "10"
        ).code
        == 0
    )
    other = init_ca(tmp_path / "other")
    result = run_loadgen("certs", "mint", "--ca", other.directory, "--out", out, "--count", "20")
    assert_user_error(result, "another CA")


def test_a_fleet_minted_with_another_seed_is_refused(tmp_path, session_ca):
    out = tmp_path / "fleet"
    base = ("certs", "mint", "--ca", session_ca.directory, "--out", out)
    assert run_loadgen(*base, "--count", "10", "--seed", "1").code == 0
    assert_user_error(run_loadgen(*base, "--count", "20", "--seed", "2"), "seed 1")


def test_a_folder_that_is_not_a_fleet_is_left_alone(tmp_path, session_ca):
    out = tmp_path / "fleet"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "10"
    )
    assert_user_error(result, "not a fleet")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_init_ca_creates_the_ca_when_missing(tmp_path):
    result = run_loadgen(
        "certs",
        "mint",
        "--init-ca",
        "--ca",
        tmp_path / "ca",
        "--count",
        "5",
        "--out",
        tmp_path / "fleet",
    )
    assert result.code == 0, result.err
    assert (tmp_path / "ca" / "ca.pem").exists()


def test_ctrl_c_stops_the_mint_quietly_and_keeps_what_was_finished(tmp_path, session_ca):
    out = tmp_path / "fleet"
    proc, manifest = _mint_until_the_first_chunk_lands(
        session_ca.directory, out, 40000, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["loadgen: interrupted; what was finished is kept"]
    kept = manifest.read_bytes().count(b"\n")
    assert 0 < kept < 40000
    _assert_complete(out, kept, session_ca)


@pytest.mark.parametrize("meta", ["[]", "7", '"fleet"'])
def test_fleet_metadata_that_is_no_json_object_is_a_one_line_error(tmp_path, session_ca, meta):
    out = tmp_path / "fleet"
    assert (
        run_loadgen(
            "certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "2"
        ).code
        == 0
    )
    (out / "fleet.json").write_text(meta)
    for args in (
        ("certs", "inspect", out),
        ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "3"),
    ):
        assert_user_error(run_loadgen(*args), f"{out / 'fleet.json'}: malformed fleet metadata")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ca_fingerprint", 5),
        ("shard", "x"),
        ("shard", {"index": 3, "count": 2}),
        ("key_pool", "a"),
        ("key_pool", 0),
        ("seed", True),
    ],
)
def test_a_fleet_json_value_of_the_wrong_type_is_a_one_line_error_naming_it(
    tmp_path, session_ca, field, value
):
    out = tmp_path / "fleet"
    mint = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count")
    assert run_loadgen(*mint, "2", "--workers", "1").code == 0
    meta = json.loads((out / "fleet.json").read_text())
    (out / "fleet.json").write_text(json.dumps({**meta, field: value}))
    for args in (("certs", "inspect", out), (*mint, "3", "--workers", "1")):
        assert_user_error(
            run_loadgen(*args), f"{out / 'fleet.json'}: malformed fleet metadata: {field}: "
        )


def test_a_bad_value_in_the_fleets_own_profile_names_its_nested_field(tmp_path, session_ca):
    out = tmp_path / "fleet"
    mint = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count")
    assert run_loadgen(*mint, "2", "--workers", "1").code == 0
    meta = json.loads((out / "fleet.json").read_text())
    meta["profile"]["subject"]["country"] = 5
    (out / "fleet.json").write_text(json.dumps(meta))
    assert_user_error(
        run_loadgen(*mint, "3", "--workers", "1"),
        f"{out / 'fleet.json'}: profile.subject.country: Input should be a valid string",
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"cert": None}, "cert: null is not a string"),
        ({"cert": 5}, "cert: 5 is not a string"),
        ({"subject": []}, "subject: [] is not an object"),
        ({"subject": {"common_name": 5}}, "subject.common_name: 5 is not a string"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_a_manifest_value_of_the_wrong_type_is_named_by_certs_inspect(
    tmp_path, session_ca, change, problem
):
    out = tmp_path / "fleet"
    mint = ("certs", "mint", "--ca", session_ca.directory, "--out", out, "--count", "3")
    assert run_loadgen(*mint, "--workers", "1").code == 0
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), **change})
    manifest.write_text("\n".join(lines) + "\n")
    result = run_loadgen("certs", "inspect", out, "--verify")
    assert_user_error(result, f"{manifest}:2: malformed manifest line: {problem}")


def _self_signed(folder: Path, *, ca: bool, days: tuple[int, int]) -> Path:
    """A CA folder whose certificate is CA:``ca``, valid from ``days[0]`` to
    ``days[1]`` days from now."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir()
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder


@pytest.mark.parametrize(
    ("ca", "days", "problem"),
    [
        (False, (-1, 30), "not a CA certificate (basicConstraints CA:FALSE)"),
        (True, (-60, -30), "expired on"),
        (True, (30, 60), "not valid before"),
    ],
    ids=["not a CA", "expired", "not yet valid"],
)
def test_a_ca_that_no_endpoint_would_trust_mints_nothing(tmp_path, ca, days, problem):
    folder = _self_signed(tmp_path / "ca", ca=ca, days=days)
    result = run_loadgen("certs", "mint", "--ca", folder, "--out", tmp_path / "f", "--count", "2")
    assert_user_error(result, f"--ca: {folder / 'ca.pem'}: {problem}")
    assert not (tmp_path / "f").exists()
