"""Open files: every connection holds one, and a process may hold only so many
(its hard limit, which this sandbox cannot raise), so load scales by processes,
never by one process's limit. The generator's workers and the emulator's
serving processes are planned by the same sum."""

from __future__ import annotations

import contextlib
import resource

# Descriptors a process needs besides one per connection (pipes, files, the
# fleet's chain and key files while a context is built, the listening sockets).
MARGIN = 64


def needed(connections: int, processes: int) -> int:
    """Open files each of ``processes`` needs for its share of ``connections``."""
    return -(-connections // processes) + MARGIN


def processes_for(connections: int, at_least: int) -> int:
    """``at_least``, or more when one process's share of ``connections`` would
    not fit in the open files a process may hold."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return at_least
    return max(at_least, -(-connections // max(1, hard - MARGIN)))


def raise_to_hard_limit() -> None:
    """A process that serves sessions holds a socket each: as many open files
    as the hard limit allows (a fleet beyond it needs more processes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
