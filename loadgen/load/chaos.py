"""Faults injected into a run on purpose, at chosen points of devices' lives, to
prove that every planned device is accounted for whatever it raises
(tests/test_accounting.py). Not a scenario setting: a plan made in code carries
it, and without one no device pays for it."""

from __future__ import annotations

import os
import random
import ssl
import time
from dataclasses import dataclass

from loadgen import mqtt
from loadgen.device.lifecycle import Clock, Device
from loadgen.transport.client import MqttClient, Target, connect
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import TlsSession

# Where a device can be made to fail: while it is made ready, before its TCP
# connect, just after its accepted CONNACK, in its first step; or its whole
# worker process exits at once when the device is due.
POINTS = ("preparing", "tcp", "connack", "acting", "worker")
# The exit code of a worker killed on purpose.
WORKER_EXIT = 71


class InjectedFault(Exception):
    """Raised where a ``Chaos`` plan says."""


@dataclass(frozen=True)
class Chaos:
    seed: int
    odds: tuple[tuple[str, float], ...]  # (point, probability per device)

    def point(self, index: int) -> str | None:
        """Where device ``index`` fails, if anywhere: the same for a given seed
        and index in every process."""
        u = random.Random(f"{self.seed}:{index}").random()
        total = 0.0
        for point, probability in self.odds:
            total += probability
            if u < total:
                return point
        return None

    def strike(self, point: str, index: int) -> None:
        """Fail here if this is device ``index``'s point."""
        if self.point(index) == point:
            if point == "worker":
                os._exit(WORKER_EXIT)
            raise InjectedFault(f"injected at {point}")


class ChaosDevice(Device):
    """The native device, failing where its run's ``Chaos`` says."""

    chaos: Chaos  # set on the subclass a worker makes for its plan

    async def _open(
        self,
        target: Target,
        tls: TlsSession | ssl.SSLContext | None,
        connect_packet: mqtt.Connect,
        times: AttemptTimes,
        *,
        clock: Clock = time.monotonic,
        timeout: float | None = None,
    ) -> MqttClient:
        index = self.spec.index
        self.chaos.strike("tcp", index)
        client = await connect(target, tls, connect_packet, times, clock=clock, timeout=timeout)
        try:
            self.chaos.strike("connack", index)
        except InjectedFault:
            client.abort()
            raise
        return client

    async def _act(self, client: MqttClient) -> None:
        self.chaos.strike("acting", self.spec.index)
        await super()._act(client)


def device_class(chaos: Chaos) -> type[ChaosDevice]:
    return type("ChaosDevice", (ChaosDevice,), {"chaos": chaos})
