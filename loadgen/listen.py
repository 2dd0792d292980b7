"""Where a server is asked to listen, checked before anything starts: a port in
range, a host of this machine, a port nobody else holds, a key that matches its
certificate. Each problem is one ``UserError`` naming the option."""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path
from typing import Any

import click

from loadgen.errors import UserError

MAX_PORT = 65535


class PortType(click.ParamType[int, Any]):
    """A TCP port option: 1 to 65535 (0, "any free port", only where allowed).
    Out of range is the option's one-line error, not a port the kernel picks."""

    name = "port"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        option = param.opts[0] if param is not None and param.opts else "port"
        try:
            port = int(value)
        except (TypeError, ValueError):
            port = -1
        low = 0 if self.allow_zero else 1
        if not low <= port <= MAX_PORT:
            any_free = " (0: any free port)" if self.allow_zero else ""
            raise UserError(f"{option} {value}: a port from {low} to {MAX_PORT}{any_free}")
        return port


PORT = PortType()
PORT_OR_ANY = PortType(allow_zero=True)


def check_listen(host: str, port: int, option: str, host_option: str = "--host") -> None:
    """Bind (and release) every address ``host`` (given as ``host_option``) names,
    as the server will."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except (OSError, UnicodeError) as exc:
        raise UserError(f"{host_option} {host}: not an address of this machine ({exc})") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's and prometheus-client's servers do: a port left in
            # TIME_WAIT by an earlier run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise UserError(_bind_problem(host, port, option, host_option, exc)) from None


def _bind_problem(host: str, port: int, option: str, host_option: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{option} {port}: already in use on {host} (another server listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_option} {host}: not a local address of this machine"
    return f"{option} {port}: cannot listen on {host} ({exc.strerror})"


def check_server_identity(cert: Path, key: Path) -> None:
    """The server certificate and its key load, and belong together."""
    for path, option in ((cert, "--server-cert"), (key, "--server-key")):
        if not path.is_file():
            raise UserError(f"{option} {path}: file not found")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise UserError(
                f"--server-key {key}: does not match the certificate in --server-cert {cert}"
            ) from None
        raise UserError(
            f"--server-cert {cert} / --server-key {key}: not a PEM certificate and key "
            f"({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise UserError(f"--server-cert {cert}: cannot read ({exc.strerror})") from None
