"""Every device a run plans is in the report exactly once, with one outcome,
whatever goes wrong: exceptions anywhere in a device's life, a device that cannot
be made ready, a worker process that dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.load.chaos import POINTS, WORKER_EXIT, Chaos
from loadgen.load.workers import run_workers
from loadgen.report.build import build
from loadgen.run import ensure_fleet
from loadgen.scenario.planning import build_plan
from loadgen.scenario.schema import load_scenario
from tests.brokers import Listener
from tests.test_run import _scenario

DEVICES = 24
WORKERS = 2
_LOADGEN_RUN = (sys.executable, "-m", "loadgen", "run")
# Slow enough that a worker can be killed or stopped with devices still to go.
_SLOW = {"executor": "constant-arrival-rate", "rate": "4/s", "max_in_flight": 50}


def _clean_scenario(root, mosquitto, device_ca, count=DEVICES, **overrides):
    """Devices with no injected faults: left alone, every one connects."""
    settings = {
        "fleet": {"ca": str(device_ca.directory), "store": "fleet", "count": count},
        "load": {"executor": "constant-arrival-rate", "rate": "200/s", "max_in_flight": 50},
    }
    path = _scenario(root, mosquitto, device_ca, **(settings | overrides))
    scenario = load_scenario(path)
    ensure_fleet(scenario, count, WORKERS)
    return path, scenario


@pytest.fixture(scope="module")
def clean_plan(tmp_path_factory, mosquitto, device_ca):
    _, scenario = _clean_scenario(tmp_path_factory.mktemp("chaos"), mosquitto, device_ca)
    return build_plan(scenario, endpoint=("127.0.0.1", mosquitto.tls_port), workers=WORKERS)


def _reason_count(report, reason):
    return report["reasons"].get("error", {}).get(reason, 0)


# Where an injected exception leaves its device: the phase the report names.
_PHASE_OF = {"preparing": "preparing", "tcp": "tcp", "connack": "connack", "acting": "acting"}

odds = st.lists(
    st.tuples(st.sampled_from(POINTS), st.floats(0.02, 0.25)), min_size=1, max_size=4
).map(lambda pairs: tuple(dict(pairs).items()))


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), odds=odds)
def test_exceptions_anywhere_in_devices_lives_leave_every_device_counted_once(
    clean_plan, seed, odds
):
    chaos = Chaos(seed, odds)
    stats, timing = run_workers(replace(clean_plan, chaos=chaos))
    report = build(clean_plan, stats, timing)
    accounting = report["accounting"]
    assert accounting["planned"] == DEVICES
    assert accounting["started"] + accounting["not_started"] == DEVICES
    assert accounting["not_started"] == 0  # nobody stopped this run
    assert sum(report["outcomes"].values()) == accounting["started"] == report["devices"]
    assert sum(report["reasons"].get("error", {}).values()) == report["outcomes"]["error"]
    assert accounting["unexpected"] == report["outcomes"]["error"]  # no fault predicted any

    points = {i: chaos.point(i) for i in range(DEVICES)}
    dead = {i % WORKERS for i, point in points.items() if point == "worker"}
    assert {int(w) for w in accounting["workers_lost"]} == dead
    for worker in dead:
        assert _reason_count(report, f"worker: worker {worker} died (exit code {WORKER_EXIT})") > 0
    # A dead worker's devices are its injected ones, connected ones or lost ones;
    # a surviving worker's each end exactly as their injected point says.
    alive = Counter(points[i] for i in points if i % WORKERS not in dead)
    with_dead = Counter(points.values())
    for point, phase in _PHASE_OF.items():
        counted = _reason_count(report, f"{phase}: InjectedFault: injected at {point}")
        assert alive[point] <= counted <= with_dead[point], point
    assert alive[None] <= report["outcomes"]["connected"] <= with_dead[None]
    if not dead:
        assert report["outcomes"]["connected"] == alive[None]


def _run_with_report(path, tmp_path):
    """`loadgen run` of ``path`` on two workers: its output, and its report."""
    report_path = tmp_path / "r.json"
    result = subprocess.run(
        [*_LOADGEN_RUN, str(path), "--workers", "2", "--report", str(report_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads(report_path.read_text())


def test_a_device_with_a_corrupt_key_fails_alone_in_preparing(
    tmp_path, mosquitto, device_ca, listener
):
    path, scenario = _clean_scenario(tmp_path, mosquitto, device_ca)
    first = next(iter(scenario.fleet.store.joinpath("manifest.jsonl").open()))
    key = scenario.fleet.store / json.loads(first)["key"]
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    _, report = _run_with_report(path, tmp_path)
    assert report["outcomes"]["connected"] == DEVICES - 1
    assert report["outcomes"]["error"] == 1
    [reason] = report["reasons"]["error"]
    assert reason.startswith("preparing: its certificate or key would not load: ")
    assert report["reason_devices"] == {"error": {reason: [0]}}
    assert report["accounting"]["unexpected"] == 1


@pytest.mark.parametrize(
    ("gone", "driver"), [("cert", "native"), ("key", "native"), ("key", "aiomqtt")]
)
def test_devices_whose_files_are_missing_share_one_reason_that_names_the_first_of_them(
    tmp_path, mosquitto, device_ca, listener, gone, driver
):
    mqtt = {"version": 5, "client_id": "{common_name}", "driver": driver}
    path, scenario = _clean_scenario(tmp_path, mosquitto, device_ca, mqtt=mqtt)
    lines = scenario.fleet.store.joinpath("manifest.jsonl").read_text().splitlines()
    for index in (11, 3, 17, 5):
        (scenario.fleet.store / json.loads(lines[index])[gone]).unlink()
    result, report = _run_with_report(path, tmp_path)
    what = {"cert": "certificate", "key": "key"}[gone]
    reason = f"preparing: its {what} file is missing"
    assert report["reasons"]["error"] == {reason: 4}
    assert report["reason_devices"]["error"] == {reason: [3, 5, 11]}
    assert report["attempts"]["per_device"]["0"] == 4  # no attempt made
    assert f"{reason} (devices 3, 5, 11, ...)" in " ".join(result.stdout.split())


@pytest.fixture
def listener(mosquitto):
    watching = Listener(mosquitto, "dt/+/telemetry")
    yield watching
    watching.close()


def _workers(pid):
    """The worker processes of the ``loadgen`` process ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    spawned = b"spawn_main" in cmdline.read()
            except OSError:
                continue
            if parent == pid and spawned:
                found.append(int(entry))
    return found


def test_a_killed_worker_has_its_devices_counted_as_errors_and_the_run_fails(
    tmp_path, mosquitto, device_ca, listener
):
    path, _ = _clean_scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load=_SLOW,
    )
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [*_LOADGEN_RUN, str(path), "--workers", "2", "--report", str(report_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.wait_for(4, timeout=120, process=proc)  # both workers are running devices
    victim, _ = _workers(proc.pid)
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "died (exit code -9)" in err
    report = json.loads(report_path.read_text())
    accounting = report["accounting"]
    assert accounting["started"] == DEVICES and accounting["not_started"] == 0
    assert sum(report["outcomes"].values()) == DEVICES
    assert list(accounting["workers_lost"].values()) == ["died (exit code -9)"]
    [lost] = [r for r in report["reasons"]["error"] if "died" in r]
    assert report["reasons"]["error"][lost] == report["outcomes"]["error"] > 0


def test_a_worker_that_stops_answering_is_killed_and_its_devices_still_count_once(
    tmp_path, mosquitto, device_ca, listener
):
    _, scenario = _clean_scenario(
        tmp_path,
        mosquitto,
        device_ca,
        load=_SLOW,
    )
    plan = build_plan(scenario, endpoint=("127.0.0.1", mosquitto.tls_port), workers=WORKERS)
    stopped: list[int] = []
    ended = threading.Event()
    waited_for_ever = threading.Event()

    def stop_a_worker() -> None:
        listener.wait_for(4, timeout=120)  # both workers are running devices
        victim = min(_workers(os.getpid()))
        os.kill(victim, signal.SIGSTOP)  # hung: alive, and silent
        stopped.append(victim)
        if not ended.wait(60):  # the run would wait for it for ever: end the test
            waited_for_ever.set()
            os.kill(victim, signal.SIGKILL)

    stopper = threading.Thread(target=stop_a_worker, daemon=True)
    stopper.start()
    try:
        stats, timing = run_workers(plan, silent_timeout=3.0)
    finally:
        ended.set()
        stopper.join(timeout=130)
    assert stopped, "no worker was stopped"
    assert not waited_for_ever.is_set(), "the run waited for its silent worker"
    report = build(plan, stats, timing)
    accounting = report["accounting"]
    assert accounting["started"] == DEVICES and accounting["not_started"] == 0
    assert sum(report["outcomes"].values()) == DEVICES
    why = "stopped answering: nothing from it for 3 s (killed)"
    assert list(accounting["workers_lost"].values()) == [why]
    [lost] = [r for r in report["reasons"]["error"] if why in r]
    assert report["reasons"]["error"][lost] == report["outcomes"]["error"] > 0
    assert not os.path.exists(f"/proc/{stopped[0]}")  # killed, and reaped


def test_a_manifest_that_breaks_mid_run_fails_its_worker_and_still_counts_every_device(
    tmp_path, mosquitto, device_ca
):
    devices = 100
    _, scenario = _clean_scenario(tmp_path, mosquitto, device_ca, count=devices)
    plan = build_plan(scenario, endpoint=("127.0.0.1", mosquitto.tls_port), workers=1)
    manifest = scenario.fleet.store / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    # Past the first window a worker prepares before it starts (64 devices with
    # up to 32 in flight), the fleet stops being readable.
    broken = 80
    manifest.write_bytes(b"".join(lines[:broken]) + b"{not json\n" + b"".join(lines[broken + 1 :]))
    stats, timing = run_workers(replace(plan, max_in_flight=8))
    report = build(plan, stats, timing)
    accounting = report["accounting"]
    assert accounting["started"] == devices and accounting["not_started"] == 0
    [why] = accounting["workers_lost"].values()
    assert why.startswith("failed: FleetError") and f"manifest.jsonl:{broken + 1}" in why
    assert report["outcomes"]["connected"] == broken, report["reasons"]
    assert report["outcomes"]["error"] == devices - broken


def test_a_report_that_cannot_be_written_at_the_end_is_one_line_and_exit_1(
    tmp_path, mosquitto, device_ca
):
    import resource

    path, _ = _clean_scenario(tmp_path, mosquitto, device_ca)  # minted before the limit
    report_path = tmp_path / "r.json"

    def small_files_only():
        # As a full disk would: any file past 4 KiB fails with EFBIG (the report
        # with its histograms is larger; the fleet was minted before).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run(
        [*_LOADGEN_RUN, str(path), "--workers", "1", "--report", str(report_path)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files_only,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if "cannot write" in x]
    assert line.startswith(f"loadgen: failed: {report_path}: cannot write: File too large")
    assert not report_path.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
