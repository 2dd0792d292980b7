"""A file a user gives (scenario, profile, template, registration config, CA,
report) is read whole only up to a limit: a device, or a file past the limit, is
one line naming it (and the limit), exit 2, before anything is read into memory."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from loadgen.errors import UserError
from loadgen.files import CONFIG_LIMIT, REPORT_LIMIT, read_limited
from tests.conftest import assert_user_error, run_loadgen

ROLE = "arn:aws:iam::123456789012:role/x"


# /dev/null here, not /dev/zero: a command that read it whole would take the box's memory.
@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("run", "/dev/null"), "scenario"),
        (("report", "show", "/dev/null"), "report"),
        (("template", "check", "/dev/null"), "registration config"),
        (("template", "render", "/dev/null", "--role-arn", ROLE), "template"),
        (
            ("certs", "mint", "--ca", "ca", "--out", "f", "--count", "1", "--profile", "/dev/null"),
            "profile",
        ),
    ],
)
def test_a_device_given_as_a_file_is_refused_unread(args, what):
    assert_user_error(run_loadgen(*args), f"/dev/null: a device, not a {what} file")


def test_a_device_that_never_ends_is_refused_unread():
    with pytest.raises(UserError, match=r"^/dev/zero: a device, not a report file$"):
        read_limited("/dev/zero", REPORT_LIMIT, "report")


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no room on the disk."""
    with path.open("wb") as file:
        file.truncate(size)
    return path


@pytest.mark.parametrize(
    ("args", "name", "message"),
    [
        (("run",), "s.yaml", "larger than 4 MiB, the most a scenario may be"),
        (
            ("template", "check"),
            "t.json",
            "larger than 4 MiB, the most a registration config may be",
        ),
        (
            ("template", "render", "--role-arn", ROLE),
            "t.yaml",
            "larger than 4 MiB, the most a template may be",
        ),
    ],
)
def test_a_configuration_past_its_limit_is_refused_unread(tmp_path, args, name, message):
    path = _sparse(tmp_path / name, CONFIG_LIMIT + 1)
    assert_user_error(run_loadgen(*args[:2], path, *args[2:]), f"{path}: {message}")


def test_a_report_past_its_limit_is_refused_unread(tmp_path):
    path = _sparse(tmp_path / "r.json", REPORT_LIMIT + 1)
    result = run_loadgen("report", "show", path)
    assert_user_error(result, f"{path}: larger than 512 MiB, the most a report may be")


def test_a_file_at_its_limit_is_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"#" * CONFIG_LIMIT)
    assert len(read_limited(path, CONFIG_LIMIT, "scenario")) == CONFIG_LIMIT


def test_a_pipe_that_never_ends_is_read_only_up_to_the_limit(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def endless() -> None:
        with fifo.open("wb") as pipe:
            try:
                while True:
                    pipe.write(b"x" * 65536)
            except BrokenPipeError:
                pass  # the reader gave up: as it should

    writer = threading.Thread(target=endless)
    writer.start()
    with pytest.raises(UserError, match=r"fifo: larger than 4 MiB, the most a scenario may be"):
        read_limited(fifo, CONFIG_LIMIT, "scenario")
    writer.join(timeout=10)
    assert not writer.is_alive()
