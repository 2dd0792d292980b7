"""Subject profiles: what the YAML says is what the devices get."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from loadgen.certs.keys import KeyType
from loadgen.certs.profile import (
    DEFAULT_PROFILE,
    DevicePlanner,
    Profile,
    client_id_values,
    load_profile,
)
from loadgen.errors import ConfigError
from tests.conftest import LIGHTBULB_PROFILE, run_loadgen


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


def test_the_documented_example_profile_loads_as_written():
    profile = load_profile(LIGHTBULB_PROFILE)
    assert profile.key_type is KeyType.EC_P256
    assert set(profile.subject.set_fields()) == {
        "common_name",
        "serial_number",
        "country",
        "organization",
        "organizational_unit",
        "state",
        "dn_qualifier",
    }
    assert profile.faults == {
        "missing_country": 0.01,
        "expired": 0.005,
        "not_yet_valid": 0.005,
        "unknown_ca": 0.01,
    }


def test_subjects_follow_the_profile():
    planner = DevicePlanner(load_profile(LIGHTBULB_PROFILE), seed=7)
    for index in range(300):
        plan = planner.plan(index)
        s = plan.subject
        assert s["common_name"] == f"lightbulb-{index:06d}"
        assert uuid.UUID(s["serial_number"]).version == 4
        assert s["organization"] == "Acme Lighting"
        assert s["organizational_unit"] in {"factory-a", "factory-b"}
        assert s["state"] in {"WA", "CA", "NY"}
        assert re.fullmatch(r"[0-9a-f]{8}", s["dn_qualifier"])
        if plan.fault == "missing_country":
            assert "country" not in s
        else:
            assert s["country"] in {"US", "DE", "JP", "BR"}
        assert plan.client_id == s["common_name"]


def test_subjects_are_deterministic_for_profile_seed_and_index():
    profile = load_profile(LIGHTBULB_PROFILE)
    a, b = DevicePlanner(profile, seed=3), DevicePlanner(profile, seed=3)
    assert [a.plan(i) for i in range(50)] == [b.plan(i) for i in range(50)]
    assert a.plan(10) == DevicePlanner(profile, seed=3).plan(10)  # no dependence on order


def test_another_seed_gives_other_subjects():
    profile = load_profile(LIGHTBULB_PROFILE)
    a, b = DevicePlanner(profile, seed=1), DevicePlanner(profile, seed=2)
    assert a.plan(0).subject["serial_number"] != b.plan(0).subject["serial_number"]


def test_fault_fractions_land_within_tolerance():
    planner = DevicePlanner(load_profile(LIGHTBULB_PROFILE), seed=0)
    n = 20_000
    counts = Counter(planner.fault_of(i) for i in range(n))
    for name, fraction in planner.profile.faults.items():
        assert abs(counts[name] / n - fraction) < 0.001, (name, counts[name])


def test_weighted_choices_follow_their_weights(tmp_path):
    path = _write(
        tmp_path,
        "subject:\n  common_name: 'd{index}'\n  country: {choice: {US: 3, DE: 1}}\n",
    )
    planner = DevicePlanner(load_profile(path), seed=0)
    counts = Counter(planner.plan(i).subject["country"] for i in range(8000))
    assert abs(counts["US"] / 8000 - 0.75) < 0.03


def test_a_key_type_mix_follows_its_weights(tmp_path):
    path = _write(tmp_path, "key_type: {ec-p256: 0.9, ec-p384: 0.1}\n")
    planner = DevicePlanner(load_profile(path), seed=0)
    counts = Counter(planner.plan(i).key_type for i in range(5000))
    assert abs(counts[KeyType.EC_P384] / 5000 - 0.1) < 0.02


def test_cycle_takes_values_in_turn(tmp_path):
    path = _write(tmp_path, "subject:\n  common_name: 'd{index}'\n  state: {cycle: [WA, CA]}\n")
    planner = DevicePlanner(load_profile(path), seed=0)
    assert [planner.plan(i).subject["state"] for i in range(4)] == ["WA", "CA", "WA", "CA"]


def test_client_id_can_use_subject_fields(tmp_path):
    path = _write(
        tmp_path,
        "subject:\n  common_name: 'd{index}'\n  organization: Acme\n"
        "client_id: '{organization}-{common_name}-{digits:4}'\n",
    )
    plan = DevicePlanner(load_profile(path), seed=0).plan(5)
    assert re.fullmatch(r"Acme-d5-[0-9]{4}", plan.client_id)


def test_without_a_profile_the_default_gives_unique_names():
    planner = DevicePlanner(DEFAULT_PROFILE, seed=0)
    names = {planner.plan(i).subject["common_name"] for i in range(100)}
    assert len(names) == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("subject:\n  common_name: x\n  colour: red\n", ":3: subject.colour: unknown field"),
        ("key_type: ec-p521\n", ":1: key_type:"),
        ("validity_days: soon\n", ":1: validity_days:"),
        ("subject:\n  country: {choice: [US, DEU]}\n", ":2: subject.country:"),
        (
            "subject:\n  common_name: 'x-{nonsense}'\n",
            ":2: subject.common_name: unknown placeholder",
        ),
        ("faults:\n  expired: 0.7\n  unknown_ca: 0.6\n", ":1: faults: fault fractions sum to 1.3"),
        ("faults:\n  lightning: 0.1\n", ":2: faults.lightning: unknown fault 'lightning'"),
        ("faults:\n  expired: .nan\n", ":2: faults.expired: Input should be a finite number"),
        ("subject:\n  common_name: x\nfaults:\n  missing_state: 0.1\n", ":3: faults:"),
        ("subject:\n  common_name: [unclosed\n", ": YAML syntax error"),
        ("- just\n- a list\n", ":1: the profile must be a mapping"),
        (
            "subject:\n  country: SE\n  organization: Acme\n  country: NO\n",
            ":4: subject.country: duplicate key (first given on line 2)",
        ),
        ("validity_days: 365\nvalidity_days: 30\n", ":2: validity_days: duplicate key"),
        (
            "subject:\n  common_name: '{index:0999999999999d}'\n",
            ":2: subject.common_name: {index:0999999999999d}: 999999999999 is wider than 256",
        ),
        ("subject: {}\n", ":1: subject: names no field"),
        ("subject:\n  common_name: null\n", ":1: subject: names no field"),
        (
            'subject:\n  common_name: "dev\\u0000{index}"\n',
            ":2: subject.common_name: 'dev\\x00{index}': common_name cannot hold",
        ),
        (
            'subject:\n  organization: {choice: ["a\\ud800"]}\n',
            ":2: subject.organization: 'a\\ud800': organization cannot hold the character U+D800",
        ),
        (
            'subject: {common_name: "dev{index}"}\nclient_id: "c\\u0000{index}"\n',
            ":2: client_id: 'c\\x00{index}': client_id cannot hold the character U+0000",
        ),
        (
            'subject: {common_name: "dev{index}"}\nclient_id: ""\n',
            ":2: client_id: an empty client id",
        ),
        (
            "subject:\n  common_name: 'a{index:c}'\n",
            ":2: subject.common_name: {index:c}: an index is written as a number",
        ),
    ],
)
def test_a_bad_profile_names_file_line_and_field(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "subject: {common_name: {choice: {a: .inf, b: 1}}}\n",
            ":1: subject.common_name.choice.a: Input should be a finite number",
        ),
        (
            "subject: {common_name: x}\nkey_type: {ec-p256: .inf, rsa-2048: 1}\n",
            ":2: key_type.ec-p256: Input should be a finite number",
        ),
        (
            "subject: {common_name: {choice: {a: 1.7e308, b: 1.7e308}}}\n",
            ":1: subject.common_name.choice.a: Input should be less than or equal to 1000000000000",
        ),
    ],
    ids=["infinite choice", "infinite key type", "weights adding to infinity"],
)
def test_a_weight_drawing_could_not_use_is_refused_naming_it(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}{expected}")):
        load_profile(path)


def test_a_template_that_overflows_its_field_names_the_device(tmp_path):
    path = _write(tmp_path, "subject:\n  common_name: '{uuid}{uuid}'\n")
    planner = DevicePlanner(load_profile(path), seed=0)
    with pytest.raises(ConfigError, match=r"device 0: subject.common_name: .*1 to 64"):
        planner.plan(0)


def test_words_yaml_1_1_took_for_booleans_are_subject_text(tmp_path):
    path = _write(
        tmp_path,
        "subject:\n  common_name: d\n  organization: yes\n  organizational_unit: Off\n"
        "  state: on\n  dn_qualifier: n\n",
    )
    subject = DevicePlanner(load_profile(path), seed=0).plan(0).subject
    assert subject == {
        "common_name": "d",
        "organization": "yes",
        "organizational_unit": "Off",
        "state": "on",
        "dn_qualifier": "n",
    }


def test_a_profile_choosing_no_and_se_mints_norwegian_and_swedish_devices(tmp_path, session_ca):
    path = _write(tmp_path, "subject:\n  common_name: 'd-{index}'\n  country: {choice: [NO, SE]}\n")
    fleet = tmp_path / "fleet"
    result = run_loadgen(
        "certs", "mint", "--ca", session_ca.directory, "--count", "40", "--out", fleet,
        "--profile", path, "--workers", "1",
    )  # fmt: skip
    assert result.code == 0, result.err
    manifest = [json.loads(line) for line in (fleet / "manifest.jsonl").open()]
    assert {d["subject"]["country"] for d in manifest} == {"NO", "SE"}
    norwegian = next(d for d in manifest if d["subject"]["country"] == "NO")
    cert = x509.load_pem_x509_certificate((fleet / norwegian["cert"]).read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "NO"


COMMON_NAME, CLIENT_ID = ("subject", "common_name"), ("client_id",)
CLIENT_ID_SPACES = {
    "the default": ({}, COMMON_NAME, None),
    "a constant": ({"subject": {"common_name": "d"}}, COMMON_NAME, 1),
    "a cycle": ({"subject": {"common_name": {"cycle": ["a", "b", "a"]}}}, COMMON_NAME, 2),
    "a constant and digits": (
        {"subject": {"common_name": "d", "organization": "o"}, "client_id": "o-{digits:2}"},
        CLIENT_ID,
        100,
    ),
    "a precision": (
        {"subject": {"common_name": "d-{hex:2}"}, "client_id": "{common_name:.3}"},
        CLIENT_ID,
        None,
    ),
    "no common name": ({"subject": {"organization": "o"}}, CLIENT_ID, None),
}


@pytest.mark.parametrize(
    ("profile", "field", "values"), list(CLIENT_ID_SPACES.values()), ids=list(CLIENT_ID_SPACES)
)
def test_the_client_ids_a_profile_can_make_are_counted_from_its_templates(profile, field, values):
    assert client_id_values(Profile.model_validate(profile)) == (field, values)
