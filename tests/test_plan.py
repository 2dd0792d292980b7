"""The plan the workers receive, and the templates over a device's manifest line
they render as each device is prepared."""

from __future__ import annotations

import pickle

import pytest

from loadgen.certs.store import Device
from loadgen.errors import UserError
from loadgen.load.plan import device_client_id, render
from loadgen.load.runner import Routes
from loadgen.load.schedule import ConstantArrival
from loadgen.load.shard import Shard
from loadgen.run import RunOptions, make_plan, workers_for
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import Scenario
from tests.processes import heavy_modules_after


def _device(subject: dict[str, str]) -> Device:
    return Device(
        index=42,
        client_id="device-0000042",
        certificate_id="ab" * 32,
        subject=subject,
        key_type="ec-p256",
        fault=None,
        cert="devices/0000/0000042.pem",
        key="devices/0000/0000042.key",
        not_before="2026-01-01T00:00:00Z",
        not_after="2027-01-01T00:00:00Z",
    )


def test_a_template_renders_fields_with_format_specs_and_missing_subject_fields_empty():
    device = _device({"common_name": "bulb-42"})
    rendered = render("{common_name}/{index:05d}/{serial_number}/{client_id}", device, "bulb")
    assert rendered == "bulb-42/00042//bulb"


def test_a_client_id_template_that_renders_empty_falls_back_to_the_manifests():
    assert device_client_id("{serial_number}", _device({})) == "device-0000042"


def test_a_worker_takes_its_plan_without_loading_the_scenarios_schema(tmp_path):
    scenario = Scenario.model_validate(
        {
            "name": "plan",
            "endpoint": "127.0.0.1:8883",
            "fleet": {"ca": str(tmp_path / "ca"), "store": str(tmp_path / "fleet"), "count": 40},
            "load": {
                "executor": "ramping-arrival-rate",
                "stages": [{"rate": "20/s", "duration": "2s"}],
            },
            "after_connect": [
                {"publish": {"topic": "dt/{client_id}", "qos": 1}},
                {"subscribe": {"topic": "cmd/{client_id}"}},
                {"hold": {"duration": "1s"}},
            ],
        }
    )
    plan = build_plan(scenario, endpoint=("127.0.0.1", 8883), workers=2, shard=Shard(1, 2))
    (tmp_path / "plan.pickle").write_bytes(pickle.dumps(plan))
    # What a spawned worker does: import its module, unpickle its arguments.
    worker = (
        "import pickle, loadgen.load.workers\n"
        f"plan = pickle.loads(open({str(tmp_path / 'plan.pickle')!r}, 'rb').read())\n"
        "assert type(plan).__name__ == 'RunPlan', plan"
    )
    assert heavy_modules_after(worker) == []


def _planned(
    tmp_path, monkeypatch, load, *, jitp=False, after_connect=(), max_in_flight=100, driver="native"
):
    """Workers ``loadgen run`` plans without --workers on a machine of 8 cores
    (open files permitting: tests/test_run.py plans by those)."""
    monkeypatch.setattr("loadgen.run.default_workers", lambda: 8)
    scenario = Scenario.model_validate(
        {
            "name": "workers",
            "endpoint": "127.0.0.1:8883",
            "fleet": {"ca": str(tmp_path / "ca"), "store": str(tmp_path / "fleet"), "count": 40},
            "jitp": {"expect_first_connect_rejected": jitp},
            "mqtt": {"driver": driver},
            "load": {**load, "max_in_flight": max_in_flight},
            "after_connect": list(after_connect),
        }
    )
    return workers_for(build_plan(scenario, endpoint=("127.0.0.1", 8883)))


def _constant(rate):
    return {"executor": "constant-arrival-rate", "rate": rate}


def test_a_run_plans_a_worker_per_300_connects_a_second(tmp_path, monkeypatch):
    assert _planned(tmp_path, monkeypatch, _constant("250/s")) == 1
    assert _planned(tmp_path, monkeypatch, _constant("300/s")) == 1
    assert _planned(tmp_path, monkeypatch, _constant("301/s")) == 2
    assert _planned(tmp_path, monkeypatch, _constant("1000/s")) == 4


def test_a_jitp_device_counts_as_two_connects_when_workers_are_planned(tmp_path, monkeypatch):
    assert _planned(tmp_path, monkeypatch, _constant("250/s"), jitp=True) == 2


def test_a_devices_messages_count_a_tenth_of_a_connect_each(tmp_path, monkeypatch):
    publish = {"publish": {"topic": "dt/{client_id}", "qos": 1, "count": 15}}
    subscribe = {"subscribe": {"topic": "cmd/{client_id}"}}
    # 120/s x (1 connect + 16 messages / 10) = 312 connects a second: 2 workers.
    assert _planned(tmp_path, monkeypatch, _constant("120/s"), after_connect=[publish]) == 1
    both = [publish, subscribe]
    assert _planned(tmp_path, monkeypatch, _constant("120/s"), after_connect=both) == 2


def test_a_held_devices_pingreqs_count_as_its_messages(tmp_path, monkeypatch):
    # 125/s x (2 connects + (1 publish + 600 s / 60 s pings) / 10) = 387.5: 2.
    publish = {"publish": {"topic": "dt/{client_id}", "qos": 1}}
    hold = {"hold": {"duration": "10m", "keepalive": "60s"}}
    planned = _planned(
        tmp_path, monkeypatch, _constant("125/s"), jitp=True, after_connect=[publish, hold]
    )
    assert planned == 2
    assert _planned(tmp_path, monkeypatch, _constant("125/s"), jitp=True) == 1


def test_a_ramp_plans_workers_for_its_peak_rate(tmp_path, monkeypatch):
    ramp = {
        "executor": "ramping-arrival-rate",
        "stages": [{"rate": "900/s", "duration": "10s"}, {"rate": "100/s", "duration": "10s"}],
    }
    assert _planned(tmp_path, monkeypatch, ramp) == 3


def test_a_burst_or_a_rate_past_the_cores_plans_every_core(tmp_path, monkeypatch):
    assert _planned(tmp_path, monkeypatch, {"executor": "burst"}) == 8
    assert _planned(tmp_path, monkeypatch, _constant("5000/s")) == 8


def test_the_aiomqtt_driver_plans_every_core_whatever_the_rate(tmp_path, monkeypatch):
    assert _planned(tmp_path, monkeypatch, _constant("10/s"), driver="aiomqtt") == 8


def _scenario(tmp_path, load, **fields):
    return Scenario.model_validate(
        {
            "name": "plan",
            "endpoint": "127.0.0.1:8883",
            "fleet": {"ca": str(tmp_path / "ca"), "store": str(tmp_path / "fleet"), "count": 40},
            "load": load,
            **fields,
        }
    )


@pytest.mark.parametrize("workers", [None, "auto", 4])
def test_a_run_never_starts_more_workers_than_devices_it_may_have_in_flight(
    tmp_path, monkeypatch, workers
):
    # Each worker holds one device in flight at least: 4 workers under a bound
    # of 1 connected 4 at a time.
    monkeypatch.setattr("loadgen.run.default_workers", lambda: 8)
    scenario = _scenario(tmp_path, {"executor": "burst", "max_in_flight": 2})
    assert make_plan(scenario, RunOptions(workers=workers)).workers == 2


def test_the_shards_parts_of_max_in_flight_add_up_to_it():
    parts = [Shard(i, 4).share(10, ("load", "max_in_flight")) for i in range(4)]
    assert parts == [3, 3, 2, 2]


def test_a_max_in_flight_smaller_than_the_shards_is_refused():
    with pytest.raises(UserError, match=r"load.max_in_flight: 3 shared by 4 shards .* --shard 3/4"):
        Shard(3, 4).share(3, ("load", "max_in_flight"))


def test_the_shards_of_one_run_are_parts_of_one_whole_run_whatever_their_endpoint(tmp_path):
    scenario = _scenario(tmp_path, {"executor": "constant-arrival-rate", "rate": "9/s"})
    wholes = {
        build_plan(scenario, endpoint=("127.0.0.1", 8883 + i), shard=Shard(i, 3)).whole
        for i in range(3)
    }
    (whole,) = wholes
    assert whole is not None and (whole.scenario, whole.fleet) == ("plan", 40)


@pytest.mark.parametrize(
    ("load", "count"),
    [
        ({"executor": "constant-arrival-rate", "rate": "18/s"}, None),  # another rate
        ({"executor": "constant-arrival-rate", "rate": "9/s", "max_in_flight": 9}, None),
        ({"executor": "constant-arrival-rate", "rate": "9/s"}, 90),  # another fleet
    ],
)
def test_a_shard_of_another_rate_bound_or_fleet_is_part_of_another_run(tmp_path, load, count):
    one = _scenario(tmp_path, {"executor": "constant-arrival-rate", "rate": "9/s"})
    other = _scenario(tmp_path, load)
    endpoint = ("127.0.0.1", 8883)
    mine = build_plan(one, endpoint=endpoint, shard=Shard(0, 3)).whole
    theirs = build_plan(other, endpoint=endpoint, count=count, shard=Shard(1, 3)).whole
    assert mine != theirs


def test_rate_replaces_a_bursts_arrivals_with_that_constant_rate(tmp_path):
    scenario = _scenario(tmp_path, {"executor": "burst"})
    plan = make_plan(scenario, RunOptions(rate="5/s", workers=1))
    assert plan.executor == ConstantArrival(5.0)


def test_a_hold_without_keepalive_pings_as_often_as_the_connect_promised(tmp_path):
    # Its own default of 60 s refused a scenario with mqtt.keepalive 30, naming
    # a field the scenario never wrote.
    scenario = _scenario(
        tmp_path,
        {"executor": "burst"},
        mqtt={"keepalive": 30},
        after_connect=[{"hold": {"duration": "10m"}}],
    )
    (hold,) = build_plan(scenario, endpoint=("127.0.0.1", 8883)).steps
    assert hold.keepalive == 30.0


def test_a_hold_without_keepalive_under_a_connect_without_one_pings_every_minute(tmp_path):
    # "0: never" for the hold would leave an MQTT 3.1.1 device silent, which AWS
    # IoT (holding a keepalive of 0 to 1200 s) closes after 30 minutes.
    scenario = _scenario(
        tmp_path,
        {"executor": "burst"},
        mqtt={"version": "3.1.1", "keepalive": 0},
        after_connect=[{"hold": {"duration": "1h"}}],
    )
    (hold,) = build_plan(scenario, endpoint=("127.0.0.1", 8883)).steps
    assert hold.keepalive == 60.0


def _routes(addresses: list[str], sources: tuple[str, ...], devices: int) -> list[tuple]:
    routes = Routes(addresses, sources)
    return [routes.next() for _ in range(devices)]


def test_devices_take_the_endpoints_addresses_and_the_source_addresses_in_turn():
    assert _routes(["10.0.0.1", "10.0.0.2"], ("127.0.0.2", "127.0.0.3", "127.0.0.4"), 3) == [
        ("10.0.0.1", "127.0.0.2"),
        ("10.0.0.2", "127.0.0.3"),
        ("10.0.0.1", "127.0.0.4"),
    ]


def test_each_endpoint_address_is_reached_from_a_source_address_of_its_family():
    routes = _routes(["::1", "127.0.0.1"], ("127.0.0.2", "::1", "127.0.0.3"), 4)
    assert routes == [
        ("::1", "::1"),
        ("127.0.0.1", "127.0.0.2"),
        ("::1", "::1"),
        ("127.0.0.1", "127.0.0.3"),
    ]


def test_an_endpoint_address_of_a_family_no_source_has_is_left_out():
    assert _routes(["::1", "127.0.0.1"], ("127.0.0.2",), 2) == [("127.0.0.1", "127.0.0.2")] * 2


def test_without_source_addresses_devices_connect_from_any():
    assert _routes(["::1", "127.0.0.1"], (), 2) == [("::1", None), ("127.0.0.1", None)]
