"""The registry on disk: SQLite in WAL mode, one transaction per provisioning, so
a killed emulator loses at most the provisioning it was writing, and a restarted
one lets a provisioned fleet reconnect without provisioning again."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from loadgen.errors import ConfigError

if TYPE_CHECKING:
    from loadgen.emulator.registry import CertRecord, Registry

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
"""


class RegistryStore:
    def __init__(self, path: Path) -> None:
        try:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a committed provisioning survives the process being killed
            # (it may not survive the machine losing power; no emulator needs that).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"{path}: cannot open the emulator state: {exc}") from None

    def load_into(self, registry: Registry) -> None:
        from loadgen.emulator.registry import CertRecord, CertStatus, Thing

        db = self.db
        registry.thing_types |= {r[0] for r in db.execute("SELECT name FROM thing_types")}
        registry.thing_groups |= {r[0] for r in db.execute("SELECT name FROM thing_groups")}
        for name, document in db.execute("SELECT name, document FROM policies"):
            registry.policies[name] = document
        for name, type_name, attributes, groups in db.execute("SELECT * FROM things"):
            registry.things[name] = Thing(
                name, type_name, json.loads(attributes), set(json.loads(groups))
            )
        for cert_id, ca_id, status in db.execute("SELECT * FROM certificates"):
            registry.certificates[cert_id] = CertRecord(cert_id, ca_id, CertStatus(status))
        for cert_id, thing in db.execute("SELECT * FROM certificate_things"):
            registry.certificates[cert_id].things.add(thing)
        for cert_id, name in db.execute("SELECT * FROM certificate_policies"):
            registry.certificates[cert_id].policies.add(name)

    def save_provisioning(self, registry: Registry, record: CertRecord) -> None:
        """Everything one provisioning touched, in one transaction."""
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?)",
                (record.id, record.ca_id, record.status.value),
            )
            for name in record.things:
                thing = registry.things[name]
                db.execute(
                    "INSERT OR REPLACE INTO things VALUES (?, ?, ?, ?)",
                    (
                        name,
                        thing.type_name,
                        json.dumps(thing.attributes),
                        json.dumps(sorted(thing.groups)),
                    ),
                )
                db.execute(
                    "INSERT OR IGNORE INTO certificate_things VALUES (?, ?)", (record.id, name)
                )
            for name in record.policies:
                db.execute(
                    "INSERT OR IGNORE INTO policies VALUES (?, ?)", (name, registry.policies[name])
                )
                db.execute(
                    "INSERT OR IGNORE INTO certificate_policies VALUES (?, ?)", (record.id, name)
                )
            db.executemany(
                "INSERT OR IGNORE INTO thing_types VALUES (?)", [(t,) for t in registry.thing_types]
            )
            db.executemany(
                "INSERT OR IGNORE INTO thing_groups VALUES (?)",
                [(g,) for g in registry.thing_groups],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
