"""The emulator's Prometheus metrics: provisioning outcomes as AWS names them
(ProvisionThing.Success, .ClientError, .ServerError), connects accepted and
refused by reason, throttles by quota, sessions closed for a broken limit,
messages dropped for slow consumers, registry sizes, each process's CPU time,
and which serving processes' counts a scrape is missing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loadgen.emulator.server import CLOSE_REASONS, Emulator
from loadgen.metrics.http import serve_metrics

if TYPE_CHECKING:
    from loadgen.emulator.processes import Totals

PREFIX = "loadgen_emulator"


class EmulatorCollector(Collector):
    """Reads the emulator's counters at scrape time (no second set of counts).
    ``totals``: the whole emulator's, asked of its serving processes at each
    scrape, when it has them; else this process's own."""

    def __init__(self, emulator: Emulator, totals: Callable[[], Totals] | None = None) -> None:
        self.emulator = emulator
        self.totals = totals

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        totals = self.totals() if self.totals is not None else None
        stats = totals.stats if totals is not None else self.emulator.stats
        # Which process is busy: the capacity verdict's question, on a dashboard.
        cpu = CounterMetricFamily(
            f"{PREFIX}_cpu_seconds",
            "CPU time (user + system) of each emulator process: its serving processes "
            'by index and the account process ("account"); one process serving: "0"',
            labels=["process"],
        )
        if totals is None:
            cpu.add_metric(["0"], time.process_time())
        else:
            for process in totals.processes:
                cpu.add_metric([str(process["index"])], process["cpu_s"])
            cpu.add_metric(["account"], totals.account_cpu_s)
        yield cpu
        if totals is not None:
            # The counts below are short by those of a process at 0 (hung, stopped, dead).
            up = GaugeMetricFamily(
                f"{PREFIX}_serving_process_up",
                "1 when the serving process gave its counts for this scrape, 0 when not "
                "(its counts are missing from the totals)",
                labels=["process"],
            )
            silent = {entry["index"] for entry in totals.missing}
            for process in totals.processes:
                up.add_metric([str(process["index"])], 0 if process["index"] in silent else 1)
            yield up
        registry = self.emulator.registry
        provision = CounterMetricFamily(
            f"{PREFIX}_provision_thing",
            "JITP provisionings by result (AWS: ProvisionThing.Success/ClientError/ServerError)",
            labels=["result"],
        )
        for result in ("Success", "ClientError", "ServerError", "Throttled"):
            provision.add_metric([result], stats.provision.get(result, 0))
        yield provision
        connects = CounterMetricFamily(
            f"{PREFIX}_connects", "Connections accepted, or why refused", labels=["result"]
        )
        for result, n in sorted(dict(stats.connects).items()):  # a copy: the loop writes it
            connects.add_metric([result], n)
        yield connects
        throttles = CounterMetricFamily(
            f"{PREFIX}_throttles", "Requests refused by a quota", labels=["quota"]
        )
        for quota in ("connect", "connect-per-client", "provision"):
            throttles.add_metric([quota], stats.throttles.get(quota, 0))
        yield throttles
        # Every reason is exported from the start, so a panel can show a zero.
        closes = CounterMetricFamily(
            f"{PREFIX}_closes",
            "Sessions ended by the emulator: a limit or the protocol broken",
            labels=["reason"],
        )
        for reason in CLOSE_REASONS:
            closes.add_metric([reason], stats.closes.get(reason, 0))
        yield closes
        dropped = CounterMetricFamily(
            f"{PREFIX}_dropped_messages",
            "Messages not delivered to a subscriber: over its write buffer, or its maximum",
            labels=["reason"],
        )
        dropped.add_metric(["slow consumer"], stats.dropped.get("slow consumer", 0))
        for reason, n in sorted(dict(stats.dropped).items()):
            if reason != "slow consumer":
                dropped.add_metric([reason], n)
        yield dropped
        sizes = GaugeMetricFamily(
            f"{PREFIX}_registry_size", "Registry entries by kind", labels=["kind"]
        )
        for kind, n in (
            ("ca", len(registry.cas)),
            ("certificate", len(registry.certificates)),
            ("thing", len(registry.things)),
            ("policy", len(registry.policies)),
        ):
            sizes.add_metric([kind], n)
        yield sizes
        api = self.emulator.api_stats
        if api is not None:  # the control plane's, with --api-port
            for name, help_text, label, counts in (
                ("api_calls", "Control-plane calls answered, by operation", "operation", api.calls),
                ("api_errors", "Control-plane calls refused, by error code", "code", api.errors),
                (
                    "api_throttles",
                    "Control-plane calls throttled (ThrottlingException), by operation",
                    "operation",
                    api.throttled,
                ),
            ):
                family = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=[label])
                for key, n in sorted(dict(counts).items()):  # a copy: the loop writes it
                    family.add_metric([key], n)
                yield family


def serve(
    emulator: Emulator,
    host: str,
    port: int,
    totals: Callable[[], Totals] | None = None,
) -> None:
    """Serve /metrics from a background thread."""
    registry = CollectorRegistry()
    registry.register(EmulatorCollector(emulator, totals))
    serve_metrics(registry, host, port)
