"""Minting a fleet: check everything first, then fill the store chunk by chunk,
in worker processes, resuming where an earlier run stopped."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import ValidationError

from loadgen.certs.ca import CA, init_ca, load_ca, refuse_ca_file
from loadgen.certs.ca import CERT_FILE as CA_CERT_FILE
from loadgen.certs.ca import KEY_FILE as CA_KEY_FILE
from loadgen.certs.keys import KeyType, generate_key, key_pem
from loadgen.certs.minter import Minter, MintSpec, pool_key_path
from loadgen.certs.profile import (
    DEFAULT_PROFILE,
    MAX_DEVICES,
    MAX_WORKERS,
    SHARED_CLIENT_ID,
    DevicePlanner,
    Profile,
    check_count,
    client_id_values,
    difference,
)
from loadgen.certs.store import (
    KEYS_DIR,
    LOCK_FILE,
    META_FILE,
    SHARD_SIZE,
    UNKNOWN_CA_DIR,
    FleetMeta,
    FleetStore,
)
from loadgen.certs.workers import Task, WorkerFailed, started
from loadgen.errors import (
    CAError,
    ConfigError,
    FieldError,
    FleetError,
    LoadgenError,
    UserError,
    WriteError,
)
from loadgen.files import write, write_atomic
from loadgen.load.shard import Shard
from loadgen.words import counted

# Plans checked before anything is written: enough to catch a template that
# overflows a field or a value a field cannot hold.
_PRECHECK = 256
# Chunks small enough that no worker idles long at the end of a run. On large
# fleets a chunk is a whole shard folder: two workers creating files in one folder
# contend for its lock (measured: 1.74x two workers over one with half-shard
# chunks, 1.88x with whole shards).
_MIN_CHUNK = 50


@dataclass(frozen=True)
class InputNames:
    """How the user named the fleet, CA, profile and seed a mint checks, for its
    errors: the options of ``certs mint``, or the fields of a scenario."""

    fleet: str = "--out"
    ca: str = "--ca"
    profile: str = "--profile"
    seed: str = "--seed"


@dataclass(frozen=True)
class MintRequest:
    fleet: Path
    ca_dir: Path
    count: int
    profile: Profile | None = None  # None: the fleet's own, or the default for a new fleet
    seed: int | None = None
    workers: int = 1
    key_pool: int | None = None
    init_ca: bool = False  # create the CA when the folder holds none
    names: InputNames = InputNames()
    # Only this shard's devices of the ``count`` (``--shard I/N``): the fleet
    # folder is then that shard's store, and its counts are the shard's.
    shard: Shard | None = None
    # Where the given profile's fields are written (file and line), for errors
    # about them; None for a profile not read from a file.
    locate: Callable[[FieldError], ConfigError] | None = None

    @property
    def devices(self) -> int:
        """The devices the fleet folder is to hold."""
        return self.shard.size(self.count) if self.shard is not None else self.count


@dataclass(frozen=True)
class MintResult:
    fleet: Path
    existing: int  # devices the fleet had before
    minted: int
    total: int


@dataclass(frozen=True)
class MintPlan:
    """A request checked: what the fleet will be minted with. ``ca`` is None when
    it is still to be created (``init_ca``), ``meta`` None for a new fleet."""

    store: FleetStore
    profile: Profile
    ca: CA | None
    meta: FleetMeta | None


def check(request: MintRequest) -> MintPlan:
    """Everything a mint can refuse, checked before any file is written: the
    options, the CA, an existing fleet against what was asked, and the profile
    planned for the devices it will mint."""
    check_count("--count", request.count, MAX_DEVICES)
    check_count("--workers", request.workers, MAX_WORKERS)
    if request.key_pool is not None and request.key_pool <= 0:
        raise UserError(f"--key-pool must be positive, got {request.key_pool}")
    if request.key_pool is not None and request.key_pool > request.count:
        # Every pool key is made before the first device: a pool past the fleet
        # is keys no device uses, and a typo's 1e11 of them ran out of memory.
        raise UserError(
            f"--key-pool {request.key_pool} is more keys than --count {request.count} devices"
        )
    names = request.names
    refuse_ca_file(request.fleet, request.ca_dir, names.fleet)
    ca = _existing_ca(request)
    store = FleetStore(request.fleet)
    if store.exists():
        meta = store.read_meta()
        if ca is None:
            raise CAError(
                f"{names.ca}: no CA in {request.ca_dir}, but {request.fleet} was minted with "
                f"{meta.ca_subject} (sha256 {meta.ca_fingerprint[:16]}…): point it at that CA"
            )
        _check_matches(request, meta, ca)
        _check_shard(request, meta)
        try:
            profile = Profile.model_validate(meta.profile)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            where = _field_in(meta.profile, problem["loc"])
            raise FleetError(f"{store.path / META_FILE}: {where}: {problem['msg']}") from None
        plan = MintPlan(store, profile, ca, meta)
    else:
        if request.fleet.exists() and not request.fleet.is_dir():
            raise FleetError(f"{request.fleet}: exists and is not a folder")
        # The lock file alone is a mint's that stopped before creating the fleet.
        if request.fleet.is_dir() and any(c.name != LOCK_FILE for c in request.fleet.iterdir()):
            raise FleetError(f"{request.fleet}: a non-empty folder that is not a fleet")
        plan = MintPlan(store, request.profile or DEFAULT_PROFILE, ca, None)
    _plan_ahead(plan, request)
    return plan


def _field_in(profile: dict[str, Any], loc: tuple[str | int, ...]) -> str:
    """``profile.faults.expired``: the path of pydantic's error location in the
    fleet's profile, without the union members' names it inserts (``str``)."""
    where, node = "profile", profile
    for part in loc:
        if isinstance(node, dict) and part in node:
            where, node = f"{where}.{part}", node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            where, node = f"{where}[{part}]", node[part]
    return where


def _existing_ca(request: MintRequest) -> CA | None:
    ca_dir = request.ca_dir
    missing = not (ca_dir / CA_CERT_FILE).exists() and not (ca_dir / CA_KEY_FILE).exists()
    if request.init_ca and missing:
        if ca_dir.exists() and not ca_dir.is_dir():
            raise CAError(f"{request.names.ca}: {ca_dir} exists and is not a folder")
        return None
    try:
        ca = load_ca(ca_dir)
    except CAError as exc:
        raise CAError(f"{request.names.ca}: {exc}") from None
    if (problem := _cannot_sign(ca.cert)) is not None:
        raise CAError(f"{request.names.ca}: {ca_dir / CA_CERT_FILE}: {problem}")
    return ca


def _cannot_sign(cert: x509.Certificate) -> str | None:
    """Why devices signed by ``cert`` would be refused by any endpoint, if so."""
    # (A certificate that is not a CA's is refused by load_ca.)
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}: no endpoint trusts what it signs"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _check_matches(request: MintRequest, meta: FleetMeta, ca: CA) -> None:
    """An existing fleet grows only with the CA, profile, seed and key pool it was
    minted with; a mismatch names what differs."""
    names, fleet = request.names, request.fleet
    if meta.ca_fingerprint != ca.fingerprint:
        raise FleetError(
            f"{fleet}: minted with another CA ({meta.ca_subject}, sha256 "
            f"{meta.ca_fingerprint[:16]}…), not {names.ca} {request.ca_dir} "
            f"({ca.cert.subject.rfc4514_string()}, sha256 {ca.fingerprint[:16]}…)"
        )
    if request.profile is not None:
        differs = difference(meta.profile, request.profile.canonical(), names.profile)
        if differs is not None:
            raise FleetError(f"{fleet}: minted with a different profile: {differs}")
    if request.seed is not None and request.seed != meta.seed:
        raise FleetError(f"{fleet}: minted with seed {meta.seed}, not {names.seed} {request.seed}")
    if request.key_pool is not None and request.key_pool != meta.key_pool:
        held = (
            "a key of its own per device" if meta.key_pool is None else f"key pool {meta.key_pool}"
        )
        raise FleetError(f"{fleet}: minted with {held}, not key pool {request.key_pool}")


def _check_shard(request: MintRequest, meta: FleetMeta) -> None:
    """A shard's store holds that shard's devices only: it grows as that shard."""
    held = Shard(**meta.shard) if meta.shard is not None else None
    if held == request.shard:
        return
    what = f"shard {held} of a fleet" if held is not None else "a whole fleet"
    asked = f"--shard {request.shard}" if request.shard is not None else "the whole fleet"
    raise FleetError(f"{request.fleet}: holds {what}, not {asked}: mint into another folder")


def _plan_ahead(plan: MintPlan, request: MintRequest) -> None:
    """Plan the first devices and the last: enough to catch a template that
    overflows a field or a value a field cannot hold before anything is written
    (only ``{index}`` grows with the index, and it is longest at the end)."""
    if request.shard is not None:
        request.shard.check_size(request.count)
    planner = DevicePlanner(plan.profile, _seed(plan, request))
    first, step = _stride(request)
    local = request.devices
    loc, values = client_id_values(plan.profile)
    if values is not None and values < request.count:
        via = " (the client id is the common name)" if loc != ("client_id",) else ""
        raise _about_profile(
            request,
            FieldError(
                loc,
                f"at most {values:,} distinct values{via}, fewer than the fleet's "
                f"{request.count:,} devices: {SHARED_CLIENT_ID}",
            ),
        )
    seen: dict[str, int] = {}
    try:
        for position in (*range(min(local, _PRECHECK)), local - 1):
            device = planner.plan(first + position * step)
            other = seen.setdefault(device.client_id, device.index)
            if other != device.index:
                raise FieldError(
                    loc,
                    f"devices {other} and {device.index} would both connect as "
                    f"{device.client_id!r}: {SHARED_CLIENT_ID}",
                )
    except FieldError as exc:
        raise _about_profile(request, exc) from None
    except ConfigError as exc:
        raise ConfigError(f"{_profile_name(request)}: {exc}") from None


def _profile_name(request: MintRequest) -> str:
    """The profile given, or the one the fleet was minted with."""
    return request.names.profile if request.profile is not None else "the fleet's profile"


def _about_profile(request: MintRequest, error: FieldError) -> ConfigError:
    """``error`` naming the profile's file and the field's line, when the
    profile given was read from a file."""
    if request.profile is not None and request.locate is not None:
        return request.locate(error)
    return ConfigError(f"{_profile_name(request)}: {error}")


def _stride(request: MintRequest) -> tuple[int, int]:
    shard = request.shard
    return (shard.index, shard.count) if shard is not None else (0, 1)


def _seed(plan: MintPlan, request: MintRequest) -> int:
    if plan.meta is not None:
        return plan.meta.seed
    return request.seed if request.seed is not None else 0


def _chunks(start: int, stop: int, workers: int) -> Iterator[tuple[int, int]]:
    """Ranges that never straddle a shard folder, small enough to keep every
    worker busy to the end."""
    size = max(_MIN_CHUNK, min(SHARD_SIZE, -(-(stop - start) // (workers * 8))))
    while start < stop:
        end = min(stop, start + size, (start // SHARD_SIZE + 1) * SHARD_SIZE)
        yield start, end
        start = end


def _mint_chunk(minter: Minter, bounds: tuple[int, int]) -> tuple[int, int]:
    """A worker's job: a chunk minted, its lines left in the fleet's parts."""
    start, stop = bounds
    try:
        write(FleetStore(minter.fleet).part_path(start), minter.mint(start, stop))
    except OSError as exc:
        raise WriteError(_cannot_write(exc, "the devices' files")) from None
    return start, stop - start


def _cannot_write(exc: OSError, what: str) -> str:
    """A write to the fleet that failed (a full disk), as one line naming the
    file when the call that failed named one (a device's relative to the fleet),
    else ``what`` was written."""
    return f"cannot write {exc.filename or what}: {exc.strerror or exc}"


def _stopped(request: MintRequest, exc: LoadgenError, done: int) -> LoadgenError:
    """``exc``, which stopped the mint, said with what it leaves: a worker's
    death, a full disk."""
    kept = f"the {counted(done, 'device')} recorded are kept, and " if done else ""
    return type(exc)(f"{request.fleet}: {exc}; {kept}the same mint run again completes the fleet")


def _nothing(_: None) -> None:
    return None


def _make_pool_key(_: None, job: tuple[Path, KeyType, int]) -> None:
    fleet, key_type, slot = job
    path = fleet / pool_key_path(key_type, slot)
    if not path.exists():
        # Atomic: a key is there whole or not at all, and one that is there is kept.
        try:
            write_atomic(path, key_pem(generate_key(key_type)), private=True)
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None


def mint(request: MintRequest, on_progress: Callable[[int, int], None] | None = None) -> MintResult:
    """Mint until the fleet holds ``request.count`` devices. ``on_progress(done,
    total)`` is called as chunks land, ``done`` counting devices already there."""
    plan = check(request)
    undo = _Undo(request, plan)
    lock = _lock(plan)
    try:
        if plan.meta is None:
            # ``check`` found no fleet, without the lock: another mint may have
            # made one here since, with its own profile, seed or CA.
            undo.keep_what_exists()
            plan = check(request)
        return _mint(request, plan, on_progress)
    except Exception:
        undo.if_nothing_recorded()  # under the lock: no other mint is filling the folder
        raise
    finally:
        os.close(lock)


def _lock(plan: MintPlan) -> int:
    """The fleet's lock, taken before anything else is written: its folder made
    first for a new fleet (the lock file lives in it)."""
    if plan.meta is None:
        try:
            plan.store.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FleetError(
                f"{plan.store.path}: cannot create the fleet: {exc.strerror}"
            ) from None
    return plan.store.lock()


def _mint(
    request: MintRequest, plan: MintPlan, on_progress: Callable[[int, int], None] | None
) -> MintResult:
    ca = plan.ca if plan.ca is not None else init_ca(request.ca_dir)
    meta = plan.meta
    if meta is None:
        meta = FleetMeta(
            seed=_seed(plan, request),
            profile=plan.profile.canonical(),
            ca_fingerprint=ca.fingerprint,
            ca_subject=ca.cert.subject.rfc4514_string(),
            key_pool=request.key_pool,
            shard=request.shard.to_json() if request.shard is not None else None,
        )
        plan.store.create(meta)
    existing = plan.store.recover()
    wanted = request.devices
    if existing >= wanted:
        return MintResult(request.fleet, existing, 0, existing)
    spec = MintSpec(
        fleet=request.fleet,
        ca_dir=request.ca_dir,
        profile=meta.profile,
        seed=meta.seed,
        now=dt.datetime.now(dt.UTC).replace(microsecond=0),
        key_pool=meta.key_pool,
        first=meta.stride[0],
        step=meta.stride[1],
    )
    done = existing
    try:
        _prepare_shared(request.fleet, plan.profile, meta, request.workers)
        with _minting(spec, plan.store, existing, wanted, request.workers) as chunks:
            if on_progress:
                on_progress(done, wanted)
            for n in chunks:
                done += n
                if on_progress:
                    on_progress(done, wanted)
    except OSError as exc:  # the parent's own writes: pool keys, the manifest
        raise _stopped(request, WriteError(_cannot_write(exc, "the fleet")), done) from None
    except (WorkerFailed, WriteError) as exc:
        raise _stopped(request, exc, done) from None
    return MintResult(request.fleet, existing, done - existing, done)


class _Undo:
    """What a mint that fails before its first device leaves behind: a new fleet
    (and the CA made for it) is removed, so that the corrected command starts
    afresh; ``check`` should have refused first, this is for what it cannot know.
    Called under the fleet's lock only: what is there then is this mint's."""

    def __init__(self, request: MintRequest, plan: MintPlan) -> None:
        self.fleet = request.fleet if plan.meta is None else None
        self.fleet_existed = request.fleet.exists()
        self.ca = request.ca_dir if plan.ca is None else None
        self.ca_existed = request.ca_dir.exists()

    def keep_what_exists(self) -> None:
        """Under the lock, before this mint writes: a fleet or CA found there now
        is another mint's, never this one's to remove."""
        if self.fleet is not None and FleetStore(self.fleet).exists():
            self.fleet = None
        if self.ca is not None and any((self.ca / n).exists() for n in (CA_CERT_FILE, CA_KEY_FILE)):
            self.ca = None

    def if_nothing_recorded(self) -> None:
        if self.fleet is None:
            return
        if FleetStore(self.fleet).manifest_path.exists():
            return
        if not self.fleet_existed:
            shutil.rmtree(self.fleet, ignore_errors=True)
        elif self.fleet.is_dir():
            # ``check`` found it empty: what is in it now is this mint's.
            for child in self.fleet.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        if self.ca is not None:
            # The folder may hold files of the user's: only the CA's own go.
            for name in (CA_CERT_FILE, CA_KEY_FILE):
                (self.ca / name).unlink(missing_ok=True)
            if not self.ca_existed:
                with contextlib.suppress(OSError):
                    self.ca.rmdir()


def _prepare_shared(fleet: Path, profile: Profile, meta: FleetMeta, workers: int) -> None:
    """The unknown CA and pool keys: made once per fleet, before any device."""
    if "unknown_ca" in profile.faults and not (fleet / UNKNOWN_CA_DIR / "ca.pem").exists():
        init_ca(
            fleet / UNKNOWN_CA_DIR,
            subject="CN=jitp-loadgen unknown CA,O=jitp-loadgen",
            force=True,
        )
    if meta.key_pool:
        (fleet / KEYS_DIR).mkdir(exist_ok=True)
        jobs = [
            (fleet, key_type, slot)
            for key_type in profile.key_types
            for slot in range(meta.key_pool)
        ]
        if workers > 1 and len(jobs) > 1:
            with started(Task(_nothing, None, _make_pool_key), jobs, workers, "key worker") as made:
                for _ in made:
                    pass
        else:
            for job in jobs:
                _make_pool_key(None, job)


@contextlib.contextmanager
def _minting(
    spec: MintSpec, store: FleetStore, start: int, stop: int, workers: int
) -> Iterator[Iterator[int]]:
    """Devices ``start`` to ``stop - 1`` minted and recorded in the manifest in
    order, a chunk at a time: the iterator gives the devices each chunk added.
    Workers start on entry, before the caller shows any progress: forked while
    the progress display's thread holds a lock, one could deadlock."""
    chunks = list(_chunks(start, stop, workers))
    # Here, whatever the workers: a damaged pool key or unknown CA is one line
    # naming it before any worker starts, not a failure in each of them.
    minter = Minter(spec)
    if workers == 1 or len(chunks) == 1:
        yield (_append(store, minter, lo, hi) for lo, hi in chunks)
        return
    parts = store.part_path(start).parent
    parts.mkdir(exist_ok=True)
    task = Task(Minter, spec, _mint_chunk)
    with started(task, chunks, workers, "mint worker") as minted:
        yield (_append_part(store, lo, n) for lo, n in minted)
    parts.rmdir()


def _append(store: FleetStore, minter: Minter, start: int, stop: int) -> int:
    try:
        lines = minter.mint(start, stop)
    except OSError as exc:
        raise WriteError(_cannot_write(exc, "the devices' files")) from None
    store.append(lines)
    return stop - start


def _append_part(store: FleetStore, start: int, n: int) -> int:
    store.append_part(start)
    return n
