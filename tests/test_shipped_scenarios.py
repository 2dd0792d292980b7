"""Every scenario shipped in scenarios/ loads, and every one that needs no file
made elsewhere plans: a user's first command never meets a broken example.
(scenarios/mosquitto-mtls.yaml trusts the broker CA that scripts/mosquitto-demo
makes.)"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from loadgen.run import RunOptions, check_plan
from loadgen.scenario.schema import load_scenario
from tests.conftest import ROOT, run_loadgen

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


def _schema_validator() -> jsonschema.Draft202012Validator:
    result = run_loadgen("scenario", "schema")
    assert result.code == 0, result.err
    return jsonschema.Draft202012Validator(json.loads(result.out))


def _doc_scenarios() -> list[dict]:
    """The whole scenarios among docs/scenarios.md's YAML examples."""
    text = (ROOT / "docs" / "scenarios.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    return [b for b in blocks if isinstance(b, dict) and {"name", "endpoint", "load"} <= set(b)]


def test_the_editors_json_schema_takes_every_shipped_and_documented_scenario():
    """Durations and rates are written "5s" and "200/s": the schema an editor
    checks against says so, not the number they become."""
    validator = _schema_validator()
    documented = _doc_scenarios()
    assert documented, "docs/scenarios.md shows a whole scenario"
    for scenario in [yaml.safe_load(p.read_text()) for p in SHIPPED] + documented:
        assert [e.message for e in validator.iter_errors(scenario)] == [], scenario["name"]


def test_the_editors_json_schema_flags_a_duration_that_is_no_duration():
    scenario = yaml.safe_load(SHIPPED[0].read_text())
    scenario["retry"] = {"initial": "soon"}
    errors = _schema_validator().iter_errors(scenario)
    assert any(list(e.path)[:2] == ["retry", "initial"] for e in errors)
