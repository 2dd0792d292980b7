"""Freed heap given back to the system while connections are held, on either
side (the generator's workers, the emulator's serving processes).

A connect's handshake takes about 60 KiB for a few milliseconds (three 16 KiB
record and message buffers among them), and what an established connection keeps
is about 6 KiB of OpenSSL's state and 2 of ours (``transport/idle.py``). The
short-lived blocks are freed between long-lived ones, and glibc's allocator keeps
those holes: a worker that had connected 3,000 devices held 43-46 KiB of RSS per
device against 24 KiB in use. ``malloc_trim(0)`` returns every whole free page
inside the heap (glibc 2.8 and later): 35-36 KiB, for 1-17 ms of CPU.

The emulator's TLS connections are uvloop's, and each mallocs a 256 KiB read
buffer of which a few KiB are ever written. glibc raises its mmap threshold past
the first such block freed, so later ones come from the heap, where a buffer
placed over pages an earlier connection touched keeps them all resident.
``mmap_above`` pins the threshold: each buffer is its own mapping, resident only
where written, and unmapped when its connection closes. (uvloop would also read
each TLS record into a fresh 256 KiB bytes object, a mapping of its own under the
pinned threshold; the emulator's sessions are buffered protocols, so it reads
into one buffer instead: ``loadgen/emulator/server.py``.)
"""

from __future__ import annotations

import ctypes
import ctypes.util

# malloc.h
_M_MMAP_THRESHOLD = -3


class Heap:
    """This process's allocator, where it is glibc's; otherwise it does nothing."""

    __slots__ = ("_mallopt", "_trim")

    def __init__(self) -> None:
        self._trim = None
        self._mallopt = None
        name = ctypes.util.find_library("c")
        if name is None:
            return
        try:
            libc = ctypes.CDLL(name)
            trim, mallopt = libc.malloc_trim, libc.mallopt
        except (OSError, AttributeError):
            return  # not glibc (musl has no malloc_trim)
        trim.restype = ctypes.c_int
        trim.argtypes = [ctypes.c_size_t]
        mallopt.restype = ctypes.c_int
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        self._trim, self._mallopt = trim, mallopt

    def trim(self) -> None:
        if self._trim is not None:
            self._trim(0)

    def mmap_above(self, size: int) -> None:
        """Blocks of ``size`` bytes or more get a mapping of their own, always."""
        if self._mallopt is not None:
            self._mallopt(_M_MMAP_THRESHOLD, size)
