"""The account in this process (see ``loadgen.emulator.account``): a
serving process of ``--processes N`` asks the account process instead, and so
does without the registry and ``cryptography``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loadgen.emulator.account import Admission, Admitted
from loadgen.emulator.errors import ProvisioningError
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.quota import Limiter
from loadgen.emulator.registry import CertRecord, CertStatus, Registry

if TYPE_CHECKING:
    from loadgen.emulator.server import EmulatorStats


class LocalAccount:
    """The account in this process: its registry, its quotas (one bucket each,
    so they are the account's whatever serves the sessions), and the counts of
    what admission did (provisioning, its throttling)."""

    def __init__(self, registry: Registry, limiter: Limiter, stats: EmulatorStats) -> None:
        self.registry = registry
        self.limiter = limiter
        self.stats = stats
        self._trust_version = -1
        self._trust: tuple[str, ...] = ()

    def admit(self, der: bytes, answer: Callable[[Admitted], None]) -> None:
        answer(self.admission(der))

    def allow_connect(self, client_id: str, answer: Callable[[str | None], None]) -> None:
        answer(self.limiter.allow_connect(client_id))

    def connected(self, client_id: str, turn: int) -> None:
        pass  # every session is this process's: Emulator.sessions is the whole story

    def left(self, client_id: str, turn: int) -> None:
        pass

    def trusted(self) -> tuple[str, ...]:
        registry = self.registry
        if registry.ca_version != self._trust_version:
            # A CA changed through Registry's methods: rebuild the set.
            self._trust_version = registry.ca_version
            cas = sorted(registry.cas.values(), key=lambda ca: ca.id)
            self._trust = tuple(
                ca.cert.public_bytes(Encoding.PEM).decode() for ca in cas if ca.active
            )
        return self._trust

    def admission(self, der: bytes) -> Admitted:
        """`admit`'s answer. A known certificate needs only its id: the DER is
        parsed only for one the registry does not know yet."""
        cert_id = hashlib.sha256(der).hexdigest()
        record = self.registry.certificates.get(cert_id)
        if record is None:
            # Its chain was verified by the handshake (see Registry.issuer_of).
            return self._unknown(x509.load_der_x509_certificate(der), verified=True)
        if record.status is not CertStatus.ACTIVE:
            return f"certificate {record.status.value}"
        return self.admission_of(record)

    def admission_of(self, record: CertRecord) -> Admission:
        registry = self.registry
        things = {
            name: thing.type_name
            for name in record.things
            if (thing := registry.things.get(name)) is not None
        }
        documents = tuple(
            registry.policies[name] for name in sorted(record.policies) if name in registry.policies
        )
        attributes = {}
        # Policy text, not parsed: condition keys are case-insensitive, and a
        # document mentioning attributes anywhere just costs a copy of them.
        if any("attributes[" in document.lower() for document in documents):
            attributes = {
                name: dict(thing.attributes)
                for name in things
                if (thing := registry.things.get(name)) is not None and thing.attributes
            }
        return Admission(record.id, things, documents, attributes)

    def record_for(self, cert: x509.Certificate) -> CertRecord | str:
        """The certificate's record when its MQTT session may go on, else why the
        connection is closed."""
        record = self.registry.certificates.get(certificate_id(cert))
        if record is None:
            return self._unknown(cert)
        if record.status is CertStatus.ACTIVE:
            return record
        return f"certificate {record.status.value}"

    def _unknown(self, cert: x509.Certificate, *, verified: bool = False) -> str:
        """A certificate the registry does not know: JITP, or why not
        (``verified``: see ``Registry.issuer_of``)."""
        registry = self.registry
        ca = registry.issuer_of(cert, verified=verified)
        if ca is None or not ca.active:
            return "unknown CA"
        if not ca.auto_registration:
            return "unknown certificate (auto-registration off)"
        if not self.limiter.allow_provision():
            # A throttled provisioning registers nothing: the retry provisions.
            self.stats.throttles["provision"] += 1
            self.stats.provision["Throttled"] += 1
            return "provisioning throttled"
        try:
            registry.provision(cert, ca)
        except ProvisioningError as exc:
            self.stats.provision[exc.metric] += 1
            self.stats.failed(exc.reason)
            return f"provisioning failed: {exc}"
        self.stats.provision["Success"] += 1
        return "provisioned (JITP closes the first connection)"
