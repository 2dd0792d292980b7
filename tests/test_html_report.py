"""The HTML report (`loadgen.report.html`): one self-contained page that a real
browser renders with every plot drawn, nothing fetched and nothing complained
about, whatever the report holds."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.report import svg
from loadgen.report.html import INTERRUPTED, render, write_html
from tests.chromium import CHROMIUM, Browser, Visit, read_png
from tests.conftest import LIGHTBULB_PROFILE, run_loadgen

# What the page looks like to a reader, measured in the browser.
PAGE = """(() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    title: document.title,
    scroll_width: document.documentElement.scrollWidth,
    heading: document.querySelector("h1").textContent,
    banner: document.querySelector(".banner")?.textContent ?? null,
    scripts: document.scripts.length,
    images: document.images.length,
    empty: [...document.querySelectorAll(".plot-empty")].map((p) => p.dataset.plotEmpty),
    plots: [...document.querySelectorAll(".plot")].map((plot) => ({
      name: plot.dataset.plot,
      box: box(plot),
      svgs: [...plot.querySelectorAll("svg")].map((s) => ({
        box: box(s),
        marks: [...s.querySelectorAll("path.mark, rect.mark, circle.mark, polyline.mark")]
          .filter((m) => { const [w, h] = box(m); return w > 0 || h > 0; }).length,
        legend: s.querySelectorAll(".legend text").length,
        ticks: s.querySelectorAll("text").length,
      })),
    })),
  };
})()"""

CAPACITY = {
    "slos": ["p99(provision) < 2s", "ratio(failed) < 1%"],
    "steps": [
        {
            "step": i + 1,
            "rate_per_s": rate,
            "started_at_s": 60.0 * i,
            "duration_s": 60.0,
            "devices": int(rate * 60),
            "achieved_per_s": rate * 0.998,
            "latency_ms": {"provision": {"p50": 100 + rate, "p99": 300 + rate * 20}},
            "failed_ratio": 0.0 if rate < 80 else 0.03,
            "throttled": 0 if rate < 80 else 150,
            "passed": rate < 80,
            "broken": [] if rate < 80 else ["p99(provision) < 2s"],
            "limit": None if rate < 80 else "throttling",
        }
        for i, rate in enumerate([10.0, 20.0, 40.0, 80.0])
    ],
    "highest_sustainable_per_s": 40.0,
    "first_broken_per_s": 80.0,
    "limit": "throttling",
    "verdict": "sustains 40/s; at 80/s throttling breaks p99(provision) < 2s",
}
NEW_FIELDS = ("interval_s", "target_per_s", "latency_ms", "latency_buckets")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    chromium = Browser.start(tmp_path_factory.mktemp("chromium") / "profile")
    yield chromium
    chromium.stop()


@pytest.fixture(scope="module")
def run_report(tmp_path_factory: pytest.TempPathFactory, device_ca: Any) -> dict[str, Any]:
    """The report of a real run: 150 lightbulbs at 60/s through JITP against the
    embedded emulator, whose provisioning quota throttles some of them."""
    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.profile import load_profile

    root = tmp_path_factory.mktemp("html-run")
    mint(
        MintRequest(
            root / "fleet", device_ca.directory, 150, load_profile(LIGHTBULB_PROFILE), seed=7
        )
    )
    scenario = {
        "name": "html-report-test",
        "endpoint": "embedded",
        "mqtt": {"client_id": "{common_name}"},
        "fleet": {"ca": str(device_ca.directory), "store": str(root / "fleet"), "count": 150},
        "jitp": {"expect_first_connect_rejected": True},
        "retry": {"initial": "20ms", "max": "200ms", "max_attempts": 4},
        "load": {"executor": "constant-arrival-rate", "rate": "60/s", "max_in_flight": 150},
        "after_connect": [{"publish": {"topic": "dt/{client_id}/x", "qos": 1}}],
        "emulator": {"quotas": {"provision": "30/s", "connect-per-client": "off"}},
    }
    (root / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    result = run_loadgen(
        "run", root / "scenario.yaml", "--workers", "1", "--report", root / "report.json"
    )
    assert result.code == 0, result.err
    report: dict[str, Any] = json.loads((root / "report.json").read_text())
    return report


def _open(browser: Browser, tmp_path: Path, report: dict[str, Any]) -> Visit:
    path = tmp_path / "report.html"
    write_html(path, report)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left
    visit = browser.visit(path.as_uri(), PAGE)
    (tmp_path / "screenshot.png").write_bytes(visit.screenshot)  # for a person to look at
    return visit


def _assert_rendered(visit: Visit) -> set[str]:
    """Nothing went wrong, every plot is drawn, and the page is a picture;
    returns the plots' names."""
    assert visit.problems == []
    assert visit.requests == []
    for plot in visit.value["plots"]:
        assert plot["svgs"], plot["name"]
        for drawn in plot["svgs"]:
            width, height = drawn["box"]
            assert width > 200 and height > 80, plot["name"]
            assert drawn["marks"] > 0, plot["name"]
            assert drawn["legend"] > 0 and drawn["ticks"] > 4, plot["name"]
    png = read_png(visit.screenshot)
    assert png.width >= 1000 and png.height >= 900
    assert png.colors > 20  # plots in colour, not a blank page
    return {plot["name"] for plot in visit.value["plots"]}


def _without_new_fields(report: dict[str, Any]) -> dict[str, Any]:
    older = copy.deepcopy(report)
    older.pop("provision_breakdown_ms", None)
    for key in NEW_FIELDS:
        older["series"].pop(key, None)
    return older


def test_the_report_of_a_real_run_renders_every_plot_in_chromium_without_errors(
    browser: Browser, run_report: dict[str, Any], tmp_path: Path
) -> None:
    names = _assert_rendered(_open(browser, tmp_path, run_report))
    measured = {p for p, s in run_report["latency_ms"].items() if s["count"]}
    assert names == {
        "arrival-rate",
        "outcomes-over-time",
        "outcomes-total",
        "attempts-per-device",
        "phase-breakdown",
        *(f"latency-{p}" for p in measured),
    }


def test_the_page_is_self_contained(run_report: dict[str, Any]) -> None:
    page = render({**run_report, "capacity": CAPACITY})
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "url(" not in page and "@import" not in page and "<link" not in page
    # The only address is the SVG namespace, which names and does not fetch.
    assert set(re.findall(r"https?://[^\"' ]*", page)) == {"http://www.w3.org/2000/svg"}


@pytest.mark.parametrize("interval", [0, -1, 1e308])
def test_a_series_interval_no_plot_could_draw_is_read_as_a_second(
    run_report: dict[str, Any], interval: float
) -> None:
    report = copy.deepcopy(run_report)
    report["series"]["interval_s"] = interval
    assert render(report) == render(run_report)


def test_a_partial_report_shows_the_stopped_early_banner(run_report: dict[str, Any]) -> None:
    assert "PARTIAL — stopped early" in render({**run_report, "partial": True})
    assert "PARTIAL" not in render({**run_report, "partial": False})


def _stopped(planned: int, started: int, **accounting: Any) -> dict[str, Any]:
    """A run a stop ended: ``planned`` devices, ``started`` of them started."""
    return {
        "scenario": "stopped",
        "partial": True,
        "devices": started,
        "accounting": {
            "planned": planned,
            "started": started,
            "not_started": planned - started,
            "unexpected": 0,
            **accounting,
        },
    }


def test_a_run_stopped_in_its_hold_says_every_device_started_and_how_many_were_cut_short() -> None:
    page = render(_stopped(150, 150, notes={"interrupted during hold": 146}))
    assert "not every planned device ran" not in page
    assert "All 150 planned devices started; 146 were cut short in their hold" in page


def test_a_run_stopped_before_every_device_started_says_how_many_never_did() -> None:
    page = render(_stopped(150, 100))
    assert "50 of 150 planned devices never started." in page


def test_a_stopped_run_that_planned_no_device_says_so() -> None:
    page = render(_stopped(0, 0))
    assert "No device was planned." in page
    assert "All 0" not in page


def test_the_accounting_is_on_the_page_with_its_notes_and_lost_workers() -> None:
    report = _stopped(
        150,
        120,
        expected={"tls_rejected": 2, "closed": 0},
        unexpected=3,
        notes={"interrupted during hold": 146},
        workers_lost={"2": "died (exit code 9)"},
    )
    section = render(report).split("<h2>Accounting</h2>")[1].split("</section>")[0]
    facts = dict(re.findall(r"<dt>([^<]*)</dt><dd>(.*?)</dd>", section))
    assert facts == {
        "planned": "150",
        "started": "120",
        "not started": "30 (kept by a stop)",
        "expected failures": "tls_rejected 2 (as their injected faults predict)",
        "unexpected outcomes": '<span class="fail">3</span>',
        "note": "146 devices interrupted during hold",
        "worker lost": '<span class="fail">worker 2 died (exit code 9)</span>',
    }


def test_text_from_the_report_is_escaped(
    browser: Browser, run_report: dict[str, Any], tmp_path: Path
) -> None:
    name = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
    report = copy.deepcopy(run_report)
    report["scenario"] = name
    report["reasons"]["timeout"] = {"<b>connack</b>: & waited": 3}
    report["gates"] = [
        {"gate": "p99(provision) < 2s", "passed": True, "measured": 1.0, "threshold": 2.0}
    ]
    page = render(report)
    assert name not in page and "<b>connack" not in page
    assert "&lt;b&gt;connack&lt;/b&gt;: &amp; waited" in page
    visit = _open(browser, tmp_path, report)
    assert visit.value["title"] == f"loadgen: {name}"
    assert visit.value["heading"] == name
    assert visit.value["scripts"] == 0 and visit.value["images"] == 0
    _assert_rendered(visit)


def test_a_report_without_the_newer_fields_still_renders(
    browser: Browser, run_report: dict[str, Any], tmp_path: Path
) -> None:
    older = _without_new_fields(run_report)
    page = render(older)
    assert "predates series.latency_ms" in page
    assert "predates provision_breakdown_ms" in page  # the medians stand in
    names = _assert_rendered(_open(browser, tmp_path, older))
    assert "phase-breakdown" in names and "arrival-rate" in names
    assert not any(n.startswith("latency-") for n in names)


def test_a_report_with_a_capacity_section_renders_the_capacity_plot(
    browser: Browser, run_report: dict[str, Any], tmp_path: Path
) -> None:
    visit = _open(browser, tmp_path, {**run_report, "capacity": CAPACITY})
    assert "capacity-steps" in _assert_rendered(visit)
    (capacity,) = [p for p in visit.value["plots"] if p["name"] == "capacity-steps"]
    assert len(capacity["svgs"]) == 2  # p99 provision, and the failed share


def test_a_capacity_step_cut_short_by_a_stop_is_shown_as_interrupted_not_broken() -> None:
    capacity = copy.deepcopy(CAPACITY)
    capacity["steps"][-1].update(passed=False, interrupted=True, broken=[], limit="interrupted")
    capacity.update(first_broken_per_s=None, limit=None, verdict="sustains 40/s")
    page = render({"scenario": "capacity", "capacity": capacity})
    assert "broken (interrupted)" not in page
    assert '<span class="interrupted">interrupted</span> (cut short by a stop)' in page
    # Its point in each of the two charts is grey, with a tooltip that says why;
    # no point is red, as no step broke an SLO.
    points = re.findall(r'<circle class="mark"[^>]* r="4" fill="([^"]+)"[^>]*><title>([^<]*)', page)
    interrupted = [note for fill, note in points if fill == INTERRUPTED]
    assert len(interrupted) == 2
    assert all("interrupted (cut short by a stop; proves nothing" in note for note in interrupted)
    assert not [note for fill, note in points if fill == "#c92a2a"]
    assert "step interrupted" in page
    assert "Grey points are steps a stop cut short: they prove nothing either way." in page


def test_long_text_from_the_report_wraps_instead_of_widening_the_page(
    browser: Browser, tmp_path: Path
) -> None:
    reason = "tls: SSLError: " + "x" * 5000  # one word, as a certificate dump can be
    report = {
        "scenario": "long reasons",
        "reasons": {"error": {reason: 3}},
        "jitp": {"first_connect_rejected": 0, "provisioning_failures": {reason: 2}},
        "gates": [{"gate": "count(error) == 0", "passed": False, "measured": 3, "threshold": 0}],
    }
    visit = _open(browser, tmp_path, report)
    width = visit.value["scroll_width"]
    assert visit.problems == []
    assert width <= 1280, f"the page is {width} px wide in a 1280 px window"


def test_counts_of_a_million_and_more_are_written_out_with_thousands_separators() -> None:
    page = render(
        {
            "scenario": "a big fleet",
            "devices": 1_234_567,
            "load": {"count": 2_000_000},
            "outcomes": {"connected": 1_234_000, "timeout": 567},
            "attempts": {"total": 2_469_134, "per_device": {"2": 1_234_567}},
            "rate": {"target_per_s": 1500.0, "achieved_per_s": 1234.5678},
            "jitp": {"first_connect_rejected": 1_234_567, "provisioning": {"Success": 1_234_000}},
        }
    )
    assert "1,234,567 of 2,000,000 planned" in page
    assert "2,469,134 in all" in page
    assert '<td class="num">1,234,000</td>' in page  # Success, in the JITP table
    assert "1,234.568/s" in page  # not a count: to the thousandth
    assert not re.search(r"\de[+-]\d", page)


def test_a_plot_with_nothing_measured_says_so_instead_of_drawing_an_empty_chart(
    run_report: dict[str, Any],
) -> None:
    report = copy.deepcopy(run_report)
    seconds = len(report["series"]["started_per_s"])
    report["series"]["latency_ms"]["publish_ack"] = [{"count": 0}] * seconds
    report["provision_breakdown_ms"] = None
    page = render(report)
    assert 'data-plot="latency-publish_ack"' not in page
    assert 'data-plot-empty="latency-publish_ack"' in page and "Nothing measured" in page
    assert 'data-plot="phase-breakdown"' not in page and "No device provisioned." in page


def test_devices_that_failed_before_any_attempt_have_their_bar_in_the_attempts_plot(
    run_report: dict[str, Any],
) -> None:
    report = copy.deepcopy(run_report)
    report["attempts"]["per_device"] = {"0": 5, "2": 5}  # 5 whose files would not load
    page = render(report)
    plot = page.split('data-plot="attempts-per-device"', 1)[1].split("</figure>", 1)[0]
    assert "5 devices (50.0%)" in plot.replace("\n", " ")
    assert plot.count("devices (50.0%)") == 2


def test_an_attempts_plot_of_devices_that_all_failed_before_any_attempt_says_so(
    run_report: dict[str, Any],
) -> None:
    report = copy.deepcopy(run_report)
    report["attempts"]["per_device"] = {"0": 10}
    page = render(report)
    assert 'data-plot="attempts-per-device"' not in page
    assert 'data-plot-empty="attempts-per-device"' in page and "No device made an attempt." in page


def test_the_reasons_table_lists_the_most_common_and_counts_the_rest_together(
    run_report: dict[str, Any],
) -> None:
    report = copy.deepcopy(run_report)
    report["reasons"] = {"closed": {f"connack: reason {i}": 100 - i for i in range(25)}}
    report["reason_devices"] = {"closed": {"connack: reason 0": [4, 9, 12]}}
    page = render(report)
    assert "connack: reason 19<" in page and "connack: reason 20<" not in page
    assert '5 less common reasons</td><td class="num">390<' in page  # 80 + 79 + ... + 76
    assert "devices 4, 9, 12, ..." in page


def test_the_failed_provisionings_table_lists_the_most_common_and_counts_the_rest_together(
    run_report: dict[str, Any],
) -> None:
    report = copy.deepcopy(run_report)
    failures = {f"resource thing: reason {i}": 100 - i for i in range(25)}
    report["jitp"] = {"first_connect_rejected": 0, "provisioning_failures": failures}
    page = render(report)
    assert "resource thing: reason 19<" in page and "resource thing: reason 20<" not in page
    assert '5 less common reasons</td><td class="num">390<' in page


def test_gate_verdicts_are_listed_with_what_was_measured(run_report: dict[str, Any]) -> None:
    gates = [
        {"gate": "p99(provision) < 2s", "passed": True, "measured": 812.5, "threshold": 2000.0},
        {"gate": "ratio(failed) < 1%", "passed": False, "measured": 0.04, "threshold": 0.01},
    ]
    page = render({**run_report, "gates": gates})
    assert "1 of 2 gates failed" in page
    assert "<code>p99(provision) &lt; 2s</code>" in page and "812.5" in page and "FAIL" in page


def test_ticks_are_round_numbers_that_cover_the_data() -> None:
    assert svg.linear(0, 97, 0, 100, extend=True).ticks() == [0, 20, 40, 60, 80, 100]
    assert svg.linear(0, 9, 0, 100, extend=False).ticks() == [0, 2, 4, 6, 8]
    assert svg.LogScale(1, 1000, 0, 100).ticks() == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def test_a_gap_in_a_series_breaks_its_line() -> None:
    chart = svg.time_chart(
        intervals=5,
        interval_s=1,
        y_label="latency (ms)",
        lines=[svg.Line("p50", "#000", [1.0, 2.0, None, 4.0, 5.0])],
    )
    assert chart.count("<polyline") == 2
