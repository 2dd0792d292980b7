"""What an established client connection no longer needs, given back at once.

Two things outlived their use in every held connection (heaptrack of 2,000
devices held against mosquitto, docs/benchmarks.md):

- A 16 KiB record write buffer. Python's contexts set ``SSL_MODE_RELEASE_BUFFERS``,
  so OpenSSL frees its buffers when idle, but only at the end of a write or of an
  application-data read. The TLS 1.3 session tickets a server sends after the
  handshake run the handshake state machine again, which sets up a write buffer
  that nothing frees until the device's next write: its first PINGREQ, a
  keepalive later. ``release`` calls ``SSL_free_buffers`` once everything
  received has been read (it frees nothing that still holds data).
- The device's own certificate and key, parsed (about 5 KiB), which only the
  handshake needs: ``handshake_done`` drops them from the connection
  (``SSL_certs_clear``). Nothing asks for them later: Python's client contexts
  offer post-handshake authentication only when told to, and ``ClientTls``
  does not.
- The memory BIOs' buffers (about 3.2 KiB of heap), each grown to the largest
  flight that passed through it (the server's certificate one way, the
  device's the other) and never shrunk: OpenSSL keeps a memory BIO's capacity.
  ``settle`` gives each an empty buffer when a connection goes idle for long
  (a hold); a PINGREQ and its answer then grow them to a few dozen bytes.

The tickets themselves cost little: a client context keeps no session cache
(Python sets ``SSL_SESS_CACHE_SERVER`` only), so a connection keeps its latest
session and the ticket in it, a few hundred bytes; a TLS 1.3 client cannot
refuse them (``OP_NO_TICKET`` does not stop a server sending them).

Reached through ctypes on the ``SSL *`` inside Python's ``SSLObject``, checked
once against the context it came from; where that cannot be done safely nothing
is freed early and nothing else changes.
"""

from __future__ import annotations

import ctypes
import ssl

from loadgen import openssl
from loadgen.transport.chain import ctx_pointer, openssl_calls

# CPython's PySSLSocket: PyObject_HEAD (two pointers), the socket weakref, then SSL *.
_SSL_OFFSET = 3 * ctypes.sizeof(ctypes.c_void_p)


class _Calls:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.free_buffers = lib.SSL_free_buffers
        self.free_buffers.restype = ctypes.c_int
        self.free_buffers.argtypes = [ctypes.c_void_p]
        self.certs_clear = lib.SSL_certs_clear
        self.certs_clear.restype = None
        self.certs_clear.argtypes = [ctypes.c_void_p]
        self.get_ctx = lib.SSL_get_SSL_CTX
        self.get_ctx.restype = ctypes.c_void_p
        self.get_ctx.argtypes = [ctypes.c_void_p]
        self.get_rbio = openssl.bind(lib.SSL_get_rbio, ctypes.c_void_p, [ctypes.c_void_p])
        self.get_wbio = openssl.bind(lib.SSL_get_wbio, ctypes.c_void_p, [ctypes.c_void_p])
        self.bio_ctrl = openssl.bind(
            lib.BIO_ctrl,
            ctypes.c_long,
            [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p],
        )
        self.buf_mem_new = openssl.bind(lib.BUF_MEM_new, ctypes.c_void_p, [])


# BIO_ctrl's commands (openssl/bio.h): what BIO_ctrl_pending and BIO_set_mem_buf
# expand to; a buffer set with BIO_CLOSE is the BIO's to free.
_BIO_CTRL_PENDING = 10
_BIO_C_SET_BUF_MEM = 114
_BIO_CLOSE = 1


def _ssl_pointer(sslobj: ssl.SSLObject) -> int | None:
    inner = sslobj._sslobj  # type: ignore[attr-defined]
    return ctypes.c_void_p.from_address(id(inner) + _SSL_OFFSET).value


class IdleTls:
    """Frees what the connections of one context no longer need."""

    __slots__ = ("_calls",)

    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    @classmethod
    def reach(cls, context: ssl.SSLContext) -> IdleTls | None:
        """For the SSLObjects ``context`` makes (a client's or a server's; the
        emulator's sessions ``settle`` too); None where OpenSSL's SSL cannot be
        reached safely."""
        layout = openssl_calls()
        lib = openssl.load()
        if layout is None or lib is None:
            return None
        try:
            calls = _Calls(lib)
        except AttributeError:
            return None
        ctx = ctx_pointer(layout, context)
        if ctx is None:
            return None
        if context.protocol is ssl.PROTOCOL_TLS_SERVER:
            probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
        else:
            probe = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
        pointer = _ssl_pointer(probe)
        # The SSL must answer with the context it was made from: then the layout holds.
        if not pointer or calls.get_ctx(pointer) != ctx:
            return None
        return cls(calls)

    def pointer(self, sslobj: ssl.SSLObject) -> int:
        """The ``SSL *`` of ``sslobj`` (0 where there is none), read once when its
        session is made: reading it in each call below cost about 15 bytecodes
        and a ctypes object, two or three times a connect."""
        return _ssl_pointer(sslobj) or 0

    def handshake_done(self, pointer: int) -> None:
        """Drop the certificate and key the handshake of ``pointer`` presented."""
        if pointer:
            self._calls.certs_clear(pointer)

    def settle(self, pointer: int) -> None:
        """Give ``pointer``'s memory BIOs empty buffers in place of those their
        largest flights grew (the old ones freed); a BIO still holding bytes
        keeps its own. Call when the connection goes idle for long."""
        if not pointer:
            return
        calls = self._calls
        for bio in (calls.get_rbio(pointer), calls.get_wbio(pointer)):
            if bio and calls.bio_ctrl(bio, _BIO_CTRL_PENDING, 0, None) == 0:
                fresh = calls.buf_mem_new()
                if fresh:
                    calls.bio_ctrl(bio, _BIO_C_SET_BUF_MEM, _BIO_CLOSE, fresh)

    def release(self, pointer: int) -> None:
        """Free the record buffers of ``pointer``; call when all that was received
        has been read."""
        if pointer:
            self._calls.free_buffers(pointer)
