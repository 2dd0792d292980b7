"""Writing files the way the fleet needs them: lean (os.open/os.write, no buffered
``open``), private keys 0600 from the moment they exist, and atomic where a reader
must never see half a file."""

from __future__ import annotations

import os
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def write(path: str | Path, data: bytes, *, private: bool = False) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, _CREATE, mode)
    try:
        if private:
            # O_TRUNC keeps the mode of a file that already existed.
            os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, data, private=private)
    os.replace(tmp, path)
