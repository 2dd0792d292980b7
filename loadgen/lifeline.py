"""Child processes never outlive the command that started them: run workers,
mint workers and the embedded emulator stop within moments of their parent's
end, however it ends (``kill -9`` included).

Two mechanisms, because neither is enough alone:

- Linux's ``PR_SET_PDEATHSIG``: the kernel signals the child when its parent
  dies. It fires when the parent *thread* that started the child exits, so a
  child must be started by a thread that outlives it (ours are started from the
  main thread, or by a function that joins them before it returns). And it is
  armed only once the child asks, so a parent that died before then is caught
  by checking ``getppid()`` after asking.
- A pipe from the parent that reaches end-of-file: portable, and what a child
  sees when PDEATHSIG could not help. A child that loses it says so in one line
  and stops, instead of failing on every read.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

# Signals on which a command stops gracefully (a run writes its partial report):
# Ctrl-C, a service manager's or `kill`'s SIGTERM, a closed terminal's SIGHUP.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Exit status of a child that stopped because its parent was gone.
PARENT_GONE = 75


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when ``parent`` (the pid
    that started it) dies; if it is already gone, act as if it just died."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        # A failure leaves the pipe check alone to notice: not worth failing for.
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    # The parent may have died before prctl: the kernel will never tell us then.
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def die_with_multiprocessing_parent(sig: int = signal.SIGKILL) -> None:
    """`die_with_parent` for a `multiprocessing` child (spawned or forked)."""
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        die_with_parent(parent.pid, sig)


def parent_lost(who: str) -> NoReturn:
    """The pipe to the parent is closed: say so once and stop at once (nobody is
    left to read what this process would report)."""
    with contextlib.suppress(OSError):
        os.write(2, f"{who}: lost its parent process (pipe closed); stopping\n".encode())
    os._exit(PARENT_GONE)


def exit_when_multiprocessing_parent_exits(who: str) -> None:
    """In a `multiprocessing` child that blocks in work of its own (a mint chunk):
    a thread that ends the process once the parent's sentinel pipe closes."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        parent_lost(who)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def ignore_stop_signals() -> None:
    """In a child whose parent handles `STOP_SIGNALS` for it: a signal sent to
    the whole process group (Ctrl-C, a terminal's hangup, a service manager
    stopping everything) must not end it before it has reported. One that came
    while it started, held back by `stop_signals_blocked`, is discarded."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """`STOP_SIGNALS` held back in this thread, and in the children it starts
    meanwhile (a child inherits the mask): a child then cannot be interrupted in
    its interpreter's start-up or imports, before `ignore_stop_signals`, which
    left it dead with a traceback. Held back, not lost: this process gets them
    on the way out."""
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def stop_signals_as_interrupt() -> None:
    """SIGTERM and SIGHUP stop the command the way Ctrl-C does."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)


class StopSignals:
    """Within it, `STOP_SIGNALS` are noted instead of acted on; `wait` sleeps
    until one comes."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict[int, Any] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if a signal comes: whether one came."""
        deadline = time.monotonic() + seconds
        # Short naps: a handler that woke a sleep could deadlock on its lock.
        while self.received is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
        return self.received is not None
