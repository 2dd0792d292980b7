"""Atomic writes: a reader sees the old file or the new one, never half of one,
and a failed write leaves nothing behind."""

from __future__ import annotations

import multiprocessing
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from loadgen.errors import OutputError
from loadgen.files import FolderWriter, check_writable, write_atomic, write_output
from loadgen.report.build import write_outputs
from loadgen.report.store import destination

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


# Result files: where the user points them


def test_a_result_file_through_a_link_writes_what_it_names_and_keeps_the_link(tmp_path):
    (tmp_path / "reports").mkdir()
    link = tmp_path / "latest.json"
    link.symlink_to(tmp_path / "reports" / "r.json")
    check_writable(link, "--report")
    write_output(link, b"{}")
    assert link.is_symlink()
    assert (tmp_path / "reports" / "r.json").read_bytes() == b"{}"


def test_a_result_file_into_a_pipe_is_written_into_it_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, there before the write
    try:
        check_writable(fifo, "--report")
        write_output(fifo, b"report")
        assert os.read(reader, 100) == b"report"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="no /dev/full here")
def test_a_report_that_cannot_be_written_does_not_cost_the_html(tmp_path):
    from tests.test_report_merge import _report
    from tests.test_stats import _results

    full = tmp_path / "full.json"
    full.symlink_to("/dev/full")  # a disk with no room left
    said: list[str] = []
    with pytest.raises(OutputError, match=r"full\.json: cannot write: No space left"):
        write_outputs(
            _report(_results(20, 1), lambda i: True),
            destination(str(full), "--report"),
            destination(str(tmp_path / "r.html"), "--html"),
            said.append,
        )
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert said == [f"HTML report written to {tmp_path / 'r.html'}"]


def test_a_result_file_into_a_pipe_nobody_reads_fails_at_once(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="a pipe nobody reads"):
        write_output(fifo, b"report")


def test_a_folder_writers_new_private_file_is_written_whole_or_fails(disk):
    disk.fill()
    # One page free: the write of a larger file is short, then the disk is full.
    os.truncate(disk.filler, disk.filler.stat().st_size - 4096)
    with FolderWriter(disk.path) as files, pytest.raises(OSError, match="No space left"):
        files.write("device.key", b"k" * 16384, private=True)
