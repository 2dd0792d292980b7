"""Atomic writes: a reader sees the old file or the new one, never half of one,
and a failed write leaves nothing behind."""

from __future__ import annotations

import multiprocessing
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from loadgen.files import write_atomic

WRITES_PER_PROCESS = 100


def _write_many(path: str, writer: int) -> None:
    for _ in range(WRITES_PER_PROCESS):
        write_atomic(Path(path), f"writer {writer}\n".encode() * 1000)


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    target.mkdir()
    (target / "inside").write_text("a folder in the way")
    with pytest.raises(OSError):
        write_atomic(target, b"{}")
    assert os.listdir(tmp_path) == ["report.json"]


def test_writers_in_several_processes_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        for done in [pool.submit(_write_many, str(target), w) for w in range(4)]:
            done.result(timeout=120)
    lines = set(target.read_text().splitlines())
    assert len(lines) == 1 and lines.pop().startswith("writer ")
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_private_file_is_written_0600(tmp_path):
    target = tmp_path / "ca.key"
    write_atomic(target, b"secret", private=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
