"""The registry on disk: SQLite in WAL mode, one transaction per provisioning
(and per control-plane change), so a killed emulator loses at most the change it
was writing, and a restarted one lets a provisioned fleet reconnect without
provisioning again, with the CAs the control plane registered."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.errors import ConfigError, LoadgenError

if TYPE_CHECKING:
    from loadgen.emulator.registry import (
        CaRecord,
        CertRecord,
        CertStatus,
        PolicyInfo,
        Registry,
        Thing,
        ThingGroupInfo,
        ThingTypeInfo,
    )

_SCHEMA = """
CREATE TABLE IF NOT EXISTS certificates (id TEXT PRIMARY KEY, ca_id TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY, type_name TEXT, attributes TEXT, groups_ TEXT);
CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, document TEXT);
CREATE TABLE IF NOT EXISTS certificate_things (certificate TEXT, thing TEXT,
    PRIMARY KEY (certificate, thing));
CREATE TABLE IF NOT EXISTS certificate_policies (certificate TEXT, policy TEXT,
    PRIMARY KEY (certificate, policy));
CREATE TABLE IF NOT EXISTS thing_types (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS thing_groups (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS cas (id TEXT PRIMARY KEY, pem TEXT, active INTEGER,
    auto_registration INTEGER, config TEXT, created REAL, modified REAL);
CREATE TABLE IF NOT EXISTS details (kind TEXT, name TEXT, value TEXT,
    PRIMARY KEY (kind, name));
"""
# Columns added since the first state files: (table, column, type).
_ADDED = (
    ("certificates", "der", "BLOB"),
    ("certificates", "created", "REAL"),
    ("certificates", "modified", "REAL"),
    ("things", "version", "INTEGER"),
)
# What `details` holds, by kind: what provisioning never needs (made by the
# control plane, or on first use).
_POLICY, _THING_TYPE, _THING_GROUP = "policy", "thing_type", "thing_group"


class StateWriteError(LoadgenError):
    """The state file could not be written (the disk full, an I/O error): the
    change is in neither the file nor the registry."""


class RegistryStore:
    """Every write is one transaction that either commits or raises
    `StateWriteError`; the registry writes here before it changes its memory, so
    the two never disagree."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # While writes fail: how many were refused (the operator is told once
        # when they start failing, once when they work again).
        self.refused = 0
        self.failing = False
        try:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a committed provisioning survives the process being killed
            # (it may not survive the machine losing power; no emulator needs that).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            for table, column, type_ in _ADDED:
                columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {type_}")
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot open the emulator state: {exc}") from None

    def close(self) -> None:
        """Closing the last connection checkpoints the WAL into the database and
        removes its ``-wal`` and ``-shm`` files: a stopped emulator leaves one file."""
        self.db.close()

    def load_into(self, registry: Registry) -> None:
        from loadgen.emulator import registry as reg

        db = self.db
        registry.thing_types |= {r[0] for r in db.execute("SELECT name FROM thing_types")}
        registry.thing_groups |= {r[0] for r in db.execute("SELECT name FROM thing_groups")}
        for name, document in db.execute("SELECT name, document FROM policies"):
            registry.policies[name] = document
        for kind, name, value in db.execute("SELECT kind, name, value FROM details"):
            data = json.loads(value)
            if kind == _POLICY:
                versions = {k: reg.PolicyVersion(**v) for k, v in data.pop("versions").items()}
                registry.policy_infos[name] = reg.PolicyInfo(versions, **data)
            elif kind == _THING_TYPE:
                registry.thing_type_infos[name] = reg.ThingTypeInfo(**data)
            elif kind == _THING_GROUP:
                registry.thing_group_infos[name] = reg.ThingGroupInfo(**data)
        for name, type_name, attributes, groups, version in db.execute(
            "SELECT name, type_name, attributes, groups_, version FROM things"
        ):
            registry.things[name] = reg.Thing(
                name, type_name, json.loads(attributes), set(json.loads(groups)), version or 1
            )
        for cert_id, ca_id, status, der, created, modified in db.execute(
            "SELECT id, ca_id, status, der, created, modified FROM certificates"
        ):
            registry.certificates[cert_id] = reg.CertRecord(
                cert_id,
                ca_id,
                reg.CertStatus(status),
                der=der,
                created=created or 0.0,
                modified=modified or 0.0,
            )
        for cert_id, thing in db.execute("SELECT * FROM certificate_things"):
            registry.certificates[cert_id].things.add(thing)
        for cert_id, name in db.execute("SELECT * FROM certificate_policies"):
            registry.certificates[cert_id].policies.add(name)
        for ca_id, pem, active, auto, config, created, modified in db.execute(
            "SELECT id, pem, active, auto_registration, config, created, modified FROM cas"
        ):
            template = None
            parsed = json.loads(config) if config is not None else None
            if parsed is not None:
                # It passed these checks when it was registered.
                template = json.loads(parsed["templateBody"], strict=False)
            registry.cas[ca_id] = reg.CaRecord(
                ca_id,
                x509.load_pem_x509_certificate(pem.encode()),
                active=bool(active),
                auto_registration=bool(auto),
                template=template,
                role_arn=parsed.get("roleArn") if parsed is not None else None,
                config=parsed,
                created=created,
                modified=modified,
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        try:
            db.execute("BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            finally:
                # SQLite has rolled back by itself after some errors (SQLITE_FULL,
                # SQLITE_IOERR): a ROLLBACK then fails ("no transaction is
                # active") and hides the error that matters.
                if db.in_transaction:
                    db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._refused(exc)
            raise StateWriteError(f"{self.path}: cannot write the emulator state: {exc}") from exc
        if self.failing:
            self.failing = False
            print(
                f"loadgen emulator: the state file {self.path} is written again "
                f"({self.refused} change(s) refused meanwhile)",
                file=sys.stderr,
                flush=True,
            )
            self.refused = 0

    def _refused(self, exc: sqlite3.Error) -> None:
        # One line per outage, not one per device: a full disk under a connect
        # storm would otherwise bury everything else on stderr.
        self.refused += 1
        if not self.failing:
            self.failing = True
            print(
                f"loadgen emulator: cannot write the state file {self.path} ({exc}): "
                "provisioning and control-plane changes fail, and change nothing, "
                "until it can be written",
                file=sys.stderr,
                flush=True,
            )

    # One control-plane change each, in a transaction of its own.

    def save_ca(self, ca: CaRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO cas VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ca.id,
                    ca.cert.public_bytes(Encoding.PEM).decode(),
                    int(ca.active),
                    int(ca.auto_registration),
                    json.dumps(ca.config) if ca.config is not None else None,
                    ca.created,
                    ca.modified,
                ),
            )

    def delete_ca(self, ca_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM cas WHERE id = ?", (ca_id,))

    def save_certificate(self, cert_id: str, status: CertStatus, modified: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE certificates SET status = ?, modified = ? WHERE id = ?",
                (status.value, modified, cert_id),
            )

    def delete_certificate(self, cert_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM certificates WHERE id = ?", (cert_id,))
            db.execute("DELETE FROM certificate_things WHERE certificate = ?", (cert_id,))
            db.execute("DELETE FROM certificate_policies WHERE certificate = ?", (cert_id,))

    def attach_thing(self, cert_id: str, name: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO certificate_things VALUES (?, ?)", (cert_id, name))

    def detach_thing(self, cert_id: str, name: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM certificate_things WHERE certificate = ? AND thing = ?",
                (cert_id, name),
            )

    def attach_policy(self, cert_id: str, name: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO certificate_policies VALUES (?, ?)", (cert_id, name))

    def detach_policy(self, cert_id: str, name: str) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM certificate_policies WHERE certificate = ? AND policy = ?",
                (cert_id, name),
            )

    def save_thing(self, thing: Thing) -> None:
        with self._transaction() as db:
            _save_thing(db, thing)

    def delete_thing(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM things WHERE name = ?", (name,))
            db.execute("DELETE FROM certificate_things WHERE thing = ?", (name,))

    def save_policy(self, name: str, info: PolicyInfo) -> None:
        with self._transaction() as db:
            document = info.versions[info.default].document
            db.execute("INSERT OR REPLACE INTO policies VALUES (?, ?)", (name, document))
            self._save_details(db, _POLICY, name, info)

    def delete_policy(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM policies WHERE name = ?", (name,))
            db.execute("DELETE FROM certificate_policies WHERE policy = ?", (name,))
            db.execute("DELETE FROM details WHERE kind = ? AND name = ?", (_POLICY, name))

    def save_thing_type(self, name: str, info: ThingTypeInfo) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO thing_types VALUES (?)", (name,))
            self._save_details(db, _THING_TYPE, name, info)

    def delete_thing_type(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM thing_types WHERE name = ?", (name,))
            db.execute("DELETE FROM details WHERE kind = ? AND name = ?", (_THING_TYPE, name))

    def save_thing_group(self, name: str, info: ThingGroupInfo) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO thing_groups VALUES (?)", (name,))
            self._save_details(db, _THING_GROUP, name, info)

    def delete_thing_group(self, name: str, members: Iterable[Thing]) -> None:
        """The group gone, and ``members`` (its things, out of it now) saved."""
        with self._transaction() as db:
            db.execute("DELETE FROM thing_groups WHERE name = ?", (name,))
            db.execute("DELETE FROM details WHERE kind = ? AND name = ?", (_THING_GROUP, name))
            for thing in members:
                _save_thing(db, thing)

    @staticmethod
    def _save_details(db: sqlite3.Connection, kind: str, name: str, info: Any) -> None:
        db.execute(
            "INSERT OR REPLACE INTO details VALUES (?, ?, ?)",
            (kind, name, json.dumps(dataclasses.asdict(info))),
        )

    def save_provisioning(
        self,
        record: CertRecord,
        things: Iterable[Thing],
        policies: Mapping[str, str],
        thing_types: Iterable[str],
        thing_groups: Iterable[str],
    ) -> None:
        """Everything one provisioning makes, in one transaction: the certificate
        (with its attachments), its things as they will be, its policies' documents
        (name -> document), and the thing types and groups it names."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO certificates (id, ca_id, status, der, created, modified) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.ca_id,
                    record.status.value,
                    record.der,
                    record.created,
                    record.modified,
                ),
            )
            for thing in things:
                _save_thing(db, thing)
            db.executemany(
                "INSERT OR IGNORE INTO certificate_things VALUES (?, ?)",
                [(record.id, name) for name in record.things],
            )
            db.executemany("INSERT OR IGNORE INTO policies VALUES (?, ?)", policies.items())
            db.executemany(
                "INSERT OR IGNORE INTO certificate_policies VALUES (?, ?)",
                [(record.id, name) for name in record.policies],
            )
            db.executemany(
                "INSERT OR IGNORE INTO thing_types VALUES (?)", [(t,) for t in thing_types]
            )
            db.executemany(
                "INSERT OR IGNORE INTO thing_groups VALUES (?)", [(g,) for g in thing_groups]
            )


def _save_thing(db: sqlite3.Connection, thing: Thing) -> None:
    db.execute(
        "INSERT OR REPLACE INTO things (name, type_name, attributes, groups_, version) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            thing.name,
            thing.type_name,
            json.dumps(thing.attributes),
            json.dumps(sorted(thing.groups)),
            thing.version,
        ),
    )
