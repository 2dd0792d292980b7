"""The project's Grafana dashboards and Prometheus configuration (grafana/), and a
real Prometheus on loopback to evaluate them against."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.brokers import stop_process
from tests.conftest import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS_YML = GRAFANA / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((GRAFANA / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((GRAFANA / "prometheus" / "tests").glob("*.yml"))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# The scrape jobs of prometheus.yml, by what they scrape.
LOADGEN_JOB, EMULATOR_JOB, PUSHGATEWAY_JOB = "loadgen", "loadgen-emulator", "pushgateway"


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: a panel's target or an annotation."""

    dashboard: str  # the file's stem
    where: str  # "panel 7 (Schedule lag) B" or "annotation Capacity steps"
    expr: str

    @property
    def capacity_only(self) -> bool:
        """Needs a `loadgen capacity` search (its gauges exist nowhere else)."""
        return "loadgen_capacity_" in self.expr

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def queries(path: Path) -> list[Query]:
    dashboard = load_dashboard(path)
    found = [
        Query(path.stem, f"panel {p['id']} ({p['title']}) {t['refId']}", t.get("expr", ""))
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("target", {}).get("expr") or annotation.get("expr", "")
        found.append(Query(path.stem, f"annotation {annotation['name']}", expr))
    return found


def all_queries() -> list[Query]:
    return [q for path in DASHBOARDS for q in queries(path)]


def interpolate(
    expr: str, *, scenario: str, scrape_interval: float, step: float, range_s: float
) -> str:
    """What Grafana sends for an expression: its built-in variables and the
    dashboards' replaced ($__rate_interval is the larger of four scrapes and a step
    plus a scrape, as Grafana computes it). An unknown variable raises KeyError."""
    values = {
        "__rate_interval": f"{max(4 * scrape_interval, step + scrape_interval):g}s",
        "__interval_ms": f"{step * 1000:g}",
        "__interval": f"{step:g}s",
        "__range_s": f"{range_s:g}",
        "__range": f"{range_s:g}s",
        "scenario": scenario,  # one plain name: nothing for the regex to escape
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def rewritten_config(
    *,
    scrape_interval: float,
    evaluation_interval: float,
    targets: dict[str, int],
    rule_files: list[Path],
) -> dict[str, Any]:
    """The project's prometheus.yml for a test: every job's target on the given
    loopback port, fast scrapes and rule evaluations, the rules by absolute path."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = f"{scrape_interval:g}s"
    config["global"]["evaluation_interval"] = f"{evaluation_interval:g}s"
    config["rule_files"] = [str(path) for path in rule_files]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), (sorted(jobs), sorted(targets))
    for name, port in targets.items():
        jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return config


class Prometheus:
    """A real Prometheus server on 127.0.0.1 with its own storage."""

    def __init__(self, config: dict[str, Any], root: Path, port: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        config_path = root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self.log = root / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        log = self.log.read_text()[-2000:]
        raise TimeoutError(f"prometheus not ready after {timeout} s: {log}")

    def wait_scraping(self, jobs: int, timeout: float = 20.0) -> None:
        """Until every job was scraped once (Prometheus starts scraping a few
        seconds after it is ready: target discovery batches its first update)."""
        deadline = time.monotonic() + timeout
        while len(self.api("query", query="up")["result"]) < jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus scraped fewer than {jobs} jobs in {timeout} s")
            time.sleep(0.2)

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; the response's data (raises with Prometheus's error)."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return data["result"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        stop_process(self.process)


def run_bounded(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; past ``timeout``, end the group
    (its worker and emulator processes with it) and raise TimeoutExpired."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def finite_values(result: list[Any]) -> list[float]:
    """The numbers of a query_range result that are neither NaN nor infinite."""
    values = (float(v) for series in result for _, v in series["values"])
    return [v for v in values if math.isfinite(v)]


# --- what an expression keeps of its series' labels ----------------------------

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
# Words of PromQL that are not metric names.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "inf", "nan"}
)
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"'  # a string
    r"|\{[^}]*\}|\[[^\]]*\]"  # label matchers, a range
    r"|\d+(?:\.\d+)?(?:ms|[smhdwy])?"  # a number or a duration
    r"|[A-Za-z_:][A-Za-z0-9_:]*"  # a name
    r"|\S"
)


@dataclass(frozen=True)
class Selector:
    """A series an expression reads, and the ``by`` labels of every aggregation
    around it, innermost first (None for an aggregation ``without`` labels,
    which keeps any label it does not name)."""

    metric: str
    groupings: tuple[frozenset[str] | None, ...]

    def keeps(self) -> frozenset[str] | None:
        """The labels of the series that can reach the result: those of the
        outermost-reaching ``by``; None when nothing bounds them."""
        kept: frozenset[str] | None = None
        for grouping in self.groupings:
            if grouping is not None:
                kept = grouping if kept is None else kept & grouping
        return kept


def selectors(expr: str) -> list[Selector]:
    """Every series selector of a PromQL expression (its variables already
    replaced) with the aggregations around it."""
    tokens = _TOKEN.findall(expr)
    found: list[Selector] = []
    _walk(tokens, 0, (), found)
    return found


def _labels(tokens: list[str], i: int) -> tuple[frozenset[str], int]:
    """The label list opening at tokens[i] == "(", and the index past it."""
    assert tokens[i] == "(", tokens[i:]
    end = tokens.index(")", i)
    return frozenset(t for t in tokens[i + 1 : end] if t != ","), end + 1


def _grouping(tokens: list[str], i: int) -> tuple[frozenset[str] | None, int] | None:
    if i < len(tokens) and tokens[i] in ("by", "without"):
        labels, after = _labels(tokens, i + 1)
        return (labels if tokens[i] == "by" else None), after
    return None


def _walk(
    tokens: list[str], i: int, around: tuple[frozenset[str] | None, ...], found: list[Selector]
) -> int:
    """Reads tokens from ``i`` to the ``)`` that closes the current group (or
    the end); returns the index past it."""
    while i < len(tokens):
        token = tokens[i]
        if token == ")":
            return i + 1
        if token in AGGREGATIONS:
            # sum by (x) (body), or sum (body) by (x); a bare sum keeps no label.
            grouping: frozenset[str] | None = frozenset()
            i += 1
            if (before := _grouping(tokens, i)) is not None:
                grouping, i = before
            inner: list[Selector] = []
            i = _walk(tokens, i + 1, (), inner)  # tokens[i] is the body's "("
            if (after := _grouping(tokens, i)) is not None:
                grouping, i = after
            found += [Selector(s.metric, (*s.groupings, grouping, *around)) for s in inner]
        elif token in ("on", "ignoring", "group_left", "group_right") and tokens[i + 1 : i + 2] == [
            "("
        ]:
            i = _labels(tokens, i + 1)[1]
        elif token == "(" or (
            re.fullmatch(r"[A-Za-z_]\w*", token) and tokens[i + 1 : i + 2] == ["("]
        ):  # a group, or a function's arguments
            i = _walk(tokens, i + (1 if token == "(" else 2), around, found)
        elif re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token) and token not in _KEYWORDS:
            found.append(Selector(token, around))
            i += 1
        else:
            i += 1
    return i
