"""The plan the workers receive, and the templates over a device's manifest line
they render as each device is prepared."""

from __future__ import annotations

import pickle

from loadgen.certs.store import Device
from loadgen.load.plan import device_client_id, render
from loadgen.load.shard import Shard
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
