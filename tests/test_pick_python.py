"""`scripts/pick-python`, the interpreter `scripts/setup` makes `.venv` from:
of every Python 3.11+ on the PATH able to make a virtualenv, one with libpython
in its executable (a distribution's optimized build) before a shared one, then
the newest; `LOADGEN_PYTHON` outright.

The candidates are small wrappers around this suite's own base interpreter, on
a PATH of their own. One of them is made to look like a shared build: a
`sitecustomize` maps a file named like libpython into it, which is what the
script reads in `/proc/self/maps`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PICK = Path(__file__).resolve().parent.parent / "scripts" / "pick-python"
BASE = Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def _base_is_shared() -> bool:
    maps = Path("/proc/self/maps")
    return not maps.exists() or "libpython" in maps.read_text()


def _wrapper(path: Path, script: str) -> Path:
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def _shared_looking(bin_dir: Path, name: str, tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    library = site / "libpython3.99-looks-shared.so"
    library.write_bytes(b"\0" * 4096)
    (site / "sitecustomize.py").write_text(
        "import mmap\n"
        f"_f = open({str(library)!r}, 'rb')\n"
        "_m = mmap.mmap(_f.fileno(), 0, access=mmap.ACCESS_READ)\n"
    )
    return _wrapper(bin_dir / name, f'PYTHONPATH={site} exec {BASE} "$@"')


def _pick(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(PICK)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(path), **env},
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


def test_a_build_with_libpython_in_its_executable_wins_over_a_shared_one_found_first(
    bin_dir: Path, tmp_path: Path
) -> None:
    if _base_is_shared():
        pytest.skip(f"{BASE} is itself a shared build: no candidate here is a static one")
    _shared_looking(bin_dir, "python3.13", tmp_path)  # looked at first
    static = _wrapper(bin_dir / "python3.11", f'exec {BASE} "$@"')
    picked = _pick(bin_dir)
    assert picked.returncode == 0, picked.stderr
    assert picked.stdout.strip() == str(static)


def test_loadgen_python_is_taken_outright_even_when_a_better_build_is_on_the_path(
    bin_dir: Path, tmp_path: Path
) -> None:
    _wrapper(bin_dir / "python3.11", f'exec {BASE} "$@"')
    chosen = _shared_looking(tmp_path, "my-python", tmp_path)
    picked = _pick(bin_dir, LOADGEN_PYTHON=str(chosen))
    assert picked.returncode == 0, picked.stderr
    assert picked.stdout.strip() == str(chosen)


def test_a_loadgen_python_that_cannot_make_a_venv_is_refused_in_one_line(
    bin_dir: Path, tmp_path: Path
) -> None:
    # Fails the check as an old Python, or one without venv, does: it exits non-zero.
    unfit = _wrapper(tmp_path / "python2.7", "exit 1")
    picked = _pick(bin_dir, LOADGEN_PYTHON=str(unfit))
    assert picked.returncode == 1
    assert picked.stdout == ""
    assert picked.stderr.strip().splitlines() == [
        f"scripts/setup: LOADGEN_PYTHON={unfit} is not a Python 3.11 or newer that can make a "
        "virtualenv"
    ]


def test_with_no_fit_python_on_the_path_it_says_what_is_needed(bin_dir: Path) -> None:
    _wrapper(bin_dir / "python3", "exit 1")
    picked = _pick(bin_dir)
    assert picked.returncode == 1
    assert picked.stderr.strip() == "scripts/setup: Python 3.11 or newer, with venv, is needed"


def test_its_rank_of_a_shared_build_is_below_a_static_one_of_the_same_version(
    bin_dir: Path, tmp_path: Path
) -> None:
    if _base_is_shared():
        pytest.skip(f"{BASE} is itself a shared build")
    shared = _shared_looking(bin_dir, "shared", tmp_path)
    ranks = [
        subprocess.run(
            ["/bin/bash", str(PICK), "--rank", str(python)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        for python in (shared, BASE)
    ]
    minor = sys.version_info[1]
    assert ranks == [str(minor), str(100 + minor)]
