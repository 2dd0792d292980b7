"""Writing files the way the fleet needs them: lean (os.open/os.write, no buffered
``open``), private keys 0600 from the moment they exist, and atomic where a reader
must never see half a file; and reading a device's files as lean."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from loadgen.errors import ConfigError, OutputError, UserError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_READ_SIZE = 65536
MiB = 1024 * 1024
# The most read of a file a user gives (docs/scenarios.md#how-files-are-read):
# scenarios, profiles, templates and registration configs are a few KiB (AWS
# takes a template of 10,240 characters); a report grows about 1.5 MB an hour
# of run, and a merge of hundreds of shards' reports is read one at a time.
# Past these, a file is a mistake (/dev/zero, a log), not a file to read whole.
CONFIG_LIMIT = 4 * MiB
REPORT_LIMIT = 512 * MiB
# One read of a file that never ends (a pipe) at a time, not the whole limit.
_CHUNK = 4 * MiB


def write(
    path: str | Path, data: bytes, *, private: bool = False, dir_fd: int | None = None
) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, _CREATE, mode, dir_fd=dir_fd)
    try:
        if private:
            # O_TRUNC keeps the mode of a file that already existed.
            os.fchmod(fd, mode)
        write_all(fd, data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (one call may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read(path: str | Path) -> bytes:
    """A whole small file (a device's certificate or key) by ``os.open`` and
    ``os.read``: about 3 µs, where ``Path.read_bytes`` (a buffered file object)
    took 12-20 µs, twice for every device a run prepares."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) < _READ_SIZE:
            return data
        chunks = [data]
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_limited(path: str | Path, limit: int, what: str) -> bytes:
    """A user's file (a scenario, a report, ...) whole, refused with a one-line
    ``UserError`` naming it and ``limit`` when it holds more than ``limit`` bytes
    or is a device (``/dev/zero`` never ends; a terminal waits for ever). A pipe
    is read up to the limit. Other failures are the ``OSError`` of the call,
    for the caller to word as it words a missing file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd)
        if stat.S_ISCHR(mode.st_mode) or stat.S_ISBLK(mode.st_mode):
            raise UserError(f"{path}: a device, not a {what} file")
        # A regular file's size is known: one too large is refused unread.
        if mode.st_size <= limit:
            data = bytearray()
            while chunk := os.read(fd, min(_CHUNK, limit + 1 - len(data))):
                data += chunk
                if len(data) > limit:
                    break
            else:
                return bytes(data)
    finally:
        os.close(fd)
    raise too_large(path, limit, what)


def too_large(name: object, limit: int, what: str) -> UserError:
    """What is said of a file or object past ``read_limited``'s ``limit``."""
    return UserError(f"{name}: larger than {limit // MiB} MiB, the most a {what} may be")


def read_text(path: Path, *, what: str) -> str:
    """A configuration file's UTF-8 text (a scenario, a profile, a template, a
    registration config), up to ``CONFIG_LIMIT``; anything else is a one-line
    ``ConfigError`` naming the file."""
    try:
        data = read_limited(path, CONFIG_LIMIT, what)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UserError as exc:
        # Too large: a configuration's problem, which "fleet.profile: " prefixes.
        raise ConfigError(str(exc)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}): "
            f"a {what} is written in UTF-8"
        ) from None


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Readers see the old file or the new one, never half of one. The temporary
    name is this process's own (two writers never share one), and it is removed
    when the write fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, _CREATE_NEW, 0o600 if private else 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_output(path: Path, data: bytes) -> None:
    """A result file for the user (report, HTML, JUnit, summary), written
    atomically; a write that fails (a full disk, say) is one line naming it.
    Through a symbolic link, the file it names is written and the link stays; a
    device or a pipe (``/dev/stdout``, ``/dev/null``) is written into, never
    replaced by a file."""
    target = _followed(path)
    try:
        if target.exists() and not target.is_file():
            # Not blocking: a pipe nobody reads would hold the command for ever.
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    raise OutputError(f"{path}: cannot write: a pipe nobody reads") from None
                raise
            os.set_blocking(fd, True)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        else:
            write_atomic(target, data)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _followed(path: Path) -> Path:
    """The file ``path`` names: through a symbolic link, where it points (the
    link itself is left as it is); otherwise ``path``, as the user spelled it.
    A link that opens what no path names (``/dev/stdout`` on a pipe: its
    ``/proc/self/fd/1`` points at ``pipe:[N]``) is kept as it is."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    return path if not target.exists() and path.exists() else target


def each_output(writes: Iterable[Callable[[], object]]) -> None:
    """Call each of ``writes`` (result files) whatever became of those before: a
    full disk for the report must not cost the HTML written elsewhere. Their
    failures are then one ``OutputError`` naming each."""
    failed = []
    for write in writes:
        try:
            write()
        except OutputError as exc:
            failed.append(str(exc))
    if failed:
        raise OutputError("; ".join(failed))


def check_writable(path: Path, option: str) -> None:
    """Refuse (``UserError`` naming ``option``) a path a file cannot be written to:
    a folder, a missing folder, a file where a folder should be, a folder this
    process may not write in. The folder is tried with a file of this process's
    own, removed at once: permission bits do not tell everything (root, read-only
    mounts). A link is judged by the file it names; a device or a pipe by
    whether it may be written."""
    target = _followed(path)
    if target.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    if target.exists() and not target.is_file():
        if not os.access(target, os.W_OK):
            raise UserError(f"{option} {path}: cannot write to it")
        return
    folder = target.parent
    if not folder.exists():
        raise UserError(f"{option} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is not a folder")
    probe = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.probe"
    try:
        os.close(os.open(probe, _CREATE_NEW, 0o600))
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {folder} ({exc.strerror})") from None
    probe.unlink(missing_ok=True)


class FolderWriter:
    """Many small files under one folder, for the cert factory's hot loop.

    Names are opened relative to the folder's descriptor, so the kernel walks a
    component or two instead of the whole path; and a private file created new
    (O_EXCL) needs no ``fchmod`` when the umask spares the owner's bits. Together
    about 3 µs less per device on tmpfs (docs/benchmarks.md)."""

    def __init__(self, folder: str | Path) -> None:
        self._fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._exact = _umask_spares(0o600)

    def __enter__(self) -> FolderWriter:
        return self

    def __exit__(self, *_: object) -> None:
        os.close(self._fd)

    def write(self, name: str, data: bytes, *, private: bool = False) -> None:
        if private and self._exact:
            try:
                fd = os.open(name, _CREATE_NEW, 0o600, dir_fd=self._fd)
            except FileExistsError:
                pass  # left by a killed run: overwrite it the careful way
            else:
                try:
                    write_all(fd, data)
                finally:
                    os.close(fd)
                return
        write(name, data, private=private, dir_fd=self._fd)


def _umask_spares(mode: int) -> bool:
    """Whether new files keep every bit of ``mode``. Linux shows the umask in /proc
    without it being changed; where it cannot be read, assume it may not."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & mode == 0
    except (OSError, ValueError, IndexError):
        pass
    return False
