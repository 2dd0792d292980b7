"""The allocator settings both sides use for held connections (loadgen/heap.py)."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: mallopt changes the whole process, and pytest's
# heap has its own history. Prints where a 256 KiB block landed the second
# time, once the first was freed: "heap" or "mapping".
_PROBE = """
import ctypes, ctypes.util, sys
from loadgen.heap import Heap
if sys.argv[1] == "pinned":
    Heap().mmap_above(128 * 1024)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(256 * 1024))  # glibc raises its dynamic threshold here
block = libc.malloc(256 * 1024)
for line in open("/proc/self/maps"):
    span, *rest = line.split()
    low, high = (int(x, 16) for x in span.split("-"))
    if low <= block < high:
        print("heap" if line.rstrip().endswith("[heap]") else "mapping")
        break
"""


def _second_block(mode: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_large_block_comes_from_the_heap_once_glibc_raised_its_threshold() -> None:
    # Why the emulator pins it: uvloop mallocs 256 KiB per TLS connection.
    assert _second_block("default") == "heap"


def test_with_the_threshold_pinned_every_large_block_is_a_mapping_of_its_own() -> None:
    assert _second_block("pinned") == "mapping"
