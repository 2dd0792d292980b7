"""What an OpenSSL connection's memory BIOs have room for, read through ctypes:
the tests of what a held connection gives back (loadgen/transport/idle.py)."""

from __future__ import annotations

import ctypes

from loadgen import openssl


class _BufMem(ctypes.Structure):
    _fields_ = (  # openssl/buffer.h
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    )


def bio_capacities(pointer: int) -> list[int]:
    """What the read and write memory BIOs of the SSL at ``pointer`` have room
    for (BIO_get_mem_ptr's buffer)."""
    lib = openssl.load()
    assert lib is not None
    args = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    bio_ctrl = openssl.bind(lib.BIO_ctrl, ctypes.c_long, args)
    capacities = []
    for get in (lib.SSL_get_rbio, lib.SSL_get_wbio):
        bio = openssl.bind(get, ctypes.c_void_p, [ctypes.c_void_p])(pointer)
        buffer = ctypes.c_void_p()
        bio_ctrl(bio, 115, 0, ctypes.byref(buffer))  # BIO_C_GET_BUF_MEM_PTR
        capacities.append(_BufMem.from_address(buffer.value).max)
    return capacities
