"""The emulator on several processes (`--processes N`): one account (registry,
quotas, metrics) behind serving processes that share the port. Real processes
on loopback; each test forces what it checks with many devices, and counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import ssl
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from loadgen import mqtt
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.certs.store import FleetStore
from loadgen.emulator.limits import Limits
from loadgen.emulator.serve import EmbeddedEmulator, start_embedded
from loadgen.errors import UserError
from loadgen.transport.client import Target, connect
from loadgen.transport.errors import TransportError
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import ClientTls
from tests.brokers import free_port
from tests.conftest import assert_user_error, run_loadgen
from tests.processes import (
    assert_all_gone,
    cmdline,
    descendants,
    heavy_modules_after,
    still_running,
)

DEVICES = 60
QUOTAS_OFF = {"connect": "off", "connect-per-client": "off", "provision": "off"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, device_ca) -> FleetStore:
    path = tmp_path_factory.mktemp("processes") / "fleet"
    profile = Profile.model_validate({"subject": {"common_name": "dev-{index:03d}"}})
    mint(MintRequest(path, device_ca.directory, DEVICES, profile, seed=15))
    return FleetStore(path)


def connect_all(emulator: EmbeddedEmulator, fleet: FleetStore) -> Counter[str]:
    """Every device connects once (CONNECT, CONNACK, DISCONNECT), 20 at a time:
    how many got a CONNACK and how many were closed."""
    return uvloop.run(_connect_all(emulator, fleet))


async def _connect_all(emulator: EmbeddedEmulator, fleet: FleetStore) -> Counter[str]:
    tls = ClientTls(ca_file=emulator.server_ca)
    slots = asyncio.Semaphore(20)
    seen: Counter[str] = Counter()

    async def one(device) -> None:
        session = tls.session(fleet.path / device.cert, fleet.path / device.key, "localhost")
        async with slots:
            try:
                async with asyncio.timeout(30):
                    client = await connect(
                        Target(emulator.host, emulator.port),
                        session,
                        mqtt.Connect(device.client_id),
                        AttemptTimes(time.monotonic()),
                    )
            except (TransportError, TimeoutError):
                seen["closed"] += 1
                return
            seen["connack"] += 1
            client.disconnect()

    await asyncio.gather(*(one(d) for d in fleet.devices()))
    return seen


def _embedded_scenario(
    tmp_path: Path,
    device_ca,
    fleet: FleetStore,
    *,
    retry: dict,
    load: dict,
    processes: int | None = None,
) -> Path:
    """A JITP scenario of the module's fleet against the embedded emulator,
    quotas off (``processes``: unset, the emulator's own choice)."""
    import yaml

    emulator: dict = {"quotas": QUOTAS_OFF}
    if processes is not None:
        emulator["processes"] = processes
    scenario = {
        "name": "embedded-processes",
        "endpoint": "embedded",
        "mqtt": {"client_id": "{common_name}"},
        "fleet": {"ca": str(device_ca.directory), "store": str(fleet.path), "count": DEVICES},
        "jitp": {"expect_first_connect_rejected": True},
        "retry": retry,
        "load": load,
        "emulator": emulator,
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def _stats(emulator: EmbeddedEmulator) -> dict:
    stats = emulator.stats(timeout=30)
    assert stats is not None, "the emulator printed no stats"
    return stats


def test_every_device_is_provisioned_once_while_its_connects_land_on_both_processes(
    tmp_path, device_ca, fleet
):
    state = tmp_path / "state.db"
    emulator = start_embedded(
        device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, state_db=state, processes=2
    )
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # JITP's triggers
        assert connect_all(emulator, fleet) == Counter(connack=DEVICES)
        stats = _stats(emulator)
    finally:
        final = emulator.stop()
    assert stats["provision"] == {"Success": DEVICES}
    assert stats["connects"]["accepted"] == DEVICES
    # 240 connections through one port: the kernel spread them over both.
    processes = stats["processes"]
    assert len(processes) == 2 and all(p["connects"] > 0 for p in processes)
    assert sum(p["connects"] for p in processes) == 2 * DEVICES
    assert final is not None and final["provision"] == {"Success": DEVICES}
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM certificates").fetchone() == (
            DEVICES,
            DEVICES,
        )


def test_the_provisioning_quota_is_the_accounts_not_each_processes(tmp_path, device_ca, fleet):
    # 1/s (a bucket of 1) over both processes: in the time the 60 triggers take,
    # one bucket grants at most 1 + that many seconds; one per process would
    # grant about twice as many.
    quotas = {**QUOTAS_OFF, "provision": "1/s"}
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=quotas, processes=2)
    try:
        began = time.monotonic()
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)
        took = time.monotonic() - began
        stats = _stats(emulator)
    finally:
        emulator.stop()
    provisioned = stats["provision"].get("Success", 0)
    assert provisioned >= 1
    assert provisioned <= 1 + took * 1.0 + 1  # one token of slack for the clock's rounding
    assert provisioned + stats["provision"]["Throttled"] == DEVICES
    assert all(p["connects"] > 0 for p in stats["processes"])


def _metrics_after(tmp_path, device_ca, fleet, rounds: int) -> tuple[list, dict]:
    """An emulator of 2 serving processes, after ``rounds`` of every device
    connecting: its /metrics samples, then its stats line."""
    port = free_port()
    emulator = start_embedded(
        device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, metrics_port=port, processes=2
    )
    try:
        for _ in range(rounds):
            connect_all(emulator, fleet)
        # Served before the ready line: no waiting for it.
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        )
        stats = _stats(emulator)
    finally:
        emulator.stop()
    return [s for family in text_string_to_metric_families(body) for s in family.samples], stats


def test_metrics_count_the_whole_emulator_as_its_stats_do(tmp_path, device_ca, fleet):
    found, stats = _metrics_after(tmp_path, device_ca, fleet, rounds=2)
    samples = {(s.name, tuple(sorted(s.labels.values()))): s.value for s in found}
    assert samples[("loadgen_emulator_provision_thing_total", ("Success",))] == DEVICES
    for result, n in stats["connects"].items():
        assert samples[("loadgen_emulator_connects_total", (result,))] == n
    assert samples[("loadgen_emulator_registry_size", ("certificate",))] == DEVICES


def test_metrics_give_each_process_its_cpu_time(tmp_path, device_ca, fleet):
    found, after = _metrics_after(tmp_path, device_ca, fleet, rounds=1)
    name = "loadgen_emulator_cpu_seconds_total"
    cpu = {s.labels["process"]: s.value for s in found if s.name == name}
    assert set(cpu) == {"0", "1", "account"}
    # Both served devices' handshakes; each no more than the STATS line read later.
    for process in after["processes"]:
        assert 0 < cpu[str(process["index"])] <= process["cpu_s"] + 0.001  # rounded to ms


def _serving_pids(emulator: EmbeddedEmulator) -> list[int]:
    return [p["pid"] for p in _stats(emulator)["processes"]]


def test_a_killed_serving_process_stops_the_emulator_and_says_which(tmp_path, device_ca):
    emulator = start_embedded(device_ca.directory, None, tmp_path, processes=2)
    try:
        everything = descendants(emulator.process.pid)
        victim, survivor = _serving_pids(emulator)
        assert {victim, survivor} <= set(everything)
        assert emulator.stopped_early() is None
        os.kill(victim, signal.SIGKILL)
        code = emulator.process.wait(timeout=30)
        why = emulator.stopped_early()
    finally:
        emulator.stop()
    assert code == 1
    log = (tmp_path / "emulator.log").read_text()
    assert f"serving process 0 (pid {victim}) was killed by SIGKILL" in log
    # What a run against it says (jitp.emulator_stopped): the same line.
    assert why is not None and why.startswith(f"its serving process 0 (pid {victim}) was killed")
    assert_all_gone(everything)  # never half-serving: the other one went too


def test_an_emulator_killed_outright_says_how_not_an_earlier_emulators_last_words(
    tmp_path, device_ca
):
    (tmp_path / "emulator.log").write_text(
        "loadgen: failed: the emulator stopped: an earlier emulator's failure\n"
    )
    emulator = start_embedded(device_ca.directory, None, tmp_path, processes=2)
    try:
        emulator.process.kill()
        emulator.process.wait(timeout=30)
        why = emulator.stopped_early()
    finally:
        emulator.stop()
    assert why == "it was killed by SIGKILL"


def test_an_emulator_that_hangs_is_said_to_have_stopped_answering(tmp_path, device_ca):
    from loadgen.run import EndpointSession

    emulator = start_embedded(device_ca.directory, None, tmp_path, processes=2)
    session = EndpointSession(None, None, emulator)  # type: ignore[arg-type]
    try:
        assert session.emulator_stopped(answered=True) is None
        os.kill(emulator.process.pid, signal.SIGSTOP)
        answer = emulator.stats(timeout=2)
        why = session.emulator_stopped(answered=answer is not None)
    finally:
        os.kill(emulator.process.pid, signal.SIGCONT)
        emulator.stop()
    assert answer is None
    assert why == "it stopped answering: it gave no counts when asked"


def test_the_stats_line_of_one_process_names_it_the_account_process_too(tmp_path, device_ca):
    emulator = start_embedded(device_ca.directory, None, tmp_path, processes=1)
    try:
        stats = _stats(emulator)
    finally:
        emulator.stop()
    [process] = stats["processes"]
    assert stats["account_pid"] == process["pid"] == emulator.process.pid


def test_counts_asked_for_after_a_hang_are_the_current_ones_not_the_late_answer(
    tmp_path, device_ca, fleet
):
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, processes=1)
    try:
        os.kill(emulator.process.pid, signal.SIGSTOP)
        unanswered = emulator.stats(timeout=1)
        os.kill(emulator.process.pid, signal.SIGCONT)  # it answers that request now, late
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # JITP's triggers
        stats = _stats(emulator)
    finally:
        emulator.stop()
    assert unanswered is None
    assert stats["provision"] == {"Success": DEVICES}


def test_a_run_whose_embedded_emulator_stops_says_so_and_still_accounts_for_every_device(
    tmp_path, device_ca, fleet
):
    import json
    import subprocess
    import sys

    path = _embedded_scenario(
        tmp_path,
        device_ca,
        fleet,
        retry={"initial": "20ms", "max": "50ms", "max_attempts": 2},
        # 6 s of schedule: a serving process is killed as soon as the run starts.
        load={"executor": "constant-arrival-rate", "rate": "10/s", "max_in_flight": 20},
        processes=2,
    )
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "run", str(path)),
            *("--report", str(report_path), "--html", str(tmp_path / "r.html")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, int] = {}
    try:
        # The run's worker starts once the emulator is serving: then kill.
        deadline = time.monotonic() + 120
        serving: list[int] = []
        worker = False
        while not worker and proc.poll() is None and time.monotonic() < deadline:
            seen |= descendants(proc.pid)
            serving = [pid for pid in seen if "loadgen.emulator.serving" in cmdline(pid)]
            worker = any("spawn_main" in cmdline(pid) for pid in seen)
            time.sleep(0.05)
        assert worker and len(serving) == 2, "the run never served and started its worker"
        os.kill(min(serving), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "loadgen: the embedded emulator stopped during the run: its serving process" in err
    report = json.loads(report_path.read_text())
    assert "was killed by SIGKILL" in report["jitp"]["emulator_stopped"]
    accounting = report["accounting"]
    assert accounting["planned"] == accounting["started"] == DEVICES
    assert sum(report["outcomes"].values()) == DEVICES
    assert report["outcomes"]["refused"] > 0  # those after it stopped
    html = (tmp_path / "r.html").read_text()
    assert 'role="alert">The embedded emulator stopped during the run: its serving' in html
    assert_all_gone(seen)


def test_no_serving_process_outlives_a_killed_account_process(tmp_path, device_ca):
    emulator = start_embedded(device_ca.directory, None, tmp_path, processes=2)
    try:
        serving = {pid: start for pid, start in descendants(emulator.process.pid).items()}
        assert len(_serving_pids(emulator)) == 2
        emulator.process.kill()
        emulator.process.wait(timeout=30)
    finally:
        emulator.stop()
    assert_all_gone(serving)


def test_a_registry_kept_with_state_survives_a_restart_with_two_processes(
    tmp_path, device_ca, fleet
):
    state = tmp_path / "state.db"

    def start() -> EmbeddedEmulator:
        return start_embedded(
            device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, state_db=state, processes=2
        )

    first = start()
    try:
        assert connect_all(first, fleet) == Counter(closed=DEVICES)
    finally:
        first.stop()
    again = start()
    try:
        assert connect_all(again, fleet) == Counter(connack=DEVICES)  # no JITP this time
        stats = _stats(again)
    finally:
        again.stop()
    assert stats["provision"] == {}
    assert stats["connects"] == {"accepted": DEVICES}


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stopped_emulator_leaves_its_state_in_one_file(tmp_path, device_ca, fleet, processes):
    state = tmp_path / "state.db"
    emulator = start_embedded(
        device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, state_db=state, processes=processes
    )
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)
    finally:
        emulator.stop()
    assert sorted(p.name for p in tmp_path.glob("state.db*")) == ["state.db"]
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT COUNT(*) FROM things").fetchone() == (DEVICES,)


def test_a_ca_registered_through_the_api_is_trusted_by_every_process_once_answered(
    tmp_path, device_ca, fleet
):
    from tests.api_server import client
    from tests.test_emulator_api import register, serve

    served = serve(
        tmp_path / "emulator",
        *("--api-rate", "all=off", "--quota", "provision=off", "--processes", "2"),
    )
    try:
        iot = client("iot", served.api_url)
        register(iot, device_ca, tmp_path)
        as_embedded = EmbeddedEmulator(
            served.process, "127.0.0.1", served.mqtt_port, served.server_ca
        )
        # Every device's trigger handshake passed (on whichever process): the
        # CA was trusted everywhere when RegisterCACertificate returned.
        assert connect_all(as_embedded, fleet) == Counter(closed=DEVICES)
        stats = _stats(as_embedded)
        assert stats["provision"] == {"Success": DEVICES}
        assert all(p["connects"] > 0 for p in stats["processes"])
    finally:
        served.stop()


def test_ctrl_c_while_the_serving_processes_start_stops_the_emulator_cleanly(tmp_path, device_ca):
    """Ctrl-C reaches the whole process group, serving processes still in their
    interpreter's start-up included: they must not die of it with a traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "emulator", "serve", "--port", "0"),
            *("--ca", str(device_ca.directory / "ca.pem"), "--state-dir", str(tmp_path)),
            *("--processes", "3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (started := descendants(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert started, "no serving process started"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "error" not in err
    assert_all_gone(started)


def test_sigusr1_to_the_emulators_process_group_prints_the_counts_and_stops_nothing(
    tmp_path, device_ca
):
    """`kill -USR1 %1` in a shell signals the whole group: the serving processes
    died of it (its default action), and the emulator with them."""
    import subprocess
    import sys

    from loadgen.emulator.serve import READY, STATS

    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "loadgen", "emulator", "serve", "--port", "0"),
            *("--ca", str(device_ca.directory / "ca.pem"), "--state-dir", str(tmp_path)),
            *("--processes", "2"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        while READY not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read() if proc.stderr else ""
        serving = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGUSR1)
        while not (line := proc.stdout.readline()).startswith(STATS):
            assert line, "the emulator ended instead of printing its counts"
        assert proc.poll() is None
        assert len(serving) == 2 and still_running(serving).keys() == serving.keys()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_serving_processes_refuse_a_port_another_process_joined_with_so_reuseport():
    # Two emulators started together both found the port free, then both bound
    # it (SO_REUSEPORT lets a process of the same user join): the kernel shared
    # the devices out between two registries. The other one, here a socket bound
    # the same way, is found once this one's sockets listen.
    import socket

    from loadgen.emulator.processes import listening_sockets

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {port}: another process listens on"):
            listening_sockets("127.0.0.1", port, 2)


def test_processes_out_of_range_is_a_one_line_error(tmp_path, device_ca):
    ca = str(device_ca.directory / "ca.pem")
    result = run_loadgen(
        "emulator", "serve", "--ca", ca, "--state-dir", tmp_path, "--processes", "0"
    )
    assert_user_error(result, "--processes")


def _open_to_all_config(path):
    """The built-in template with a policy that lets every device publish to and
    receive from every topic: devices talk to each other."""
    import copy
    import json

    from loadgen.emulator.defaults import TEMPLATE

    template = copy.deepcopy(TEMPLATE)
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
    template["Resources"]["policy"]["Properties"]["PolicyDocument"] = json.dumps(document)
    path.write_text(
        json.dumps(
            {
                "templateBody": json.dumps(template),
                "roleArn": "arn:aws:iam::123456789012:role/JITPRole",
            }
        )
    )
    return path


async def _mqtt_session(emulator, fleet, device, packets):
    import ssl

    context = ssl.create_default_context(cafile=str(emulator.server_ca))
    context.load_cert_chain(fleet.path / device.cert, fleet.path / device.key)
    reader, writer = await asyncio.open_connection(
        emulator.host, emulator.port, ssl=context, server_hostname="localhost"
    )
    writer.write(b"".join(mqtt.encode(p, mqtt.MQTT_5) for p in packets))
    return reader, writer


async def _until(reader, decoder, kind):
    while True:
        data = await reader.read(65536)
        assert data, f"closed before a {kind.__name__}"
        for packet in decoder.feed(data):
            if isinstance(packet, kind):
                return packet


async def _publish_to_subscribers(emulator, fleet, subscribers, publisher):
    sessions = []
    for device in subscribers:
        subscribe = mqtt.Subscribe(1, (mqtt.Subscription("all/#"),))
        reader, writer = await _mqtt_session(
            emulator, fleet, device, [mqtt.Connect(device.client_id), subscribe]
        )
        decoder = mqtt.Decoder(mqtt.MQTT_5)
        await _until(reader, decoder, mqtt.SubAck)
        sessions.append((reader, writer, decoder))
    _, writer = await _mqtt_session(
        emulator,
        fleet,
        publisher,
        [mqtt.Connect(publisher.client_id), mqtt.Publish("all/news", b"hello")],
    )
    got = [await _until(reader, decoder, mqtt.Publish) for reader, _, decoder in sessions]
    for _, other, _ in sessions:
        other.close()
    writer.close()
    return got


def test_a_publish_reaches_the_subscribers_on_every_process(tmp_path, device_ca, fleet):
    config = _open_to_all_config(tmp_path / "open.json")
    emulator = start_embedded(device_ca.directory, config, tmp_path, quotas=QUOTAS_OFF, processes=2)
    devices = list(fleet.devices())[:21]
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # provisioned
        before = {p["pid"]: p["connects"] for p in _stats(emulator)["processes"]}

        async def run():
            async with asyncio.timeout(60):
                return await _publish_to_subscribers(emulator, fleet, devices[:20], devices[20])

        got = uvloop.run(run())
        after = _stats(emulator)["processes"]
    finally:
        emulator.stop()
    assert [(p.topic, p.payload) for p in got] == [("all/news", b"hello")] * 20
    # 21 sessions over two processes: both held some (else this proved nothing;
    # all on one is a chance of one in a million).
    assert all(p["connects"] > before[p["pid"]] for p in after)


def test_an_embedded_run_plans_enough_emulator_processes_for_the_open_files_limit(
    tmp_path, device_ca, fleet
):
    """max_in_flight 300 and 160 open files per process (64 kept for the
    process itself): a serving process holds at most 96 connections, so 4."""
    import json

    from tests.test_run import _run_with_open_files

    path = _embedded_scenario(
        tmp_path,
        device_ca,
        fleet,
        retry={"initial": "20ms", "max": "100ms", "max_attempts": 4},
        load={"executor": "constant-arrival-rate", "rate": "200/s", "max_in_flight": 300},
    )
    report = tmp_path / "report.json"
    proc = _run_with_open_files(160, path, "--report", report)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["jitp"]["emulator_processes"] == 4
    assert data["outcomes"]["connected"] == DEVICES


def test_a_serving_process_loads_neither_the_scenarios_schema_nor_the_cli():
    assert heavy_modules_after("import loadgen.emulator.serving") == []


def test_serving_processes_provision_and_admit_devices_without_loading_cryptography(
    tmp_path, device_ca, fleet
):
    # cryptography is about 16 MB of each process that loads it: the account
    # process parses certificates; a serving process reads the DER in place.
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, processes=2)
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)
        assert connect_all(emulator, fleet) == Counter(connack=DEVICES)
        serving = _serving_pids(emulator)
        maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in serving}
        account = Path(f"/proc/{emulator.process.pid}/maps").read_text()
    finally:
        emulator.stop()
    assert len(maps) == 2
    assert "/cryptography/" in account  # what the check below looks for is there
    assert [pid for pid, text in maps.items() if "/cryptography/" in text] == []


def test_the_account_process_loads_the_emulators_command_and_no_other():
    # `loadgen emulator serve` is the account process: it lives as long as the
    # devices the emulator holds, and its memory counts against each of them.
    serve = (
        "import contextlib, io, sys\n"
        "from loadgen.cli.app import cli\n"
        "sys.argv = ['loadgen', 'emulator', 'serve', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main()"
    )
    others = ("loadgen.run", "loadgen.capacity.command", "loadgen.cli.aws", "loadgen.cli.report")
    assert heavy_modules_after(serve, others) == []


async def _connect_and_leave_in_one_segment(emulator, fleet, devices):
    """Each device's CONNECT and DISCONNECT in one write: the DISCONNECT is read
    while the account is still asked about the CONNECT."""
    for device in devices:
        reader, writer = await _mqtt_session(
            emulator, fleet, device, [mqtt.Connect(device.client_id), mqtt.Disconnect()]
        )
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await reader.read(65536):
                pass
        writer.close()


def test_a_client_that_connects_and_leaves_in_one_segment_leaves_every_process_serving(
    tmp_path, device_ca, fleet
):
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, processes=2)
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # provisioned
        devices = list(fleet.devices())[:20]  # over both processes
        uvloop.run(
            asyncio.wait_for(_connect_and_leave_in_one_segment(emulator, fleet, devices), 60)
        )
        assert connect_all(emulator, fleet) == Counter(connack=DEVICES)
        assert emulator.stopped_early() is None
    finally:
        emulator.stop()


def test_a_qos_1_publish_and_a_disconnect_in_one_segment_still_reach_the_subscriber(
    tmp_path, device_ca, fleet
):
    config = _open_to_all_config(tmp_path / "open.json")
    emulator = start_embedded(device_ca.directory, config, tmp_path, quotas=QUOTAS_OFF, processes=1)
    subscriber, publisher = list(fleet.devices())[:2]

    async def run():
        subscribe = mqtt.Subscribe(1, (mqtt.Subscription("all/#"),))
        reader, writer = await _mqtt_session(
            emulator, fleet, subscriber, [mqtt.Connect(subscriber.client_id), subscribe]
        )
        decoder = mqtt.Decoder(mqtt.MQTT_5)
        await _until(reader, decoder, mqtt.SubAck)
        publish = mqtt.Publish("all/last", b"and goodbye", qos=1, packet_id=1)
        _, other = await _mqtt_session(
            emulator,
            fleet,
            publisher,
            [mqtt.Connect(publisher.client_id), publish, mqtt.Disconnect()],
        )
        got = await _until(reader, decoder, mqtt.Publish)
        writer.close()
        other.close()
        return got

    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # provisioned
        got = uvloop.run(asyncio.wait_for(run(), 60))
    finally:
        emulator.stop()
    assert got.payload == b"and goodbye"


async def _connect_again_and_again(emulator, fleet, device, times):
    """``times`` connections of one device, each held: what each one heard last."""
    held = []
    for _ in range(times):
        reader, writer = await _mqtt_session(
            emulator, fleet, device, [mqtt.Connect(device.client_id)]
        )
        decoder = mqtt.Decoder(mqtt.MQTT_5)
        await _until(reader, decoder, mqtt.ConnAck)
        held.append((reader, writer, decoder))
    ends = []
    for reader, writer, decoder in held[:-1]:
        data = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                data += chunk
        ends.append(decoder.feed(data))
        writer.close()
    reader, writer, decoder = held[-1]
    writer.write(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))
    last = await _until(reader, decoder, mqtt.PingResp)
    writer.close()
    return ends, last


def test_a_newer_connection_takes_over_a_client_ids_session_on_any_process(
    tmp_path, device_ca, fleet
):
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, processes=2)
    device = next(iter(fleet.devices()))
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # provisioned
        before = {p["pid"]: p["connects"] for p in _stats(emulator)["processes"]}
        ends, last = uvloop.run(
            asyncio.wait_for(_connect_again_and_again(emulator, fleet, device, 20), 60)
        )
        stats = _stats(emulator)
    finally:
        emulator.stop()
    # Each older session heard that it was taken over; the newest is served.
    assert all([(type(p), p.reason_code) for p in end] == [(mqtt.Disconnect, 0x8E)] for end in ends)
    assert isinstance(last, mqtt.PingResp)
    assert stats["closes"]["session taken over"] == 19
    # 20 connections through one port landed on both processes: some take-overs crossed.
    assert all(p["connects"] > before[p["pid"]] for p in stats["processes"])


async def _claim_each_client_id(emulator, fleet, owners, claimants):
    """Each owner connects and holds its session; then a claimant connects with
    that owner's client id, which its policy does not allow. What each claimant
    heard, and what each owner's PINGREQ then gets."""
    held = []
    for owner in owners:
        reader, writer = await _mqtt_session(
            emulator, fleet, owner, [mqtt.Connect(owner.client_id)]
        )
        decoder = mqtt.Decoder(mqtt.MQTT_5)
        await _until(reader, decoder, mqtt.ConnAck)
        held.append((reader, writer, decoder))
    refused = []
    for owner, claimant in zip(owners, claimants, strict=True):
        reader, writer = await _mqtt_session(
            emulator, fleet, claimant, [mqtt.Connect(owner.client_id)]
        )
        refused.append((await _until(reader, mqtt.Decoder(mqtt.MQTT_5), mqtt.ConnAck)).reason_code)
        writer.close()
    answers = []
    for reader, writer, decoder in held:
        writer.write(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))
        answers.append(await _until(reader, decoder, mqtt.PingResp))
        writer.close()
    return refused, answers


def test_a_connect_refused_as_not_authorized_leaves_the_client_ids_session_on_any_process(
    tmp_path, device_ca, fleet
):
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, processes=2)
    devices = list(fleet.devices())
    owners, claimants = devices[:20], devices[20:40]
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # provisioned
        refused, answers = uvloop.run(
            asyncio.wait_for(_claim_each_client_id(emulator, fleet, owners, claimants), 60)
        )
        stats = _stats(emulator)
    finally:
        emulator.stop()
    assert refused == [0x87] * 20  # Not authorized: the policy allows its own thing name only
    # 20 owners and 20 claimants over two processes: some pairs crossed (all
    # together is a chance of one in a million), and no owner was taken over.
    assert answers == [mqtt.PingResp()] * 20
    assert "session taken over" not in stats["closes"]


def _sigstopped(pid: int) -> contextlib.AbstractContextManager[None]:
    """``pid`` stopped (SIGSTOP) for the block; continued after, if still there,
    so that nothing is left stopped for whoever kills it."""

    @contextlib.contextmanager
    def stopped():
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    return stopped()


def _sockets(pids: list[int]) -> set[str]:
    """The sockets the processes ``pids`` hold open."""
    held = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                if (target := os.readlink(fd)).startswith("socket:"):
                    held.add(target)
    return held


async def _connect_and_leave_unanswered(emulator, fleet, devices, serving: list[int]) -> None:
    """Each device connects (TLS, CONNECT) and closes, while the account
    process is stopped: back once every serving process has closed them."""
    before = _sockets(serving)
    for device in devices:
        _, writer = await _mqtt_session(emulator, fleet, device, [mqtt.Connect(device.client_id)])
        writer.close()
        await writer.wait_closed()
    while _sockets(serving) - before:
        await asyncio.sleep(0.05)


def _stats_once(emulator: EmbeddedEmulator, provisioned: int) -> dict:
    """The counts once the account has provisioned ``provisioned`` devices:
    asked again after, so that its answers to the serving processes went out
    before the question for their counts."""

    async def wait() -> None:
        while _stats(emulator)["provision"].get("Success", 0) < provisioned:
            await asyncio.sleep(0.05)

    uvloop.run(asyncio.wait_for(wait(), 30))
    return _stats(emulator)


def test_connects_whose_clients_left_before_the_account_answered_are_counted_once(
    tmp_path, device_ca, fleet
):
    emulator = start_embedded(device_ca.directory, None, tmp_path, quotas=QUOTAS_OFF, processes=2)
    devices = list(fleet.devices())[:6]
    leave = _connect_and_leave_unanswered
    try:
        serving = _serving_pids(emulator)
        for _ in range(2):  # first unknown to the account (JITP), then provisioned
            with _sigstopped(emulator.process.pid):
                uvloop.run(asyncio.wait_for(leave(emulator, fleet, devices, serving), 60))
        stats = _stats_once(emulator, len(devices))
    finally:
        emulator.stop()
    # As with one process: the account's answer when it refused (here, JITP's
    # close), else the CONNECT it let through that no client was left to hear.
    assert stats["connects"] == {
        "provisioned (JITP closes the first connection)": 6,
        "client gone before the answer": 6,
    }


def test_a_stopped_serving_process_stops_the_emulator_and_says_which(tmp_path, device_ca):
    limits = Limits(heartbeat_timeout=1.0)
    emulator = start_embedded(device_ca.directory, None, tmp_path, limits=limits, processes=2)
    try:
        everything = descendants(emulator.process.pid)
        hung, _ = _serving_pids(emulator)
        with _sigstopped(hung):
            # Far past the heartbeat's bound: without it, it would half-serve for ever.
            code = emulator.process.wait(timeout=30)
        why = emulator.stopped_early()
    finally:
        emulator.stop()
    assert code == 1
    said = f"serving process 0 (pid {hung}) stopped answering: it answered no heartbeat for 1 s"
    assert said in (tmp_path / "emulator.log").read_text()
    assert why is not None and why.startswith(f"its {said}")
    assert_all_gone(everything)  # the hung one killed, the other stopped


def _scrape(port: int) -> dict[tuple[str, tuple[str, ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.values()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_the_counts_of_a_silent_serving_process_are_named_missing_and_the_rest_given(
    tmp_path, device_ca, fleet
):
    import concurrent.futures

    port = free_port()
    emulator = start_embedded(
        device_ca.directory,
        None,
        tmp_path,
        quotas=QUOTAS_OFF,
        metrics_port=port,
        # Longer than the test: the process stays silent, not dead, while asked.
        limits=Limits(heartbeat_timeout=120.0),
        processes=2,
    )
    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # the account provisions
        silent, talking = _serving_pids(emulator)
        with _sigstopped(silent), concurrent.futures.ThreadPoolExecutor(1) as pool:
            scrape = pool.submit(_scrape, port)
            stats = _stats(emulator)
            samples = scrape.result()
    finally:
        emulator.stop()
    assert stats["missing"] == [{"index": 0, "pid": silent, "why": "no answer in 5 s"}]
    assert stats["provision"] == {"Success": DEVICES}  # the account's own
    # The connections counted are the talking process's alone: 60 were spread over both.
    answered = next(p["connects"] for p in stats["processes"] if p["pid"] == talking)
    assert sum(stats["connects"].values()) == answered < DEVICES
    assert samples[("loadgen_emulator_provision_thing_total", ("Success",))] == DEVICES
    assert samples[("loadgen_emulator_serving_process_up", ("0",))] == 0
    assert samples[("loadgen_emulator_serving_process_up", ("1",))] == 1


async def _publisher_beside(emulator, fleet, device, within: float):
    """A session of ``device`` that got its CONNACK: one on a serving process
    that answers (a connection the kernel queued on a stopped one never
    completes its handshake; another is tried)."""
    for _ in range(20):
        try:
            async with asyncio.timeout(within):
                reader, writer = await _mqtt_session(
                    emulator, fleet, device, [mqtt.Connect(device.client_id)]
                )
                await _until(reader, mqtt.Decoder(mqtt.MQTT_5), mqtt.ConnAck)
                return writer
        except TimeoutError:
            continue
    raise AssertionError("no connection reached the serving process that answers")


async def _publish_until_the_emulator_stops(emulator, writer, most: int) -> int:
    """Publishes of AWS IoT's largest payload until the connection ends with the
    emulator, or ``most`` bytes: the bytes published."""
    publish = mqtt.encode(mqtt.Publish("all/big", b"x" * (128 * 1024)), mqtt.MQTT_5)
    sent = 0
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while sent < most and emulator.process.poll() is None:
            writer.write(publish)
            await writer.drain()
            sent += len(publish)
    return sent


def test_publishes_routed_to_a_serving_process_that_does_not_read_are_dropped_and_counted(
    tmp_path, device_ca, fleet
):
    """The account held every PUBLISH for a process that stopped reading (its
    memory grew by what the publishers sent); then it gave up on the process at
    64 MiB, which also ended a live one behind on a fan-out of large payloads.
    Past ROUTE_BACKLOG, the routes to it are dropped as a slow subscriber's
    QoS 0 messages are, and the emulator serves on."""
    from loadgen.emulator.processes import PEER_WRITE_BUFFER

    config = _open_to_all_config(tmp_path / "open.json")
    # The heartbeat would find it first: here, only what it leaves unread counts.
    limits = Limits(heartbeat_timeout=120.0)
    emulator = start_embedded(
        device_ca.directory, config, tmp_path, quotas=QUOTAS_OFF, limits=limits, processes=2
    )
    devices = list(fleet.devices())[:21]
    reason = "routed to a serving process behind on reading"

    async def run(stalled: int) -> dict:
        sessions = []
        for device in devices[:20]:  # over both processes
            subscribe = mqtt.Subscribe(1, (mqtt.Subscription("all/#"),))
            reader, writer = await _mqtt_session(
                emulator, fleet, device, [mqtt.Connect(device.client_id), subscribe]
            )
            await _until(reader, mqtt.Decoder(mqtt.MQTT_5), mqtt.SubAck)
            sessions.append(writer)
        with _sigstopped(stalled):
            writer = await _publisher_beside(emulator, fleet, devices[20], within=2.0)
            sent = await _publish_until_the_emulator_stops(emulator, writer, 2 * PEER_WRITE_BUFFER)
            assert emulator.process.poll() is None, f"stopped after {sent:,} bytes routed"
            deadline = time.monotonic() + 60
            while True:  # the last publishes may still be on their way to the account
                stats = await asyncio.to_thread(emulator.stats, 20)
                assert stats is not None
                if stats["dropped"].get(reason) or time.monotonic() > deadline:
                    break
        for other in [*sessions, writer]:
            other.close()
        return stats

    try:
        assert connect_all(emulator, fleet) == Counter(closed=DEVICES)  # provisioned
        stalled = _serving_pids(emulator)[1]
        stats = uvloop.run(asyncio.wait_for(run(stalled), 180))
        still_serving = emulator.process.poll() is None
    finally:
        emulator.stop()
    assert stats["dropped"].get(reason, 0) > 0
    assert still_serving
