"""Every scenario shipped in scenarios/ loads and plans: a user's first command
never meets a broken example."""

from __future__ import annotations

import pytest

from loadgen.run import RunOptions, check_plan
from loadgen.scenario.schema import load_scenario
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_shipped_scenario_loads_and_plans(path):
    scenario = load_scenario(path)
    plan = check_plan(scenario, RunOptions(workers=1))
    assert plan.count == scenario.fleet.count > 0
