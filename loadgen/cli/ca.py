"""`loadgen ca`: certificate authorities for device fleets."""

from __future__ import annotations

from pathlib import Path

import click

from loadgen.certs import ca as ca_mod
from loadgen.certs.keys import KeyType
from loadgen.cli.common import KEY_TYPES, PATH
from loadgen.errors import UserError
from loadgen.files import write


@click.group()
def ca() -> None:
    """Certificate authorities for device fleets."""


@ca.command("init")
@click.option("--out", "out", required=True, type=PATH, help="CA folder.")
@click.option("--key-type", type=KEY_TYPES, default=KeyType.EC_P256.value, show_default=True)
@click.option("--subject", default=ca_mod.DEFAULT_SUBJECT, show_default=True, help="RFC 4514.")
@click.option("--days", type=int, default=3650, show_default=True, help="Validity in days.")
@click.option("--force", is_flag=True, help="Replace an existing CA.")
def ca_init(out: Path, key_type: str, subject: str, days: int, force: bool) -> None:
    """Create a CA: OUT/ca.pem and OUT/ca.key (0600)."""
    created = ca_mod.init_ca(
        out, key_type=KeyType(key_type), subject=subject, days=days, force=force
    )
    click.echo(f"CA {created.cert.subject.rfc4514_string()} written to {out}")
    click.echo(f"  certificate  {out / ca_mod.CERT_FILE}")
    click.echo(f"  key (0600)   {out / ca_mod.KEY_FILE}")
    click.echo(f"  sha256       {created.fingerprint}")


@ca.command("verification-cert")
@click.option("--ca", "ca_dir", required=True, type=PATH, help="CA folder.")
@click.option("--registration-code", required=True, help="From `aws iot get-registration-code`.")
@click.option("--out", "out", required=True, type=PATH)
def ca_verification_cert(ca_dir: Path, registration_code: str, out: Path) -> None:
    """The verification certificate `aws iot register-ca-certificate` asks for."""
    authority = ca_mod.load_ca(ca_dir)
    ca_mod.refuse_ca_file(out, ca_dir, "--out")
    ca_mod.verification_cert(authority, registration_code, out)
    click.echo(f"verification certificate written to {out}")
    click.echo(
        "  aws iot register-ca-certificate "
        f"--ca-certificate file://{ca_dir / ca_mod.CERT_FILE} --verification-cert file://{out} "
        "--set-as-active --allow-auto-registration "
        "--registration-config file://registration-config.json"
    )


@ca.command("server-cert")
@click.option("--ca", "ca_dir", required=True, type=PATH, help="CA folder.")
@click.option("--name", "names", required=True, multiple=True, help="DNS name or IP; repeatable.")
@click.option("--out", "out", required=True, type=PATH, help="OUT.pem/.key")
def ca_server_cert(ca_dir: Path, names: tuple[str, ...], out: Path) -> None:
    """A TLS server certificate signed by the CA (for a broker or the emulator)."""
    authority = ca_mod.load_ca(ca_dir)
    cert_path, key_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".key")
    for path in (cert_path, key_path):
        ca_mod.refuse_ca_file(path, ca_dir, "--out", out)
    cert, key = ca_mod.server_cert(authority, list(names))
    try:
        write(cert_path, cert)
        write(key_path, key, private=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot write: {exc.strerror}") from None
    click.echo(f"server certificate for {', '.join(names)}: {cert_path}, key (0600) {key_path}")
