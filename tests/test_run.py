"""`loadgen run` end to end: a scenario, a fleet, worker processes, mosquitto as
the endpoint, and the JSON report."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from loadgen.cores import cores
from tests.conftest import assert_user_error, run_loadgen


def _scenario(tmp_path, mosquitto, device_ca, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "profile.yaml").write_text(
        "subject:\n  common_name: 'bulb-{index:05d}'\n  organization: Acme\n"
        "faults:\n  unknown_ca: 0.02\n"
    )
    scenario = {
        "name": "mosquitto-test",
        "endpoint": f"127.0.0.1:{mosquitto.tls_port}",
        "tls": {
            "ca_file": str(mosquitto.server_ca.directory / "ca.pem"),
            "server_name": "localhost",
        },
        "mqtt": {"version": 5, "client_id": "{common_name}"},
        "fleet": {
            "ca": str(device_ca.directory),
            "store": "fleet",
            "count": 1000,
            "profile": "profile.yaml",
        },
        "retry": {"initial": "10ms", "max": "50ms", "max_attempts": 2},
        "load": {"executor": "constant-arrival-rate", "rate": "400/s", "max_in_flight": 300},
        "after_connect": [
            {"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1, "payload_bytes": 64}}
        ],
        "timeouts": {"connect": "10s"},
    }
    for key, value in overrides.items():
        scenario[key] = value
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


@pytest.fixture(scope="module")
def thousand(tmp_path_factory, mosquitto, device_ca):
    """One run of 1,000 devices against mosquitto, on two workers."""
    root = tmp_path_factory.mktemp("run")
    path = _scenario(root, mosquitto, device_ca)
    result = run_loadgen("run", path, "--report", root / "report.json", "--workers", "2")
    assert result.code == 0, result.err
    manifest = [json.loads(line) for line in (root / "fleet" / "manifest.jsonl").open()]
    return json.loads((root / "report.json").read_text()), manifest, result


def test_a_thousand_devices_all_connect_but_the_unknown_ca_ones(thousand):
    report, manifest, _ = thousand
    unknown = sum(1 for d in manifest if d["fault"] == "unknown_ca")
    assert unknown > 0
    assert report["devices"] == 1000
    assert report["outcomes"]["connected"] == 1000 - unknown
    assert report["outcomes"]["tls_rejected"] == unknown
    assert sum(report["outcomes"].values()) == 1000


def test_devices_that_fail_as_their_injected_fault_predicts_are_expected(thousand):
    report, manifest, _ = thousand
    unknown = sum(1 for d in manifest if d["fault"] == "unknown_ca")
    accounting = report["accounting"]
    assert accounting == {
        "planned": 1000,
        "started": 1000,
        "not_started": 0,
        "expected": {"tls_rejected": unknown},
        "unexpected": 0,
        "notes": {},
        "workers_lost": {},
    }


def test_the_report_has_every_phase_and_the_rates(thousand):
    report, _, _ = thousand
    for phase in ("provision", "tcp_connect", "tls_handshake", "connack", "publish_ack"):
        summary = report["latency_ms"][phase]
        assert summary["count"] > 0
        assert 0 < summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert report["latency_ms"]["publish_ack"]["count"] == report["outcomes"]["connected"]
    assert report["rate"]["target_per_s"] == 400
    assert report["rate"]["achieved_per_s"] > 0
    assert report["attempts"]["total"] >= 1000
    assert report["schedule_lag_ms"]["count"] == 1000


def test_the_report_says_what_the_generator_spent_per_device(thousand):
    report, _, _ = thousand
    generator = report["generator"]
    # At least the client's half of 1000 mutual-TLS handshakes, and not the whole run's
    # wall time on every core.
    assert 0.1 < generator["cpu_s"] < report["duration_s"] * report["environment"]["cores"]
    assert generator["cpu_ms_per_device"] == round(generator["cpu_s"] * 1000 / 1000, 3)
    assert f"generator: {generator['cpu_ms_per_device']:,.2f} ms of CPU per device" in (
        thousand[2].out
    )


def test_the_reports_whole_life_cpu_adds_the_devices_prepared_before_the_start(thousand):
    report, _, _ = thousand
    generator = report["generator"]
    # Each worker prepared its first window (at least 64 devices) before the start.
    assert generator["ahead_cpu_s"] > 0
    whole = (generator["cpu_s"] + generator["ahead_cpu_s"]) * 1000 / 1000
    assert generator["whole_cpu_ms_per_device"] == pytest.approx(whole, abs=0.002)


def test_the_report_counts_the_coordinators_cpu_beside_the_workers(thousand):
    report, _, result = thousand
    generator = report["generator"]
    # It took the workers' progress every half second while they ran; one process
    # can spend no more than the run's wall time.
    assert 0 < generator["coordinator_cpu_s"] < report["duration_s"]
    everything = generator["cpu_s"] + generator["ahead_cpu_s"] + generator["coordinator_cpu_s"]
    assert generator["all_cpu_ms_per_device"] == pytest.approx(everything, abs=0.002)
    assert f"{generator['coordinator_cpu_s']:,.2f} s coordinating them" in result.out


def test_the_summary_table_shows_outcomes_and_phases(thousand):
    _, _, result = thousand
    assert "connected" in result.out and "tls_rejected" in result.out
    assert "provision" in result.out and "p99" in result.out


def test_a_run_mints_the_fleet_when_missing(thousand):
    _, manifest, result = thousand
    assert len(manifest) == 1000
    assert "minted 1000" in result.err


def test_three_one_one_works_too(tmp_path, mosquitto, device_ca):
    path = _scenario(tmp_path, mosquitto, device_ca, mqtt={"version": "3.1.1"})
    result = run_loadgen(
        "run", path, "--count", "50", "--workers", "1", "--report", tmp_path / "r.json"
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["load"]["mqtt_version"] == "3.1.1"
    assert report["outcomes"]["connected"] + report["outcomes"]["tls_rejected"] == 50


def test_progress_counts_devices_connected_and_not_yet_finished(tmp_path, mosquitto, device_ca):
    # 40 devices hold 8 s each: progress (twice a second) sees every device that
    # connected holding together at some point, and never more.
    hold = [{"hold": {"duration": "8s", "keepalive": "0s"}}]
    path = _scenario(tmp_path, mosquitto, device_ca, after_connect=hold)
    report_path = tmp_path / "r.json"
    result = run_loadgen("run", path, "--count", "40", "--workers", "2", "--report", report_path)
    assert result.code == 0, result.err
    connected = json.loads(report_path.read_text())["outcomes"]["connected"]
    counts = [int(n) for n in re.findall(r"  connected (\d+)  ", result.out + result.err)]
    assert connected > 0
    assert max(counts) == connected


def test_a_scenario_error_names_file_line_and_field(tmp_path, mosquitto, device_ca):
    path = _scenario(tmp_path, mosquitto, device_ca)
    text = path.read_text().replace("executor: constant-arrival-rate", "executor: warp-speed")
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "warp-speed" in t)
    assert_user_error(run_loadgen("run", path), f"{path}:{line}: load.executor:")


def test_a_bad_rate_is_a_configuration_error(tmp_path, mosquitto, device_ca):
    path = _scenario(tmp_path, mosquitto, device_ca)
    assert_user_error(run_loadgen("run", path, "--rate", "fast"), "--rate")


def test_an_unknown_topic_placeholder_is_refused_before_the_run(tmp_path, mosquitto, device_ca):
    path = _scenario(
        tmp_path, mosquitto, device_ca, after_connect=[{"publish": {"topic": "x/{colour}"}}]
    )
    assert_user_error(run_loadgen("run", path), "after_connect[0].publish.topic", "{colour}")
    assert not (tmp_path / "fleet").exists()


def test_the_scenario_schema_is_printed_for_editors():
    result = run_loadgen("scenario", "schema")
    assert result.code == 0
    schema = json.loads(result.out)
    assert schema["title"] == "Scenario"
    assert {"endpoint", "fleet", "load"} <= set(schema["properties"])


def test_the_aiomqtt_driver_reaches_the_same_outcomes_as_the_native_one(
    tmp_path, mosquitto, device_ca
):
    outcomes = {}
    for driver in ("native", "aiomqtt"):
        path = _scenario(
            tmp_path / driver,
            mosquitto,
            device_ca,
            mqtt={"version": 5, "client_id": "{common_name}", "driver": driver},
            fleet={"ca": str(device_ca.directory), "store": str(tmp_path / "fleet"), "count": 150},
            after_connect=[
                {"subscribe": {"topic": "cmd/{client_id}", "qos": 1}},
                {"publish": {"topic": "dt/{client_id}", "qos": 1, "count": 2}},
            ],
        )
        result = run_loadgen("run", path, "--workers", "1", "--report", tmp_path / f"{driver}.json")
        assert result.code == 0, result.err
        report = json.loads((tmp_path / f"{driver}.json").read_text())
        outcomes[driver] = report["outcomes"]
        assert report["latency_ms"]["publish_ack"]["count"] == 300
    assert outcomes["native"] == outcomes["aiomqtt"]
    assert outcomes["native"]["connected"] == 150


def test_an_aiomqtt_run_leaves_the_parts_it_did_not_time_out_of_its_breakdown(
    tmp_path, mosquitto, device_ca
):
    # paho times the connect as a whole: its TCP, TLS and CONNACK are unknown,
    # and so is the back-off, the rest. Zeros there would read as measured.
    path = _scenario(tmp_path, mosquitto, device_ca, mqtt={"version": 5, "driver": "aiomqtt"})
    result = run_loadgen(
        "run", path, "--count", "5", "--workers", "1", "--report", tmp_path / "r.json"
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    breakdown = report["provision_breakdown_ms"]
    assert breakdown["devices"] == report["outcomes"]["connected"] == 5
    assert breakdown["schedule_lag"] >= 0
    assert [k for k, v in breakdown.items() if v is None] == [
        "tcp_connect",
        "tls_handshake",
        "connack",
        "back_off",
    ]
    html = run_loadgen("report", "html", tmp_path / "r.json", "-o", tmp_path / "r.html")
    assert html.code == 0, html.err
    assert "timed only the whole provisioning" in (tmp_path / "r.html").read_text()


def test_aiomqtt_reads_a_certificate_rejected_after_the_handshake_as_the_native_driver_does(
    tmp_path, mosquitto, device_ca
):
    # With TLS 1.3, mosquitto refuses a certificate once the client's handshake
    # is done: paho only logs the alert or the reset its read met, and the
    # device must not end "closed" as if JITP had closed it.
    (tmp_path / "unknown.yaml").write_text("faults: {unknown_ca: 1.0}\n")
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        mqtt={"version": 5, "driver": "aiomqtt"},
        fleet={
            "ca": str(device_ca.directory),
            "store": "unknown",
            "count": 2,
            "profile": "unknown.yaml",
        },
        retry={"max_attempts": 1},
        timeouts={"connect": "1s"},
    )
    result = run_loadgen("run", path, "--workers", "1", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["outcomes"]["tls_rejected"] == 2, report["reasons"]
    assert report["accounting"]["unexpected"] == 0  # the fault predicted it
    assert "failed to receive on socket" not in result.err  # paho's log: the report says it


def test_the_shipped_mosquitto_scenario_runs_as_written(tmp_path):
    import shutil

    from tests.brokers import start_mosquitto
    from tests.conftest import ROOT

    shutil.copy(ROOT / "scenarios" / "mosquitto-mtls.yaml", tmp_path)
    shutil.copytree(ROOT / "scenarios" / "profiles", tmp_path / "profiles")
    assert run_loadgen("ca", "init", "--out", tmp_path / "fleet-ca").code == 0
    broker = start_mosquitto(tmp_path / "broker", tmp_path / "fleet-ca" / "ca.pem")
    try:
        shutil.copy(broker.server_ca.directory / "ca.pem", tmp_path / "server-ca.pem")
        result = run_loadgen(
            "run",
            tmp_path / "mosquitto-mtls.yaml",
            "--endpoint",
            f"127.0.0.1:{broker.tls_port}",
            "--count",
            "200",
            "--rate",
            "400/s",
            "--report",
            tmp_path / "r.json",
        )
    finally:
        broker.stop()
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    manifest = [
        json.loads(line)
        for line in (tmp_path / ".loadgen" / "fleets" / "mosquitto" / "manifest.jsonl").open()
    ]
    rejected = sum(1 for d in manifest if d["fault"] in ("unknown_ca", "expired", "not_yet_valid"))
    assert report["outcomes"]["tls_rejected"] == rejected
    assert report["outcomes"]["connected"] == 200 - rejected


@pytest.mark.parametrize(
    ("endpoint", "outcome", "reason"),
    [
        ("127.0.0.1:1", "refused", "ConnectionRefusedError"),
        ("no-such-host.invalid:8883", "error", "DNS"),
    ],
)
def test_an_endpoint_nobody_answers_ends_every_device_in_its_outcome(
    tmp_path, mosquitto, device_ca, endpoint, outcome, reason
):
    path = _scenario(tmp_path, mosquitto, device_ca, retry={"initial": "1ms", "max_attempts": 2})
    result = run_loadgen(
        "run",
        path,
        "--endpoint",
        endpoint,
        "--count",
        "20",
        "--workers",
        "1",
        "--report",
        tmp_path / "r.json",
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["outcomes"][outcome] == 20
    assert report["attempts"]["total"] == 40
    assert any(reason in text for text in report["reasons"][outcome])


def test_a_concurrency_the_fd_limit_cannot_hold_is_refused_before_the_run(
    tmp_path, mosquitto, device_ca
):
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load={"executor": "burst", "max_in_flight": 100_000_000},
    )
    result = run_loadgen("run", path, "--count", "5", "--workers", "1")
    assert_user_error(result, "max_in_flight", "ulimit")


def _run_with_open_files(limit: int, *args):
    """`loadgen run ARGS` in a process that may hold ``limit`` open files."""
    import resource
    import subprocess
    import sys

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "loadgen", "run", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lower,
    )


def _workers_of_a_run_at_40_per_s(tmp_path, mosquitto, device_ca, *args) -> int:
    load = {"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 50}
    path = _scenario(tmp_path, mosquitto, device_ca, load=load)
    report = tmp_path / "report.json"
    result = run_loadgen("run", path, "--count", 40, "--report", report, *args)
    assert result.code == 0, result.err
    data = json.loads(report.read_text())
    assert data["accounting"]["started"] == 40 and data["accounting"]["unexpected"] == 0
    workers: int = data["load"]["workers"]
    return workers


def test_without_workers_a_run_has_a_worker_per_core(tmp_path, mosquitto, device_ca):
    assert _workers_of_a_run_at_40_per_s(tmp_path, mosquitto, device_ca) == cores()


def test_workers_auto_plans_one_worker_below_300_connects_a_second(tmp_path, mosquitto, device_ca):
    assert _workers_of_a_run_at_40_per_s(tmp_path, mosquitto, device_ca, "--workers", "auto") == 1


def test_workers_neither_a_number_nor_auto_is_one_line_and_exit_2(tmp_path, mosquitto, device_ca):
    path = _scenario(tmp_path, mosquitto, device_ca)
    assert_user_error(run_loadgen("run", path, "--workers", "many"), "neither a number nor auto")


def test_without_workers_it_plans_enough_workers_to_fit_the_open_files_limit(
    tmp_path, mosquitto, device_ca
):
    """max_in_flight 300 and 160 open files per process (64 kept for the
    process itself): a worker holds at most 96 connections, so 4 workers."""
    load = {"executor": "constant-arrival-rate", "rate": "400/s", "max_in_flight": 300}
    path = _scenario(tmp_path, mosquitto, device_ca, load=load)
    report = tmp_path / "report.json"
    proc = _run_with_open_files(160, path, "--count", 200, "--report", report)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["load"]["workers"] == 4
    assert data["accounting"]["started"] == 200 and data["accounting"]["unexpected"] == 0


def test_too_few_workers_for_the_open_files_limit_is_one_line_and_exit_2(
    tmp_path, mosquitto, device_ca
):
    load = {"executor": "constant-arrival-rate", "rate": "400/s", "max_in_flight": 300}
    path = _scenario(tmp_path, mosquitto, device_ca, load=load)
    proc = _run_with_open_files(160, path, "--workers", 1, "--report", tmp_path / "r.json")
    assert proc.returncode == 2, proc.stderr
    assert "needs 364 open files per worker" in proc.stderr and "--workers" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "max_in_flight" in t)
    assert f"{path}:{line}: load.max_in_flight: 300 needs" in proc.stderr
