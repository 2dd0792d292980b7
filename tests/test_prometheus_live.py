"""The dashboards and rules against a real Prometheus: the project's
prometheus.yml (ports rewritten, fast scrapes) scrapes a real `loadgen run` and a
real `loadgen capacity` search against the embedded emulator, and every
expression of every dashboard, evaluated through Prometheus's HTTP API over the
run or the search, must return numbers."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.certs.ca import CA
from tests.brokers import free_port
from tests.conftest import LIGHTBULB_PROFILE
from tests.prometheus import (
    DASHBOARDS,
    EMULATOR_JOB,
    LOADGEN_JOB,
    PUSHGATEWAY_JOB,
    RULE_FILES,
    Prometheus,
    Query,
    all_queries,
    finite_values,
    interpolate,
    queries,
    rewritten_config,
    run_bounded,
)

# Seconds between scrapes. Two, not one: the load generator's /metrics takes up
# to a second to answer mid-run, and a scrape times out after one interval.
SCRAPE = 2.0
EVALUATE = 1.0  # between rule evaluations, and the step of the queries
RUN, SEARCH = "live-run", "live-capacity"  # the scenarios' names
QUOTA = 40  # the emulator's provisioning quota in the search, per second


@dataclass
class Window:
    """What Prometheus scraped of one command: when, which scenario, its report."""

    scenario: str
    start: float
    end: float
    report: dict[str, Any]

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass
class Live:
    prometheus: Prometheus
    loadgen_port: int
    emulator_port: int
    root: Path

    def evaluate(self, window: Window, query: Query) -> list[float]:
        """The finite numbers a dashboard's query gives over the window, its
        variables replaced as Grafana would."""
        expr = interpolate(
            query.expr,
            scenario=window.scenario,
            scrape_interval=SCRAPE,
            step=EVALUATE,
            range_s=window.length,
        )
        return finite_values(self.query_range(expr, window))

    def query_range(self, expr: str, window: Window) -> list[Any]:
        return self.prometheus.query_range(expr, window.start, window.end, EVALUATE)

    def loadgen(self, *args: str) -> Window:
        """Run a loadgen command serving its metrics (and its emulator's) where
        Prometheus scrapes, lingering for the last scrape of the final values."""
        scenario = yaml.safe_load(Path(args[1]).read_text())["name"]
        report = self.root / f"{scenario}.json"
        start = time.time()
        result = run_bounded(
            [
                *(sys.executable, "-m", "loadgen", *args),
                *("--workers", "1", "--report", str(report)),
                *("--metrics-port", str(self.loadgen_port), "--linger", str(2 * SCRAPE)),
            ],
            timeout=90,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return Window(scenario, start, time.time(), json.loads(report.read_text()))

    def scenario(self, device_ca: CA, name: str, **overrides: Any) -> Path:
        """Lightbulbs through JITP against the embedded emulator, serving its
        metrics; connected devices publish and hold a little."""
        scenario = {
            "name": name,
            "endpoint": "embedded",
            "mqtt": {"client_id": "{common_name}"},
            "fleet": {
                "ca": str(device_ca.directory),
                "store": str(self.root / f"fleet-{name}"),
                "count": 300,
                "profile": str(LIGHTBULB_PROFILE),
            },
            "jitp": {"expect_first_connect_rejected": True},
            "retry": {"initial": "100ms", "max": "1s", "max_attempts": 8},
            "load": {"executor": "constant-arrival-rate", "rate": "50/s", "max_in_flight": 300},
            "after_connect": [
                {"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1}},
                {"hold": {"duration": "2s"}},
            ],
            "emulator": {"quotas": {"provision": "40/s"}, "metrics_port": self.emulator_port},
            **overrides,
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(scenario))
        return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A Prometheus scraping the ports the load generator and its emulator will
    serve their metrics on, once it has begun scraping."""
    root = tmp_path_factory.mktemp("prometheus-live")
    ports = {LOADGEN_JOB: free_port(), EMULATOR_JOB: free_port(), PUSHGATEWAY_JOB: free_port()}
    config = rewritten_config(
        scrape_interval=SCRAPE, evaluation_interval=EVALUATE, targets=ports, rule_files=RULE_FILES
    )
    prometheus = Prometheus(config, root / "prometheus", free_port())
    try:
        prometheus.wait_ready()
        prometheus.wait_scraping(jobs=len(ports))
        yield Live(prometheus, ports[LOADGEN_JOB], ports[EMULATOR_JOB], root)
    finally:
        prometheus.stop()


@pytest.fixture(scope="module")
def run(live: Live, device_ca: CA) -> Window:
    """`loadgen run`: 300 devices at 50/s, the emulator provisioning at most 40/s
    (some are throttled and retry)."""
    return live.loadgen("run", str(live.scenario(device_ca, RUN)))


@pytest.fixture(scope="module")
def search(live: Live, device_ca: CA, run: Window) -> Window:
    """`loadgen capacity` after the run, on the same ports: 20/s, 40/s, then 60/s,
    where the emulator's 40/s provisioning quota breaks the latency SLO."""
    path = live.scenario(
        device_ca,
        SEARCH,
        retry={"initial": "100ms", "max_attempts": 4},
        after_connect=[{"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1}}],
    )
    return live.loadgen(
        *("capacity", str(path), "--slo", "p99(provision) < 1s", "--slo", "ratio(failed) < 10%"),
        *("--start", "20/s", "--step", "20/s", "--step-duration", "3s", "--max-rate", "100/s"),
    )


RUN_QUERIES = [q for q in all_queries() if not q.capacity_only]
(CAPACITY_DASHBOARD,) = (p for p in DASHBOARDS if p.stem == "loadgen-capacity-planning")


# --- a run --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("query", RUN_QUERIES, ids=str)
def test_every_query_but_the_capacity_searchs_returns_data_for_a_run(
    live: Live, run: Window, query: Query
) -> None:
    assert live.evaluate(run, query), f"{query}: no data for {query.expr}"


@pytest.mark.slow
def test_prometheus_scraped_the_generator_and_the_emulator(live: Live, run: Window) -> None:
    up = {
        s["metric"]["job"]: max(float(v) for _, v in s["values"])
        for s in live.query_range("max by (job) (up)", run)
    }
    assert up == {LOADGEN_JOB: 1, EMULATOR_JOB: 1, PUSHGATEWAY_JOB: 0}  # no Pushgateway here


@pytest.mark.slow
def test_prometheus_saw_the_run_the_report_describes(live: Live, run: Window) -> None:
    (series,) = live.query_range(f'loadgen_devices_finished_total{{scenario="{RUN}"}}', run)
    assert float(series["values"][-1][1]) == run.report["devices"] == 300


@pytest.mark.slow
def test_the_scenario_variable_lists_the_run(live: Live, run: Window) -> None:
    values = live.prometheus.api(
        "label/scenario/values",
        **{"match[]": "loadgen_devices_started_total"},
        start=run.start,
        end=run.end,
    )
    assert RUN in values


@pytest.mark.slow
def test_every_rule_evaluates_without_error_on_real_metrics(live: Live, run: Window) -> None:
    groups = live.prometheus.api("rules")["groups"]
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert groups and unhealthy == []


@pytest.mark.slow
def test_every_recording_rule_recorded_numbers_during_the_run(live: Live, run: Window) -> None:
    groups = live.prometheus.api("rules", type="record")["groups"]
    names = [rule["name"] for group in groups for rule in group["rules"]]
    empty = [name for name in names if not finite_values(live.query_range(name, run))]
    assert names and empty == []


# --- a capacity search ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("query", queries(CAPACITY_DASHBOARD), ids=str)
def test_every_capacity_planning_query_returns_data_for_a_capacity_search(
    live: Live, search: Window, query: Query
) -> None:
    assert live.evaluate(search, query), f"{query}: no data for {query.expr}"


@pytest.mark.slow
def test_the_capacity_gauges_walk_through_the_searchs_steps(live: Live, search: Window) -> None:
    steps = search.report["capacity"]["steps"]
    assert len(steps) >= 2
    seen: dict[str, list[float]] = {}
    for name in ("loadgen_capacity_step", "loadgen_capacity_step_rate"):
        (series,) = live.query_range(f'{name}{{scenario="{SEARCH}"}}', search)
        values = [float(v) for _, v in series["values"]]
        seen[name] = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    assert seen["loadgen_capacity_step"] == [float(s["step"]) for s in steps]
    assert seen["loadgen_capacity_step_rate"] == [s["rate_per_s"] for s in steps]


@pytest.mark.slow
def test_the_step_annotation_marks_every_new_step(live: Live, search: Window) -> None:
    (annotation,) = (q for q in queries(CAPACITY_DASHBOARD) if q.where.startswith("annotation"))
    expr = interpolate(
        annotation.expr,
        scenario=SEARCH,
        scrape_interval=SCRAPE,
        step=EVALUATE,
        range_s=search.length,
    )
    (series,) = live.query_range(expr, search)
    times = [float(t) for t, _ in series["values"]]
    # Grafana draws consecutive points as one region: one per step, the first included.
    regions = 1 + sum(b - a > EVALUATE for a, b in itertools.pairwise(times))
    assert regions == len(search.report["capacity"]["steps"])
