"""No process outlives the run: however `loadgen run` or `certs mint` ends
(SIGKILL, SIGTERM, SIGHUP, during the run or its --linger), its workers, mint
workers and embedded emulator are gone within moments, and a stopped run still
writes its partial report."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.brokers import free_port
from tests.processes import GONE_WITHIN, assert_all_gone, cmdline, descendants, still_running
from tests.test_run import _scenario

# How long a run may take to be under way (mint, start workers, first devices).
UNDER_WAY_WITHIN = 120.0


def wait_for(condition, what: str, process: subprocess.Popen, within: float = UNDER_WAY_WITHIN):
    deadline = time.monotonic() + within
    while not (value := condition()):
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"exited ({process.returncode}) before {what}: {err[-2000:]}")
        assert time.monotonic() < deadline, f"not {what} after {within:.0f} s"
        time.sleep(0.2)
    return value


def devices_finished(metrics_port: int) -> float:
    """What the run's own Prometheus endpoint counts as finished (0 before it serves)."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return 0.0
    match = re.search(r"^loadgen_devices_finished\S*\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def workers_of(processes: dict[int, int]) -> list[int]:
    return [pid for pid in processes if "spawn_main" in cmdline(pid)]


def emulators_of(processes: dict[int, int]) -> list[int]:
    return [pid for pid in processes if "emulator serve" in cmdline(pid)]


@pytest.fixture
def reaped():
    """Started processes, killed and waited for at the end whatever the test did."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _loadgen(reaped, *args: str | Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "loadgen", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaped.append(process)
    return process


def _embedded_scenario(root: Path, rate: str = "5/s") -> Path:
    """The embedded emulator as endpoint; devices arrive slowly and hold a while,
    so a run of a few hundred is surely under way when signalled."""
    root.mkdir(parents=True, exist_ok=True)
    scenario = {
        "name": "lifetime-test",
        "endpoint": "embedded",
        "mqtt": {"version": 5, "client_id": "{common_name}"},
        "fleet": {"ca": "ca", "store": "fleet", "count": 300},
        "retry": {"initial": "50ms", "max": "200ms", "max_attempts": 4},
        "load": {"executor": "constant-arrival-rate", "rate": rate, "max_in_flight": 100},
        "after_connect": [{"hold": {"duration": "2s"}}],
        "emulator": {"quotas": {"provision": "off", "connect-per-client": "off"}},
    }
    path = root / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def _mosquitto_scenario(tmp_path: Path, mosquitto, device_ca) -> Path:
    """mosquitto as endpoint; devices arrive slowly enough to be mid-run for minutes."""
    load = {"executor": "constant-arrival-rate", "rate": "10/s", "max_in_flight": 50}
    return _scenario(tmp_path, mosquitto, device_ca, load=load)


def _under_way(reaped, scenario: Path, *extra: str | Path, workers: int = 2):
    """`loadgen run` started and some devices finished; its processes then."""
    port = free_port()
    process = _loadgen(
        reaped, "run", scenario, "--workers", str(workers), "--metrics-port", str(port), *extra
    )
    wait_for(lambda: devices_finished(port) >= 1, "under way", process)
    return process, descendants(process.pid)


def _mid_run(reaped, scenario: Path, *extra: str | Path, workers: int = 2):
    """`_under_way`, with all its workers still running."""
    process, children = _under_way(reaped, scenario, *extra, workers=workers)
    assert len(workers_of(children)) == workers, {p: cmdline(p) for p in children}
    return process, children


def test_sigkill_of_a_run_takes_its_workers_and_embedded_emulator_with_it(tmp_path, reaped):
    process, children = _mid_run(reaped, _embedded_scenario(tmp_path))
    assert len(emulators_of(children)) == 1
    process.kill()
    process.wait()
    assert_all_gone(children)
    # It stopped the way it stops at the end of a run, not in a crash.
    assert "Traceback" not in (tmp_path / "emulator" / "emulator.log").read_text()


def test_sigkill_of_a_run_against_mosquitto_leaves_no_worker_and_no_flood_of_errors(
    tmp_path, reaped, mosquitto, device_ca
):
    # Workers share the parent's stderr: it reaches end-of-file once they are
    # all gone, and holds whatever they wrote after their parent's death.
    path = _mosquitto_scenario(tmp_path, mosquitto, device_ca)
    process, children = _mid_run(reaped, path, "--count", "2000")
    process.kill()
    process.wait()
    assert_all_gone(children)
    assert process.stderr is not None
    err = process.stderr.read()
    assert "EOFError" not in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_mid_run_writes_the_partial_report_and_leaves_no_process(
    tmp_path, reaped, sig
):
    report = tmp_path / "r.json"
    process, children = _mid_run(reaped, _embedded_scenario(tmp_path), "--report", report)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    written = json.loads(report.read_text())
    assert written["partial"] is True
    assert 0 < written["devices"] < 300
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    assert_all_gone(children)


def test_sigterm_during_linger_ends_it_and_stops_the_embedded_emulator(tmp_path, reaped):
    report = tmp_path / "r.json"
    scenario = _embedded_scenario(tmp_path, rate="100/s")
    process, children = _under_way(
        reaped, scenario, "--count", "20", "--report", report, "--linger", "600"
    )
    emulator = emulators_of(children)
    assert len(emulator) == 1
    port = _listening_port(tmp_path / "emulator" / "emulator.log", emulator[0])
    wait_for(report.exists, "the report written", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err  # the run's own status: it had finished
    assert "linger" in err and "Traceback" not in err
    assert json.loads(report.read_text())["partial"] is False
    assert_all_gone(children)
    # Its port is free for the next run: nothing listens on it. (Binding it here
    # would race other tests of a parallel run for a free port, and trip over
    # the closed sessions' TIME_WAIT, which a server's SO_REUSEADDR ignores.)
    assert port not in _listening_ports()


def _listening_ports() -> set[int]:
    """Every TCP port something listens on, from /proc."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _listening_port(log: Path, pid: int) -> int:
    """The TCP port the emulator listens on, from /proc: its own process's, or
    with several processes (emulator.processes), its serving processes'."""
    inodes = set()
    for process in (pid, *descendants(pid)):
        for fd in Path(f"/proc/{process}/fd").iterdir():
            target = str(fd.readlink()) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            return int(fields[1].split(":")[1], 16)
    pytest.fail(f"emulator {pid} listens on no TCP port ({log})")


def _minting(reaped, tmp_path: Path):
    """`certs mint` of a large RSA fleet, its pool of workers minting."""
    from loadgen.certs.ca import init_ca

    init_ca(tmp_path / "ca")
    # RSA keys: a worker's chunk of a thousand devices takes a minute, far longer
    # than a worker may outlive its parent.
    (tmp_path / "profile.yaml").write_text("key_type: rsa-2048\n")
    fleet = tmp_path / "fleet"
    process = _loadgen(
        reaped,
        *("certs", "mint", "--ca", tmp_path / "ca", "--out", fleet),
        *("--count", "20000", "--workers", "2", "--profile", tmp_path / "profile.yaml"),
    )

    def minting() -> dict[int, int] | None:
        # The chunks' folder exists while the pool of workers mints.
        children = descendants(process.pid)
        return children if len(children) >= 2 and (fleet / ".parts").is_dir() else None

    return process, wait_for(minting, "minting in workers", process)


def test_sigkill_of_certs_mint_takes_its_workers_with_it(tmp_path, reaped):
    process, children = _minting(reaped, tmp_path)
    process.kill()
    process.wait()
    assert_all_gone(children)


def test_sigterm_of_certs_mint_stops_it_like_ctrl_c(tmp_path, reaped):
    process, children = _minting(reaped, tmp_path)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["loadgen: interrupted; what was finished is kept"], err
    assert_all_gone(children)


def test_a_worker_whose_parent_pipe_closes_stops_with_one_line(
    tmp_path, mosquitto, device_ca, capfd
):
    from loadgen.load.workers import _worker_main
    from loadgen.run import RunOptions, ensure_fleet, make_plan
    from loadgen.scenario.schema import load_scenario

    scenario = load_scenario(_mosquitto_scenario(tmp_path, mosquitto, device_ca))
    ensure_fleet(scenario, 200, 1)
    plan = make_plan(scenario, RunOptions(count=200))
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    worker = context.Process(target=_worker_main, args=(plan, 0, child_end))
    worker.start()
    child_end.close()
    try:
        assert parent_end.poll(UNDER_WAY_WITHIN), "the worker never got ready"
        assert parent_end.recv()[0] == "ready"
        parent_end.send(("start", (time.time(), None)))  # no --start-at
        while parent_end.poll(UNDER_WAY_WITHIN) and parent_end.recv()[0] != "progress":
            pass  # under way once it reports progress
        parent_end.close()
        worker.join(GONE_WITHIN)
        assert worker.exitcode is not None, "still running with its parent pipe closed"
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()
    err = capfd.readouterr().err
    assert err.count("lost its parent process") == 1, err
    assert "Traceback" not in err and "EOFError" not in err


def test_a_child_whose_parent_died_before_it_asked_to_die_with_it_dies_at_once():
    # The PDEATHSIG race: a parent already gone never signals; getppid() tells.
    not_my_parent = 1
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; from loadgen.lifeline import die_with_parent; "
            f"die_with_parent({not_my_parent}, 15); time.sleep(60)",
        ],
        timeout=30,
    )
    assert child.returncode == -signal.SIGTERM


def test_a_mosquitto_started_for_a_test_ends_with_whoever_started_it(tmp_path, device_ca):
    # A benchmark or script killed before its broker.stop() left mosquitto behind.
    ca_pem = str(device_ca.directory / "ca.pem")
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from tests.brokers import start_mosquitto; "
            f"b = start_mosquitto(Path({str(tmp_path)!r}), Path({ca_pem!r})); "
            "print(b.process.pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    try:
        broker = int(starter.stdout.readline())
        started = descendants(starter.pid)
        assert broker in started
    finally:
        starter.kill()
        starter.wait()
        starter.stdout.close()
    try:
        assert_all_gone({broker: started[broker]})
    finally:
        if still_running({broker: started[broker]}):
            os.kill(broker, signal.SIGKILL)


def test_the_embedded_emulator_stops_with_one_line_when_its_stdin_closes(tmp_path, device_ca):
    from loadgen.emulator.serve import start_embedded

    emulator = start_embedded(device_ca.directory, None, tmp_path)
    try:
        assert emulator.process.stdin is not None
        emulator.process.stdin.close()  # as when the run that started it is gone
        emulator.process.wait(timeout=GONE_WITHIN)
    finally:
        if emulator.process.poll() is None:
            emulator.process.kill()
        emulator.process.wait()
        assert emulator.process.stdout is not None
        emulator.process.stdout.close()
    log = (tmp_path / "emulator.log").read_text()
    assert log.count("lost its parent process") == 1, log
    assert "Traceback" not in log


def test_sighup_mid_step_ends_a_capacity_search_with_its_partial_report(tmp_path, reaped):
    report = tmp_path / "r.json"
    port = free_port()
    process = _loadgen(
        reaped,
        *("capacity", _embedded_scenario(tmp_path), "--slo", "ratio(failed) < 50%"),
        *("--start", "5/s", "--step", "5/s", "--step-duration", "60s", "--workers", "1"),
        *("--report", report, "--metrics-port", str(port)),
    )
    wait_for(lambda: devices_finished(port) >= 1, "under way", process)
    children = descendants(process.pid)
    assert workers_of(children) and emulators_of(children)
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    written = json.loads(report.read_text())
    assert written["partial"] is True
    assert written["capacity"]["interrupted"] is True
    # The step cut short proves nothing: never passed, and left out of the verdict.
    [step] = written["capacity"]["steps"]
    assert step["interrupted"] is True and step["passed"] is False
    assert step["limit"] == "interrupted"
    assert written["capacity"]["highest_sustainable_per_s"] is None
    assert written["capacity"]["first_broken_per_s"] is None
    assert_all_gone(children)


def test_an_embedded_emulator_that_hangs_mid_step_ends_a_capacity_search_as_one_that_died(
    tmp_path, reaped
):
    path = _embedded_scenario(tmp_path)
    scenario = yaml.safe_load(path.read_text())
    scenario["emulator"]["processes"] = 1
    scenario["timeouts"] = {"connect": "1s"}
    scenario["retry"]["max_attempts"] = 2
    path.write_text(yaml.safe_dump(scenario))
    report = tmp_path / "r.json"
    port = free_port()
    process = _loadgen(
        reaped,
        *("capacity", path, "--slo", "ratio(failed) < 50%"),
        *("--start", "5/s", "--step", "5/s", "--step-duration", "6s", "--workers", "1"),
        *("--report", report, "--metrics-port", str(port)),
    )
    wait_for(lambda: devices_finished(port) >= 1, "under way", process)
    children = descendants(process.pid)
    [emulator] = emulators_of(children)
    os.kill(emulator, signal.SIGSTOP)  # hung, not gone: it never answers again
    try:
        _, err = process.communicate(timeout=120)
    finally:
        if still_running({emulator: children[emulator]}):
            os.kill(emulator, signal.SIGCONT)
    assert process.returncode == 1, err
    assert "Traceback" not in err
    assert "the embedded emulator stopped during the step at 5/s: it stopped answering" in err
    capacity = json.loads(report.read_text())["capacity"]
    [step] = capacity["steps"]
    # Its devices met a hung endpoint: the step measured the emulator's hang,
    # not a rate that broke.
    assert step["interrupted"] is True and step["limit"] == "interrupted"
    assert capacity["first_broken_per_s"] is None and capacity["limit"] is None
    assert "it stopped answering" in capacity["verdict"]
    assert "the search ended there, before any step finished" in capacity["verdict"]


def test_a_worker_lost_mid_step_ends_a_capacity_search_as_a_crash_not_a_finding(tmp_path, reaped):
    report = tmp_path / "r.json"
    port = free_port()
    process = _loadgen(
        reaped,
        *("capacity", _embedded_scenario(tmp_path), "--slo", "ratio(failed) < 50%"),
        *("--start", "5/s", "--step", "5/s", "--step-duration", "30s", "--workers", "1"),
        *("--report", report, "--metrics-port", str(port)),
    )
    wait_for(lambda: devices_finished(port) >= 1, "under way", process)
    [worker] = workers_of(descendants(process.pid))
    os.kill(worker, signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1, err
    assert "Traceback" not in err
    lost = "the load generator lost a worker during the step at 5/s: worker 0 died (exit code -9)"
    assert f"loadgen: {lost}" in err
    capacity = json.loads(report.read_text())["capacity"]
    [step] = capacity["steps"]
    assert step["interrupted"] is True and step["limit"] == "interrupted"
    assert capacity["limit"] is None and capacity["first_broken_per_s"] is None
    assert capacity["verdict"] == (
        f"highest sustainable rate: none; {lost}; the search ended there, before any step finished"
    )
