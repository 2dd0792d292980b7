"""Nothing measured is lost: Ctrl-C or SIGTERM stops the schedule, lets devices in
flight finish, and still writes the report, marked partial."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import Listener
from tests.processes import assert_all_gone, cmdline, descendants
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


def test_a_stopped_runs_planned_arrivals_end_at_the_stop_not_after_its_grace_period(
    tmp_path, mosquitto, device_ca, listener
):
    # Held devices keep the run going for the grace period after the stop; no
    # device was to start then, so the planned series ends at the stop.
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load={"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 400},
        after_connect=[
            {"publish": {"topic": "dt/{client_id}/telemetry", "qos": 1, "payload_bytes": 8}},
            {"hold": {"duration": "60s"}},
        ],
    )
    report_path = tmp_path / "r.json"
    proc = _loadgen("run", path, "--count", "800", "--workers", "2", "--report", report_path)
    listener.wait_for(20, timeout=120, process=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(report_path.read_text())
    started, planned = report["series"]["started_per_s"], report["series"]["target_per_s"]
    # Ten seconds of grace would have planned 400 arrivals more than started.
    assert sum(planned) - sum(started) < 120, (planned, started)
    assert len(planned) <= len(started) + 1


def _forty_a_second(tmp_path, mosquitto, device_ca):
    return _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load={"executor": "constant-arrival-rate", "rate": "40/s", "max_in_flight": 50},
    )


def _workers_of(proc: subprocess.Popen) -> set[int]:
    return {pid for pid in descendants(proc.pid) if "spawn_main" in cmdline(pid)}


def _loadgen(*args: object, **popen: Any) -> subprocess.Popen[str]:
    """`loadgen ARGS`, its output read as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _run(path, report_path, *extra, **popen):
    return _loadgen(
        "run", path, "--count", "40", "--workers", "2", "--report", report_path, *extra, **popen
    )


def _poll(condition, proc, timeout=120.0):
    """Wait for ``condition()`` while ``proc`` runs; whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_a_stop_signal_after_the_workers_ended_still_writes_the_whole_report(
    tmp_path, mosquitto, device_ca
):
    from tests.brokers import free_port

    path = _forty_a_second(tmp_path, mosquitto, device_ca)
    report_path = tmp_path / "r.json"
    # Lingering keeps the run alive after its workers ended, so that the signal
    # lands then on a loaded machine too (the gathering and writing alone last
    # milliseconds, and a poll of /proc may take longer).
    linger = ("--metrics-port", str(free_port()), "--linger", "60")
    proc = _run(path, report_path, "--html", str(tmp_path / "r.html"), *linger)
    seen: set[int] = set()

    def workers_came_and_went() -> bool:
        now = _workers_of(proc)
        seen.update(now)
        return len(seen) == 2 and not now

    assert _poll(workers_came_and_went, proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)  # the results are in: being gathered and written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    report = json.loads(report_path.read_text())
    assert report["partial"] is False
    assert report["accounting"]["planned"] == report["accounting"]["started"] == 40
    assert sum(report["outcomes"].values()) == 40
    assert (tmp_path / "r.html").exists()


def test_ctrl_c_while_the_workers_start_stops_them_without_losing_one(
    tmp_path, mosquitto, device_ca
):
    path = _forty_a_second(tmp_path, mosquitto, device_ca)
    report_path = tmp_path / "r.json"
    # Ctrl-C reaches the terminal's whole process group, the workers with it.
    proc = _run(path, report_path, start_new_session=True)
    assert _poll(lambda: bool(_workers_of(proc)), proc), proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # a worker is still starting its interpreter
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Fatal Python error" not in err
    report = json.loads(report_path.read_text())
    assert report["accounting"]["workers_lost"] == {}
    assert report["accounting"]["planned"] == 40
    assert report["accounting"]["started"] + report["accounting"]["not_started"] == 40
    assert report["duration_s"] >= 0


def test_a_run_stopped_before_its_start_at_began_and_ended_when_it_was_stopped(
    tmp_path, mosquitto, device_ca
):
    """Not at the --start-at still two minutes ahead: its report says no time
    that had not come."""
    import datetime as dt

    path = _forty_a_second(tmp_path, mosquitto, device_ca)
    report_path = tmp_path / "r.json"
    proc = _run(path, report_path, "--start-at", f"{time.time() + 120:.0f}", start_new_session=True)
    assert _poll(lambda: len(_workers_of(proc)) == 2, proc), proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped_by = time.time()
    assert proc.returncode == 130, err
    report = json.loads(report_path.read_text())
    assert report["accounting"]["started"] == 0 and report["duration_s"] == 0
    for moment in ("started_at", "ended_at"):
        assert dt.datetime.fromisoformat(report[moment]).timestamp() <= stopped_by


def test_a_stop_signal_after_a_capacity_step_keeps_that_step_in_the_report(
    tmp_path, mosquitto, device_ca
):
    path = _scenario(tmp_path, mosquitto, device_ca)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "capacity", str(path), "--slo"),
            *("p99(provision) < 10s", "--start", "50/s", "--step", "50/s"),
            *("--step-duration", "1s", "--max-rate", "150/s", "--workers", "1"),
            *("--report", str(tmp_path / "r.json")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()

    def first_step_ended() -> bool:
        now = _workers_of(proc)
        seen.update(now)
        return bool(seen) and not now

    assert _poll(first_step_ended, proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    capacity = json.loads((tmp_path / "r.json").read_text())["capacity"]
    assert capacity["steps"][0]["rate_per_s"] == 50.0 and capacity["steps"][0]["passed"]
    assert capacity["highest_sustainable_per_s"] == 50.0


def test_a_run_whose_output_pipe_closed_still_writes_its_reports_and_ends_as_it_ran(
    tmp_path, mosquitto, device_ca
):
    """`loadgen run ... | head -1`: stdout's reader is gone before the run ends."""
    report_path, html = tmp_path / "r.json", tmp_path / "r.html"
    proc = subprocess.Popen(
        [
            *(
                sys.executable,
                "-m",
                "loadgen",
                "run",
                str(_forty_a_second(tmp_path, mosquitto, device_ca)),
            ),
            *("--count", "40", "--workers", "2", "--report", str(report_path), "--html", str(html)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # nobody reads what it prints
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    report = json.loads(report_path.read_text())
    assert report["partial"] is False and report["devices"] == 40
    assert html.stat().st_size > 0


def test_a_run_whose_terminal_closed_stops_and_writes_what_it_measured(
    tmp_path, mosquitto, device_ca, listener
):
    """The terminal window closes: the kernel hangs its terminal up (SIGHUP to
    the run), and every later write to it fails (EIO)."""
    import fcntl
    import pty
    import termios
    import threading

    master, slave = pty.openpty()

    def own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    report_path, html = tmp_path / "r.json", tmp_path / "r.html"
    path = _forty_a_second(tmp_path, mosquitto, device_ca)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "run", str(path), "--count", "400"),
            *("--workers", "2", "--report", str(report_path), "--html", str(html)),
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=own_terminal,
    )
    os.close(slave)

    def drain() -> None:  # what the terminal shows, read so that writes never block
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        listener.wait_for(20, timeout=120, process=proc)
        processes = descendants(proc.pid)  # its workers, the moment it runs
    finally:
        os.close(master)  # the window closes
    assert proc.wait(timeout=60) == 130
    assert processes
    assert_all_gone(processes)
    report = json.loads(report_path.read_text())
    assert report["partial"] is True and 0 < report["devices"] < 400
    assert sum(report["outcomes"].values()) == report["devices"]
    assert "stopped early" in html.read_text().lower()


def _embedded(tmp_path, device_ca, count: int, *, processes: int, **extra: Any) -> Path:
    """A scenario of ``count`` JITP devices, all at once, against the embedded
    emulator on ``processes`` serving processes."""
    import yaml

    path = tmp_path / "embedded.yaml"
    scenario = {
        "name": "embedded",
        "endpoint": "embedded",
        "mqtt": {"client_id": "{common_name}"},
        "fleet": {"ca": str(device_ca.directory), "store": "fleet", "count": count},
        "jitp": {"expect_first_connect_rejected": True},
        "load": {"executor": "burst", "max_in_flight": count},
        "emulator": {"quotas": {"provision": "off"}, "processes": processes},
        **extra,
    }
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_ctrl_c_while_the_embedded_emulator_stops_after_the_report_leaves_the_run_whole(
    tmp_path, device_ca
):
    path = _embedded(tmp_path, device_ca, 40, processes=3)
    report_path = tmp_path / "r.json"
    proc = _loadgen("run", path, "--workers", "1", "--report", report_path, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "written" in line:  # the report is on disk; the emulator stops next
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGINT came after the run ended; its report is whole" in err
    report = json.loads(report_path.read_text())
    assert report["partial"] is False and report["devices"] == 40


def test_sigterm_to_every_process_of_a_run_stops_it_as_ctrl_c_does(tmp_path, device_ca):
    """A service manager's stop (systemd's default: SIGTERM to every process of
    the unit, the embedded emulator and its serving processes too): devices
    holding count as connected, and the emulator serves until the run stops it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from tests.brokers import free_port

    metrics = free_port()
    path = _embedded(
        tmp_path, device_ca, 30, processes=2, after_connect=[{"hold": {"duration": "60s"}}]
    )
    report_path = tmp_path / "r.json"
    proc = _loadgen(
        *("run", path, "--workers", "1", "--report", report_path, "--metrics-port", metrics),
        start_new_session=True,
    )

    def connected() -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as got:
                body = got.read().decode()
        except OSError:
            return 0.0
        for family in text_string_to_metric_families(body):
            if family.name == "loadgen_devices_connected":
                return family.samples[0].value
        return 0.0

    assert _poll(lambda: connected() == 30, proc), proc.communicate()
    everyone = descendants(proc.pid)
    for pid in [proc.pid, *everyone]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    time.sleep(0.5)  # what the emulator would do with it, it has done by now
    proc.send_signal(signal.SIGTERM)  # a second: no grace for the devices holding
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(report_path.read_text())
    assert report["outcomes"]["connected"] == 30
    assert report["accounting"]["notes"] == {"interrupted during hold": 30}
    assert report["jitp"]["emulator_stopped"] is None
    assert_all_gone(everyone)


def test_a_shard_stopped_while_it_mints_writes_every_output_with_no_device_started(
    tmp_path, mosquitto, device_ca
):
    # RSA keys: minting 3,000 takes minutes, so the stop comes while it mints.
    path = _scenario(
        tmp_path,
        mosquitto,
        device_ca,
        fleet={
            "ca": str(device_ca.directory),
            "store": "fleet",
            "count": 3000,
            "profile": "rsa.yaml",
        },
    )
    (tmp_path / "rsa.yaml").write_text("key_type: rsa-2048\nsubject:\n  common_name: 'b-{index}'\n")
    outputs = {name: tmp_path / name for name in ("r.json", "r.html", "r.xml", "r.md")}
    proc = _loadgen(
        "run", path, "--shard", "1/3", "--start-at", f"{time.time() + 600:.0f}",
        "--workers", "1", "--report", outputs["r.json"], "--html", outputs["r.html"],
        "--junit", outputs["r.xml"], "--summary-md", outputs["r.md"],
        "--gate", "ratio(failed) < 1%",
    )  # fmt: skip
    assert _poll(lambda: (tmp_path / "fleet").exists(), proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert all(output.exists() for output in outputs.values())
    report = json.loads(outputs["r.json"].read_text())
    assert report["partial"] is True
    assert report["accounting"]["planned"] == report["accounting"]["not_started"] == 1000
    assert report["accounting"]["started"] == 0 and report["duration_s"] == 0
    assert (report["shard"]["index"], report["shard"]["count"]) == (1, 3)
    assert report["series"]["target_per_s"] == []
