"""The hot loop: device certificates for a range of indices, written to the fleet.

Runs in worker processes. Per device it costs one key generation, one signature,
two small files and about 20 µs of Python; everything an issuer's certificates
share is encoded once in ``DeviceCertTemplate``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str  # the C one
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from loadgen.certs import der, subject
from loadgen.certs.ca import CA, load_ca
from loadgen.certs.keys import KeyMaker, KeyType, PrivateKey, spki_der
from loadgen.certs.profile import NOT_YET_VALID_IN, DevicePlanner, Profile
from loadgen.certs.store import KEYS_DIR, SHARD_SIZE, UNKNOWN_CA_DIR, device_paths, shard_of
from loadgen.errors import FleetError
from loadgen.files import FolderWriter

# Devices are valid from an hour before minting: clocks on test rigs drift.
_BACKDATE = dt.timedelta(hours=1)
_EXPIRED_AGO = dt.timedelta(days=1)
_EARLIEST = dt.datetime(1950, 1, 1, tzinfo=dt.UTC)
_SERIAL_BYTES = 16


@dataclass(frozen=True)
class MintSpec:
    """What a worker needs to mint; small and picklable."""

    fleet: Path
    ca_dir: Path
    profile: dict[str, Any]
    seed: int
    now: dt.datetime
    key_pool: int | None
    # The manifest's line j is device first + j * step (a shard's store: I, N).
    first: int = 0
    step: int = 1


def validity_windows(
    now: dt.datetime, days: int
) -> dict[str | None, tuple[dt.datetime, dt.datetime]]:
    """(not before, not after) for a normal device and for each validity fault."""
    lifetime = dt.timedelta(days=days)
    expired_at = now - _EXPIRED_AGO
    # A long lifetime would start an expired device before year 1: it starts at
    # the earliest UTCTime instead, still expired, still valid for a long time.
    expired_from = expired_at - min(lifetime, expired_at - _EARLIEST)
    starts = now + NOT_YET_VALID_IN
    return {
        None: (now - _BACKDATE, now + lifetime),
        "expired": (expired_from, expired_at),
        "not_yet_valid": (starts, starts + lifetime),
    }


def pool_key_path(key_type: KeyType, slot: int) -> str:
    return f"{KEYS_DIR}/{key_type.value}-{slot:04d}.key"


class _Issuer:
    def __init__(self, ca: CA) -> None:
        self.signer = ca.signer()
        self.template = der.DeviceCertTemplate(self.signer.algorithm_der, ca.name_der, ca.key_id)
        self.ca_pem = ca.cert_pem


class Minter:
    def __init__(self, spec: MintSpec) -> None:
        self.spec = spec
        profile = Profile.model_validate(spec.profile)
        self.planner = DevicePlanner(profile, spec.seed)
        self.fleet = spec.fleet
        self.issuer = _Issuer(load_ca(spec.ca_dir))
        self.unknown = (
            _Issuer(load_ca(spec.fleet / UNKNOWN_CA_DIR))
            if "unknown_ca" in profile.faults
            else None
        )
        windows = validity_windows(spec.now, profile.validity_days)
        self.validity = {fault: der.validity(*w) for fault, w in windows.items()}
        self.window_text = {
            fault: (nb.isoformat(), na.isoformat()) for fault, (nb, na) in windows.items()
        }
        self.subjects = subject.SubjectEncoder()
        self.keys = KeyMaker(profile.key_types)
        self.pool: dict[KeyType, list[tuple[bytes, str]]] = {}
        if spec.key_pool:
            for key_type in profile.key_types:
                self.pool[key_type] = [
                    (spki_der(_load_key(self.fleet / path)), path)
                    for path in (pool_key_path(key_type, s) for s in range(spec.key_pool))
                ]

    def mint(self, start: int, stop: int) -> bytes:
        """Mint the manifest's lines ``start`` to ``stop - 1`` (devices ``start``
        to ``stop - 1`` of a whole fleet) and return them.

        The loop is written for speed (locals bound once, no per-device objects
        beyond the plan): it is most of the cost of a fleet that is not crypto."""
        lines: list[str] = []
        keys: list[tuple[str, bytes]] = []
        chains: list[tuple[str, bytes]] = []
        serials = os.urandom(_SERIAL_BYTES * (stop - start))
        fleet = str(self.fleet)
        plan_of = self.planner.plan
        encode_subject = self.subjects.encode
        validity, window_text = self.validity, self.window_text
        pem, sha256, new_key = der.pem, hashlib.sha256, self.keys.new
        first, step = self.spec.first, self.spec.step
        folder = -1
        for n, index in enumerate(range(first + start * step, first + stop * step, step)):
            if index // SHARD_SIZE != folder:
                folder = index // SHARD_SIZE
                os.makedirs(f"{fleet}/{shard_of(index)}", exist_ok=True)
            plan = plan_of(index)
            fault = plan.fault
            issuer = self.unknown if fault == "unknown_ca" else self.issuer
            assert issuer is not None
            cert_rel, key_rel = device_paths(index)
            pool = self.pool.get(plan.key_type)
            if pool:
                spki, key_rel = pool[index % len(pool)]
            else:
                key_pem, spki = new_key(plan.key_type)
                keys.append((key_rel, key_pem))
            # Positive and minimally encoded: top bit clear, next bit set.
            at = n * _SERIAL_BYTES
            serial = bytes(((serials[at] & 0x3F) | 0x40,)) + serials[at + 1 : at + _SERIAL_BYTES]
            tbs = issuer.template.tbs(
                serial,
                validity.get(fault) or validity[None],
                encode_subject(plan.subject),
                spki,
                der.KEY_USAGE_RSA if plan.key_type is KeyType.RSA_2048 else der.KEY_USAGE_EC,
            )
            cert = issuer.template.certificate(tbs, issuer.signer.sign(tbs))
            chains.append((cert_rel, pem(cert) + issuer.ca_pem))
            not_before, not_after = window_text.get(fault) or window_text[None]
            subject_json = ",".join([f'"{k}":{_json_str(v)}' for k, v in plan.subject.items()])
            fault_json = _json_str(fault) if fault else "null"
            lines.append(
                f'{{"index":{index},"client_id":{_json_str(plan.client_id)},'
                f'"certificate_id":"{sha256(cert).hexdigest()}","subject":{{{subject_json}}},'
                f'"key_type":"{plan.key_type.value}","fault":{fault_json},'
                f'"cert":"{cert_rel}","key":"{key_rel}",'
                f'"not_before":"{not_before}","not_after":"{not_after}"}}'
            )
        # Writing files in one burst after the crypto, rather than interleaved with
        # it, measured 20 µs less per device: the kernel's file paths and OpenSSL's
        # big-number code stop evicting each other from the caches.
        with FolderWriter(self.fleet) as files:
            for path, data in keys:
                files.write(path, data, private=True)
            for path, data in chains:
                files.write(path, data)
        lines.append("")
        return "\n".join(lines).encode()


def _load_key(path: Path) -> PrivateKey:
    """A pool key; one that will not load (left empty by a mint killed as it
    wrote it, before keys were written atomically) is a one-line error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the pool key: {exc.strerror}") from None
    try:
        # Our own pool keys: RSA's consistency check costs milliseconds per key per worker.
        key = load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):
        what = "empty" if not data.strip() else "not an unencrypted PEM private key"
        raise FleetError(f"{path}: a damaged pool key ({what}): {_DAMAGED_POOL}") from None
    if not isinstance(key, PrivateKey):
        raise FleetError(f"{path}: a damaged pool key (a {type(key).__name__}): {_DAMAGED_POOL}")
    return key


# Devices recorded already use the key: another in its place would not match
# their certificates.
_DAMAGED_POOL = "its devices cannot connect; mint the fleet again into a new folder"
