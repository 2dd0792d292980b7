"""What `loadgen aws setup` did in an account, kept in the CA folder
(``CA_DIR/aws-setup.json``) so that status and teardown need nothing else: which
account and region, and what setup created there (and so may delete)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from loadgen.certs.ca import SETUP_RECORD_FILE
from loadgen.errors import ConfigError
from loadgen.files import CONFIG_LIMIT, read_limited, write_atomic
from loadgen.nesting import parse_json

RECORD_FILE = SETUP_RECORD_FILE
FORMAT = 1


@dataclass
class Created:
    """What setup created (not what it found already there): teardown's to delete."""

    thing_types: list[str] = field(default_factory=list)
    thing_groups: list[str] = field(default_factory=list)
    role: str | None = None  # the IAM role's name setup created last
    ca: bool = False  # the CA was registered by setup, not only updated
    # Every role setup created (runs with different --create-role names each
    # made one); records written before it only have ``role``.
    roles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in self.roles:
            self.roles = sorted({*self.roles, self.role})

    def add_role(self, name: str) -> None:
        self.role = name
        self.roles = sorted({*self.roles, name})

    def names(self) -> list[str]:
        """What teardown deletes besides JITP's (the CA itself is another step)."""
        return [
            *(f"thing type {t}" for t in self.thing_types),
            *(f"thing group {g}" for g in self.thing_groups),
            *(f"role {r}" for r in self.roles),
        ]


@dataclass
class SetupRecord:
    ca_id: str
    account: str
    region: str
    endpoint: str  # the ATS data endpoint devices connect to
    role_arn: str
    endpoint_url: str | None = None  # the control plane's, when not AWS's own
    profile: str | None = None
    created: Created = field(default_factory=Created)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"


def record_path(ca_dir: Path) -> Path:
    return ca_dir / RECORD_FILE


def load_record(ca_dir: Path) -> SetupRecord | None:
    """The record of setup in ``ca_dir``; None when setup never ran there (a CA
    registered by hand)."""
    path = record_path(ca_dir)
    try:
        raw = parse_json(read_limited(path, CONFIG_LIMIT, "setup record"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a record of `loadgen aws setup`: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"{path}: unknown record format {_get(raw, 'format')!r}")
    if (wrong := _wrong_field(raw)) is not None:
        raise ConfigError(f"{path}: malformed record: field {wrong}")
    try:
        created = Created(**raw.pop("created", {}))
        known = {f.name for f in fields(SetupRecord)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TypeError(f"unknown field {unknown[0]!r}")
        return SetupRecord(**raw, created=created)
    except TypeError as exc:
        raise ConfigError(f"{path}: malformed record: {exc}") from None


def _wrong_field(raw: dict[str, Any]) -> str | None:
    """The first field of a record of the wrong type, and what it should be."""
    for name in ("ca_id", "account", "region", "endpoint", "role_arn"):
        if not isinstance(raw.get(name), str):
            return f"{name} is {'missing' if name not in raw else 'not text'}"
    for name in ("endpoint_url", "profile"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            return f"{name} is not text or null"
    created = raw.get("created", {})
    if not isinstance(created, dict):
        return "created is not an object"
    for name in ("thing_types", "thing_groups", "roles"):
        names = created.get(name, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return f"created.{name} is not a list of names"
    if created.get("role") is not None and not isinstance(created["role"], str):
        return "created.role is not text or null"
    if not isinstance(created.get("ca", False), bool):
        return "created.ca is not true or false"
    return None


def save_record(ca_dir: Path, record: SetupRecord) -> None:
    write_atomic(record_path(ca_dir), record.to_json())


def _get(raw: Any, key: str) -> Any:
    return raw.get(key) if isinstance(raw, dict) else None
