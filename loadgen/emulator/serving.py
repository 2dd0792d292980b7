"""A serving process of `loadgen emulator serve --processes N`: the TLS + MQTT
sessions on listening sockets the account process made (one port for all,
SO_REUSEPORT), asking the account process over a socketpair (`peer`) what a
session needs. Started by ``loadgen.emulator.processes``; not a command of its own.

It ends with the account process: the socketpair's end-of-file, or the kernel's
parent-death signal, whichever comes first. Stop signals sent to the process
group are the account's to act on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from loadgen import lifeline, mqtt
from loadgen.emulator.account import Admission, Admitted
from loadgen.emulator.limits import Limits
from loadgen.emulator.peer import Handler, Peer, PeerLost
from loadgen.emulator.server import Emulator
from loadgen.fds import raise_to_hard_limit

# What a session is told when the account process is gone mid-question.
ACCOUNT_GONE = "account process gone"
ACCOUNT_FAILED = "account process failed"


class RemoteAccount:
    """The account, asked through the RPC; its trusted CAs as last broadcast."""

    def __init__(self) -> None:
        self.peer: Peer | None = None
        self.cas: tuple[str, ...] = ()
        # Each answer brings its own copy of the policy documents: one copy per
        # distinct set is kept, not one per held session.
        self._documents: dict[tuple[str, ...], tuple[str, ...]] = {}
        # Sessions that ended here (client id, turn) since the account last heard.
        self.ended: list[tuple[str, int]] = []

    def _shared(self, documents: tuple[str, ...]) -> tuple[str, ...]:
        known = self._documents.get(documents)
        if known is None:
            if len(self._documents) >= 10_000:  # a set per device, in a strange account
                self._documents.clear()
            known = self._documents[documents] = documents
        return known

    def admit(self, der: bytes, answer: Callable[[Admitted], None]) -> None:
        def got(result: Any) -> None:
            if isinstance(result, PeerLost):
                answer(ACCOUNT_GONE)
            elif result is None:  # admission failed there (a bug: its log says)
                answer(ACCOUNT_FAILED)
            elif isinstance(result, str):
                answer(result)
            else:
                answer(Admission(result[0], result[1], self._shared(result[2]), result[3]))

        assert self.peer is not None
        self.peer.call("admit", (der,), got)

    def allow_connect(self, client_id: str, answer: Callable[[str | None], None]) -> None:
        def got(result: Any) -> None:
            if isinstance(result, PeerLost):
                # The account gone: no quota can be checked; refuse as throttled.
                answer("connect")
            else:
                answer(result or None)  # "": allowed

        assert self.peer is not None
        self.peer.call("allow_connect", (client_id, self._take_ended()), got)

    def connected(self, client_id: str, turn: int) -> None:
        assert self.peer is not None
        self.peer.notify("connected", (client_id, turn, self._take_ended()))

    def left(self, client_id: str, turn: int) -> None:
        self.ended.append((client_id, turn))

    def _take_ended(self) -> list[tuple[str, int]]:
        """Sessions that ended here ride along: no message, and no wake-up of
        the account, of their own (one each cost about 8% of a reconnect's CPU)."""
        ended, self.ended = self.ended, []
        return ended

    def trusted(self) -> tuple[str, ...]:
        return self.cas


def stats_answer(emulator: Emulator) -> dict[str, Any]:
    return {
        "stats": emulator.stats.summary(),
        "cpu_s": time.process_time(),
        "pid": os.getpid(),
        # Connections it handled (accepted or refused): how the port spread them.
        "connects": sum(emulator.stats.connects.values()),
    }


async def serve(
    index: int, account_fd: int, listen_fds: list[int], cert: str, key: str, limits: Limits
) -> int:
    account = RemoteAccount()
    emulator = Emulator(None, cert, key, limits=limits, account=account)
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    servers: list[asyncio.Server] = []
    stopping = False
    done = asyncio.Event()
    who = f"loadgen emulator serving process {index}"

    async def trust(cas: tuple[str, ...]) -> bool:
        account.cas = tuple(cas)
        if not servers:  # the first: the trust set is known, now serve
            servers.extend(await emulator.serve_on(sockets))
        return True

    async def stop() -> dict[str, Any]:
        nonlocal stopping
        stopping = True
        for server in servers:
            server.close()
        return stats_answer(emulator)

    def route(topic: str, payload: bytes) -> None:
        emulator.route_here(mqtt.Publish(topic, payload))

    def lost(exc: Exception | None) -> None:
        if not stopping:
            lifeline.parent_lost(who)
        done.set()

    handlers: dict[str, Handler] = {
        # The account's heartbeat: answered from the loop, so only a process
        # that is stopped or wedged leaves it unanswered.
        "ping": lambda: True,
        "trust": trust,
        "stats": lambda: stats_answer(emulator),
        "stop": stop,
        "route": route,
        "take_over": emulator.take_over,
    }
    peer = await Peer.on_socket(socket.socket(fileno=account_fd), handlers, lost)
    account.peer = peer
    emulator.forward = lambda packet: peer.notify("publish", (packet.topic, packet.payload))
    emulator.on_subscribers = lambda any_: peer.notify("subscribers", (any_,))
    await done.wait()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loadgen.emulator.serving")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--account-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    parser.add_argument("--server-cert", required=True)
    parser.add_argument("--server-key", required=True)
    parser.add_argument("--limits", required=True, help="Limits' fields, as JSON")
    args = parser.parse_args(argv)
    # SIGKILL: nothing here is worth keeping once the account is gone.
    lifeline.die_with_parent(args.parent, signal.SIGKILL)
    lifeline.ignore_stop_signals()
    # The account answers SIGUSR1 with the counts, asking this process for its
    # own over the socket: sent to the process group, it ended this one.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    raise_to_hard_limit()
    limits = Limits(**json.loads(args.limits))
    code = uvloop.run(
        serve(
            args.index,
            args.account_fd,
            args.listen_fd,
            args.server_cert,
            args.server_key,
            limits,
        )
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
