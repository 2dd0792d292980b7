"""OpenSSL's command line as an independent judge of what the factory makes."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

_BATCH = 500


def verify_ok(ca_pem: Path, certs: Sequence[Path]) -> set[Path]:
    """The certificates `openssl verify` accepts for TLS client use."""
    accepted: set[Path] = set()
    for i in range(0, len(certs), _BATCH):
        batch = [str(c) for c in certs[i : i + _BATCH]]
        proc = subprocess.run(
            ["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(ca_pem), *batch],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in proc.stdout.splitlines():
            if line.endswith(": OK"):
                accepted.add(Path(line.removesuffix(": OK")))
    return accepted


def verify_error(ca_pem: Path, cert: Path) -> str:
    """Why `openssl verify` rejects one certificate ("" when it accepts it)."""
    proc = subprocess.run(
        ["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(ca_pem), str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return ""
    return proc.stdout + proc.stderr


def text(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
