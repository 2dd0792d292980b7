"""What a fleet holds: counts by key type and fault, the variety of its subjects,
its validity window, and (optionally) whether every file matches its manifest line."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.certs.store import FleetMeta, FleetStore
from loadgen.errors import FleetError

_EXAMPLES = 3


@dataclass
class FieldSummary:
    present: int = 0
    distinct: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class FleetSummary:
    path: Path
    meta: FleetMeta
    devices: int
    key_types: dict[str, int]
    faults: dict[str, int]  # "none" for devices without a fault
    subject_fields: dict[str, FieldSummary]
    not_before_min: str | None
    not_after_max: str | None
    # Valid now: neither expired nor not yet valid at the time of inspection.
    valid_now: int
    verified: int | None = None  # devices whose files matched, with verify=True


def summarize(path: Path, *, verify: bool = False) -> FleetSummary:
    store = FleetStore(path)
    meta = store.read_meta()
    now = dt.datetime.now(dt.UTC).isoformat()
    key_types: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    values: dict[str, set[str]] = {}
    examples: dict[str, list[str]] = {}
    present: Counter[str] = Counter()
    not_before_min: str | None = None
    not_after_max: str | None = None
    valid_now = 0
    verified = 0
    count = 0
    for device in store.devices(checked=True):
        count += 1
        key_types[device.key_type] += 1
        faults[device.fault or "none"] += 1
        for name, value in device.subject.items():
            present[name] += 1
            seen = values.setdefault(name, set())
            if value not in seen:
                seen.add(value)
                if len(examples.setdefault(name, [])) < _EXAMPLES:
                    examples[name].append(value)
        # ISO 8601 timestamps in one zone order as text.
        if not_before_min is None or device.not_before < not_before_min:
            not_before_min = device.not_before
        if not_after_max is None or device.not_after > not_after_max:
            not_after_max = device.not_after
        if device.not_before <= now <= device.not_after:
            valid_now += 1
        if verify:
            _verify(path, device.cert, device.certificate_id, device.index)
            verified += 1
    return FleetSummary(
        path=path,
        meta=meta,
        devices=count,
        key_types=dict(key_types.most_common()),
        faults=dict(faults.most_common()),
        subject_fields={
            name: FieldSummary(present[name], len(values[name]), examples[name]) for name in values
        },
        not_before_min=not_before_min,
        not_after_max=not_after_max,
        valid_now=valid_now,
        verified=verified if verify else None,
    )


def _verify(fleet: Path, cert: str, certificate_id: str, index: int) -> None:
    try:
        chain = (fleet / cert).read_bytes()
        der = x509.load_pem_x509_certificate(chain).public_bytes(Encoding.DER)
    except (OSError, ValueError) as exc:
        raise FleetError(f"{fleet / cert}: device {index}: unreadable certificate: {exc}") from None
    if hashlib.sha256(der).hexdigest() != certificate_id:
        raise FleetError(f"{fleet / cert}: device {index}: certificate_id does not match the file")
