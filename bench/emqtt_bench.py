"""emqtt-bench, the Erlang load generator of EMQX, as a peer in the same bed: its
`conn` command connects the bed's devices to the same mosquitto at the same
rate, and its CPU per device sits beside `loadgen run`'s and `s_time`'s.

emqtt-bench takes one client certificate for all its clients (`--certfile`,
`--keyfile`: the first device's, as `s_time` and the C floor's "one
certificate for all" do), does not verify the server (it hard-codes
``verify_none``), and keeps its clients connected. Its figure is the CPU its VM
spent between its first once-a-second progress line and the one that counts
every client connected, over the clients connected in between: the VM's
start-up is left out (as a run's workers' start is), and up to a second of
holding idle clients is in. Then it is stopped.

It is not in the suite's environment: `bench/build_emqtt_bench.sh` builds it
(Debian's `erlang-nox` and `rebar3`; 0.4.21, the newest release whose
dependencies build on Debian 12's OTP 25) and prints the escript's path.

By default the Erlang VM's schedulers spin a while before they sleep (``+sbwt``),
CPU a user running it pays; ``spin=False`` runs it with ``+sbwt none`` (and the
same for the dirty schedulers): the VM's work without the spinning.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bench import hold  # its module, not its names: bench.hold imports this one

if TYPE_CHECKING:
    from bench.connect import Bed

_PROGRESS = re.compile(rb"(connect_succ|connect_fail) total=(\d+)")
_NO_SPIN = "+sbwt none +sbwtdcpu none +sbwtdio none"


def start(
    binary: Path,
    *,
    port: int,
    cert: Path,
    key: Path,
    count: int,
    rate: float,
    keepalive: float = 300,
    spin: bool = True,
    stdout: int | IO[bytes] = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """`emqtt_bench conn`: ``count`` clients to 127.0.0.1:``port`` over TLS with
    one certificate, ``rate`` a second (rounded: it takes no fraction), each
    holding its connection with a PINGREQ every ``keepalive`` seconds (whole
    seconds). Its own session: ``os.killpg(run.pid, ...)`` stops its VM and
    whatever the VM started."""
    env = dict(os.environ)
    if not spin:
        env["ERL_FLAGS"] = f"{env.get('ERL_FLAGS', '')} {_NO_SPIN}".strip()
    return subprocess.Popen(
        [
            str(binary),
            "conn",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-S",
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
            "-c",
            str(count),
            "-R",
            str(round(rate)),
            "-k",
            str(max(1, round(keepalive))),
            "--prefix",
            "eb",
            "-s",
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def emqtt_bench(bed: Bed, *, binary: Path, rate: float, spin: bool = True) -> float:
    """CPU seconds per device of `emqtt_bench conn` connecting all the bed's
    devices at ``rate`` a second, while they connect."""
    device = bed.devices[0]
    count = len(bed.devices)
    run = start(
        binary,
        port=bed.broker.tls_port,
        cert=bed.fleet.path / device.cert,
        key=bed.fleet.path / device.key,
        count=count,
        rate=rate,
        spin=spin,
    )
    assert run.stdout is not None
    succeeded = failed = 0
    first: tuple[int, float] | None = None  # (connected, CPU seconds) at the first line
    deadline = time.monotonic() + count / rate * 3 + 60
    output = b""
    try:
        for line in iter(run.stdout.readline, b""):
            output = (output + line)[-4000:]
            for name, total in _PROGRESS.findall(line):
                if name == b"connect_succ":
                    succeeded = int(total)
                    if first is None:
                        first = (succeeded, hold.rss_and_cpu(run.pid)[1])
                else:
                    failed = int(total)
            if succeeded + failed >= count or time.monotonic() > deadline:
                break
        last = hold.rss_and_cpu(run.pid)[1]
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    if succeeded < count or first is None or first[0] >= count:
        tail = output.decode(errors="replace")[-1000:]
        raise SystemExit(
            f"bench: emqtt-bench connected {succeeded} of {count} ({failed} failed), "
            f"or all in its first second (too few devices for the rate):\n{tail}"
        )
    return (last - first[1]) / (count - first[0])
