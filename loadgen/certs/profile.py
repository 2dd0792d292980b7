"""Subject profiles: how the subjects, key types and injected faults of a fleet vary.

A profile is YAML validated by ``Profile``. ``Profile.compile`` turns it into a
``DevicePlanner``: a pure function from a device index to what that device gets,
deterministic for a given profile and seed.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loadgen.certs.der import LATEST
from loadgen.certs.keys import KeyType
from loadgen.certs.subject import BY_NAME, FIELDS, MISSING_PREFIX, SubjectValueError
from loadgen.config import Loaded, load_model, read_model
from loadgen.errors import ConfigError, Loc, UserError
from loadgen.mqtt.wire import check_carried

# A sanity bound on a fleet: far past any run here (a device's store is about
# 9 KiB: 900 GB), and short of what a device index can be (eight bytes of each
# device's key seed). A count past it is a typo, refused before anything.
MAX_DEVICES = 100_000_000
# Worker processes for one run or mint: past this they only cost starting.
MAX_WORKERS = 1024


def check_count(option: str, value: int, most: int) -> None:
    """A count of devices or processes an option gives: from 1 to ``most``."""
    if value <= 0:
        raise UserError(f"{option} must be positive, got {value}")
    if value > most:
        raise UserError(f"{option} {value}: at most {most:,}")


FAULTS_FIXED = ("expired", "not_yet_valid", "unknown_ca")
# A ``not_yet_valid`` device becomes valid this long after minting.
NOT_YET_VALID_IN = dt.timedelta(days=30)
# Low-discrepancy sequence step: the golden ratio's fractional part. Faults are
# assigned by where index * step falls in [0, 1), so any run of N devices carries
# each fault within about log(N)/N of its fraction instead of a binomial spread.
_GOLDEN = 0.6180339887498949
_MAX_RANDOM_WIDTH = 64


class DeviceRandom:
    """Deterministic random draws for one device: BLAKE2b of (seed, index, block) in
    counter mode. Seeding a Mersenne Twister per device costs 4 µs; this costs 0.5 µs
    for the first 512 bits, which is all most profiles draw."""

    __slots__ = ("_bits", "_block", "_index", "_key", "_pool")

    def __init__(self, key: bytes, index: int) -> None:
        self._key = key
        self._index = index.to_bytes(8, "big")
        self._block = 0
        self._pool = 0
        self._bits = 0

    def getrandbits(self, k: int) -> int:
        while self._bits < k:
            block = self._index + self._block.to_bytes(4, "big")
            self._block += 1
            digest = hashlib.blake2b(block, key=self._key, digest_size=64).digest()
            self._pool |= int.from_bytes(digest, "big") << self._bits
            self._bits += 512
        value = self._pool & ((1 << k) - 1)
        self._pool >>= k
        self._bits -= k
        return value

    def random(self) -> float:
        return self.getrandbits(53) / 9007199254740992.0

    def below(self, n: int) -> int:
        """Uniform in [0, n), without modulo bias."""
        k = max(1, (n - 1).bit_length())
        while True:
            value = self.getrandbits(k)
            if value < n:
                return value


def seed_key(seed: int, purpose: str) -> bytes:
    return hashlib.blake2b(f"{purpose}:{seed}".encode(), digest_size=32).digest()


# A template compiles to parts: literal text, or a function of (index, rng, fields).
_Part = Callable[[int, DeviceRandom, dict[str, str]], str]


def _literal(text: str) -> _Part:
    return lambda _i, _r, _f: text


def _compile_template(template: str, references: tuple[str, ...]) -> list[_Part]:
    """Parts of a ``str.format``-style template; ValueError names what is wrong."""
    parts: list[_Part] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from None
    for literal, field, spec, conversion in parsed:
        if literal:
            parts.append(_literal(literal))
        if field is None:
            continue
        if conversion:
            raise ValueError(f"conversions like !{conversion} are not supported")
        parts.append(_placeholder(field, spec or "", references))
    return parts


def _width(spec: str, field: str) -> int:
    if not spec.isdigit() or not 1 <= int(spec) <= _MAX_RANDOM_WIDTH:
        raise ValueError(f"{{{field}:N}} needs N from 1 to {_MAX_RANDOM_WIDTH}")
    return int(spec)


# The widest a placeholder may be formatted: a subject field, a client id (AWS
# allows 128 bytes) or a topic (256) is never wider; {index:0999999999999d}
# would have asked for a terabyte.
MAX_FORMAT_WIDTH = 256


def check_format_spec(field: str, spec: str) -> None:
    """ValueError for a format spec asking for more than ``MAX_FORMAT_WIDTH``."""
    for number in re.findall(r"\d+", spec):
        if int(number) > MAX_FORMAT_WIDTH:
            raise ValueError(
                f"{{{field}:{spec}}}: {int(number)} is wider than {MAX_FORMAT_WIDTH} characters"
            )


def _placeholder(field: str, spec: str, references: tuple[str, ...]) -> _Part:
    check_format_spec(field, spec)
    if field == "index":
        try:
            format(0, spec)
        except ValueError:
            raise ValueError(f"bad format {{index:{spec}}}") from None
        if spec.endswith("c"):
            # A character per index: control characters, and past 1,114,111 none.
            raise ValueError(f"{{index:{spec}}}: an index is written as a number (d, x, X, o, b)")
        return lambda i, _r, _f: format(i, spec)
    if spec and field == "uuid":
        raise ValueError("{uuid} takes no format")
    if field == "uuid":
        return lambda _i, r, _f: _uuid4(r.getrandbits(128))
    if field == "hex":
        width = _width(spec, field)
        return lambda _i, r, _f: format(r.getrandbits(4 * width), f"0{width}x")
    if field == "digits":
        width = _width(spec, field)
        return lambda _i, r, _f: format(r.below(10**width), f"0{width}d")
    if field in references:
        return lambda _i, _r, f: format(f[field], spec)
    known = ["index", "uuid", "hex:N", "digits:N", *references]
    raise ValueError(f"unknown placeholder {{{field}}} (known: {', '.join(known)})")


def _constant(template: str) -> str | None:
    """The text of a template without placeholders; None when it has any."""
    parsed = list(string.Formatter().parse(template))
    if any(field is not None for _, field, _, _ in parsed):
        return None
    return "".join(literal for literal, _, _, _ in parsed)


def _varies(spec: FieldSpec) -> bool:
    """A template with placeholders: its values can only be checked as they are made."""
    return isinstance(spec, str) and _constant(spec) is None


def _check_carried(text: str, name: str) -> None:
    """A subject value or its template holds no character MQTT cannot carry: a
    subject field is a client id (common_name by default) and a topic's
    placeholder, and a surrogate cannot be encoded in a certificate either.
    Placeholders only add digits and letters, so the template's own text is
    all there is to check, once, at load."""
    check_carried(text, name, "certificates and MQTT client ids cannot carry it")


# A weight's bound: weights are relative, so any mix is written well within it,
# and a handful of weights at it still add up to a finite total (two at 1.7e308
# added to infinity, and drawing from it chose past the last value).
MAX_WEIGHT = 1e12
Weight = Annotated[float, Field(gt=0, le=MAX_WEIGHT, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    """One of several values: a list (uniform) or a mapping of value to weight."""

    choice: list[str] | dict[str, Weight]

    @field_validator("choice")
    @classmethod
    def _not_empty(cls, v: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
        if not v:
            raise ValueError("choice needs at least one value")
        return v


class Cycle(_Strict):
    """The values in turn, by device index."""

    cycle: list[str] = Field(min_length=1)


FieldSpec = str | Choice | Cycle


class SubjectSpec(_Strict):
    common_name: FieldSpec | None = None
    serial_number: FieldSpec | None = None
    country: FieldSpec | None = None
    organization: FieldSpec | None = None
    organizational_unit: FieldSpec | None = None
    state: FieldSpec | None = None
    dn_qualifier: FieldSpec | None = None

    @field_validator("*")
    @classmethod
    def _values_fit(cls, spec: FieldSpec | None, info: ValidationInfo) -> FieldSpec | None:
        name = info.field_name
        assert name is not None
        if isinstance(spec, str):
            _compile_template(spec, references=())
            constant = _constant(spec)
            values = [] if constant is None else [constant]
            _check_carried(spec, name)
        else:
            values = spec.cycle if isinstance(spec, Cycle) else list(spec.choice) if spec else []
        for value in values:
            _check_carried(value, name)
            try:
                BY_NAME[name].check(value)
            except SubjectValueError as exc:
                raise ValueError(str(exc)) from None
        return spec

    @model_validator(mode="after")
    def _names_a_field(self) -> SubjectSpec:
        # RFC 5280 allows an empty subject only beside a subjectAltName, which
        # device certificates here do not carry; JITP's parameters read fields.
        if not self.set_fields():
            raise ValueError("names no field: a device certificate needs one (common_name, say)")
        return self

    def set_fields(self) -> dict[str, FieldSpec]:
        return {f.name: spec for f in FIELDS if (spec := getattr(self, f.name)) is not None}


def _fault_name(name: str) -> str:
    if name in FAULTS_FIXED:
        return name
    if not name.startswith(MISSING_PREFIX) or name.removeprefix(MISSING_PREFIX) not in BY_NAME:
        known = ", ".join([*FAULTS_FIXED, *(MISSING_PREFIX + f.name for f in FIELDS)])
        raise ValueError(f"unknown fault {name!r} (known: {known})")
    return name


FaultName = Annotated[str, AfterValidator(_fault_name)]


DEFAULT_SUBJECT = SubjectSpec(
    common_name="device-{index:07d}",
    serial_number="{uuid}",
    country="US",
    organization="jitp-loadgen",
    organizational_unit="load-test",
)


class Profile(_Strict):
    key_type: KeyType | dict[KeyType, Weight] = KeyType.EC_P256
    validity_days: PositiveInt = 365
    subject: SubjectSpec = DEFAULT_SUBJECT
    client_id: str | None = Field(
        default=None,
        description="MQTT client id template; default {common_name}, else device-{index:07d}",
    )
    # NaN compares false with both bounds: refused as what it is, not as "above 1".
    faults: dict[FaultName, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )

    @field_validator("validity_days")
    @classmethod
    def _encodable(cls, v: int) -> int:
        most = max_validity_days(dt.datetime.now(dt.UTC))
        if v > most:
            raise ValueError(
                f"{v} days from now ends after {LATEST:%Y-%m-%d}, the last date an X.509 "
                f"certificate can hold: at most {most}"
            )
        return v

    @field_validator("key_type")
    @classmethod
    def _mix_not_empty(cls, v: Any) -> Any:
        if isinstance(v, dict) and not v:
            raise ValueError("a key type mix needs at least one key type")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id_compiles(cls, v: str | None, info: ValidationInfo) -> str | None:
        subject = info.data.get("subject")
        if v is not None and subject is not None:
            _compile_template(v, references=tuple(subject.set_fields()))
        if v is not None:
            _check_carried(v, "client_id")
        if v == "":
            # MQTT 5 lets a client leave its id to the server (3.1.3.1), but a fleet's
            # devices are told apart, and a JITP device authorized, by their own ids:
            # AWS IoT's policies allow client/${iot:Connection.Thing.ThingName}.
            raise ValueError(
                "an empty client id: every device would connect without one; "
                "leave client_id out for the default, {common_name}"
            )
        return v

    @field_validator("faults")
    @classmethod
    def _faults_fit(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        subject = info.data.get("subject")
        for name in v:
            field = name.removeprefix(MISSING_PREFIX)
            if name.startswith(MISSING_PREFIX) and subject and field not in subject.set_fields():
                raise ValueError(f"fault {name!r}: the profile's subject does not set {field}")
        total = sum(v.values())
        if total > 1 + 1e-9:
            raise ValueError(f"fault fractions sum to {total:g}, more than 1")
        return v

    @property
    def client_id_template(self) -> str:
        if self.client_id is not None:
            return self.client_id
        return "{common_name}" if self.subject.common_name is not None else "device-{index:07d}"

    @property
    def key_types(self) -> list[KeyType]:
        return [self.key_type] if isinstance(self.key_type, KeyType) else list(self.key_type)

    def canonical(self) -> dict[str, Any]:
        """A JSON-ready form that two equal profiles share, whatever their YAML looked like."""
        return self.model_dump(mode="json", exclude_none=True)


DEFAULT_PROFILE = Profile()


def max_validity_days(now: dt.datetime) -> int:
    """The longest validity a device minted ``now`` can have, a ``not_yet_valid``
    one (whose window starts later) included."""
    return (LATEST - now - NOT_YET_VALID_IN).days


def difference(fleet: dict[str, Any], given: dict[str, Any], label: str) -> str | None:
    """The first field where two canonical profiles differ, as the user would name
    it (``subject.country is 'US' in the fleet, 'SE' in LABEL``); None when equal."""
    found = _first_difference(fleet, given, "")
    if found is None:
        return None
    name, mine, theirs = found
    return f"{name} is {_shown(mine)} in the fleet, {_shown(theirs)} in {label}"


def _first_difference(
    a: dict[str, Any], b: dict[str, Any], where: str
) -> tuple[str, Any, Any] | None:
    for key in sorted(a.keys() | b.keys()):
        mine, theirs = a.get(key), b.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            if (found := _first_difference(mine, theirs, f"{where}{key}.")) is not None:
                return found
        elif mine != theirs:
            return f"{where}{key}", mine, theirs
    return None


def _shown(value: Any) -> str:
    return "not set" if value is None else repr(value)


def load_profile(path: Path) -> Profile:
    return load_model(path, Profile, what="profile")


def read_profile(path: Path) -> Loaded[Profile]:
    """``load_profile``, keeping each field's line for later messages about it."""
    return read_model(path, Profile, what="profile")


# Why a fleet's client ids must differ, said with each refusal of ones that may not.
SHARED_CLIENT_ID = (
    "devices that share a client id disconnect each other "
    "(AWS IoT keeps one connection per client id)"
)


def template_values(template: str, values_of: Callable[[str, str], int | None]) -> int | None:
    """At most how many texts ``template`` makes: the product of what each
    placeholder can be (``values_of(name, spec)``, None when unbounded or not
    known here); None when any is."""
    total = 1
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        values = values_of(name, spec or "")
        if values is None:
            return None
        total *= values
    return total


def field_values(spec: FieldSpec) -> int | None:
    """At most how many values a subject field takes; None when unbounded."""
    if isinstance(spec, str):
        return template_values(spec, _generated_values)
    if isinstance(spec, Cycle):
        return len(set(spec.cycle))
    return len(set(spec.choice))


def _generated_values(name: str, spec: str) -> int | None:
    # {index} has a value per device. (A float's format, {index:.0e}, writes
    # some alike: not counted here, the devices planned before minting show it.)
    if name == "uuid":
        return 2**122  # six of a version 4 UUID's 128 bits are fixed
    if name == "hex":
        return int(16 ** int(spec))
    if name == "digits":
        return int(10 ** int(spec))
    return None


def client_id_values(profile: Profile) -> tuple[Loc, int | None]:
    """At most how many client ids the profile's devices can have (None when
    unbounded or not known here), and the field that decides it: ``client_id``,
    or the common name it defaults to."""
    fields = profile.subject.set_fields()

    def values_of(name: str, spec: str) -> int | None:
        if name in fields:
            return _referenced_values(fields[name], spec)
        return _generated_values(name, spec)

    if profile.client_id is None and profile.subject.common_name is not None:
        return ("subject", "common_name"), field_values(profile.subject.common_name)
    return ("client_id",), template_values(profile.client_id_template, values_of)


def manifest_template_values(template: str, profile: Profile) -> int | None:
    """At most how many texts a template over the devices' manifest lines (a
    scenario's ``mqtt.client_id``) makes for a fleet of ``profile``; None when
    unbounded or not known here."""
    fields = profile.subject.set_fields()

    def values_of(name: str, spec: str) -> int | None:
        if name == "client_id":
            return None if "." in spec else client_id_values(profile)[1]
        if name in fields:
            return _referenced_values(fields[name], spec)
        # {index} and {certificate_id} differ by device; a field the profile
        # leaves out renders empty, and an empty id falls back to the manifest's.
        return None

    return template_values(template, values_of)


def _referenced_values(field: FieldSpec, spec: str) -> int | None:
    # A precision (``{common_name:.4}``) cuts the value: not known here.
    return None if "." in spec else field_values(field)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """What device ``index`` gets: everything about it except its key and signature."""

    index: int
    client_id: str
    subject: dict[str, str]  # the fields in the certificate (a missing_* fault drops one)
    key_type: KeyType
    fault: str | None


def _uuid4(bits: int) -> str:
    """RFC 4122 version 4 from 128 random bits (``uuid.UUID`` costs 2 µs more)."""
    bits = (bits & ~(0xF << 76) | (0x4 << 76)) & ~(0xC << 60) | (0x8 << 60)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _picker(spec: FieldSpec) -> _Part:
    if isinstance(spec, str):
        parts = _compile_template(spec, references=())
        if len(parts) == 1:
            return parts[0]
        return lambda i, r, f: "".join(part(i, r, f) for part in parts)
    if isinstance(spec, Cycle):
        values = spec.cycle
        return lambda i, _r, _f: values[i % len(values)]
    if isinstance(spec.choice, list):
        options = spec.choice
        return lambda _i, r, _f: options[r.below(len(options))]
    names = list(spec.choice)
    cumulative = list(itertools.accumulate(spec.choice.values()))
    total = cumulative[-1]
    return lambda _i, r, _f: names[bisect.bisect_right(cumulative, r.random() * total)]


class DevicePlanner:
    """Deterministic device plans for one profile and seed."""

    def __init__(self, profile: Profile, seed: int) -> None:
        self.profile = profile
        self.seed = seed
        # Choice and cycle values were checked when the profile loaded; only what a
        # template makes needs checking per device.
        self._fields = [
            (name, _picker(spec), BY_NAME[name].check if _varies(spec) else None)
            for name, spec in profile.subject.set_fields().items()
        ]
        client_parts = _compile_template(
            profile.client_id_template, references=tuple(profile.subject.set_fields())
        )
        self._client_id: _Part = lambda i, r, f: "".join(p(i, r, f) for p in client_parts)
        types = profile.key_types
        weights = (
            [1.0] if isinstance(profile.key_type, KeyType) else list(profile.key_type.values())
        )
        self._key_types = types
        self._key_cumulative = list(itertools.accumulate(weights))
        self._faults = sorted(profile.faults.items())
        self._fault_cumulative = list(itertools.accumulate(f for _, f in self._faults))
        self._fault_offset = DeviceRandom(seed_key(seed, "faults"), 0).random()
        self._key = seed_key(seed, "device")

    def plan(self, index: int) -> DevicePlan:
        rng = DeviceRandom(self._key, index)
        subject: dict[str, str] = {}
        for name, pick, check in self._fields:
            value = pick(index, rng, subject)
            if check is not None:
                try:
                    check(value)
                except SubjectValueError as exc:
                    raise ConfigError(f"device {index}: subject.{name}: {exc}") from None
            subject[name] = value
        client_id = self._client_id(index, rng, subject)
        key_type = self._key_types[
            bisect.bisect_right(self._key_cumulative, rng.random() * self._key_cumulative[-1])
            if len(self._key_types) > 1
            else 0
        ]
        fault = self.fault_of(index)
        if fault is not None and fault.startswith(MISSING_PREFIX):
            del subject[fault.removeprefix(MISSING_PREFIX)]
        return DevicePlan(index, client_id, subject, key_type, fault)

    def fault_of(self, index: int) -> str | None:
        if not self._faults:
            return None
        u = ((index + 1) * _GOLDEN + self._fault_offset) % 1.0
        slot = bisect.bisect_right(self._fault_cumulative, u)
        return self._faults[slot][0] if slot < len(self._faults) else None
