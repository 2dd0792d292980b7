"""`loadgen ca`: the fleet CA and the verification certificate for AWS."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from loadgen.certs.ca import CA, load_ca, server_cert
from tests import openssl
from tests.conftest import assert_user_error, run_loadgen


def test_ca_init_writes_the_certificate_and_a_0600_key(tmp_path):
    result = run_loadgen("ca", "init", "--out", tmp_path / "ca")
    assert result.code == 0, result.err
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in result.out + result.err
    text = openssl.text(tmp_path / "ca" / "ca.pem")
    assert "CA:TRUE" in text
    assert "Certificate Sign" in text


@pytest.mark.parametrize(
    ("key_type", "marker"),
    [
        ("ec-p256", "NIST CURVE: P-256"),
        ("ec-p384", "NIST CURVE: P-384"),
        ("rsa-2048", "(2048 bit)"),
    ],
)
def test_ca_init_makes_the_key_type_asked_for(tmp_path, key_type, marker):
    result = run_loadgen("ca", "init", "--out", tmp_path / "ca", "--key-type", key_type)
    assert result.code == 0, result.err
    assert marker in openssl.text(tmp_path / "ca" / "ca.pem")


def test_ca_init_uses_the_subject_and_days_given(tmp_path):
    result = run_loadgen(
        "ca",
        "init",
        "--out",
        tmp_path / "ca",
        "--subject",
        "CN=Acme Root,O=Acme,C=DE",
        "--days",
        "30",
    )
    assert result.code == 0, result.err
    cert = load_ca(tmp_path / "ca").cert
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_ca_init_refuses_to_overwrite_an_existing_ca(tmp_path):
    assert run_loadgen("ca", "init", "--out", tmp_path / "ca").code == 0
    before = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert_user_error(run_loadgen("ca", "init", "--out", tmp_path / "ca"), "--force")
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == before


def test_ca_init_with_force_replaces_the_ca(tmp_path):
    assert run_loadgen("ca", "init", "--out", tmp_path / "ca").code == 0
    before = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert run_loadgen("ca", "init", "--out", tmp_path / "ca", "--force").code == 0
    assert (tmp_path / "ca" / "ca.pem").read_bytes() != before


def test_ca_init_with_force_refuses_a_ca_set_up_in_an_aws_account(tmp_path):
    assert run_loadgen("ca", "init", "--out", tmp_path / "ca").code == 0
    before = (tmp_path / "ca" / "ca.pem").read_bytes()
    (tmp_path / "ca" / "aws-setup.json").write_text("{}")
    result = run_loadgen("ca", "init", "--out", tmp_path / "ca", "--force")
    assert_user_error(result, "aws-setup.json", "tear it down first")
    assert (tmp_path / "ca" / "ca.pem").read_bytes() == before


@pytest.mark.parametrize("subject", ["no equals sign", "XX=foo"])
def test_a_malformed_subject_is_a_one_line_error_that_says_why(tmp_path, subject):
    assert_user_error(
        run_loadgen("ca", "init", "--out", tmp_path / "ca", "--subject", subject),
        f"--subject {subject!r}: not an RFC 4514 name",
    )
    assert not (tmp_path / "ca").exists()


def test_verification_cert_carries_the_registration_code_and_chains_to_the_ca(tmp_path, ca):
    out = tmp_path / "verification.pem"
    result = run_loadgen(
        "ca",
        "verification-cert",
        "--ca",
        ca.directory,
        "--registration-code",
        "a1b2c3d4e5f6",
        "--out",
        out,
    )
    assert result.code == 0, result.err
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a1b2c3d4e5f6"
    assert openssl.verify_error(ca.directory / "ca.pem", out) == ""


def test_a_ca_key_that_does_not_match_its_certificate_is_refused(tmp_path, ca):
    other = tmp_path / "other"
    assert run_loadgen("ca", "init", "--out", other).code == 0
    (ca.directory / "ca.key").write_bytes((other / "ca.key").read_bytes())
    result = run_loadgen(
        "certs", "mint", "--ca", ca.directory, "--count", "5", "--out", tmp_path / "fleet"
    )
    assert_user_error(result, "ca.key", "does not match")
    assert not (tmp_path / "fleet").exists()


def test_a_missing_ca_names_the_command_that_makes_one(tmp_path):
    result = run_loadgen(
        "certs", "mint", "--ca", tmp_path / "nowhere", "--count", "5", "--out", tmp_path / "fleet"
    )
    assert_user_error(result, "loadgen ca init")


def _server_cert_as_ca(folder: Path, ca: CA) -> Path:
    """A CA folder holding a server certificate (CA:FALSE missing: no
    basicConstraints at all) and its own key where the CA's should be."""
    cert, key = server_cert(ca, ["localhost"])
    folder.mkdir()
    (folder / "ca.pem").write_bytes(cert)
    (folder / "ca.key").write_bytes(key)
    return folder


NOT_A_CA_COMMANDS = {
    "certs mint": ("certs", "mint", "--count", "2", "--out", "out"),
    "ca server-cert": ("ca", "server-cert", "--name", "localhost", "--out", "out"),
    "ca verification-cert": ("ca", "verification-cert", "--registration-code", "a", "--out", "o"),
}


@pytest.mark.parametrize("args", list(NOT_A_CA_COMMANDS.values()), ids=list(NOT_A_CA_COMMANDS))
def test_a_ca_folder_whose_certificate_is_not_a_cas_is_refused_before_writing(tmp_path, ca, args):
    folder = _server_cert_as_ca(tmp_path / "not-a-ca", ca)
    *command, option, value = args
    result = run_loadgen(*command, "--ca", folder, option, value, cwd=tmp_path)
    assert_user_error(result, f"{folder / 'ca.pem'}: not a CA certificate (no basicConstraints")
    assert sorted(os.listdir(tmp_path)) == ["ca", "not-a-ca"]


def test_a_run_whose_fleet_ca_is_not_a_ca_is_refused_before_the_fleet_or_emulator(tmp_path, ca):
    folder = _server_cert_as_ca(tmp_path / "not-a-ca", ca)
    (tmp_path / "s.yaml").write_text(
        "name: t\nendpoint: embedded\nfleet: {ca: not-a-ca, store: fleet, count: 2}\n"
        "load: {executor: constant-arrival-rate, rate: 10/s}\n"
    )
    result = run_loadgen("run", tmp_path / "s.yaml", "--workers", "1", cwd=tmp_path)
    assert_user_error(result, "fleet.ca", f"{folder / 'ca.pem'}: not a CA certificate")
    assert sorted(os.listdir(tmp_path)) == ["ca", "not-a-ca", "s.yaml"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_server_cert_refuses_an_out_that_names_the_cas_own_files(tmp_path, ca):
    before = _files(ca.directory)
    out = ca.directory / "ca"
    result = run_loadgen("ca", "server-cert", "--ca", ca.directory, "--name", "a", "--out", out)
    assert_user_error(result, f"--out {out}: would overwrite ca.pem of the CA in {ca.directory}")
    assert _files(ca.directory) == before


@pytest.mark.parametrize("name", ["ca.pem", "ca.key", "aws-setup.json"])
def test_verification_cert_refuses_an_out_that_is_one_of_the_cas_files(tmp_path, ca, name):
    (ca.directory / "aws-setup.json").write_text("{}\n")
    (tmp_path / "elsewhere").mkdir()
    before = _files(ca.directory)
    out = tmp_path / "elsewhere" / ".." / "ca" / name  # however it is spelled
    result = run_loadgen(
        "ca", "verification-cert", "--ca", ca.directory, "--registration-code", "a", "--out", out
    )
    assert_user_error(result, f"--out {out}: would overwrite {name} of the CA")
    assert _files(ca.directory) == before


def test_verification_cert_refuses_a_link_to_the_cas_certificate(tmp_path, ca):
    before = _files(ca.directory)
    (tmp_path / "link.pem").symlink_to(ca.directory / "ca.pem")
    result = run_loadgen(
        "ca", "verification-cert", "--ca", ca.directory, "--registration-code", "a",
        "--out", tmp_path / "link.pem",
    )  # fmt: skip
    assert_user_error(result, "would overwrite ca.pem of the CA")
    assert _files(ca.directory) == before


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("ü.example", "not ASCII: give its A-label form, xn--tda.example"),
        ("a b", "a space or control character"),
    ],
    ids=["empty", "not ASCII", "a space"],
)
def test_server_cert_refuses_a_name_no_certificate_can_hold(tmp_path, ca, name, problem):
    out = tmp_path / "server"
    result = run_loadgen("ca", "server-cert", "--ca", ca.directory, "--name", name, "--out", out)
    assert_user_error(result, f"--name {name!r}: {problem}")
    assert sorted(os.listdir(tmp_path)) == ["ca"]


def test_a_server_name_longer_than_a_cn_holds_is_in_the_subject_alt_name(ca):
    long = "a" * 60 + ".example.com"
    cert = x509.load_pem_x509_certificate(server_cert(ca, [long])[0])
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == [long]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
