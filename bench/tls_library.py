"""What a newer OpenSSL would save a device: the per-device TLS work done by
Python's ``ssl`` (the system's OpenSSL, 3.0 here) next to the same work done by
pyOpenSSL, which runs on the OpenSSL that ``cryptography`` bundles (4.0 here).

    .venv/bin/pip install pyOpenSSL   # or: pip install -e '.[bench]'
    .venv/bin/python -m bench.tls_library [--rounds 400] [--repeats 3]

Both ends in one process over memory BIOs, mutual TLS 1.3, EC P-256, no session
tickets, so that the figures are the libraries' alone (no sockets, no loop):

- a handshake pair: the client's and the server's side of one mutual-TLS handshake;
- preparing a device: its certificate and key loaded for one connection, the way
  the generator does it (one shared context; ``loadgen.transport.tls``), and the
  way pyOpenSSL can (``Connection.use_certificate``/``use_privatekey``).

CPU per operation, the least of ``--repeats`` runs (the noise of a shared machine
only adds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ssl
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loadgen.transport.tls import ClientTls

try:
    from OpenSSL import SSL, crypto
except ImportError:  # pragma: no cover - a bench extra
    raise SystemExit("bench.tls_library needs pyOpenSSL: pip install -e '.[bench]'") from None


def _issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _identities(folder: Path) -> None:
    ca = _issue("bench CA")
    server, device = _issue("localhost", ca), _issue("device", ca)
    (folder / "ca.pem").write_bytes(_pem(ca[0]))
    (folder / "server.pem").write_bytes(_pem(server[0]))
    (folder / "server.key").write_bytes(_key_pem(server[1]))
    (folder / "device.pem").write_bytes(_pem(device[0]) + _pem(ca[0]))  # as the fleet's
    (folder / "device.key").write_bytes(_key_pem(device[1]))
    for key in ("server.key", "device.key"):
        (folder / key).chmod(0o600)


def _ssl_pair(d: Path) -> Callable[[], None]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "server.pem", d / "server.key")
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(d / "ca.pem")
    server.num_tickets = 0
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(d / "ca.pem")
    client.load_cert_chain(d / "device.pem", d / "device.key")

    def one() -> None:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
        s = server.wrap_bio(s_in, s_out, server_side=True)
        done = [False, False]
        while not all(done):
            for i, (end, out, to) in enumerate(((c, c_out, s_in), (s, s_out, c_in))):
                if not done[i]:
                    try:
                        end.do_handshake()
                        done[i] = True
                    except ssl.SSLWantReadError:
                        pass
                to.write(out.read())

    return one


def _verify(_conn: object, _cert: object, _errno: int, _depth: int, ok: int) -> bool:
    return bool(ok)


def _pyopenssl_pair(d: Path) -> Callable[[], None]:
    server = SSL.Context(SSL.TLS_METHOD)
    server.use_certificate_file(str(d / "server.pem"))
    server.use_privatekey_file(str(d / "server.key"))
    server.load_verify_locations(str(d / "ca.pem"))
    server.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
    server.set_min_proto_version(SSL.TLS1_3_VERSION)
    server.set_options(SSL.OP_NO_TICKET)
    client = SSL.Context(SSL.TLS_METHOD)
    client.load_verify_locations(str(d / "ca.pem"))
    client.use_certificate_chain_file(str(d / "device.pem"))
    client.use_privatekey_file(str(d / "device.key"))
    client.set_verify(SSL.VERIFY_PEER, _verify)

    def pump(src: SSL.Connection, dst: SSL.Connection) -> None:
        try:
            while True:
                dst.bio_write(src.bio_read(65536))
        except SSL.WantReadError:
            pass

    def one() -> None:
        c = SSL.Connection(client, None)
        c.set_connect_state()
        c.set_tlsext_host_name(b"localhost")
        s = SSL.Connection(server, None)
        s.set_accept_state()
        done = [False, False]
        while not all(done):
            for i, (end, other) in enumerate(((c, s), (s, c))):
                if not done[i]:
                    try:
                        end.do_handshake()
                        done[i] = True
                    except SSL.WantReadError:
                        pass
                pump(end, other)

    return one


def _ssl_prepare(d: Path) -> Callable[[], None]:
    shared = ClientTls(ca_file=d / "ca.pem")
    cert, key = str(d / "device.pem"), str(d / "device.key")
    return lambda: shared.session(cert, key, "localhost") and None


def _pyopenssl_prepare(d: Path) -> Callable[[], None]:
    shared = SSL.Context(SSL.TLS_METHOD)
    shared.load_verify_locations(str(d / "ca.pem"))
    cert, key = (d / "device.pem").read_bytes(), (d / "device.key").read_bytes()

    def one() -> None:
        conn = SSL.Connection(shared, None)
        conn.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, cert))
        conn.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key))
        conn.set_connect_state()

    return one


def _cpu_us(one: Callable[[], None], rounds: int, repeats: int) -> list[float]:
    one()
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(rounds):
            one()
        runs.append((time.process_time() - start) / rounds * 1e6)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # pyOpenSSL's crypto.load_* are deprecated for cryptography's; they are what
    # reaches OpenSSL's own parser, which is what is measured.
    warnings.simplefilter("ignore", DeprecationWarning)
    system = ssl.OPENSSL_VERSION
    bundled = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    print(f"Python's ssl: {system}; pyOpenSSL: {bundled}; EC P-256, TLS 1.3, mutual\n")
    print("| CPU per operation (µs, least of the runs) | Python's ssl | pyOpenSSL | ratio |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as name:
        d = Path(name)
        _identities(d)
        for what, ours, theirs in (
            ("a mutual-TLS handshake, both ends", _ssl_pair, _pyopenssl_pair),
            (
                "preparing a device (certificate and key, one connection)",
                _ssl_prepare,
                _pyopenssl_prepare,
            ),
        ):
            a = min(_cpu_us(ours(d), args.rounds, args.repeats))
            b = min(_cpu_us(theirs(d), args.rounds, args.repeats))
            print(f"| {what} | {a:.0f} | {b:.0f} | {b / a:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
