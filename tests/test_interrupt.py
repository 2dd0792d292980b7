"""Nothing measured is lost: Ctrl-C or SIGTERM stops the schedule, lets devices in
flight finish, and still writes the report, marked partial."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.brokers import Listener
from tests.test_run import _scenario


@pytest.fixture
def listener(mosquitto):
    """What the run's devices publish (their telemetry topic)."""
    watching = Listener(mosquitto, "dt/+/telemetry")
    yield watching
    watching.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_still_writes_its_report_marked_partial(
    tmp_path, mosquitto, device_ca, listener, sig
):
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load={"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 50},
    )
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadgen",
            "run",
            str(path),
            "--count",
            "400",
            "--workers",
            "2",
            "--report",
            str(report_path),
            "--html",
            str(tmp_path / "r.html"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.wait_for(20, timeout=120, process=proc)  # minted, started, some devices done
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    report = json.loads(report_path.read_text())
    assert report["partial"] is True
    assert 0 < report["devices"] < 400
    assert sum(report["outcomes"].values()) == report["devices"]
    assert report["devices"] == sum(report["series"]["started_per_s"])  # every start ended
    assert "stopped early" in (tmp_path / "r.html").read_text().lower()


def test_a_second_sigint_stops_at_once_and_held_devices_count_as_connected(
    tmp_path, mosquitto, device_ca, listener
):
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load={"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 200},
        after_connect=[
            {"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1, "payload_bytes": 8}},
            {"hold": {"duration": "60s"}},
        ],
    )
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "run", str(path), "--count", "400"),
            *("--workers", "2", "--report", str(report_path), "--html", str(tmp_path / "r.html")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.wait_for(20, timeout=120, process=proc)  # devices connected and holding
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    # Well inside the 10 s grace a single signal gives devices in flight.
    _, err = proc.communicate(timeout=8)
    assert proc.returncode == 130, err
    report = json.loads(report_path.read_text())
    assert report["partial"] is True
    # Connected and holding when the stop came: they did all they were asked to
    # before the hold, so they count as connected, with a note.
    held = report["accounting"]["notes"]["interrupted during hold"]
    assert 0 < held == report["outcomes"]["connected"] == report["devices"]
    assert report["accounting"]["not_started"] == 400 - report["devices"]
    assert (tmp_path / "r.html").exists()
