"""The run as Prometheus reads it: the metrics computed at scrape time from the
workers' latest measurements, merged."""

from __future__ import annotations

import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.load.runner import Progress, RunSnapshot, merge_progress
from loadgen.metrics.prometheus import LiveRun, registry_for
from loadgen.metrics.stats import RunStats
from tests.test_report_merge import _plan


def _value(live: LiveRun, name: str) -> float:
    exposition = generate_latest(registry_for(live)).decode()
    families = text_string_to_metric_families(exposition)
    [value] = [s.value for f in families for s in f.samples if s.name == name]
    return value


def _started(per_second: dict[int, int]) -> RunStats:
    stats = RunStats()
    for second, n in per_second.items():
        for i in range(n):
            stats.started(second + i / n)
    return stats


def test_the_achieved_rate_is_the_last_second_the_snapshot_holds_whole():
    live = LiveRun(_plan(500))
    live.started_at = time.time() - 5.2  # scraped 5.2 s into the run
    # Measured at 4.7 s: second 4 is only partly in it.
    live.snapshot = RunSnapshot(85, 0, 0, _started({3: 50, 4: 35}), at=4.7)
    assert _value(live, "loadgen_arrival_rate_achieved") == 50


def test_a_merged_snapshot_is_as_old_as_its_oldest_workers_measurement():
    parts = [Progress(10, 0, 0, RunStats().to_wire(since=0), at=at) for at in (4.9, 4.7)]
    assert merge_progress(parts).at == 4.7


def test_a_step_ending_leaves_what_a_scrape_already_holds_untouched():
    """A scrape runs in another thread: the finished steps and the snapshot are
    replaced together, never changed in place, so counters never go back."""
    from loadgen.metrics.prometheus import Exporter

    def step(devices: int) -> RunStats:
        stats = _started({0: devices})
        stats.devices = devices  # all of them finished
        return stats

    exporter = Exporter(_plan(500), None, None, "job", say=lambda _line: None)
    exporter.step_done(step(10))
    held_before, _, held_total = exporter.live.view()
    assert held_before is not None and held_total is not None
    exporter.progress(RunSnapshot(7, 0, 0, step(7), at=1.0), 1.0)
    exporter.step_done(step(7))
    assert held_before.devices == held_total.devices == 10  # as the scrape read them
    assert _value(exporter.live, "loadgen_devices_started_total") == 17
