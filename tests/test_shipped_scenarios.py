"""Every scenario shipped in scenarios/ loads, and every one that needs no file
made elsewhere plans: a user's first command never meets a broken example.
(scenarios/mosquitto-mtls.yaml trusts the broker CA that scripts/mosquitto-demo
makes.)"""

from __future__ import annotations

import pytest

from loadgen.run import RunOptions, check_plan
from loadgen.scenario.schema import load_scenario
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_shipped_scenario_loads_and_plans(path):
    scenario = load_scenario(path)
    if scenario.tls.ca_file is not None and not scenario.tls.ca_file.exists():
        assert path.name == "mosquitto-mtls.yaml"  # its CA comes from mosquitto-demo
        scenario = scenario.model_copy(
            update={"tls": scenario.tls.model_copy(update={"ca_file": None})}
        )
    plan = check_plan(scenario, RunOptions(workers=1))
    assert plan.count == scenario.fleet.count > 0
