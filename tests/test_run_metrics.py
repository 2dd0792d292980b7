"""`loadgen run --metrics-port`: Prometheus sees the whole run exactly once, with
several worker processes: /metrics after the run equals the report."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.brokers import free_port, scrape_once_written, stop_process, wait_for_port
from tests.fake_gateways import NotHttp
from tests.test_run import _scenario


def test_metrics_after_a_two_worker_run_equal_the_report(tmp_path, mosquitto, device_ca):
    scenario = {
        "name": "metrics-test",
        "endpoint": f"127.0.0.1:{mosquitto.tls_port}",
        "tls": {
            "ca_file": str(mosquitto.server_ca.directory / "ca.pem"),
            "server_name": "localhost",
        },
        "fleet": {
            "ca": str(device_ca.directory),
            "store": "fleet",
            "count": 300,
            "profile": "p.yaml",
        },
        "retry": {"initial": "5ms", "max_attempts": 2},
        "load": {"executor": "constant-arrival-rate", "rate": "300/s", "max_in_flight": 100},
        "after_connect": [{"publish": {"topic": "dt/{client_id}", "qos": 1}}],
    }
    (tmp_path / "p.yaml").write_text("faults: {unknown_ca: 0.05}\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    port = free_port()
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadgen",
            "run",
            str(tmp_path / "s.yaml"),
            "--workers",
            "2",
            "--report",
            str(report_path),
            "--metrics-port",
            str(port),
            "--linger",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = scrape_once_written(proc, report_path, port, timeout=120)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    report = json.loads(report_path.read_text())
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name, **labels):
        return samples[(name, tuple(sorted({"scenario": "metrics-test", **labels}.items())))]

    assert value("loadgen_devices_finished_total") == report["devices"] == 300
    assert value("loadgen_connect_attempts_total") == report["attempts"]["total"]
    assert value("loadgen_throttled_answers_total") == report["attempts"]["throttled"]
    for outcome, n in report["outcomes"].items():
        assert value("loadgen_device_outcomes_total", outcome=outcome) == n
        if outcome != "connected":
            expected = report["accounting"]["expected"].get(outcome, 0)
            assert value("loadgen_device_outcomes_expected_total", outcome=outcome) == expected
    assert value("loadgen_devices_unexpected_total") == report["accounting"]["unexpected"]
    for phase, summary in report["latency_ms"].items():
        assert value("loadgen_phase_duration_seconds_count", phase=phase) == summary["count"]
        assert (
            value("loadgen_phase_duration_seconds_bucket", phase=phase, le="+Inf")
            == summary["count"]
        )
    assert value("loadgen_devices_in_flight") == 0


def _samples(body: bytes, name: str) -> list:
    """The samples of metric ``name`` in an exposition."""
    families = text_string_to_metric_families(body.decode())
    return [s for f in families for s in f.samples if s.name == name]


def _run_to_pushgateway(path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "loadgen", "run", str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def pushgateway():
    """A real Prometheus Pushgateway on a free loopback port (its port)."""
    binary = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
    port = free_port()
    gateway = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=gateway)
        yield port
    finally:
        stop_process(gateway)


def test_a_short_run_pushes_its_final_metrics_to_a_pushgateway(
    tmp_path, mosquitto, device_ca, pushgateway
):
    path = _scenario(tmp_path, mosquitto, device_ca)
    _run_to_pushgateway(
        path,
        *("--count", "60", "--workers", "2", "--report", str(tmp_path / "r.json")),
        *("--pushgateway", f"http://127.0.0.1:{pushgateway}", "--job", "ci-run"),
    )
    body = urllib.request.urlopen(f"http://127.0.0.1:{pushgateway}/metrics", timeout=5).read()
    report = json.loads((tmp_path / "r.json").read_text())
    finished = [
        s
        for s in _samples(body, "loadgen_devices_finished_total")
        if s.labels.get("job") == "ci-run"
    ]
    assert [s.value for s in finished] == [report["devices"]] == [60]


def test_a_pushgateway_answering_in_another_protocol_fails_its_pushes_not_the_run(
    tmp_path, mosquitto, device_ca
):
    path = _scenario(tmp_path, mosquitto, device_ca)
    with NotHttp() as gateway:
        result = _run_to_pushgateway(
            path,
            *("--count", "20", "--workers", "1", "--report", str(tmp_path / "r.json")),
            *("--pushgateway", gateway.url),
        )
    assert gateway.requests >= 1
    assert json.loads((tmp_path / "r.json").read_text())["devices"] == 20
    said = [line for line in result.stderr.splitlines() if "loadgen: pushgateway" in line]
    why = f"loadgen: pushgateway {gateway.url}: answered, but not in HTTP: 'SSH-2.0-x\\r\\n'"
    # Once when the pushes began failing (if the run went on past the first),
    # and for the final push.
    assert said[:-1] in ([], [f"{why}; retrying every 5 s, the run goes on"])
    assert said[-1] == f"{why}; the final values were not pushed"


def test_devices_holding_their_connection_show_as_connected(tmp_path, mosquitto, device_ca):
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        after_connect=[{"hold": {"duration": "6s"}}],
        load={"executor": "burst", "max_in_flight": 50},
    )
    (tmp_path / "profile.yaml").write_text("subject:\n  common_name: 'held-{index:03d}'\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "run", str(path), "--count", "30"),
            *("--workers", "2", "--metrics-port", str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            except OSError:
                time.sleep(0.2)
                continue
            seen = [s.value for s in _samples(body, "loadgen_devices_connected")]
            if seen and seen[0] == 30:
                break
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert seen == [30], proc.stderr.read() if proc.stderr else ""


def test_shards_pushing_under_one_job_keep_a_group_each(
    tmp_path, mosquitto, device_ca, pushgateway
):
    path = _scenario(tmp_path, mosquitto, device_ca)
    for shard, count in (("a", "20"), ("b", "30")):
        _run_to_pushgateway(
            path,
            *("--count", count, "--workers", "1"),
            *("--pushgateway", f"http://127.0.0.1:{pushgateway}"),
            *("--job", "fleet", "--shard", shard),
        )
    assert _finished_by_shard(pushgateway, "fleet") == {"a": 20, "b": 30}


def _finished_by_shard(pushgateway: int, job: str) -> dict[str, float]:
    """The devices each shard's group on the Pushgateway says finished."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{pushgateway}/metrics", timeout=5).read()
    return {
        s.labels["shard"]: s.value
        for s in _samples(body, "loadgen_devices_finished_total")
        if s.labels.get("job") == job
    }


def test_sliced_shards_label_their_metrics_and_push_a_group_each_by_index(
    tmp_path, mosquitto, device_ca, pushgateway
):
    # Each shard in a folder of its own, as pods: its own store of its slice.
    for shard in ("0/2", "1/2"):
        path = _scenario(tmp_path / shard.replace("/", "-of-"), mosquitto, device_ca)
        _run_to_pushgateway(
            path,
            *("--count", "40", "--workers", "1", "--shard", shard),
            *("--pushgateway", f"http://127.0.0.1:{pushgateway}", "--job", "sliced"),
        )
    assert _finished_by_shard(pushgateway, "sliced") == {"0": 20, "1": 20}


def test_metrics_listen_on_the_address_metrics_host_names(tmp_path, mosquitto, device_ca):
    # In a pod Prometheus scrapes from elsewhere: 127.0.0.41 stands for the pod's
    # address (a loopback address other than 127.0.0.1, where the default
    # listens, and than those other tests take as source addresses).
    host = "127.0.0.41"
    path = _scenario(tmp_path, mosquitto, device_ca)
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "run", str(path), "--count", "20"),
            *("--report", str(report_path), "--linger", "20"),
            *("--metrics-port", str(port), "--metrics-host", host),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = scrape_once_written(proc, report_path, port, timeout=120, host=host)
    finally:
        stop_process(proc)
    finished = [s.value for s in _samples(body, "loadgen_devices_finished_total")]
    assert finished == [json.loads(report_path.read_text())["devices"]] == [20]


def test_a_metrics_host_that_is_not_this_machines_is_one_line_naming_it(
    tmp_path, mosquitto, device_ca
):
    path = _scenario(tmp_path, mosquitto, device_ca)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "loadgen", "run", str(path), "--count", "20"),
            *("--metrics-port", str(free_port()), "--metrics-host", "192.0.2.1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "--metrics-host 192.0.2.1" in result.stderr
    assert not (tmp_path / "fleet").exists()
