"""A device's whole life in C at a run's arrival rate (`bench/c_device.c`): the
floor a run's CPU per device is measured against, next to `openssl s_time -new`.

`s_time` runs its handshakes back to back and sleeps once each, for the
server's flight. A run's devices arrive on a schedule: each waits for its start,
the server's flight, the session tickets and the CONNACK, and between devices
the core goes idle and its caches go cold. This client lives the same life
(its own certificate and key read from files, TCP, TLS 1.3 with the server
verified, CONNECT, CONNACK, DISCONNECT, close) at the same rate, in C with
blocking sockets: what any client pays here for that life at that rate.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.connect import Bed

_SOURCE = Path(__file__).with_name("c_device.c")


@functools.cache
def _binary(folder: Path) -> Path:
    if shutil.which("gcc") is None or not Path("/usr/include/openssl/ssl.h").exists():
        raise SystemExit("bench: --c-device needs gcc and OpenSSL's headers (libssl-dev)")
    out = folder / "c_device"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(out), str(_SOURCE), "-lssl", "-lcrypto"], check=True
    )
    return out


def c_device(bed: Bed, *, rate: float, processes: int, own: bool) -> float:
    """CPU seconds per device of the bed's whole fleet, each device's whole life
    in C, ``rate`` devices a second in all, shared round-robin by ``processes``
    processes as a run shares them by its workers. With ``own``, each device
    reads its own certificate and key (OpenSSL's PEM readers); without, all use
    the first device's, loaded once."""
    binary = _binary(bed.root)
    runs = []
    for i in range(processes):
        listing = bed.root / f"c_device-{i}.txt"
        listing.write_text(
            "".join(
                f"{bed.fleet.path / d.cert} {bed.fleet.path / d.key} {d.client_id}\n"
                for d in bed.devices[i::processes]
            )
        )
        runs.append(
            subprocess.Popen(
                [
                    str(binary),
                    "127.0.0.1",
                    str(bed.broker.tls_port),
                    str(bed.server_ca),
                    str(rate / processes),
                    str(listing),
                    "mqtt",
                    "own" if own else "first",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    devices, cpu = 0, 0.0
    for run in runs:
        out, _ = run.communicate()
        count, failed, seconds = out.split()
        if run.returncode or int(failed):
            raise SystemExit(f"bench: the C device failed {failed} of {count} connects")
        devices += int(count)
        cpu += float(seconds)
    return cpu / devices
