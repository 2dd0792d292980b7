"""Minting a fleet: check everything first, then fill the store chunk by chunk,
in worker processes, resuming where an earlier run stopped."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loadgen import lifeline
from loadgen.certs.ca import CA, init_ca, load_ca
from loadgen.certs.keys import KeyType, generate_key, key_pem
from loadgen.certs.minter import Minter, MintSpec, pool_key_path
from loadgen.certs.profile import DEFAULT_PROFILE, DevicePlanner, Profile
from loadgen.certs.store import KEYS_DIR, SHARD_SIZE, UNKNOWN_CA_DIR, FleetMeta, FleetStore
from loadgen.errors import FleetError, UserError
from loadgen.files import write

# Plans checked before anything is written: enough to catch a template that
# overflows a field or a value a field cannot hold.
_PRECHECK = 256
# Chunks small enough that no worker idles long at the end of a run. On large
# fleets a chunk is a whole shard folder: two workers creating files in one folder
# contend for its lock (measured: 1.74x two workers over one with half-shard
# chunks, 1.88x with whole shards).
_MIN_CHUNK = 50


@dataclass(frozen=True)
class MintRequest:
    fleet: Path
    ca_dir: Path
    count: int
    profile: Profile | None = None  # None: the fleet's own, or the default for a new fleet
    seed: int | None = None
    workers: int = 1
    key_pool: int | None = None


@dataclass(frozen=True)
class MintResult:
    fleet: Path
    existing: int  # devices the fleet had before
    minted: int
    total: int


@dataclass(frozen=True)
class _Plan:
    store: FleetStore
    meta: FleetMeta
    profile: Profile
    ca: CA
    is_new: bool


def _check(request: MintRequest) -> _Plan:
    if request.count <= 0:
        raise UserError(f"--count must be positive, got {request.count}")
    if request.workers <= 0:
        raise UserError(f"--workers must be positive, got {request.workers}")
    if request.key_pool is not None and request.key_pool <= 0:
        raise UserError(f"--key-pool must be positive, got {request.key_pool}")
    ca = load_ca(request.ca_dir)
    store = FleetStore(request.fleet)
    if store.exists():
        meta = store.read_meta()
        if meta.ca_fingerprint != ca.fingerprint:
            raise FleetError(
                f"{request.fleet}: minted with another CA ({meta.ca_subject}, "
                f"sha256 {meta.ca_fingerprint[:16]}…), not {request.ca_dir}"
            )
        profile = Profile.model_validate(meta.profile)
        if request.profile is not None and request.profile.canonical() != meta.profile:
            raise FleetError(f"{request.fleet}: minted with a different profile than the one given")
        if request.seed is not None and request.seed != meta.seed:
            raise FleetError(f"{request.fleet}: minted with seed {meta.seed}, not {request.seed}")
        if request.key_pool is not None and request.key_pool != meta.key_pool:
            raise FleetError(
                f"{request.fleet}: minted with key pool {meta.key_pool}, not {request.key_pool}"
            )
        return _Plan(store, meta, profile, ca, is_new=False)
    if request.fleet.exists() and not request.fleet.is_dir():
        raise FleetError(f"{request.fleet}: exists and is not a folder")
    if request.fleet.is_dir() and any(request.fleet.iterdir()):
        raise FleetError(f"{request.fleet}: a non-empty folder that is not a fleet")
    profile = request.profile or DEFAULT_PROFILE
    meta = FleetMeta(
        seed=request.seed if request.seed is not None else 0,
        profile=profile.canonical(),
        ca_fingerprint=ca.fingerprint,
        ca_subject=ca.cert.subject.rfc4514_string(),
        key_pool=request.key_pool,
    )
    return _Plan(store, meta, profile, ca, is_new=True)


def _chunks(start: int, stop: int, workers: int) -> Iterator[tuple[int, int]]:
    """Ranges that never straddle a shard folder, small enough to keep every
    worker busy to the end."""
    size = max(_MIN_CHUNK, min(SHARD_SIZE, -(-(stop - start) // (workers * 8))))
    while start < stop:
        end = min(stop, start + size, (start // SHARD_SIZE + 1) * SHARD_SIZE)
        yield start, end
        start = end


# Each worker process builds its Minter once (CA, templates, pool keys) in the pool
# initializer; multiprocessing offers no other place to keep it between chunks.
_worker: Minter | None = None


def _init_worker(spec: MintSpec) -> None:
    global _worker
    _bind_to_parent()
    _worker = Minter(spec)


def _bind_to_parent() -> None:
    """A pool worker ends with the parent, however it ends. Ctrl-C reaches the
    whole process group; the parent alone handles it (it ends the pool), so
    workers print no tracebacks of their own. The pool ends them with SIGTERM:
    forked, they would otherwise keep the parent's handler turning it into
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    lifeline.die_with_multiprocessing_parent(signal.SIGKILL)
    # A chunk runs for a while without reading from the parent: watch it apart.
    lifeline.exit_when_multiprocessing_parent_exits("loadgen mint worker")


def _mint_chunk(bounds: tuple[int, int]) -> tuple[int, int]:
    assert _worker is not None
    start, stop = bounds
    write(FleetStore(_worker.fleet).part_path(start), _worker.mint(start, stop))
    return start, stop - start


def _make_pool_key(args: tuple[Path, KeyType, int]) -> None:
    fleet, key_type, slot = args
    path = fleet / pool_key_path(key_type, slot)
    if not path.exists():
        write(path, key_pem(generate_key(key_type)), private=True)


def mint(request: MintRequest, on_progress: Callable[[int, int], None] | None = None) -> MintResult:
    """Mint until the fleet holds ``request.count`` devices. ``on_progress(done,
    total)`` is called as chunks land, ``done`` counting devices already there."""
    plan = _check(request)
    planner = DevicePlanner(plan.profile, plan.meta.seed)
    for index in range(min(request.count, _PRECHECK)):
        planner.plan(index)
    if plan.is_new:
        plan.store.create(plan.meta)
    lock = plan.store.lock()
    try:
        existing = plan.store.recover()
        if existing >= request.count:
            return MintResult(request.fleet, existing, 0, existing)
        _prepare_shared(request.fleet, plan, request.workers)
        spec = MintSpec(
            fleet=request.fleet,
            ca_dir=request.ca_dir,
            profile=plan.meta.profile,
            seed=plan.meta.seed,
            now=dt.datetime.now(dt.UTC).replace(microsecond=0),
            key_pool=plan.meta.key_pool,
        )
        done = existing
        if on_progress:
            on_progress(done, request.count)
        for n in _run(spec, plan.store, existing, request.count, request.workers):
            done += n
            if on_progress:
                on_progress(done, request.count)
        return MintResult(request.fleet, existing, done - existing, done)
    finally:
        os.close(lock)


def _prepare_shared(fleet: Path, plan: _Plan, workers: int) -> None:
    """The unknown CA and pool keys: made once per fleet, before any device."""
    if "unknown_ca" in plan.profile.faults and not (fleet / UNKNOWN_CA_DIR / "ca.pem").exists():
        init_ca(
            fleet / UNKNOWN_CA_DIR,
            subject="CN=jitp-loadgen unknown CA,O=jitp-loadgen",
            force=True,
        )
    if plan.meta.key_pool:
        (fleet / KEYS_DIR).mkdir(exist_ok=True)
        jobs = [
            (fleet, key_type, slot)
            for key_type in plan.profile.key_types
            for slot in range(plan.meta.key_pool)
        ]
        if workers > 1 and len(jobs) > 1:
            context = multiprocessing.get_context("fork")
            with context.Pool(min(workers, len(jobs)), _bind_to_parent) as pool:
                pool.map(_make_pool_key, jobs)
        else:
            for job in jobs:
                _make_pool_key(job)


def _run(spec: MintSpec, store: FleetStore, start: int, stop: int, workers: int) -> Iterator[int]:
    """Mint ``start`` to ``stop - 1``, recording each chunk in the manifest in
    order; yields the devices each chunk added."""
    chunks = list(_chunks(start, stop, workers))
    if workers == 1 or len(chunks) == 1:
        minter = Minter(spec)
        for lo, hi in chunks:
            store.append(minter.mint(lo, hi))
            yield hi - lo
        return
    parts = store.part_path(start).parent
    parts.mkdir(exist_ok=True)
    # fork: workers start in milliseconds and share the parent's imports; spawn
    # would cost a second of start-up per worker, visible on small fleets.
    context = multiprocessing.get_context("fork")
    with context.Pool(min(workers, len(chunks)), _init_worker, (spec,)) as pool:
        for lo, n in pool.imap(_mint_chunk, chunks):
            store.append_part(lo)
            yield n
    parts.rmdir()
