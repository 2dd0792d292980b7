"""The processes a test started, found through /proc: for checking that none
is left behind, and for the suite's own safety net (conftest.py)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# How long children may take to notice their parent is gone: "moments", with
# room for a loaded machine.
GONE_WITHIN = 10.0
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


# What the processes that carry the load need none of: the scenario's schema
# (pydantic, about 23 MB in each), the CLI's (click, rich), YAML, and
# cryptography (16 MB: they take keys and certificates through OpenSSL).
NOT_UNDER_LOAD = ("pydantic", "loadgen.scenario.schema", "click", "rich", "yaml", "cryptography")


def heavy_modules_after(script: str, names: tuple[str, ...] = NOT_UNDER_LOAD) -> list[str]:
    """Which of ``names`` a fresh interpreter has loaded after ``script``: the
    imports (and unpickling) a worker or a serving process starts with."""
    loaded = f"sorted(m for m in {names!r} if m in sys.modules)"
    check = f"{script}\nimport json, sys\nprint(json.dumps({loaded}))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    found: list[str] = json.loads(out.stdout)
    return found


def _raw_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, None once it is reaped."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a live process, None once it is gone."""
    stat = _raw_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # exited, waiting to be reaped: gone
        return None
    return stat


def descendants(root: int) -> dict[int, int]:
    """Every live process below ``root``: pid to start time (a reused pid is
    another process)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _raw_stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
            if stat[0] not in ("Z", "X"):
                starts[int(entry.name)] = stat[2]
    # Walked through the exited too: a child read before its parent exited
    # still names that parent (now a zombie), not yet the subreaper it went to.
    found: dict[int, int] = {}
    seen = {root}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            if pid in starts:
                found[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def still_running(processes: dict[int, int]) -> dict[int, str]:
    return {
        pid: cmdline(pid)
        for pid, start in processes.items()
        if (stat := _stat(pid)) is not None and stat[2] == start
    }


def assert_all_gone(processes: dict[int, int], within: float = GONE_WITHIN) -> None:
    deadline = time.monotonic() + within
    while (left := still_running(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running {within:.0f} s later: {left}"


def _is_child(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == os.getpid()


def become_subreaper() -> bool:
    """Orphans of this process's descendants become its children instead of
    init's, so they can still be found (and killed) from here."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def kill_descendants(rounds: int = 50) -> dict[int, str]:
    """SIGKILL every live descendant of this process but its own
    `multiprocessing` resource tracker (which ends with it); what they were.
    Until two looks at /proc in a row, a moment apart, find none: a process
    forking as /proc is read can have its child missed (one seen exiting had
    a background child that /proc listed only a moment later)."""
    killed: dict[int, str] = {}
    quiet = 0
    for _ in range(rounds):
        left = {
            pid: command
            for pid in descendants(os.getpid())
            if not ((command := cmdline(pid)) and "resource_tracker" in command and _is_child(pid))
        }
        quiet = 0 if left else quiet + 1
        if quiet == 2:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= left
        time.sleep(0.05)
    return killed
