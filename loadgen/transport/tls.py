"""TLS for devices, prepared ahead of the schedule, never inside the timed
connect: loading a certificate chain and key through ``load_cert_chain`` costs
about 0.7 ms, most of a handshake's own CPU (devices of a chain already seen take
a shorter way, about 0.15 ms: ``chain.py``).

Python's ``ssl`` keeps the certificate in the context, and a context per device
costs 30 KiB. But an ``SSLObject`` copies the context's certificate and key when
it is made, so ``ClientTls`` keeps one context per worker, loads each device's
chain into it and makes that device's ``SSLObject`` at once: half the CPU of a
context of its own. The CA certificate every device sends is parsed once and
shared (``chain.py``): 18 KiB per prepared device, all in.

OpenSSL keeps a context's certificate and key in one slot per key algorithm,
and a client offers the one the server's signature algorithms prefer: loading
an RSA device after an EC one left the EC device's certificate in its slot, and
the RSA device presented it. So the worker keeps a context per key algorithm
(``key_algorithm``), each holding only devices of that algorithm."""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from loadgen import files
from loadgen.certs.der import read_tlv
from loadgen.legacy_ec import LegacyEc
from loadgen.transport.chain import SharedChains, pem_body
from loadgen.transport.errors import DeviceFilesError
from loadgen.transport.idle import IdleTls

# AWS IoT on port 443 picks MQTT by this ALPN protocol name.
ALPN_AWS_MQTT = "x-amzn-mqtt-ca"


def strict_eof(context: ssl.SSLContext) -> None:
    """A connection dropped without TLS's close_notify reads as dropped
    (``SSLEOFError``), not as a clean close: a TLS 1.3 server that rejects the
    client's certificate often drops it so, and the report tells the two apart
    (``tls_rejected``, ``closed``). Python 3.10.0-3.10.10 and 3.11.0-3.11.2
    (Debian 12's ``python3``) set ``OP_IGNORE_UNEXPECTED_EOF`` on every context;
    later releases do not."""
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF


def device_context(
    cert_chain: str | Path | None,
    key: str | Path | None,
    *,
    ca_file: Path | None,
    alpn: list[str] | None = None,
    verify_server: bool = True,
) -> ssl.SSLContext:
    """A client context presenting ``cert_chain`` (device certificate then CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    strict_eof(context)
    if verify_server:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_chain is not None:
        context.load_cert_chain(str(cert_chain), str(key) if key is not None else None)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def trust_problem(ca_file: Path) -> Exception | None:
    """Why devices could not trust the certificates in ``ca_file`` (it holds no
    PEM certificate, or cannot be read), as their contexts load it; None when
    they can."""
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        return exc
    return None


@dataclass(slots=True)
class TlsSession:
    """One connection attempt's TLS state, not yet connected."""

    sslobj: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    idle: IdleTls | None = None  # frees what the connection no longer needs
    pointer: int = 0  # sslobj's SSL *, for ``idle`` (0: none)

    @classmethod
    def of(
        cls,
        context: ssl.SSLContext,
        server_name: str | bytes | None,
        idle: IdleTls | None = None,
    ) -> TlsSession:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
        return cls(sslobj, incoming, outgoing, idle, idle.pointer(sslobj) if idle else 0)


# A PEM's label and 36 base64 characters (27 bytes of DER): past the algorithm's
# OID in every PKCS#8 key (it ends by byte 20), so keys of one head are of one
# algorithm. Heads kept: a fleet has a kind or two of key.
_PKCS8 = b"-----BEGIN PRIVATE KEY-----\n"
_KEY_HEAD = len(_PKCS8) + 36
_MAX_KINDS = 64


def key_algorithm(key_pem: bytes) -> bytes:
    """Which certificate slot of a context a private key fills: its algorithm's
    OID for PKCS#8 (every EC curve shares one), else its PEM label (``EC PRIVATE
    KEY``, ``RSA PRIVATE KEY``). Two labels of one algorithm only cost a
    context more; two algorithms never share one."""
    der = pem_body(key_pem, b"PRIVATE KEY")
    try:
        # PrivateKeyInfo: SEQUENCE { version, AlgorithmIdentifier { OID, ... }, ... }
        _, start, _ = read_tlv(der)
        _, _, version_end = read_tlv(der, start)
        _, algorithm_start, _ = read_tlv(der, version_end)
        tag, oid_start, oid_end = read_tlv(der, algorithm_start)
        if tag == 0x06:
            return der[oid_start:oid_end]
    except IndexError:
        pass
    return key_pem.partition(b"-----BEGIN ")[2].partition(b"-----")[0]


def _read(path: str | Path, what: str) -> bytes:
    try:
        return files.read(path)
    except OSError as exc:
        raise DeviceFilesError(_unreadable(what, exc)) from exc


def _load(context: ssl.SSLContext, cert_chain: str | Path, key: str | Path) -> None:
    """``load_cert_chain``, its failure said as a device's files' (OpenSSL's
    reason without its source line: one reason for every device alike)."""
    try:
        context.load_cert_chain(cert_chain, key)
    except ssl.SSLError as exc:
        reason = _SOURCE_LINE.sub("", str(exc))
        raise DeviceFilesError(f"its certificate or key would not load: {reason}") from exc
    except OSError as exc:
        # load_cert_chain names no file in its error: the key is read first.
        what = "certificate" if os.access(key, os.R_OK) else "key"
        raise DeviceFilesError(_unreadable(what, exc)) from exc


def _unreadable(what: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"its {what} file is missing"
    return f"its {what} file would not read: {exc.strerror or type(exc).__name__}"


_SOURCE_LINE = re.compile(r" \(_ssl\.c:\d+\)$")


@dataclass(frozen=True, slots=True)
class _Slot:
    """A context for the devices of one key algorithm, with its shared chains."""

    context: ssl.SSLContext
    chains: SharedChains


class ClientTls:
    """One worker's TLS: a context per key algorithm, a session per device attempt."""

    def __init__(
        self, *, ca_file: Path | None, alpn: list[str] | None = None, verify_server: bool = True
    ) -> None:
        self.ca_file = ca_file
        self.alpn = alpn
        self.verify_server = verify_server
        # Held as long as this worker's TLS: on OpenSSL 3.0, the server's
        # certificate in every handshake and each device's own are decoded by the
        # old EC decoder, and keys stay legacy keys (loadgen.legacy_ec).
        self.legacy_ec = LegacyEc.claim()
        self._slots: dict[bytes, _Slot] = {}
        self._algorithms: dict[bytes, bytes] = {}  # a PEM's head -> its algorithm
        # The fleet's first algorithm's: the one every device of a usual fleet uses.
        self._first = self._new_slot()
        self.context, self.chains = self._first.context, self._first.chains
        # Server names IDNA-encoded once: ``wrap_bio`` encodes a str every time.
        self._names: dict[str, bytes] = {}
        self.idle = IdleTls.reach(self.context)

    def session(
        self, cert_chain: str | Path, key: str | Path, server_name: str | None
    ) -> TlsSession:
        return self.sessions(cert_chain, key, server_name, 1)[0]

    def sessions(
        self, cert_chain: str | Path, key: str | Path, server_name: str | None, count: int
    ) -> list[TlsSession]:
        """``count`` sessions of one device from one load of its chain and key
        (an SSLObject copies them when it is made: the load is most of the cost)."""
        name = self._name(server_name)
        key_pem = _read(key, "key")
        slot = self._slot(self._algorithm(key_pem))
        context, chains = slot.context, slot.chains
        # The event loop is one thread: nothing runs between loading the chain and
        # making the SSLObjects that copy it.
        if chains.active:
            chain_pem = _read(cert_chain, "certificate")
            if chains.load(chain_pem, key_pem):
                return [TlsSession.of(context, name, self.idle) for _ in range(count)]
        else:
            chain_pem = b""
        _load(context, cert_chain, key)
        chains.share(chain_pem)
        return [TlsSession.of(context, name, self.idle) for _ in range(count)]

    @property
    def fast_loads(self) -> int:
        """Devices loaded the short way (``SharedChains.load``), in every context."""
        return sum(slot.chains.fast_loads for slot in self._slots.values())

    def _algorithm(self, key_pem: bytes) -> bytes:
        """``key_algorithm``, read once per kind of key: a PEM's first bytes (its
        label and its DER past the algorithm's OID) are alike for every key of a
        kind, and reading the DER cost about 5 µs a device."""
        if not key_pem.startswith(_PKCS8):
            return key_algorithm(key_pem)  # another label: read from it alone, cheaply
        head = key_pem[:_KEY_HEAD]
        algorithm = self._algorithms.get(head)
        if algorithm is None:
            algorithm = key_algorithm(key_pem)
            if len(self._algorithms) < _MAX_KINDS:
                self._algorithms[head] = algorithm
        return algorithm

    def _slot(self, algorithm: bytes) -> _Slot:
        slot = self._slots.get(algorithm)
        if slot is None:
            if not self._slots:
                return self._slots.setdefault(algorithm, self._first)
            slot = self._slots[algorithm] = self._new_slot()
        return slot

    def _new_slot(self) -> _Slot:
        context = device_context(
            None, None, ca_file=self.ca_file, alpn=self.alpn, verify_server=self.verify_server
        )
        return _Slot(context, SharedChains(context, legacy_ec=self.legacy_ec is not None))

    def _name(self, server_name: str | None) -> bytes | None:
        if server_name is None:
            return None
        name = self._names.get(server_name)
        if name is None:
            name = self._names[server_name] = server_name.encode("idna")
        return name

    def own_context(self, cert_chain: str | Path, key: str | Path) -> ssl.SSLContext:
        """A context of the device's own, with this worker's settings (for drivers
        that take a context, such as aiomqtt)."""
        context = device_context(
            None, None, ca_file=self.ca_file, alpn=self.alpn, verify_server=self.verify_server
        )
        _load(context, cert_chain, key)
        return context


class DeviceTls:
    """A device's TLS: its first session made ahead of its start, a fresh one for
    each later attempt (a retry after JITP's rejection, say). A device that
    expects JITP to reject its first connection gets its second session made
    with the first, from the same load of its chain and key (about 0.15 ms saved
    per device, for about 17 KiB while it waits)."""

    __slots__ = ("_ready", "cert_chain", "key", "server_name", "shared")

    def __init__(
        self,
        shared: ClientTls,
        cert_chain: str | Path,
        key: str | Path,
        server_name: str | None,
        *,
        ahead: bool = True,
        retry_ahead: bool = False,
    ) -> None:
        self.shared = shared
        self.cert_chain = cert_chain
        self.key = key
        self.server_name = server_name
        count = (2 if retry_ahead else 1) if ahead else 0
        # Made ahead, in the order they are taken.
        self._ready = shared.sessions(cert_chain, key, server_name, count) if count else []

    def session(self) -> TlsSession:
        if self._ready:
            return self._ready.pop(0)
        return self.shared.session(self.cert_chain, self.key, self.server_name)

    def drop_spares(self) -> None:
        """The sessions made ahead are not needed (the device connected)."""
        self._ready.clear()

    def context(self) -> ssl.SSLContext:
        return self.shared.own_context(self.cert_chain, self.key)
