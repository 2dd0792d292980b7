"""Certificate authorities: the fleet CA a user registers with AWS IoT, and the
verification certificate AWS asks for to prove the CA's key is held."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from loadgen.certs import der
from loadgen.certs.keys import KeyType, PrivateKey, Signer, generate_key, key_pem, spki_der
from loadgen.errors import CAError, UserError
from loadgen.files import CONFIG_LIMIT, read_limited, write, write_atomic

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"
DEFAULT_SUBJECT = "CN=jitp-loadgen fleet CA,O=jitp-loadgen"
# A CA folder's own files: the CA, and what `loadgen aws` keeps beside it (the
# record of setup, loadgen/aws/record.py; an interrupted teardown's journal,
# loadgen/aws/teardown.py). Each is lost for good when an output replaces it.
# `loadgen aws setup`'s record of what it did in an account for the CA.
SETUP_RECORD_FILE = "aws-setup.json"
CA_FILES = (CERT_FILE, KEY_FILE, SETUP_RECORD_FILE, "aws-teardown-*.jsonl")


@dataclass(frozen=True)
class CA:
    """A loaded CA: its certificate, key, and what device certificates need of it."""

    directory: Path
    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the certificate's DER (the id AWS IoT gives a CA)."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def key_id(self) -> bytes:
        return der.key_identifier(spki_der(self.key))

    def signer(self) -> Signer:
        return Signer(self.key)

    @property
    def name_der(self) -> bytes:
        return self.cert.subject.public_bytes()


def parse_subject(text: str) -> x509.Name:
    if not text.strip():
        raise UserError(f"--subject {text!r} is empty: a name like {DEFAULT_SUBJECT!r}")
    try:
        subject = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        # cryptography says nothing for most malformed names ('garbage', 'XX=foo').
        why = str(exc) or f"not an RFC 4514 name of known attributes, e.g. {DEFAULT_SUBJECT!r}"
        raise UserError(f"--subject {text!r}: {why}") from None
    if not subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        raise UserError(f"--subject {text!r}: a CA subject needs a CN")
    return subject


def marked_ca(cert: x509.Certificate) -> bool | None:
    """Whether ``cert``'s basicConstraints say CA:TRUE; None without the extension
    (an X.509 v1 CA, say, which some endpoints still trust and AWS IoT does not
    register)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return None


def refuse_ca_file(path: Path, directory: Path, option: str, given: Path | None = None) -> None:
    """Refuse (one line naming ``option`` and the path ``given`` to it, by
    default ``path``) an output ``path`` that is one of the CA's files in
    ``directory``, however spelled: another relative path, ``..``, a link, a
    hard link."""
    target = path.resolve()
    folder = directory.resolve()
    for pattern in CA_FILES:
        for own in [folder / pattern] if "*" not in pattern else folder.glob(pattern):
            if target == own or _same_file(path, own):
                raise UserError(
                    f"{option} {given or path}: would overwrite {own.name} of the CA in "
                    f"{directory}: give another file"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # either is not there (yet)
        return False


def not_a_ca(cert: x509.Certificate) -> str | None:
    """Why ``cert`` cannot be a fleet's CA, if so: AWS IoT registers, and the
    emulator trusts, only a certificate marked CA:TRUE."""
    marked = marked_ca(cert)
    if marked is None:
        return "not a CA certificate (no basicConstraints CA:TRUE): it cannot sign certificates"
    if not marked:
        return "not a CA certificate (basicConstraints CA:FALSE): it cannot sign certificates"
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _build_ca(key: PrivateKey, subject: x509.Name, days: int) -> x509.Certificate:
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, Signer(key).hash)
    )


def init_ca(
    directory: Path,
    *,
    key_type: KeyType = KeyType.EC_P256,
    subject: str = DEFAULT_SUBJECT,
    days: int = 3650,
    force: bool = False,
) -> CA:
    """Create a self-signed CA in ``directory`` (``ca.pem``, ``ca.key`` 0600)."""
    if days <= 0:
        raise UserError(f"--days must be positive, got {days}")
    most = (der.LATEST - _now()).days
    if days > most:
        raise UserError(
            f"--days {days} ends after {der.LATEST:%Y-%m-%d}, the last date an X.509 "
            f"certificate can hold: at most {most}"
        )
    name = parse_subject(subject)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not force and (cert_path.exists() or key_path.exists()):
        raise CAError(f"{directory}: a CA already exists there (use --force to replace it)")
    if (directory / SETUP_RECORD_FILE).exists():
        # Replaced, the CA registered in the account could no longer be found
        # (teardown finds it by its certificate's hash), nor what setup made for it.
        raise CAError(
            f"{directory}: its CA is set up in an AWS account ({SETUP_RECORD_FILE}): tear it "
            f"down first (loadgen aws teardown --ca {directory})"
        )
    made = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CAError(f"{directory}: cannot create the CA directory: {exc.strerror}") from None
    key = generate_key(key_type)
    cert = _build_ca(key, name, days)
    replaced = key_path.exists()
    try:
        write_atomic(key_path, key_pem(key), private=True)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        # A full disk: nothing of a CA that never was is left, the folders made
        # for it included; a CA replaced (--force) has lost its key already.
        if not replaced:
            key_path.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise CAError(f"{directory}: cannot write the CA: {exc.strerror}") from None
    return CA(directory, cert, key)


def load_ca(directory: Path) -> CA:
    """Load and check a CA directory: both files readable, the key matching the cert."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    try:
        cert_bytes = read_limited(cert_path, CONFIG_LIMIT, "CA certificate")
        key_bytes = read_limited(key_path, CONFIG_LIMIT, "CA key")
    except FileNotFoundError as exc:
        raise CAError(
            f"{exc.filename}: no CA here (create one with `loadgen ca init --out {directory}`)"
        ) from None
    except OSError as exc:
        raise CAError(f"{exc.filename}: cannot read: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        raise CAError(f"{cert_path}: not a PEM certificate") from None
    # Here, not in each command: a server or device certificate in its place
    # would sign a fleet (or a server certificate) that no endpoint trusts, and
    # a run would find out only once the fleet is minted.
    if (problem := not_a_ca(cert)) is not None:
        raise CAError(f"{cert_path}: {problem}")
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        raise CAError(f"{key_path}: not an unencrypted PEM private key") from None
    if not isinstance(key, PrivateKey):
        raise CAError(f"{key_path}: unsupported key type {type(key).__name__}")
    if spki_der(key) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CAError(f"{key_path}: the key does not match the certificate {cert_path}")
    return CA(directory, cert, key)


def server_cert(ca: CA, names: list[str], *, days: int = 825) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a TLS server known by ``names`` (DNS names
    or IP addresses), signed by ``ca``: what the emulator and test brokers serve."""
    alt_names = [_alt_name(name) for name in names]
    # A CN holds at most 64 characters (RFC 5280's ub-common-name); clients
    # match the subjectAltName, which holds a longer DNS name.
    common = names[0] if len(names[0]) <= 64 else None
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common)] if common is not None else []
    key = generate_key(KeyType.EC_P256)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.key, ca.signer().hash)
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def _alt_name(name: str) -> x509.GeneralName:
    """``name`` (a ``--name``) as a subjectAltName: an IP address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if (problem := _dns_name_problem(name)) is not None:
        raise UserError(f"--name {name!r}: {problem}")
    return x509.DNSName(name)


def _dns_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a certificate's DNS name, if so. A TLS client
    matches the ASCII form of an internationalised name (its A-labels), so
    that is the form asked for, not guessed."""
    if not name.strip():
        return "empty: give a DNS name or an IP address"
    if not name.isascii():
        try:
            return f"not ASCII: give its A-label form, {name.encode('idna').decode()}"
        except UnicodeError:
            return "not ASCII: give its A-label form (xn--...)"
    if any(c <= " " or c == "\x7f" for c in name):
        return "a space or control character: not a DNS name"
    if len(name) > 253:
        return f"{len(name)} characters: a DNS name has at most 253"
    return None


def verification_cert(ca: CA, registration_code: str, out: Path) -> x509.Certificate:
    """The certificate ``aws iot register-ca-certificate --verification-cert`` wants:
    CN is the account's registration code, signed by the CA being registered."""
    code = registration_code.strip()
    if not code or len(code) > 64:
        raise UserError("--registration-code must be 1 to 64 characters")
    key = generate_key(KeyType.EC_P256)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(ca.key, ca.signer().hash)
    )
    try:
        write(out, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror}") from None
    return cert
