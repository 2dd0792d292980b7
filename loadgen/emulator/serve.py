"""Starting the emulator: from `loadgen emulator serve`, or for a scenario whose
endpoint is ``embedded``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from loadgen import lifeline
from loadgen.certs.ca import CERT_FILE, init_ca, load_ca, not_a_ca, server_cert
from loadgen.emulator import metrics as emu_metrics
from loadgen.emulator.errors import ProvisioningError
from loadgen.emulator.limits import Limits
from loadgen.emulator.parameters import certificate_id
from loadgen.emulator.processes import ServingProcesses, Totals, how_ended
from loadgen.emulator.registry import Registry
from loadgen.emulator.server import Emulator
from loadgen.emulator.state import RegistryStore, StateWriteError
from loadgen.emulator.structure import config_problems
from loadgen.errors import ConfigError, LoadgenError, UserError
from loadgen.files import CONFIG_LIMIT, read_limited, read_text, write
from loadgen.nesting import parse_json

if TYPE_CHECKING:
    from loadgen.emulator.api.app import ApiStats

READY = "loadgen emulator: ready on"
STATS = "loadgen emulator: stats "
# Printed before the ready line when the control plane is served: once the ready
# line is out, both listen.
API_READY = "loadgen emulator: control plane on"
_READY_LINE = re.compile(r"ready on (\S+):(\d+) \(server CA: (.+)\)")
_API_LINE = re.compile(r"control plane on (http://\S+:\d+)")


@dataclass(frozen=True)
class CaRegistration:
    ca_pem: Path
    registration_config: dict[str, Any] | None
    active: bool = True
    auto_registration: bool = True


def read_registration_config(path: Path) -> Any:
    """A registration config file's JSON, not yet checked."""
    text = read_text(path, what="registration config")
    try:
        # strict=False: the reference document's readable example has raw line
        # breaks inside its strings.
        return parse_json(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a JSON registration config: {exc}") from None


def load_registration_config(path: Path) -> dict[str, Any]:
    """A registration config AWS would accept, or a ``ConfigError`` naming the
    file and the location of its first problem (as `template check` lists them)."""
    data = read_registration_config(path)
    _, problems = config_problems(data)
    if problems:
        raise ConfigError(f"{path}: {problems[0]}")
    assert isinstance(data, dict)
    return data


def server_identity(state: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, CA) for the emulator's TLS, made once under ``state``."""
    ca_dir = state / "server-ca"
    cert, key = state / "server.pem", state / "server.key"
    if not (ca_dir / CERT_FILE).exists():
        init_ca(ca_dir, subject="CN=jitp-loadgen emulator server CA", force=True)
    if not cert.exists() or not key.exists():
        cert_pem, key_pem = server_cert(load_ca(ca_dir), ["localhost", "127.0.0.1"])
        write(cert, cert_pem)
        write(key, key_pem, private=True)
    return cert, key, ca_dir / CERT_FILE


def build_registry(
    cas: list[CaRegistration], *, strict_resources: bool, state: Path | None = None
) -> Registry:
    certs = []
    for item in cas:
        try:
            pem = read_limited(item.ca_pem, CONFIG_LIMIT, "CA certificate")
            cert = x509.load_pem_x509_certificate(pem)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{item.ca_pem}: not a PEM CA certificate ({exc})") from None
        if (problem := not_a_ca(cert)) is not None:
            # As RegisterCACertificate refuses it: a device certificate, say.
            raise ConfigError(f"{item.ca_pem}: {problem}")
        certs.append(cert)
    first: dict[str, Path] = {}
    for item, cert in zip(cas, certs, strict=True):
        # One CA is registered once: given twice (active and inactive, say), the
        # second registration would silently replace the first.
        earlier = first.setdefault(certificate_id(cert), item.ca_pem)
        if earlier is not item.ca_pem:
            same = "" if earlier == item.ca_pem else f" (the CA of {earlier})"
            raise ConfigError(f"{item.ca_pem}: a CA given twice{same}: register it once")
    # The state file only once the CAs are known good: a mistake writes nothing.
    store = RegistryStore(state) if state is not None else None
    registry = Registry(strict_resources=strict_resources, store=store)
    for item, cert in zip(cas, certs, strict=True):
        try:
            registry.register_ca(
                cert,
                item.registration_config,
                active=item.active,
                auto_registration=item.auto_registration,
            )
        except ProvisioningError as exc:
            raise ConfigError(f"{item.ca_pem}: registration config: {exc}") from None
        except StateWriteError as exc:
            raise ConfigError(str(exc)) from None
    return registry


@dataclass(frozen=True)
class ApiSetup:
    """The control plane's HTTP API, for ``--api-port``."""

    port: int
    rates: dict[str, float | None]


async def serve_forever(
    emulator: Emulator,
    host: str,
    port: int,
    server_ca: Path,
    *,
    stdin_lifeline: bool = False,
    api: ApiSetup | None = None,
    processes: int = 1,
    metrics_port: int | None = None,
) -> None:
    """Serve until a stop signal, or (``stdin_lifeline``, for a parent that
    started it) until the parent says ``stop`` on stdin or stdin reaches
    end-of-file (the parent is gone); a stop signal is then the parent's to act
    on. With ``processes`` > 1, this is the account process and the sessions
    are its serving processes' (loadgen.emulator.processes); with 1, they are
    served here."""
    # Handlers first: whoever reads the ready line may stop it at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if stdin_lifeline:
        _stop_at_eof(loop, sys.stdin.fileno(), stop)
    else:
        for sig in lifeline.STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
    serving: ServingProcesses | None = None
    server: asyncio.Server | None = None
    if processes > 1:
        assert emulator.local is not None
        serving = ServingProcesses(
            emulator.local, emulator.server_cert, emulator.server_key, emulator.limits
        )
        bound = await serving.start(host, port, processes)
    else:
        try:
            server = await emulator.serve(host, port)
        except OSError as exc:  # taken since the check before the start
            raise UserError(f"--port {port}: cannot listen on {host} ({exc.strerror})") from None
        bound = server.sockets[0].getsockname()
    api_server: asyncio.Server | None = None
    final: Totals | None = None
    try:
        if api is not None:
            api_server = await _serve_api(emulator, host, bound, api, serving)
        if metrics_port is not None:
            emu_metrics.serve(emulator, host, metrics_port, _scrape_totals(loop, serving))

        async def print_now(asked: float) -> None:
            totals = await _totals(emulator, serving)
            # Nobody reads the line any more: the final one finds out too, and says so.
            with contextlib.suppress(BrokenPipeError):
                _print_stats(totals, emulator.api_stats, asked=asked)

        # The loop keeps only a weak reference to a task.
        printing: set[asyncio.Task[None]] = set()

        def on_usr1() -> None:
            task = loop.create_task(print_now(time.monotonic()))
            printing.add(task)
            task.add_done_callback(printing.discard)

        # SIGUSR1: the counts so far, for a parent that measures in steps (capacity).
        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        print(f"{READY} {bound[0]}:{bound[1]} (server CA: {server_ca})", flush=True)
        waits = [loop.create_task(stop.wait())]
        if serving is not None:
            waits.append(loop.create_task(serving.died.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    finally:
        if api_server is not None:
            api_server.close()
        if server is not None:
            server.close()
        if serving is not None:
            final = await serving.stop()
    # For whoever started it (a run with endpoint: embedded): what happened here.
    if serving is None:
        final = await _totals(emulator, None)
    try:
        if final is not None:
            _print_stats(final, emulator.api_stats, final=True)
    except BrokenPipeError:
        # Nobody reads any more; the exit's own flush must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if serving is not None and serving.died.is_set():
        raise LoadgenError(
            f"the emulator stopped: its {serving.death}; the counts of that "
            "process's sessions are not in the stats"
        )


def _scrape_totals(
    loop: asyncio.AbstractEventLoop, serving: ServingProcesses | None
) -> Callable[[], Totals] | None:
    """For /metrics (a thread of its own): the whole emulator's counts and its
    processes' CPU, asked of the serving processes at each scrape."""
    if serving is None:
        return None
    account = serving

    def totals() -> Totals:
        ask = asyncio.run_coroutine_threadsafe(account.totals(), loop)
        return ask.result(timeout=30)

    return totals


async def _serve_api(
    emulator: Emulator,
    host: str,
    bound: tuple[str, int],
    api: ApiSetup,
    serving: ServingProcesses | None,
) -> asyncio.Server:
    # Here, not at the top: botocore's models load only for a served API.
    from loadgen.emulator.api.http import HttpServer
    from loadgen.emulator.api.serve import api_control_plane

    # DescribeEndpoint answers with where devices connect: the port bound.
    control = api_control_plane(emulator.registry, f"{bound[0]}:{bound[1]}", api.rates)
    emulator.api_stats = control.stats
    # With serving processes, a call that changed the CAs is answered once every
    # one of them trusts what the registry now does.
    settle = serving.settle if serving is not None else None
    try:
        api_server = await HttpServer(control, settle=settle).start(host, api.port)
    except OSError as exc:
        problem = f"cannot listen on {host} ({exc.strerror})"
        raise UserError(f"--api-port {api.port}: {problem}") from None
    api_bound = api_server.sockets[0].getsockname()
    print(f"{API_READY} http://{api_bound[0]}:{api_bound[1]}", flush=True)
    return api_server


def _own_process(emulator: Emulator) -> dict[str, Any]:
    return {
        "index": 0,
        "pid": os.getpid(),
        "cpu_s": round(time.process_time(), 3),
        "connects": sum(emulator.stats.connects.values()),
    }


async def _totals(emulator: Emulator, serving: ServingProcesses | None) -> Totals:
    if serving is not None:
        return await serving.totals()
    return Totals(emulator.stats, [_own_process(emulator)], time.process_time())


def _stop_at_eof(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    def on_readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if STOP_WORD in data:
            stop.set()  # the parent stops it
        if not data:
            loop.remove_reader(fd)
            if not stop.is_set():  # a parent stopping it closes stdin too
                print(
                    "loadgen emulator: lost its parent process (stdin closed); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, on_readable)


def _print_stats(
    totals: Totals,
    api: ApiStats | None = None,
    *,
    final: bool = False,
    asked: float | None = None,
) -> None:
    """The stats line; ``final``: the one printed on the way out, marked so
    that a parent asking for counts then knows the emulator is ending;
    ``asked``: when SIGUSR1 asked for it (the system's monotonic clock)."""
    summary: dict[str, Any] = dict(totals.stats.summary())
    if final:
        summary["final"] = True
    if asked is not None:
        # A parent that gave up waiting for an answer tells that late answer
        # from the one to its next request: it was asked before that request.
        summary["asked_monotonic_s"] = round(asked, 6)
    if api is not None:
        summary["api"] = {
            "calls": dict(api.calls),
            "errors": dict(api.errors),
            "throttled": dict(api.throttled),
        }
    # CPU seconds so far: the serving processes' (the sessions), and the account's.
    summary["processes"] = totals.processes
    summary["account_cpu_s"] = round(totals.account_cpu_s, 3)
    # With one process it serves too: its pid among ``processes`` says so, and
    # that its CPU is counted there already.
    summary["account_pid"] = os.getpid()
    # Serving processes that gave no counts (index, pid, why): the others' are here.
    summary["missing"] = totals.missing
    print(STATS + json.dumps(summary), flush=True)


class OutputLines:
    """A child's stdout read line by line with a deadline: select() on the pipe
    itself, and lines already read kept here (a buffered reader would hide
    them from select())."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = b""

    def next(self, deadline: float) -> str | None:
        """The next whole line; "" at end of file; None if none came in time."""
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                return ""
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode(errors="replace") + "\n"


@dataclass
class EmbeddedEmulator:
    """An emulator subprocess for one run."""

    process: subprocess.Popen[str]
    host: str
    port: int
    server_ca: Path
    api_url: str | None = None  # the control plane's, when it has one
    log: Path | None = None  # its stderr
    log_start: int = 0  # where this emulator's lines begin in ``log``
    output: OutputLines | None = None  # its stdout, once read from

    def stopped_early(self) -> str | None:
        """Why it ended, if it ended before ``stop``: the last line it wrote of
        its failure (a serving process that died stops it, saying which), or
        how it ended; None while it serves."""
        status = self.process.poll()
        if status is None:
            return None
        last = ""
        if self.log is not None:
            try:
                with self.log.open("rb") as log:
                    log.seek(self.log_start)
                    lines = log.read().decode(errors="replace").splitlines()
            except OSError:
                lines = []
            last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        if last.startswith("loadgen: failed: "):
            why = last.removeprefix("loadgen: failed: ").removeprefix("the emulator stopped: ")
            return why[:300]
        return f"it {how_ended(status)}"

    def _output(self) -> OutputLines:
        if self.output is None:
            assert self.process.stdout is not None
            self.output = OutputLines(self.process.stdout.fileno())
        return self.output

    def stats(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """Its counts now (None if it does not answer in time). An answer to
        an earlier request that timed out is passed over when it comes late."""
        output = self._output()
        asked = time.monotonic()
        self.process.send_signal(signal.SIGUSR1)
        deadline = asked + timeout
        while (line := output.next(deadline)) is not None:
            if not line:
                return None
            if not line.startswith(STATS) or (stats := _parse_stats(line)) is None:
                continue
            if stats.get("final"):
                # Not the answer asked for: the line it prints as it ends.
                # Its end, then, so that ``stopped_early`` sees how it ended.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=timeout)
                return stats
            if stats.get("asked_monotonic_s", asked) >= asked:
                return stats
        return None

    def stop(self) -> dict[str, Any] | None:
        """Stop it; return the counts it printed on the way out (None if none).
        Told on its stdin: it ignores stop signals, which are its parent's."""
        try:
            out, _ = self.process.communicate(STOP_WORD.decode(), timeout=10)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            self.process.kill()
            out, _ = self.process.communicate()
        # communicate() reads the pipe itself: lines ``stats`` read ahead come first.
        unread = self.output.pending.decode(errors="replace") if self.output else ""
        last = None
        for line in (unread + (out or "")).splitlines():
            if line.startswith(STATS):
                last = _parse_stats(line)
        return last


# What a parent writes on an embedded emulator's stdin to stop it.
STOP_WORD = b"stop\n"


def limit_options(limits: Limits) -> list[str]:
    """`loadgen emulator serve` options for ``limits``."""
    return [
        "--max-packet-size",
        str(limits.max_packet_size),
        "--connect-timeout",
        str(limits.connect_timeout),
        "--write-buffer",
        str(limits.write_buffer),
        "--slow-consumer-timeout",
        str(limits.slow_consumer_timeout),
        "--min-keepalive",
        str(limits.min_keepalive),
        "--heartbeat-timeout",
        str(limits.heartbeat_timeout),
    ]


def _parse_stats(line: str) -> dict[str, Any] | None:
    try:
        stats: dict[str, Any] = json.loads(line.removeprefix(STATS))
    except ValueError:
        return None
    return stats


def start_embedded(
    fleet_ca: Path,
    registration_config: Path | None,
    state: Path,
    *,
    strict: bool = False,
    quotas: dict[str, str] | None = None,
    metrics_port: int | None = None,
    state_db: Path | None = None,
    limits: Limits | None = None,
    api_port: int | None = None,
    api_rates: dict[str, str] | None = None,
    processes: int | None = None,
) -> EmbeddedEmulator:
    """`loadgen emulator serve` in a subprocess on a free loopback port, trusting
    the CA in ``fleet_ca``; returns once it is ready. It stops when this process
    ends, however it ends; call this from a thread that outlives it (the main
    thread): Linux ties the parent-death signal to the starting thread."""
    args = [
        sys.executable,
        "-m",
        "loadgen",
        "emulator",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ca",
        str(fleet_ca / CERT_FILE),
        "--state-dir",
        str(state),
        "--lifeline",
        str(os.getpid()),
    ]
    if registration_config is not None:
        args += ["--registration-config", str(registration_config)]
    if strict:
        args.append("--strict-resources")
    for name, rate in (quotas or {}).items():
        args += ["--quota", f"{name}={rate}"]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    if state_db is not None:
        args += ["--state", str(state_db)]
    if limits is not None:
        args += limit_options(limits)
    if api_port is not None:
        args += ["--api-port", str(api_port)]
    for name, rate in (api_rates or {}).items():
        args += ["--api-rate", f"{name}={rate}"]
    if processes is not None:
        args += ["--processes", str(processes)]
    state.mkdir(parents=True, exist_ok=True)
    log = state / "emulator.log"
    log_start = log.stat().st_size if log.exists() else 0
    # Its stderr goes to a file: a pipe nobody reads would fill and stall it.
    # Its stdin is a pipe never written: it reaches end-of-file when this process
    # is gone. A session of its own: Ctrl-C in a terminal is for this process,
    # which stops it once the run's counts are in.
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            start_new_session=True,
        )
    assert process.stdout is not None
    output = OutputLines(process.stdout.fileno())
    deadline = time.monotonic() + 60
    last = ""
    api_url = None
    while line := output.next(deadline):
        last = line
        api_match = _API_LINE.search(line)
        if api_match:
            api_url = api_match[1]
            continue
        match = _READY_LINE.search(line)
        if match:
            return EmbeddedEmulator(
                process, match[1], int(match[2]), Path(match[3]), api_url, log, log_start, output
            )
    process.kill()
    process.wait()
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [last.strip()]
    raise LoadgenError(f"the embedded emulator did not start ({log}): {tail[0][:300]}")
