"""The account process's side of ``--processes N``: N listening sockets on one
port (SO_REUSEPORT: the kernel spreads the connections), N serving processes
(`serving`), and the answers to what their sessions ask, from the one registry
and the one limiter here (quotas are the account's, not each process's).

Serving processes are spawned, not forked: they start without the registry (a
fleet of 100,000 certificates is the account's memory, not N copies of it made
private page by page), without SQLite's handle, and without the threads the
account process may have (/metrics).

A serving process that dies stops the emulator: all the others, a line naming
it and how it ended, a non-zero exit. Restarting it would keep a run going with
the counts of its sessions lost; a run's numbers are worth more than its length.
One that stops answering (stopped, hung, wedged) is killed and counts as dead:
the kernel goes on queueing its share of the port's connections on its sockets,
so the emulator would otherwise half-serve for as long as it lasts. Silence is
a heartbeat left unanswered, or more than `PEER_WRITE_BUFFER` of what the
account sent it left unread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import lifeline
from loadgen.cores import cores
from loadgen.emulator.limits import Limits
from loadgen.emulator.local import LocalAccount
from loadgen.emulator.peer import Peer, PeerLost, PeerStalled
from loadgen.emulator.server import EmulatorStats
from loadgen.errors import UserError

# How long serving processes may take to start (spawned: an interpreter and its
# imports each, on a loaded machine), to acknowledge a trust set, to stop.
START_TIMEOUT = 60.0
TRUST_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# How long each serving process has to give its counts (the stats line, a
# /metrics scrape): one silent process costs only its own counts. Under the 10 s
# a run waits for the stats line; never longer than the heartbeat's bound.
COUNTS_TIMEOUT = 5.0
# How often the account pings each serving process (more often under a shorter
# heartbeat timeout): found silent within the timeout plus this.
HEARTBEAT_INTERVAL = 1.0
# What the account may hold for one serving process that it has not read
# (PUBLISHes routed to its subscribers, mostly): past it, that process is
# stalled. 512 times AWS IoT's largest message: far more than a process that
# reads at all falls behind, and a bound on the account's memory (N times it).
PEER_WRITE_BUFFER = 64 * 1024 * 1024
# A serving process this far behind on reading gets no more PUBLISHes routed
# to it: they are dropped and counted, as a slow subscriber's QoS 0 messages
# are. A process that reads, however slowly (a fan-out of large payloads), is
# then never near PEER_WRITE_BUFFER (this plus one packet of at most 32 MiB),
# nor is a heartbeat ping queued behind more than this.
ROUTE_BACKLOG = 8 * 1024 * 1024


def default_processes() -> int:
    return cores()


@dataclass
class _Serving:
    index: int
    process: subprocess.Popen[bytes]
    peer: Peer
    subscribers: bool = False
    cpu_s: float = 0.0  # as of its last answer
    connects: int = 0  # connections it handled, as of its last answer
    ended: str | None = None  # how, once it is gone ("was killed by SIGKILL")


@dataclass(frozen=True)
class Totals:
    """The whole emulator's counts, and each process's CPU time."""

    stats: EmulatorStats
    processes: list[dict[str, Any]]  # serving processes: index, pid, cpu_s
    account_cpu_s: float
    # Serving processes whose counts are not in ``stats``: index, pid, why.
    missing: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def listening_sockets(host: str, port: int, copies: int) -> list[list[socket.socket]]:
    """``copies`` sets of listening sockets on every address of ``host``, all on
    one port (port 0: the first bind picks it)."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except (OSError, UnicodeError) as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc})") from None
    addresses = list(dict.fromkeys((info[0], info[4][0]) for info in infos))
    sets: list[list[socket.socket]] = []
    chosen = port
    try:
        for _ in range(copies):
            sockets: list[socket.socket] = []
            sets.append(sockets)
            for family, address in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address, chosen))
                chosen = sock.getsockname()[1]
                sock.listen(4096)
    except OSError as exc:
        problem = UserError(f"--port {port}: cannot listen on {host} ({exc.strerror})")
    else:
        every = [sock for sockets in sets for sock in sockets]
        if (other := _others_listening(every)) is None:
            return sets
        problem = UserError(f"--port {chosen}: another process listens on {other} too")
    for sockets in sets:
        for sock in sockets:
            sock.close()
    raise problem


def _others_listening(ours: list[socket.socket]) -> str | None:
    """An address and port of ``ours`` that a socket of another process listens
    on as well, or None. SO_REUSEPORT lets any process of the same user join a
    port: two emulators started together both passed the check before binding,
    and the kernel shared the devices out between their two registries. Told by
    the sockets' inodes in /proc/net/tcp and tcp6 (this network namespace's)."""
    mine = {os.fstat(sock.fileno()).st_ino for sock in ours}
    bound = {_key(sock.getsockname()[0], sock.getsockname()[1]) for sock in ours}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != _LISTEN or inode in mine:
                continue
            address, port = _proc_address(local)
            if _key(address, port) in bound:
                return f"{address}:{port}"
    return None


_LISTEN = "0A"  # TCP_LISTEN, as /proc/net/tcp writes the state


def _key(address: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return ipaddress.ip_address(address.split("%")[0]), port


def _proc_address(text: str) -> tuple[str, int]:
    """``0100007F:22B8`` as ("127.0.0.1", 8888): the address in 32-bit words of
    the host's byte order, the port in hex."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port, 16)


class ServingProcesses:
    def __init__(
        self, account: LocalAccount, server_cert: str, server_key: str, limits: Limits
    ) -> None:
        self.account = account
        self.server_cert = server_cert
        self.server_key = server_key
        self.limits = limits
        self.serving: list[_Serving] = []
        # Which serving process holds each client id's session (until it ends
        # there), and its turn in that process: where a newer session's
        # take-over goes.
        self.holders: dict[str, tuple[int, int]] = {}  # client id -> (process, turn)
        self.stopping = False
        # Set when a serving process ended on its own: why, in one line.
        self.died = asyncio.Event()
        self.death = ""
        self._trust_version = -1
        self._dying: asyncio.Future[None] | None = None
        self._heartbeats: list[asyncio.Task[None]] = []

    async def start(self, host: str, port: int, count: int) -> tuple[str, int]:
        """Listen, start ``count`` serving processes, and return the address
        once each serves with the account's trust set."""
        sets = listening_sockets(host, port, count)
        bound = sets[0][0].getsockname()
        try:
            for index, sockets in enumerate(sets):
                self.serving.append(await self._spawn(index, sockets))
        finally:
            # Theirs now: a copy kept here would queue connections nobody
            # accepts once its process is gone (half-serving).
            for sockets in sets:
                for sock in sockets:
                    sock.close()
        settled = self.settle()
        if settled is not None:
            try:
                await asyncio.wait_for(settled, START_TIMEOUT)
            except (TimeoutError, PeerLost):
                await self.stop()
                raise UserError("the emulator's serving processes did not start") from None
        self._heartbeats = [asyncio.create_task(self._heartbeat(s)) for s in self.serving]
        return bound[0], bound[1]

    async def _spawn(self, index: int, sockets: list[socket.socket]) -> _Serving:
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(s.fileno() for s in sockets)]
        limits = json.dumps(dataclasses.asdict(self.limits))
        args = [
            *(sys.executable, "-m", "loadgen.emulator.serving"),
            *("--index", str(index), "--parent", str(os.getpid())),
            *("--account-fd", str(theirs.fileno())),
            *(a for s in sockets for a in ("--listen-fd", str(s.fileno()))),
            *("--server-cert", self.server_cert, "--server-key", self.server_key),
            *("--limits", limits),
        ]
        # Its stdout is not ours: the ready and stats lines are the account's.
        # Ctrl-C reaches the whole group: held back until it ignores them, as a
        # run's workers are (an interpreter interrupted in its start-up died with
        # a traceback, and the emulator with it).
        with lifeline.stop_signals_blocked():
            process = subprocess.Popen(
                args, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
        theirs.close()
        handlers = self._handlers(index)
        peer = await Peer.on_socket(
            ours, handlers, lambda exc: self._lost(index, exc), PEER_WRITE_BUFFER
        )
        return _Serving(index, process, peer)

    def _handlers(self, index: int) -> dict[str, Any]:
        account = self.account

        def admit(der: bytes) -> Any:
            answer = account.admission(der)
            return answer if isinstance(answer, str) else answer.to_wire()

        def publish(topic: str, payload: bytes) -> None:
            for other in self.serving:
                if other.index != index and other.subscribers:
                    if other.peer.backlog() > ROUTE_BACKLOG:
                        account.stats.dropped["routed to a serving process behind on reading"] += 1
                        continue
                    other.peer.notify("route", (topic, payload))

        def subscribers(any_: bool) -> None:
            self.serving[index].subscribers = any_

        holders = self.holders

        def forget(ended: list[tuple[str, int]]) -> None:
            for gone, turn in ended:
                # Only if no connect of it came since (here or elsewhere).
                if holders.get(gone) == (index, turn):
                    del holders[gone]

        def allow_connect(client_id: str, ended: list[tuple[str, int]]) -> str:
            """The quota exceeded, or "" (allowed)."""
            forget(ended)
            return account.limiter.allow_connect(client_id) or ""

        def connected(client_id: str, turn: int, ended: list[tuple[str, int]]) -> None:
            """A CONNACK success in this process (its ``turn`` there): the
            session of ``client_id`` another process holds is taken over. Only
            then, as in one process: a CONNECT refused (not authorized), or
            whose client left before its answer, takes nothing over."""
            forget(ended)
            previous = holders.get(client_id)
            holders[client_id] = (index, turn)
            if previous is not None and previous[0] != index:
                # Its turn: a newer session of that process, connected since,
                # is not the one taken over.
                self.serving[previous[0]].peer.notify("take_over", (client_id, previous[1]))

        return {
            "admit": admit,
            "allow_connect": allow_connect,
            "connected": connected,
            "publish": publish,
            "subscribers": subscribers,
        }

    async def _heartbeat(self, serving: _Serving) -> None:
        """Ping ``serving`` until it is gone; cut it off (a death) once a ping
        goes unanswered for the heartbeat timeout."""
        timeout = self.limits.heartbeat_timeout
        interval = min(HEARTBEAT_INTERVAL, timeout / 4)
        loop = asyncio.get_running_loop()
        peer = serving.peer
        while not peer.lost and not self.stopping:
            answered: asyncio.Future[None] = loop.create_future()

            def pong(result: Any, answered: asyncio.Future[None] = answered) -> None:
                if not answered.done():
                    answered.set_result(None)

            peer.call("ping", (), pong)
            await asyncio.wait([answered], timeout=timeout)
            if not answered.done():
                # The account's own lag is not the process's silence: an answer
                # already waiting on the socket is read before judging.
                for _ in range(2):
                    await asyncio.sleep(0)
            if not answered.done():
                if not self.stopping:
                    peer.fail(PeerStalled(f"answered no heartbeat for {timeout:g} s"))
                return
            await asyncio.sleep(interval)

    def _lost(self, index: int, exc: Exception | None = None) -> None:
        if self.stopping or self.died.is_set() or self._dying:
            if isinstance(exc, PeerStalled):  # not ours to wait for: it ends now
                self.serving[index].process.kill()
            return
        self._dying = asyncio.ensure_future(self._died(index, exc))

    async def _died(self, index: int, exc: Exception | None) -> None:
        serving = self.serving[index] if index < len(self.serving) else None
        status = None
        if isinstance(exc, PeerStalled):
            # Alive and silent: it would hold its share of the port's
            # connections unanswered. SIGKILL ends a stopped process too.
            ended = f"stopped answering: it {exc}; the emulator killed it"
            if serving is not None:
                serving.process.kill()
                await _exit_status(serving.process, STOP_TIMEOUT)
        else:
            if serving is not None:
                status = await _exit_status(serving.process, 2.0)
                if status is None:
                    serving.process.kill()
            ended = how_ended(status)
        if serving is not None:
            serving.ended = ended
        pid = serving.process.pid if serving is not None else "?"
        self.death = f"serving process {index} (pid {pid}) {ended}"
        self.died.set()

    def settle(self) -> Coroutine[Any, Any, None] | None:
        """When the registry's CAs moved: every serving process told the new
        trust set (await it); None when nothing moved."""
        version = self.account.registry.ca_version
        if version == self._trust_version:
            return None
        self._trust_version = version
        cas = self.account.trusted()
        return self._broadcast(cas)

    async def _broadcast(self, cas: tuple[str, ...]) -> None:
        live = [s for s in self.serving if not s.peer.lost]
        await asyncio.wait_for(
            asyncio.gather(*(s.peer.ask("trust", cas) for s in live)), TRUST_TIMEOUT
        )

    async def _counts(self, serving: _Serving, method: str) -> dict[str, Any] | str:
        """What ``serving`` answers to ``method`` (its counts), or why it gave none."""
        if serving.peer.lost:
            return serving.ended or "gone"
        within = min(COUNTS_TIMEOUT, self.limits.heartbeat_timeout)
        try:
            answer = await asyncio.wait_for(serving.peer.ask(method), within)
        except TimeoutError:
            return f"no answer in {within:g} s"
        except PeerLost as exc:
            return serving.ended or str(exc)
        if not isinstance(answer, dict):  # its handler failed (a bug: its log says)
            return "its answer failed"
        return answer

    async def totals(self, method: str = "stats") -> Totals:
        """The account's counts plus those of every serving process that gives
        them now; each has its own bound, and those that do not are named."""
        answers = await asyncio.gather(*(self._counts(s, method) for s in self.serving))
        stats = EmulatorStats()
        stats.add(self.account.stats.summary())
        missing: list[dict[str, Any]] = []
        for serving, answer in zip(self.serving, answers, strict=True):
            if isinstance(answer, str):
                missing.append({"index": serving.index, "pid": serving.process.pid, "why": answer})
                continue
            stats.add(answer["stats"])
            serving.cpu_s = answer["cpu_s"]
            serving.connects = answer["connects"]
        processes = [
            {
                "index": s.index,
                "pid": s.process.pid,
                "cpu_s": round(s.cpu_s, 3),
                "connects": s.connects,
            }
            for s in self.serving
        ]
        return Totals(stats, processes, time.process_time(), missing)

    async def stop(self) -> Totals:
        """Stop every serving process; the counts they had (those that gave none named)."""
        self.stopping = True
        for heartbeat in self._heartbeats:
            heartbeat.cancel()
        totals = await self.totals("stop")
        silent = {entry["index"] for entry in totals.missing}
        for serving in self.serving:
            serving.peer.close()
            if serving.index in silent:
                # It did not answer "stop": it will not notice its socketpair close.
                serving.process.kill()
        deadline = time.monotonic() + STOP_TIMEOUT
        for serving in self.serving:
            left = max(0.1, deadline - time.monotonic())
            if await _exit_status(serving.process, left) is None:
                serving.process.kill()
                serving.process.wait()
        return totals


async def _exit_status(process: subprocess.Popen[bytes], within: float) -> int | None:
    """Its exit status once it has ended, None if it is still running after
    ``within`` seconds (the loop goes on meanwhile: closing its socketpair is
    what ends it)."""
    deadline = time.monotonic() + within
    while (status := process.poll()) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return status


def how_ended(status: int | None) -> str:
    """How a process ended, from its exit status, as a phrase ("was killed by
    SIGKILL"); None: it has not ended, yet it no longer answers."""
    if status is None:
        return "stopped answering"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"
