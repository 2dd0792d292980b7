"""Cert factory throughput against the floor OpenSSL sets on this machine.

    .venv/bin/python -m bench.mint_throughput [--count 20000] [--repeats 3] [--dir DIR]

Per core, minting a certificate costs at least one key generation and one
signature. `openssl speed ecdsap256` gives signatures per second and has no key
generation test; counting a key generation at a signature's cost gives the floor
used, sign/s / 2 per core. `ecdhp256` is printed, with the looser floor it gives
when an ECDH operation (a variable-base multiplication, more than twice a key
generation) stands in for the key generation. Everything is measured in the same
run, side by side, and each figure is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile


def openssl_speed(seconds: int) -> tuple[float, float]:
    """(ECDSA P-256 sign/s, ECDH P-256 op/s) on one core."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256", "ecdhp256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sign = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)", out)
    ecdh = re.search(r"256 bits ecdh \(nistp256\)\s+\S+s\s+([\d.]+)", out)
    if not sign or not ecdh:
        raise SystemExit(f"cannot parse openssl speed output:\n{out}")
    return float(sign.group(1)), float(ecdh.group(1))


def timed_mint(root: Path, ca_dir: Path, count: int, workers: int, **kw: object) -> float:
    """Certificates per second for one fresh fleet."""
    fleet = root / f"fleet-{workers}-{time.monotonic_ns()}"
    start = time.perf_counter()
    mint(MintRequest(fleet=fleet, ca_dir=ca_dir, count=count, workers=workers, **kw))  # type: ignore[arg-type]
    rate = count / (time.perf_counter() - start)
    shutil.rmtree(fleet)
    return rate


def file_create_rate(root: Path, count: int) -> float:
    """Devices per second this folder can take when only the two files are written
    (os.open/os.write, as the minter does): the filesystem's own ceiling."""
    folder = root / f"files-{time.monotonic_ns()}"
    folder.mkdir()
    cert, key = b"c" * 1470, b"k" * 241
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    start = time.perf_counter()
    for i in range(count):
        for name, data in ((f"{i}.key", key), (f"{i}.pem", cert)):
            fd = os.open(folder / name, flags, 0o600)
            os.write(fd, data)
            os.close(fd)
    rate = count / (time.perf_counter() - start)
    shutil.rmtree(folder)
    return rate


def _crypto_only(count: int) -> float:
    """Seconds for ``count`` bare key generations (with their PKCS#8 and public key)
    plus signatures, through the factory's own key maker and signer: no other glue,
    no files. What one process can do at most on this machine."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from loadgen.certs.keys import KeyMaker, KeyType, Signer

    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    keys = KeyMaker([KeyType.EC_P256])
    tbs = b"x" * 400
    start = time.perf_counter()
    for _ in range(count):
        signer.sign(tbs)
        keys.new(KeyType.EC_P256)
    return time.perf_counter() - start


def crypto_scaling(count: int, processes: int) -> tuple[float, float]:
    """(rate in one process, rate in ``processes`` at once): how far this machine
    lets CPU-bound crypto scale across its cores right now."""
    one = count / _crypto_only(count)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        start = time.perf_counter()
        pool.map(_crypto_only, [count] * processes)
        many = processes * count / (time.perf_counter() - start)
    return one, many


def median_of(repeats: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [run() for _ in range(repeats)]
    return statistics.median(samples), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3, help="per openssl speed test")
    parser.add_argument(
        "--dir",
        type=Path,
        help="where fleets are written (default: a temporary folder on /dev/shm, else /tmp)",
    )
    parser.add_argument("--rsa-count", type=int, default=2_000)
    parser.add_argument("--key-pool", type=int, default=16)
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    base = args.dir or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    with tempfile.TemporaryDirectory(dir=base, prefix="loadgen-bench-") as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        # Warm up: imports, page cache, CPU frequency.
        timed_mint(root, ca.directory, 2000, 1)

        speeds = [openssl_speed(args.seconds)]
        one: list[float] = []
        all_: list[float] = []
        files: list[float] = []
        crypto: list[tuple[float, float]] = []
        for _ in range(args.repeats):
            crypto.append(crypto_scaling(args.count // 2, cores))
            # Interleaved, so a noisy neighbour hurts both sides alike.
            one.append(timed_mint(root, ca.directory, args.count, 1))
            all_.append(timed_mint(root, ca.directory, args.count, cores))
            files.append(file_create_rate(root, args.count))
        speeds.append(openssl_speed(args.seconds))

        rsa = Profile.model_validate({"key_type": "rsa-2048"})
        pool_fleet = root / "rsa-pool"
        start = time.perf_counter()
        mint(MintRequest(pool_fleet, ca.directory, 1, rsa, workers=cores, key_pool=args.key_pool))
        pool_seconds = time.perf_counter() - start

        def grow_pooled() -> float:
            done = sum(1 for _ in (pool_fleet / "manifest.jsonl").open())
            start = time.perf_counter()
            mint(MintRequest(pool_fleet, ca.directory, done + args.rsa_count, workers=cores))
            return args.rsa_count / (time.perf_counter() - start)

        rsa_pool, _ = median_of(args.repeats, grow_pooled)
        rsa_unique, _ = median_of(
            1, lambda: timed_mint(root, ca.directory, max(cores * 10, 20), cores, profile=rsa)
        )

    sign = statistics.median(s for s, _ in speeds)
    ecdh = statistics.median(e for _, e in speeds)
    floor_core = sign / 2
    floor_all = floor_core * cores
    one_m, all_m, files_m = (statistics.median(x) for x in (one, all_, files))
    crypto_one = statistics.median(c[0] for c in crypto)
    crypto_all = statistics.median(c[1] for c in crypto)
    print(f"machine: {cores} cores; fleets written under {base or tempfile.gettempdir()}")
    print(f"openssl speed ecdsap256: {sign:,.0f} sign/s per core; ecdhp256: {ecdh:,.0f} op/s")
    print(f"floor (keygen + sign): {floor_core:,.0f} certs/s per core, {floor_all:,.0f} on {cores}")
    print(
        f"(an ECDH operation standing in for a key generation would put it at "
        f"{1 / (1 / sign + 1 / ecdh):,.0f} per core: a looser floor, not used)"
    )
    print()
    print("| measurement | certs/s (median) | runs | vs floor |")
    print("| --- | ---: | --- | ---: |")
    print(
        f"| EC P-256, 1 worker | {one_m:,.0f} | {_runs(one)} | {one_m / floor_core:.0%} of 1 core |"
    )
    print(
        f"| EC P-256, {cores} workers | {all_m:,.0f} | {_runs(all_)} | "
        f"**{all_m / floor_all:.0%}** of {cores} cores |"
    )
    print(f"| {cores} workers / 1 worker | **{all_m / one_m:.2f}x** | | |")
    print(
        "| keygen (with PKCS#8) + sign only, 1 process (no other glue, no files) | "
        f"{crypto_one:,.0f} | | |"
    )
    print(f"| keygen + sign only, {cores} processes | {crypto_all:,.0f} | | |")
    print(
        f"| the machine's own scaling: {cores} processes / 1 | {crypto_all / crypto_one:.2f}x | | |"
    )
    print(f"| bare file writes only (2 files per device) | {files_m:,.0f} | {_runs(files)} | |")
    print(
        f"| RSA-2048, key pool {args.key_pool}, {cores} workers (pool made once in "
        f"{pool_seconds:.1f} s) | {rsa_pool:,.0f} | | |"
    )
    print(f"| RSA-2048, a key per device, {cores} workers | {rsa_unique:,.1f} | | |")


def _runs(samples: list[float]) -> str:
    return ", ".join(f"{s:,.0f}" for s in samples)


if __name__ == "__main__":
    main()
