"""What workers measure merges exactly into what one process would have measured."""

from __future__ import annotations

import random

from loadgen.device.lifecycle import DeviceResult
from loadgen.device.outcome import Outcome
from loadgen.metrics.stats import OTHER_REASONS, REASONS_KEPT, RunStats, ranked


def _results(n: int, seed: int) -> list[DeviceResult]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        outcome = rng.choice([Outcome.CONNECTED, Outcome.CONNECTED, Outcome.THROTTLED])
        result = DeviceResult(i, outcome=outcome, attempts=rng.randint(1, 4))
        result.throttled = rng.randint(0, result.attempts)  # throttled and retried, too
        result.lag = rng.random() / 100
        result.phases = [("tcp_connect", rng.random() / 1000), ("tls_handshake", rng.random())]
        if outcome is Outcome.CONNECTED:
            result.provision = rng.random() * 3
            result.phases.append(("connack", rng.random() / 10))
            result.publish_acks = [rng.random() / 50]
        else:
            result.reason = f"CONNACK quota_exceeded (0x97) #{rng.randint(1, 3)}"
            result.phase = "connack"
        out.append(result)
    return out


def _stats(results: list[DeviceResult]) -> RunStats:
    stats = RunStats()
    for i, r in enumerate(results):
        stats.started(i * 0.01)
        stats.add(r, i * 0.01, i * 0.01 + 0.5)
    return stats


def test_merging_worker_stats_equals_one_run_over_all_devices():
    results = _results(3000, 1)
    whole = _stats(results)
    merged = RunStats()
    for worker in range(3):
        part = RunStats()
        for i, r in enumerate(results):
            if i % 3 == worker:
                part.started(i * 0.01)
                part.add(r, i * 0.01, i * 0.01 + 0.5)
        merged.merge(RunStats.from_wire(part.to_wire()))
    assert merged.to_wire() == whole.to_wire()


def test_a_reason_names_its_lowest_devices_whatever_order_they_ended_and_merged_in():
    def failed(index: int) -> DeviceResult:
        result = DeviceResult(index, outcome=Outcome.ERROR, attempts=0)
        result.reason, result.phase = "its key file is missing", "preparing"
        return result

    indices = [41, 7, 99, 3, 12, 8]
    merged = RunStats()
    for part in (indices[:2], indices[2:]):
        stats = RunStats()
        for index in reversed(part):
            stats.add(failed(index), 0.0, 0.1)
        merged.merge(RunStats.from_wire(stats.to_wire()))
    key = "preparing: its key file is missing"
    assert merged.reasons["error"][key] == 6
    assert merged.reason_devices == {"error": {key: [3, 7, 8]}}


def _failed(index: int, reason: str) -> DeviceResult:
    result = DeviceResult(index, outcome=Outcome.CLOSED, attempts=1)
    result.reason, result.phase = reason, "connack"
    return result


def test_a_common_reason_that_comes_after_many_rare_ones_is_counted():
    stats = RunStats()
    for i in range(20):
        stats.add(_failed(i, f"rare {i}"), 0.0, 0.1)
    for i in range(20, 1020):
        stats.add(_failed(i, "common"), 0.0, 0.1)
    assert stats.reasons["closed"]["connack: common"] == 1000
    assert next(iter(ranked(stats.reasons["closed"]))) == "connack: common"


def test_reasons_past_the_bound_are_counted_together_and_add_up_to_the_outcome():
    stats = RunStats()
    for i in range(REASONS_KEPT + 5):
        stats.add(_failed(i, f"reason {i}"), 0.0, 0.1)
    reasons = stats.reasons["closed"]
    assert len(reasons) == REASONS_KEPT
    assert sum(reasons.values()) == stats.outcomes["closed"] == REASONS_KEPT + 5
    assert reasons[OTHER_REASONS] == 6
    assert stats.reason_devices["closed"][OTHER_REASONS] == [999, 1000, 1001]


def test_workers_reasons_past_the_bound_fold_alike_in_any_merge_order():
    parts = []
    for worker in range(3):
        part = RunStats()
        for i in range(worker, 1800, 3):
            part.add(_failed(i, f"reason {i % 1500}"), 0.0, 0.1)
        parts.append(part.to_wire())
    merged = []
    for order in ([0, 1, 2], [2, 0, 1]):
        whole = RunStats()
        for worker in order:
            whole.merge(RunStats.from_wire(parts[worker]))
        merged.append(whole)
    assert merged[0].to_wire() == merged[1].to_wire()
    reasons = merged[0].reasons["closed"]
    assert len(reasons) == REASONS_KEPT and sum(reasons.values()) == 1800
    assert reasons["connack: reason 0"] == 2  # the reasons seen twice are kept


def test_every_outcome_is_counted_zero_included():
    counts = _stats(_results(100, 2)).outcome_counts()
    assert list(counts) == [o.value for o in Outcome]
    assert sum(counts.values()) == 100


def test_workers_share_the_fleet_disjointly_and_completely(small_fleet):
    from loadgen.certs.store import FleetStore

    store = FleetStore(small_fleet.path)
    shares = [[d.index for d in store.devices(every=3, start=w)] for w in range(3)]
    assert sorted(i for share in shares for i in share) == [d.index for d in store.devices()]
    assert all(i % 3 == w for w, share in enumerate(shares) for i in share)


def test_latency_over_time_is_kept_by_the_second_devices_started():
    stats = RunStats()
    for second, seconds in ((0, 0.010), (0, 0.030), (2, 1.5)):
        result = DeviceResult(0, outcome=Outcome.CONNECTED, attempts=1, provision=seconds)
        stats.add(result, second + 0.5, second + 9.0)
    by_second = stats.phases_per_second["provision"]
    assert sorted(by_second) == [0, 2]
    assert by_second[0].count == 2 and by_second[2].count == 1
    assert abs(by_second[2].percentile_ms(50) - 1500) <= 1500 * 0.005


def test_a_provisioned_devices_time_breaks_down_into_parts_that_add_up():
    result = DeviceResult(0, outcome=Outcome.CONNECTED, attempts=2, lag=0.002, provision=2.5)
    result.phases = [("tcp_connect", 0.001), ("tls_handshake", 0.02), ("tcp_connect", 0.001)]
    result.phases += [("tls_handshake", 0.02), ("connack", 0.005)]
    stats = RunStats()
    stats.add(result, 0.0, 3.0)
    assert stats.provisioned == 1
    assert stats.breakdown == {
        "schedule_lag": 2000,
        "tcp_connect": 2000,
        "tls_handshake": 40000,
        "connack": 5000,
        "back_off": 2_451_000,
    }


def test_a_device_that_recovered_from_a_failure_adds_no_failure_reason():
    result = DeviceResult(0, outcome=Outcome.CONNECTED, attempts=3, provision=1.0)
    result.reason, result.phase = "closed by the server", "connack"
    stats = RunStats()
    stats.add(result, 0.0, 1.0)
    assert stats.reasons == {}


def test_a_provisioned_devices_breakdown_adds_its_phases_over_attempts_and_the_rest_is_back_off():
    one = DeviceResult(0, outcome=Outcome.CONNECTED, attempts=1, lag=0.001, provision=0.05)
    one.phases = [("tcp_connect", 0.002), ("tls_handshake", 0.02), ("connack", 0.003)]
    two = DeviceResult(1, outcome=Outcome.CONNECTED, attempts=2, lag=0.001, provision=2.0)
    two.phases = [("tcp_connect", 0.002), ("tls_handshake", 0.02), *one.phases]
    stats = RunStats()
    for result in (one, two):
        stats.add(result, 0.0, 1.0)
    assert stats.breakdown == {
        "schedule_lag": 2_000,
        "tcp_connect": 6_000,
        "tls_handshake": 60_000,
        "connack": 6_000,
        # 50 - 26 ms for the first; 2 s - 48 ms for the second (its JITP wait).
        "back_off": 24_000 + 1_952_000,
    }


def test_run_stats_add_up_time_in_flight_and_time_waiting_on_the_endpoint():
    stats = RunStats()
    stats.add(DeviceResult(1, endpoint_wait=2.0), started_offset=1.0, finished_offset=3.5)
    assert (stats.endpoint_wait_us, stats.in_flight_us) == (2_000_000, 2_500_000)
    assert RunStats.from_wire(stats.to_wire()).endpoint_wait_us == 2_000_000


def test_a_device_counted_as_it_connected_is_not_counted_again_as_it_ends():
    """A held device's connect is recorded when it connects (the live view shows
    it meanwhile); its end adds the rest."""
    [result] = [r for r in _results(10, 5) if r.provision is not None][:1]
    stats = RunStats()
    stats.arrived(result)
    assert stats.phases["provision"].count == 1 and stats.devices == 0
    stats.add(result, 0.0, 30.0)
    assert stats.phases["provision"].count == stats.phases["connack"].count == 1
    assert stats.phases["publish_ack"].count == 1 and stats.devices == 1
