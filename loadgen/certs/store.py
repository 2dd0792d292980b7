"""The fleet store on disk.

    FLEET/fleet.json        what the fleet was minted from (profile, seed, CA, key pool)
    FLEET/manifest.jsonl    one JSON object per device, in index order
    FLEET/devices/NNNN/     1,000 devices per folder: NNNNNNN.pem (chain), NNNNNNN.key (0600)
    FLEET/keys/             shared keys, when minted with a key pool
    FLEET/unknown-ca/       the CA that signs ``unknown_ca`` devices
    FLEET/.parts/           while minting with workers: a finished chunk's lines, until
                            appended to the manifest
    FLEET/.checked          how much of the manifest was checked line by line, and its
                            SHA-256: later runs check only what was appended since

A device exists once its manifest line does: files are written first and the
line appended after, a whole chunk at a time, so a killed mint leaves at worst a
partial last line (cut off on the next run) and files for devices it never
recorded (overwritten on the next run). See docs/fleet-store.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from loadgen import files
from loadgen.errors import FleetError, UserError
from loadgen.files import write_atomic
from loadgen.nesting import parse_json

FORMAT = 1
META_FILE = "fleet.json"
MANIFEST_FILE = "manifest.jsonl"
DEVICES_DIR = "devices"
KEYS_DIR = "keys"
UNKNOWN_CA_DIR = "unknown-ca"
LOCK_FILE = ".lock"
PARTS_DIR = ".parts"
CHECKED_FILE = ".checked"
# What `_checked` requires of a line; raise it when that changes, and lines
# checked under the old rules are checked again.
CHECK_RULES = 1
SHARD_SIZE = 1000
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class _Checked:
    """The manifest's first ``size`` bytes, ``lines`` lines, were checked line
    by line (under ``rules``, as the lines of a fleet of this stride)."""

    rules: int
    size: int
    sha256: str
    lines: int
    first: int
    step: int


def shard_of(index: int) -> str:
    return f"{DEVICES_DIR}/{index // SHARD_SIZE:04d}"


def device_paths(index: int) -> tuple[str, str]:
    """(chain, key) relative to the fleet folder."""
    stem = f"{shard_of(index)}/{index:07d}"
    return f"{stem}.pem", f"{stem}.key"


@dataclass(frozen=True)
class FleetMeta:
    seed: int
    profile: dict[str, Any]
    ca_fingerprint: str
    ca_subject: str
    key_pool: int | None
    format: int = FORMAT
    # A shard's store (``--shard I/N``): only the devices whose index ≡ I (mod N),
    # as {"index": I, "count": N}; the manifest's line j is then device I + jN.
    shard: dict[str, int] | None = None

    @property
    def stride(self) -> tuple[int, int]:
        """(first index, step) of the manifest's devices."""
        if self.shard is None:
            return 0, 1
        return self.shard["index"], self.shard["count"]

    def to_json(self) -> bytes:
        data = asdict(self)
        if self.shard is None:
            del data["shard"]  # a whole fleet's metadata, as before shards
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def _shown(value: object) -> str:
    # As the file spells it (null, not None), and short: the value may be a whole profile.
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_int(value: object) -> bool:
    # JSON's true and false are ints to Python: never a count or a seed.
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta: FleetMeta) -> str | None:
    """What in a hand-edited fleet.json its readers would trip over (a string
    for the shard, a key pool that is no count), as "field: what is wrong"."""
    if not _is_int(meta.seed):
        return f"seed: {_shown(meta.seed)} is not an integer"
    if not isinstance(meta.profile, dict):
        return f"profile: {_shown(meta.profile)} is not an object"
    for name in ("ca_fingerprint", "ca_subject"):
        if not isinstance(value := getattr(meta, name), str):
            return f"{name}: {_shown(value)} is not a string"
    if meta.key_pool is not None and not (_is_int(meta.key_pool) and meta.key_pool > 0):
        return f"key_pool: {_shown(meta.key_pool)} is not a positive integer"
    if meta.shard is not None:
        return _shard_problem(meta.shard)
    return None


def _shard_problem(shard: object) -> str | None:
    if not isinstance(shard, dict) or set(shard) != {"index", "count"}:
        return f"shard: {_shown(shard)} is not an object of index and count"
    index, count = shard["index"], shard["count"]
    if not (_is_int(index) and _is_int(count) and 0 <= index < count):
        return f"shard: {_shown(shard)} is not shard index I of count N, 0 <= I < N"
    return None


def _device_problem(device: Device) -> str | None:
    """What in a hand-edited manifest line its readers would trip over (a null
    cert, a list for the subject), as "field: what is wrong"."""
    if not _is_int(device.index) or device.index < 0:
        return f"index: {_shown(device.index)} is not a device index"
    for name in (
        "client_id",
        "certificate_id",
        "key_type",
        "cert",
        "key",
        "not_before",
        "not_after",
    ):
        if not isinstance(value := getattr(device, name), str):
            return f"{name}: {_shown(value)} is not a string"
    if device.fault is not None and not isinstance(device.fault, str):
        return f"fault: {_shown(device.fault)} is not a string or null"
    if not isinstance(device.subject, dict):
        return f"subject: {_shown(device.subject)} is not an object"
    for name, value in device.subject.items():
        if not isinstance(value, str):
            return f"subject.{name}: {_shown(value)} is not a string"
    return None


def _fields_problem(line: bytes) -> str:
    """Why a line that is JSON is no device: said by field, not as Python's
    TypeError from ``Device(**raw)``."""
    raw = json.loads(line)
    if not isinstance(raw, dict):
        return "not a JSON object"
    known = {field.name for field in fields(Device)}
    if unknown := sorted(raw.keys() - known):
        return f"unknown field {unknown[0]!r}"
    return f"missing field {sorted(known - raw.keys())[0]!r}"


@dataclass(frozen=True, slots=True)
class Device:
    """One manifest line."""

    index: int
    client_id: str
    certificate_id: str
    subject: dict[str, str]
    key_type: str
    fault: str | None
    cert: str
    key: str
    not_before: str
    not_after: str


class FleetStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def exists(self) -> bool:
        return (self.path / META_FILE).exists()

    def read_meta(self) -> FleetMeta:
        meta_path = self.path / META_FILE
        try:
            # Bounded and depth-safe as every file a user may hand over: a
            # fleet.json replaced by /dev/zero or a nest of lists is one line.
            raw = parse_json(files.read_limited(meta_path, files.CONFIG_LIMIT, "fleet metadata"))
        except FileNotFoundError:
            raise FleetError(f"{self.path}: not a fleet (no {META_FILE})") from None
        except (OSError, ValueError) as exc:
            raise FleetError(f"{meta_path}: unreadable fleet metadata: {exc}") from None
        if not isinstance(raw, dict):
            raise FleetError(f"{meta_path}: malformed fleet metadata: not a JSON object")
        if raw.get("format") != FORMAT:
            raise FleetError(f"{meta_path}: unknown fleet format {raw.get('format')!r}")
        try:
            meta = FleetMeta(**raw)
        except TypeError as exc:
            raise FleetError(f"{meta_path}: malformed fleet metadata: {exc}") from None
        if (problem := _meta_problem(meta)) is not None:
            raise FleetError(f"{meta_path}: malformed fleet metadata: {problem}")
        return meta

    def create(self, meta: FleetMeta) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path / META_FILE, meta.to_json())
        except OSError as exc:
            raise FleetError(f"{self.path}: cannot create the fleet: {exc.strerror}") from None

    def lock(self) -> int:
        """An exclusive lock for the life of the returned fd: two mints never share a fleet."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise FleetError(f"{self.path}: cannot lock the fleet: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FleetError(
                f"{self.path}: another mint is writing this fleet (`certs mint`, or a run "
                "minting its devices): run again once it is done"
            ) from None
        return fd

    def recover_locked(self) -> int:
        """`recover` under the fleet's lock: what it repairs may be what a mint
        is writing (its parts, its last line), so never while one is."""
        fd = self.lock()
        try:
            return self.recover()
        finally:
            os.close(fd)

    def recover(self) -> int:
        """Count the devices recorded, cutting off a partial last line that a killed
        mint left. Raises when the manifest is damaged beyond that. Call it with
        the fleet locked (`lock`, `recover_locked`)."""
        # Parts a killed mint never appended: their devices are minted again.
        shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)
        path = self.manifest_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
            end = data.rfind(b"\n") + 1
            if end != size:
                os.ftruncate(fd, end)
        finally:
            os.close(fd)
        first, step = self.read_meta().stride if end and self.exists() else (0, 1)
        return self._check_new_lines(data, end, first, step)

    def _check_new_lines(self, data: bytes, end: int, first: int, step: int) -> int:
        """`_check_lines` from where the last check ended, when the lines before
        are byte for byte the ones it checked (their SHA-256: 0.7 s a million
        lines, against 6-12 s to check them again); the count of lines."""
        view = memoryview(data)[:end]
        known = self._read_checked(first, step)
        digest = hashlib.sha256()
        start = lines = 0
        if known is not None and known.size <= end:
            digest.update(view[: known.size])
            if digest.hexdigest() == known.sha256:
                start, lines = known.size, known.lines
            else:
                digest = hashlib.sha256()
        lines = self._check_lines(data, end, first, step, start, lines + 1)
        digest.update(view[start:])
        self._write_checked(_Checked(CHECK_RULES, end, digest.hexdigest(), lines, first, step))
        return lines

    def _read_checked(self, first: int, step: int) -> _Checked | None:
        """The last check's record, when it was made under these rules for this
        stride; None when there is none or it cannot be read (all is checked)."""
        try:
            data = json.loads(files.read_limited(self.path / CHECKED_FILE, 4096, "check record"))
            known = _Checked(**data)
        except (OSError, ValueError, TypeError, UserError):
            return None
        fresh = (known.rules, known.first, known.step) == (CHECK_RULES, first, step)
        sound = all(_is_int(n) and n >= 0 for n in (known.size, known.lines))
        return known if fresh and sound and isinstance(known.sha256, str) else None

    def _write_checked(self, checked: _Checked) -> None:
        # A fleet on a read-only volume is checked whole each time instead.
        with contextlib.suppress(OSError):
            write_atomic(self.path / CHECKED_FILE, json.dumps(asdict(checked)).encode())

    def _check_lines(
        self, data: bytes, end: int, first: int, step: int, start: int = 0, number: int = 1
    ) -> int:
        """Every line from ``start`` (line ``number``) parsed, its fields typed
        and its device where its line puts it; the count of lines up to ``end``.
        A damaged line found here stops a run before any load; found by a worker,
        it ended every device of the run an error. About 6 µs a line (6 s for a
        million devices, against 45 s to mint them): see docs/fleet-store.md."""
        checked = self._checked
        while start < end:
            stop = data.index(b"\n", start) + 1
            index = checked(data[start:stop], number).index
            if index != first + (number - 1) * step:
                raise FleetError(
                    f"{self.manifest_path}:{number}: device {index} where device "
                    f"{first + (number - 1) * step} belongs; the manifest was edited or damaged"
                )
            start, number = stop, number + 1
        return number - 1

    def _checked(self, line: bytes, number: int) -> Device:
        """``_parse``, and every field of the type its readers take it for: for
        whole-manifest checks, not on a worker's way to each device's connect."""
        device = self._parse(line, number)
        if (problem := _device_problem(device)) is not None:
            raise FleetError(f"{self.manifest_path}:{number}: malformed manifest line: {problem}")
        return device

    def _parse(self, line: bytes, number: int) -> Device:
        try:
            # Decoded as text first: json.loads of bytes detects their encoding
            # (about 90 bytecodes a line, every device a run prepares).
            return Device(**_DECODER.decode(line.decode()))
        except ValueError as exc:
            problem = str(exc)
        except TypeError:
            problem = _fields_problem(line)
        raise FleetError(f"{self.manifest_path}:{number}: malformed manifest line: {problem}")

    def part_path(self, start: int) -> Path:
        """Where a worker leaves the lines of the chunk starting at ``start``: handing
        them back through the pool's pipe stalled the workers (a chunk's lines are
        far more than a pipe holds) and cost 6% of a two-worker mint."""
        return self.path / PARTS_DIR / f"{start:010d}.jsonl"

    def append_part(self, start: int) -> None:
        part = self.part_path(start)
        self.append(part.read_bytes())
        part.unlink()

    def append(self, lines: bytes) -> None:
        fd = os.open(
            self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def devices(
        self, *, every: int = 1, start: int = 0, skip: int = 0, checked: bool = False
    ) -> Iterator[Device]:
        """The recorded devices, in index order, from the ``skip``-th on; with
        ``every``/``start``, only the ``start``-th, ``start + every``-th, ... of
        those (the others are not parsed: a worker's share of a million-device
        fleet costs its share of the parsing). ``checked``: each line's fields
        typed too (``certs inspect``; a run's lines were checked before it)."""
        parse = self._checked if checked else self._parse
        try:
            with self.manifest_path.open("rb") as f:
                for index, line in enumerate(f):
                    if index < skip:
                        continue
                    if (index - skip) % every == start and line.endswith(b"\n"):
                        yield parse(line, index + 1)
        except FileNotFoundError:
            return
