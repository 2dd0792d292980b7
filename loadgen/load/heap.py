"""Freed heap given back to the system while devices are held.

A connect's handshake takes about 60 KiB for a few milliseconds (three 16 KiB
record and message buffers among them), and what an established connection keeps
is about 6 KiB of OpenSSL's state and 2 of ours (``transport/idle.py``). The
short-lived blocks are freed between long-lived ones, and glibc's allocator keeps
those holes: a worker that had connected 3,000 devices held 43-46 KiB of RSS per
device against 24 KiB in use. ``malloc_trim(0)`` returns every whole free page
inside the heap (glibc 2.8 and later): 35-36 KiB, for 1-17 ms of CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util


class Heap:
    """This process's allocator, where it is glibc's; otherwise it does nothing."""

    __slots__ = ("_trim",)

    def __init__(self) -> None:
        self._trim = None
        name = ctypes.util.find_library("c")
        if name is None:
            return
        try:
            trim = ctypes.CDLL(name).malloc_trim
        except (OSError, AttributeError):
            return  # not glibc (musl has no malloc_trim)
        trim.restype = ctypes.c_int
        trim.argtypes = [ctypes.c_size_t]
        self._trim = trim

    def trim(self) -> None:
        if self._trim is not None:
            self._trim(0)
