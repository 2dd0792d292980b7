"""grafana/: what promtool says of the Prometheus configuration and rules (and the
rules' unit tests), and what Grafana needs of a dashboard to import it."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus import (
    DASHBOARDS,
    EMULATOR_JOB,
    GRAFANA,
    LOADGEN_JOB,
    PROMETHEUS_YML,
    PROMTOOL,
    PUSHGATEWAY_JOB,
    RULE_FILES,
    RULE_TESTS,
    all_queries,
    interpolate,
    load_dashboard,
    panels,
    queries,
    selectors,
)

# A dashboard's uid is its address (/d/<uid>) and what links and provisioning
# match on: changing one breaks bookmarks, so it is pinned here.
UIDS = {
    "loadgen-run-overview": "loadgen-run-overview",
    "loadgen-capacity-planning": "loadgen-capacity-planning",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
# Grafana's own variables, defined by no dashboard.
BUILTIN = re.compile(r"__\w+")
RECORDED_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")
# The labels of loadgen's and the emulator's own metrics but `shard`: what a panel
# may split a run by. Every other label tells pods apart (`shard`, and what a
# scrape adds: instance, job, pod, namespace), so a sharded run's panels and
# recorded series add them up.
WHOLE_RUN_LABELS = frozenset(
    {"scenario", "phase", "outcome", "le", "result", "quota", "kind", "reason", "operation", "code"}
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=GRAFANA
    )


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def dashboard_ids() -> list[str]:
    return [path.stem for path in DASHBOARDS]


@pytest.fixture(params=DASHBOARDS, ids=dashboard_ids())
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(request.param)


# --- Prometheus ---------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config_and_the_rules_it_loads() -> None:
    result = promtool("check", "config", PROMETHEUS_YML)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in RULE_FILES:  # check config checks the files its rule_files glob matches
        assert f"Checking {path}\n" in result.stdout


def test_promtool_accepts_every_rules_file() -> None:
    assert RULE_FILES
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"
    assert (firing | silent) - alerts == set(), "tests of alerts that do not exist"


def test_recording_rules_are_named_level_metric_operations() -> None:
    names = [rule["record"] for rule in rules() if "record" in rule]
    assert names
    assert [n for n in names if not RECORDED_NAME.match(n)] == []
    assert len(names) == len(set(names))


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for rule in (r for r in rules() if "alert" in r):
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_prometheus_scrapes_the_generator_the_emulator_and_the_pushgateway() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets == {
        LOADGEN_JOB: ["127.0.0.1:9464"],
        EMULATOR_JOB: ["127.0.0.1:9465"],
        PUSHGATEWAY_JOB: ["127.0.0.1:9091"],
    }
    assert jobs[PUSHGATEWAY_JOB]["honor_labels"] is True  # the pushed job label stays


# --- Grafana provisioning and docker compose -----------------------------------


def test_grafana_provisioning_points_at_prometheus_and_at_the_mounted_dashboards() -> None:
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())["services"]
    (source,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "loadgen.yml").read_text()
    )["providers"]
    listen = next(a for a in compose["prometheus"]["command"] if a.startswith("--web.listen"))
    assert source["type"] == "prometheus"
    assert source["url"] == "http://" + listen.split("=", 1)[1]
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape  # $__rate_interval's basis
    mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./dashboards"] == provider["options"]["path"]
    assert mounts["./provisioning"] == "/etc/grafana/provisioning"


def test_docker_compose_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())["services"]
    sources = [v.split(":")[0] for s in compose.values() for v in s.get("volumes", [])]
    local = [s for s in sources if s.startswith("./")]
    assert local
    assert [s for s in local if not (GRAFANA / s).exists()] == []


# --- Dashboards ---------------------------------------------------------------


def test_there_is_a_run_overview_and_a_capacity_planning_dashboard() -> None:
    assert sorted(dashboard_ids()) == sorted(UIDS)


def test_dashboard_uid_is_pinned_and_unique(dashboard: dict[str, Any]) -> None:
    uids = [load_dashboard(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
    assert dashboard["uid"] in UIDS.values()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])  # Grafana's limit


def test_dashboard_file_is_named_for_its_uid() -> None:
    for path in DASHBOARDS:
        assert load_dashboard(path)["uid"] == UIDS[path.stem]


def test_dashboard_schema_is_current_and_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["id"] is None  # Grafana assigns it on import
    assert dashboard["title"] and dashboard["panels"]


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], int] = {}
    for panel in dashboard["panels"]:  # top level: collapsed rows' panels are not laid out
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1, panel["title"]
        assert x + w <= GRID_COLUMNS, panel["title"]
        for cell in itertools.product(range(x, x + w), range(y, y + h)):
            assert cell not in cells, (panel["id"], "overlaps", cells.get(cell))
            cells[cell] = panel["id"]


def test_every_datasource_reference_is_the_datasource_variable(
    dashboard: dict[str, Any],
) -> None:
    for panel in panels(dashboard):
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] == DATASOURCE, annotation["name"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_the_datasource_variable_picks_a_prometheus(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_every_target_has_an_expression_and_a_unique_ref_id(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), (panel["title"], target["refId"])


def test_every_variable_the_dashboard_uses_is_defined(dashboard: dict[str, Any]) -> None:
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    text = json.dumps({k: v for k, v in dashboard.items() if k != "templating"})
    text += json.dumps([v.get("query") for v in dashboard["templating"]["list"]])
    used = set(re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", text))
    names = {a or b for a, b in used} - {n for a, b in used if BUILTIN.fullmatch(n := a or b)}
    assert names - defined == set()
    assert {"datasource", "scenario"} <= defined


def test_every_recorded_series_a_dashboard_reads_has_a_recording_rule() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    read = {
        name
        for path in DASHBOARDS
        for query in queries(path)
        for name in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", query.expr)
    }
    assert read
    assert read - recorded == set()


def test_the_capacity_dashboard_marks_the_steps_of_a_search_with_annotations() -> None:
    (path,) = (p for p in DASHBOARDS if p.stem == "loadgen-capacity-planning")
    annotations = [q for q in queries(path) if q.where.startswith("annotation")]
    assert [q.capacity_only for q in annotations] == [True]
    assert "loadgen_capacity_step" in annotations[0].expr


# --- Shards: N pods of one run show as one ---------------------------------------


def _per_pod(expr: str) -> list[str]:
    """The raw series of ``expr`` whose pods' values are not added up: read
    without an aggregation, or aggregated keeping a label beyond WHOLE_RUN_LABELS
    (recorded series are the rules' to add up, checked below)."""
    return [
        f"{s.metric} keeps {sorted(kept) if (kept := s.keeps()) is not None else 'every label'}"
        for s in selectors(expr)
        if ":" not in s.metric and (s.keeps() is None or not s.keeps() <= WHOLE_RUN_LABELS)
    ]


def test_the_check_below_tells_a_sum_over_pods_from_a_series_per_pod() -> None:
    assert _per_pod("sum by (scenario) (rate(loadgen_devices_started_total[1m]))") == []
    assert _per_pod("max(loadgen_capacity_step) by (scenario)") == []
    assert _per_pod("sum by (scenario, shard) (loadgen_devices_in_flight)") == [
        "loadgen_devices_in_flight keeps ['scenario', 'shard']"
    ]
    assert _per_pod("sum without (outcome) (rate(loadgen_device_outcomes_total[1m]))") == [
        "loadgen_device_outcomes_total keeps every label"
    ]
    assert _per_pod("histogram_quantile(0.9, loadgen_schedule_lag_seconds_bucket)") == [
        "loadgen_schedule_lag_seconds_bucket keeps every label"
    ]


def test_every_dashboard_query_adds_up_the_shards_of_a_run() -> None:
    per_pod = {
        str(query): found
        for query in all_queries()
        if (
            found := _per_pod(
                interpolate(query.expr, scenario="s", scrape_interval=15, step=15, range_s=3600)
            )
        )
    }
    assert per_pod == {}


def test_every_rule_adds_up_the_shards_of_a_run() -> None:
    per_pod = {
        rule.get("record") or rule["alert"]: found
        for rule in rules()
        if (found := _per_pod(rule["expr"]))
    }
    assert per_pod == {}
