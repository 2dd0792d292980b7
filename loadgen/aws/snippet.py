"""The scenario `loadgen aws setup` prints (or writes): a run of the CA's fleet
against the account's ATS endpoint, trusting Amazon's root CA, expecting JITP."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from cryptography import x509

from loadgen.aws.record import SetupRecord

AMAZON_ROOT_CA_1 = "CN=Amazon Root CA 1,O=Amazon,C=US"
MQTT_PORT = 8883


def amazon_root_ca() -> Path | None:
    """Amazon Root CA 1 as a file of the system's trust store, when it has one."""
    paths = ssl.get_default_verify_paths()
    folder = Path(paths.capath or paths.openssl_capath or "/etc/ssl/certs")
    likely = folder / "Amazon_Root_CA_1.pem"  # Debian's and Fedora's name for it
    candidates = [likely, *sorted(folder.glob("*.pem"))] if folder.is_dir() else []
    for path in candidates:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
        if cert.subject.rfc4514_string() == AMAZON_ROOT_CA_1:
            return path
    return None


def endpoint_address(address: str) -> tuple[str, str]:
    """(endpoint HOST:PORT, the TLS server name) from DescribeEndpoint's address:
    AWS's has no port (8883 it is); the emulator's has one."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and host:
        return address, host.strip("[]")
    return f"{address}:{MQTT_PORT}", address


def scenario_text(
    record: SetupRecord,
    ca_dir: Path,
    *,
    server_ca: Path | None,
    fleet: Path | None,
    count: int | None,
) -> str:
    """A scenario that `loadgen run` takes as it is (paths absolute: it may be
    written anywhere)."""
    endpoint, server_name = endpoint_address(record.endpoint)
    ca_file = server_ca if server_ca is not None else amazon_root_ca()
    trust = (
        f"  ca_file: {_q(ca_file.resolve())}\n"
        if ca_file is not None
        else "  # ca_file: AmazonRootCA1.pem (not found in the system's trust store;\n"
        "  # the system's CAs are trusted instead)\n"
    )
    store = fleet.resolve() if fleet is not None else Path(".loadgen/fleets/aws").resolve()
    return (
        f"# Written by `loadgen aws setup` for CA {record.ca_id[:16]}… in account\n"
        f"# {record.account}, region {record.region}.\n"
        "name: aws-jitp\n"
        f"endpoint: {_q(endpoint)}\n"
        "tls:\n"
        f"{trust}"
        f"  server_name: {_q(server_name)}\n"
        "  # on port 443 instead:  alpn: [x-amzn-mqtt-ca]\n"
        "mqtt: {version: 5}\n"
        f"fleet: {{ca: {_q(ca_dir.resolve())}, store: {_q(store)}, count: {count or 100}}}\n"
        "jitp:\n"
        "  expect_first_connect_rejected: true    # JITP closes the first connection\n"
        "retry: {initial: 1s, max: 10s, multiplier: 2, jitter: full, max_attempts: 6}\n"
        "load: {executor: constant-arrival-rate, rate: 10/s, max_in_flight: 100}\n"
    )


def _q(value: object) -> str:
    """A YAML scalar that reads back as the same string (JSON's quoting is YAML's)."""
    return json.dumps(str(value))
