"""Open-model arrival schedules."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.load.schedule import (
    Burst,
    ConstantArrival,
    RampingArrival,
    Stage,
    offsets,
    target_rate,
)
from loadgen.load.shard import part_of
from loadgen.report.build import target_series
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import Scenario


def test_constant_arrival_spaces_devices_evenly():
    assert list(offsets(ConstantArrival(4), 5)) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_burst_starts_everyone_at_once():
    assert list(offsets(Burst(), 3)) == [0.0, 0.0, 0.0]
    assert target_rate(Burst(), 0) is None


def test_a_ramp_from_zero_follows_the_integral_of_the_rate():
    # 0 -> 10/s over 2 s: N(t) = 2.5 t^2, so device k arrives at sqrt(k / 2.5).
    times = list(offsets(RampingArrival((Stage(10, 2),)), 11))
    assert times == pytest.approx([(k / 2.5) ** 0.5 for k in range(11)])


def test_after_the_stages_devices_keep_the_last_rate():
    times = list(offsets(RampingArrival((Stage(10, 1),), start_rate=10), 15))
    assert times[10:] == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4])


def test_the_target_rate_moves_linearly_through_stages():
    ramp = RampingArrival((Stage(100, 10), Stage(100, 5), Stage(0, 5)), start_rate=20)
    assert target_rate(ramp, 0) == 20
    assert target_rate(ramp, 5) == pytest.approx(60)
    assert target_rate(ramp, 12) == 100
    assert target_rate(ramp, 17.5) == pytest.approx(50)


@given(
    stages=st.lists(st.tuples(st.floats(0.5, 500), st.floats(0.1, 20)), min_size=1, max_size=4),
    start=st.floats(0, 100),
    count=st.integers(1, 300),
)
def test_ramping_offsets_never_go_back_in_time(stages, start, count):
    ramp = RampingArrival(tuple(Stage(r, d) for r, d in stages), start_rate=start)
    times = list(offsets(ramp, count))
    assert len(times) == count
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize(("total", "workers"), [(500, 2), (7, 3), (4, 4), (1000, 1)])
def test_in_flight_slots_are_shared_out_whole(total, workers):
    parts = [part_of(total, workers, w) for w in range(workers)]
    assert max(parts) - min(parts) <= 1
    assert sum(parts) == total


def test_a_stopped_runs_target_series_ends_where_it_stopped(tmp_path):
    # A second device a million seconds out: the series of the whole schedule
    # would be a million entries, of a run stopped 10 s in.
    scenario = Scenario.model_validate(
        {
            "name": "slow",
            "endpoint": "127.0.0.1:8883",
            "fleet": {"ca": str(tmp_path / "ca"), "store": str(tmp_path / "fleet"), "count": 2},
            "load": {"executor": "constant-arrival-rate", "rate": "0.000001/s"},
        }
    )
    plan = build_plan(scenario, endpoint=("127.0.0.1", 8883))
    assert target_series(plan, until=10.0) == [1]
