"""Everything the input can tell is checked before any load: a mistake in a
scenario, an option or an output path is one line naming the file, the line and
the field (or the option), exit 2, nothing written and no connection made."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from loadgen.errors import UserError
from loadgen.load.schedule import offsets
from loadgen.run import RunOptions, check_plan
from loadgen.scenario.schema import load_scenario
from tests.brokers import free_port
from tests.conftest import assert_user_error, run_loadgen

LOAD = "load:\n  executor: constant-arrival-rate\n  rate: 10/s\n"


@pytest.fixture
def listener():
    """An endpoint that records whether anyone connected to it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def _connected(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def _write_scenario(
    folder: Path, port: int, extra: str = "", load: str = LOAD, endpoint: str | None = None
) -> Path:
    """Lines 1-3: name, endpoint, fleet; 4-6: the load (by default); then ``extra``."""
    path = folder / "scenario.yaml"
    path.write_text(
        "name: validation\n"
        f"endpoint: {endpoint or f'127.0.0.1:{port}'}\n"
        "fleet: {ca: ca, store: fleet, count: 5}\n" + load + extra
    )
    return path


def _assert_refused_untouched(result, folder: Path, server: socket.socket, *fragments: str):
    assert_user_error(result, *fragments)
    assert sorted(os.listdir(folder)) == ["scenario.yaml"]
    assert not _connected(server)


RAMP = "load:\n  executor: ramping-arrival-rate\n  stages: [{rate: 10/s, duration: 1s}]\n"

SCENARIO_MISTAKES = {
    "a + wildcard in a publish topic": (
        LOAD,
        "after_connect:\n  - publish: {topic: 'dt/+/telemetry'}\n",
        ":8: after_connect[0].publish.topic:",
        "wildcards",
    ),
    "a # wildcard in a publish topic": (
        LOAD,
        "after_connect:\n  - publish:\n      topic: dt/#\n",
        ":9: after_connect[0].publish.topic:",
        "wildcards",
    ),
    "a hold that pings less often than the CONNECT's keepalive promises": (
        LOAD,
        "mqtt: {keepalive: 30}\nafter_connect:\n  - hold: {duration: 5m, keepalive: 60s}\n",
        ":9: after_connect[0].hold.keepalive:",
        "the server would close the connection",
    ),
    "a hold with both a duration and an until": (
        LOAD,
        "after_connect:\n  - hold: {duration: 5m, until: 10m}\n",
        ":8: after_connect[0].hold.until:",
        "duration or until, not both",
    ),
    "a hold with neither a duration nor an until": (
        LOAD,
        "after_connect:\n  - hold:\n      keepalive: 10s\n",
        ":8: after_connect[0].hold:",
        "a hold needs duration",
    ),
    "a # inside a subscribe filter level": (
        LOAD,
        "after_connect:\n  - subscribe: {topic: 'cmd/a#'}\n",
        ":8: after_connect[0].subscribe.topic:",
        "# must be a whole level",
    ),
    "an unknown placeholder in the client id": (
        LOAD,
        "mqtt: {client_id: 'dev-{colour}'}\n",
        ":7: mqtt.client_id:",
        "unknown placeholder {colour}",
    ),
    "a client id the same for every device": (
        LOAD,
        "mqtt: {client_id: dev}\n",
        ":7: mqtt.client_id:",
        "'dev' is the same client id for every device",
    ),
    "a client id formatted a terabyte wide": (
        LOAD,
        "mqtt: {client_id: '{index:0999999999999d}'}\n",
        ":7: mqtt.client_id:",
        "999999999999 is wider than 256 characters",
    ),
    "U+0000 in the client id (MQTT strings cannot carry it)": (
        LOAD,
        'mqtt: {client_id: "a\\u0000{index}"}\n',
        ":7: mqtt.client_id:",
        "cannot hold the character U+0000",
    ),
    "U+0000 as the fill of a client id placeholder": (
        LOAD,
        'mqtt: {client_id: "{index:\\u0000>8}"}\n',
        ":7: mqtt.client_id:",
        "cannot hold the character U+0000",
    ),
    "a lone surrogate in the client id (UTF-8 cannot encode it)": (
        LOAD,
        'mqtt: {client_id: "\\ud800{index}"}\n',
        ":7: mqtt.client_id:",
        "cannot hold the character U+D800",
    ),
    "a lone surrogate in a subscribe filter": (
        LOAD,
        'after_connect:\n  - subscribe: {topic: "cmd/\\udfff"}\n',
        ":8: after_connect[0].subscribe.topic:",
        "cannot hold the character U+DFFF",
    ),
    "a lone surrogate in a publish topic": (
        LOAD,
        'after_connect:\n  - publish: {topic: "dt/\\ud800"}\n',
        ":8: after_connect[0].publish.topic:",
        "cannot hold the character U+D800",
    ),
    "a wildcard beside a placeholder in a subscribe filter": (
        LOAD,
        "after_connect:\n  - subscribe: {topic: 'cmd/{client_id}+'}\n",
        ":8: after_connect[0].subscribe.topic:",
        "+ must be a whole level",
    ),
    "a zero connect timeout": (
        LOAD,
        "timeouts:\n  connect: 0s\n",
        ":8: timeouts.connect:",
        "above zero",
    ),
    "a negative step timeout": (
        LOAD,
        "timeouts: {step: -5}\n",
        ":7: timeouts.step:",
        "zero or more",
    ),
    "a latency gate without a unit": (
        LOAD,
        "gates:\n  - 'p99(provision) < 2s'\n  - 'p99(provision) < 2'\n",
        ":9: gates[1]:",
        "'2' is not a latency",
    ),
    "an infinite retry multiplier": (
        LOAD,
        "retry: {multiplier: .inf}\n",
        ":7: retry.multiplier:",
        "finite number",
    ),
    "true for a number": (
        LOAD + "  max_in_flight: true\n",
        "",
        ":7: load.max_in_flight:",
        "valid integer",
    ),
    "retry.max below retry.initial": (
        LOAD,
        "retry:\n  initial: 2s\n  max: 1s\n",
        ":9: retry.max:",
        "max (1s) is below initial (2s)",
    ),
    "a rate with burst": (
        "load:\n  executor: burst\n  rate: 10/s\n",
        "",
        ":6: load.rate:",
        "executor burst takes no rate",
    ),
    "a start_rate with a constant rate": (
        LOAD + "  start_rate: 5/s\n",
        "",
        ":7: load.start_rate:",
        "would be ignored",
    ),
    "a ramp whose every rate is zero": (
        "load:\n  executor: ramping-arrival-rate\n  stages: [{rate: 0/s, duration: 1s}]\n",
        "",
        ":6: load.stages:",
        "no device would start",
    ),
    "a payload above the MQTT maximum": (
        LOAD,
        "after_connect:\n  - publish: {topic: t, qos: 1, payload_bytes: 268435455}\n",
        ":8: after_connect[0].publish.payload_bytes:",
        "do not fit in an MQTT packet",
    ),
    "a source address of another machine": (
        LOAD + "  source_addresses: [127.0.0.2, 192.0.2.1]\n",
        "",
        ":7: load.source_addresses[1]:",
        "192.0.2.1 is not a local address of this machine",
    ),
    "a source address of the other family than the endpoint's": (
        LOAD + '  source_addresses: [127.0.0.2, "::1"]\n',
        "",
        ":7: load.source_addresses[1]:",
        "::1 is an IPv6 address, and endpoint 127.0.0.1 has IPv4 addresses only",
    ),
    "a key given twice": (
        LOAD,
        "timeouts: {connect: 5s}\ntimeouts: {connect: 6s}\n",
        ":8: timeouts: duplicate key (first given on line 7)",
    ),
    "yes for a boolean (YAML 1.2 reads it as text)": (
        LOAD,
        "jitp: {expect_first_connect_rejected: yes}\n",
        ":7: jitp.expect_first_connect_rejected:",
        "true or false",
    ),
}


@pytest.mark.parametrize(
    ("load", "extra", "fragments"),
    [(load, extra, fragments) for load, extra, *fragments in SCENARIO_MISTAKES.values()],
    ids=list(SCENARIO_MISTAKES),
)
def test_a_scenario_mistake_is_refused_before_any_load(tmp_path, listener, load, extra, fragments):
    path = _write_scenario(tmp_path, listener.getsockname()[1], extra, load)
    result = run_loadgen("run", path, "--report", tmp_path / "report.json", cwd=tmp_path)
    where, *rest = fragments
    _assert_refused_untouched(result, tmp_path, listener, f"{path}{where}", *rest)


def test_a_scenario_name_with_a_control_character_is_refused_with_its_line(tmp_path, listener):
    """The name goes into JUnit's XML, which cannot hold one."""
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    path.write_text(path.read_text().replace("name: validation", 'name: "valid\\u0001ation"'))
    result = run_loadgen("run", path, "--report", tmp_path / "report.json", cwd=tmp_path)
    _assert_refused_untouched(result, tmp_path, listener, f"{path}:1: name:", "printable")


def test_a_tls_ca_file_holding_no_certificate_is_refused_before_any_load(tmp_path, listener):
    """Every worker would fail to load it, after the fleet was minted."""
    path = _write_scenario(tmp_path, listener.getsockname()[1], "tls: {ca_file: scenario.yaml}\n")
    result = run_loadgen("run", path, "--report", tmp_path / "report.json", cwd=tmp_path)
    line = path.read_text().splitlines().index("tls: {ca_file: scenario.yaml}") + 1
    _assert_refused_untouched(
        result, tmp_path, listener, f"{path}:{line}: tls.ca_file:", "no PEM certificate"
    )


EMBEDDED_MISTAKES = {
    "a tls block with endpoint: embedded": (
        "tls: {verify_server: false}\n",
        ":7: tls:",
        "endpoint: embedded sets TLS itself",
    ),
    "an emulator metrics port out of range": (
        "emulator: {metrics_port: 99999}\n",
        ":7: emulator.metrics_port:",
        "65535",
    ),
    "no emulator processes": (
        "emulator: {processes: 0}\n",
        ":7: emulator.processes:",
        "greater than or equal to 1",
    ),
    "an emulator API port out of range": (
        "emulator: {api_port: 0}\n",
        ":7: emulator.api_port:",
        "greater than or equal to 1",
    ),
    "an API rate for an operation AWS IoT does not have": (
        "emulator:\n  api_port: 18443\n  api_rates: {DeleteCertificates: 10/s}\n",
        ":9: emulator.api_rates.DeleteCertificates:",
        "DeleteCertificates is not an operation",
    ),
    "an API rate that is not a rate": (
        "emulator:\n  api_port: 18443\n  api_rates: {all: fast}\n",
        ":9: emulator.api_rates.all:",
        "'fast' is not a rate",
    ),
    "API rates without an API": (
        "emulator:\n  api_rates: {all: 'off'}\n",
        ":8: emulator.api_rates:",
        "set emulator.api_port too",
    ),
    "a negative quota": (
        "emulator:\n  quotas: {provision: -5/s}\n",
        ":8: emulator.quotas.provision:",
        "'-5/s' is not a rate",
    ),
    "a quota that is not a rate": (
        "emulator:\n  quotas: {provision: fast}\n",
        ":8: emulator.quotas.provision:",
        "'fast' is not a rate",
    ),
    "an infinite quota": (
        "emulator:\n  quotas: {provision: inf}\n",
        ":8: emulator.quotas.provision:",
        "'inf' is not a rate",
    ),
    "a zero quota": (
        "emulator:\n  quotas: {connect: 0/s}\n",
        ":8: emulator.quotas.connect:",
        "above zero",
    ),
    "a template and a registration config": (
        "emulator:\n  template: t.yaml\n  registration_config: c.json\n",
        ":8: emulator.template:",
        "not both",
    ),
}


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [(extra, fragments) for extra, *fragments in EMBEDDED_MISTAKES.values()],
    ids=list(EMBEDDED_MISTAKES),
)
def test_an_embedded_scenario_mistake_is_refused_before_the_emulator_starts(
    tmp_path, listener, extra, fragments
):
    path = _write_scenario(tmp_path, 0, extra, endpoint="embedded")
    result = run_loadgen("run", path, cwd=tmp_path)
    where, *rest = fragments
    _assert_refused_untouched(result, tmp_path, listener, f"{path}{where}", *rest)


def test_an_emulator_metrics_port_in_use_is_refused_before_the_emulator_starts(tmp_path, listener):
    taken = listener.getsockname()[1]
    path = _write_scenario(
        tmp_path, 0, f"emulator: {{metrics_port: {taken}}}\n", endpoint="embedded"
    )
    result = run_loadgen("run", path, cwd=tmp_path)
    _assert_refused_untouched(
        result, tmp_path, listener, f"emulator.metrics_port {taken}: already in use"
    )


def test_an_emulator_api_port_in_use_is_refused_before_the_emulator_starts(tmp_path, listener):
    taken = listener.getsockname()[1]
    path = _write_scenario(tmp_path, 0, f"emulator: {{api_port: {taken}}}\n", endpoint="embedded")
    result = run_loadgen("run", path, cwd=tmp_path)
    _assert_refused_untouched(
        result, tmp_path, listener, f"emulator.api_port {taken}: already in use"
    )


def test_an_emulator_api_port_that_is_its_metrics_port_is_refused_naming_both(tmp_path, listener):
    port = free_port()
    extra = f"emulator:\n  metrics_port: {port}\n  api_port: {port}\n"
    path = _write_scenario(tmp_path, 0, extra, endpoint="embedded")
    result = run_loadgen("run", path, cwd=tmp_path)
    _assert_refused_untouched(
        result,
        tmp_path,
        listener,
        f"{path}:9: emulator.api_port: {port}, the same port as emulator.metrics_port",
    )


@pytest.mark.parametrize("field", ["metrics_port", "api_port"])
@pytest.mark.parametrize("command", ["run", "capacity"])
def test_a_metrics_port_option_that_is_an_emulator_port_is_refused_naming_both(
    tmp_path, listener, command, field
):
    port = free_port()
    path = _write_scenario(tmp_path, 0, f"emulator: {{{field}: {port}}}\n", endpoint="embedded")
    slo = ("--slo", "p99(provision) < 2s") if command == "capacity" else ()
    result = run_loadgen(command, path, *slo, "--metrics-port", port, cwd=tmp_path)
    _assert_refused_untouched(
        result,
        tmp_path,
        listener,
        f"{path}:7: emulator.{field}: {port}, the same port as --metrics-port",
    )


def test_a_source_address_the_embedded_emulator_cannot_be_reached_from_is_refused(
    tmp_path, listener
):
    load = LOAD + '  source_addresses: ["::1"]\n'
    path = _write_scenario(tmp_path, 0, load=load, endpoint="embedded")
    result = run_loadgen("run", path, cwd=tmp_path)
    _assert_refused_untouched(
        result, tmp_path, listener, f"{path}:7: load.source_addresses[0]: ::1 is an IPv6 address"
    )


def test_a_source_address_is_checked_against_the_endpoint_option(tmp_path, listener):
    port = listener.getsockname()[1]
    path = _write_scenario(tmp_path, port, load=LOAD + "  source_addresses: [127.0.0.2]\n")
    result = run_loadgen("run", path, "--endpoint", f"[::1]:{port}", cwd=tmp_path)
    _assert_refused_untouched(
        result,
        tmp_path,
        listener,
        f"{path}:7: load.source_addresses[0]: 127.0.0.2 is an IPv4 address, "
        "and endpoint ::1 has IPv6 addresses only",
    )


def test_a_ramp_may_start_from_zero(tmp_path):
    path = _write_scenario(
        tmp_path,
        1883,
        load="load:\n  executor: ramping-arrival-rate\n  start_rate: 0/s\n"
        "  stages: [{rate: 10/s, duration: 1s}, {rate: 10/s, duration: 10s}]\n",
    )
    plan = check_plan(load_scenario(path), RunOptions(workers=1))
    assert plan.executor.start_rate == 0
    times = list(offsets(plan.executor, 5))
    # From 0/s to 10/s over a second: device i arrives when 5 t^2 reaches i.
    assert times == pytest.approx([0.0, 0.2**0.5, 0.4**0.5, 0.6**0.5, 0.8**0.5])


def test_local_source_addresses_are_accepted(tmp_path):
    path = _write_scenario(
        tmp_path, 1883, load=LOAD + "  source_addresses: [127.0.0.2, 127.0.0.3]\n"
    )
    assert load_scenario(path).load.source_addresses == ["127.0.0.2", "127.0.0.3"]


def test_words_yaml_1_1_took_for_booleans_are_text(tmp_path):
    path = _write_scenario(tmp_path, 1883)
    path.write_text(path.read_text().replace("name: validation", "name: off"))
    assert load_scenario(path).name == "off"


def test_a_payload_above_aws_iots_limit_is_a_warning_and_the_run_goes_on(
    tmp_path, mosquitto, device_ca
):
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "name: big-payload\n"
        f"endpoint: 127.0.0.1:{mosquitto.tls_port}\n"
        f"tls: {{ca_file: {mosquitto.server_ca.directory / 'ca.pem'}, server_name: localhost}}\n"
        f"fleet: {{ca: {device_ca.directory}, store: fleet, count: 3}}\n"
        "load: {executor: burst}\n"
        "after_connect:\n"
        "  - publish: {topic: dt/big, qos: 1, payload_bytes: 200000}\n"
    )
    result = run_loadgen("run", path, "--workers", "1", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert warnings == [
        f"loadgen: warning: {path}:7: after_connect[0].publish.payload_bytes: 200,000 bytes "
        "is above AWS IoT's 128 KiB payload limit (AWS IoT would refuse it)"
    ]
    assert json.loads((tmp_path / "r.json").read_text())["outcomes"]["connected"] == 3


def test_one_attempt_with_jitp_is_a_warning_naming_the_field(tmp_path):
    path = _write_scenario(
        tmp_path, 1883, "jitp: {expect_first_connect_rejected: true}\nretry: {max_attempts: 1}\n"
    )
    said: list[str] = []
    load_scenario(path, warn=said.append)
    assert said == [
        f"{path}:8: retry.max_attempts: 1 attempt leaves none after JITP's trigger: every "
        "device ends with its first connect refused"
    ]


OUTPUT_MISTAKES = {
    "a report in a folder that does not exist": (
        "--report",
        "missing/report.json",
        "folder missing does not exist",
    ),
    "an HTML report under a file": ("--html", "scenario.yaml/report.html", "is not a folder"),
    "a JUnit file that is a folder": ("--junit", ".", "is a folder"),
    "a summary in a folder nobody may write in": (
        "--summary-md",
        "/sys/summary.md",
        "cannot write in /sys",
    ),
}


@pytest.mark.parametrize(
    ("option", "value", "expected"), list(OUTPUT_MISTAKES.values()), ids=list(OUTPUT_MISTAKES)
)
def test_an_output_path_that_cannot_be_written_is_refused_before_the_run(
    tmp_path, listener, option, value, expected
):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    result = run_loadgen("run", path, option, value, cwd=tmp_path)
    _assert_refused_untouched(result, tmp_path, listener, option, expected)


@pytest.mark.parametrize(
    ("option", "value", "what"),
    [
        ("--report", "scenario.yaml", "the scenario"),
        ("--html", "fleet/manifest.jsonl", "inside fleet.store"),
        ("--junit", "ca/ca.key", "inside fleet.ca"),
    ],
)
def test_an_output_on_what_the_run_reads_or_keeps_is_refused_and_nothing_changes(
    tmp_path, listener, option, value, what
):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    minted = run_loadgen(
        "certs", "mint", "--ca", tmp_path / "ca", "--init-ca", "--out", tmp_path / "fleet",
        "--count", "5",
    )  # fmt: skip
    assert minted.code == 0, minted.err
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run_loadgen("run", path, option, value, cwd=tmp_path)
    assert_user_error(result, f"{option} {value}: that is {what}")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not _connected(listener)


PORT_MISTAKES = {
    "run --metrics-port above 65535": (("run", "x.yaml", "--metrics-port", "99999"), "99999"),
    "run --metrics-port 0": (("run", "x.yaml", "--metrics-port", "0"), "from 1 to 65535"),
    "capacity --metrics-port negative": (
        ("capacity", "x.yaml", "--metrics-port", "-1"),
        "from 1 to 65535",
    ),
    "emulator serve --port above 65535": (
        ("emulator", "serve", "--port", "99999", "--ca", "ca.pem"),
        "--port 99999: a port from 0 to 65535",
    ),
    "emulator serve --metrics-port above 65535": (
        ("emulator", "serve", "--metrics-port", "99999", "--ca", "ca.pem"),
        "--metrics-port 99999: a port from 1 to 65535",
    ),
    "emulator serve --api-port above 65535": (
        ("emulator", "serve", "--api-port", "99999"),
        "--api-port 99999: a port from 0 to 65535",
    ),
}


@pytest.mark.parametrize(
    ("args", "expected"), list(PORT_MISTAKES.values()), ids=list(PORT_MISTAKES)
)
def test_a_port_option_out_of_range_is_one_line(tmp_path, args, expected):
    assert_user_error(run_loadgen(*args, cwd=tmp_path), expected)
    assert os.listdir(tmp_path) == []


def test_run_refuses_a_metrics_port_in_use_before_the_fleet_is_minted(tmp_path, listener):
    taken = listener.getsockname()[1]
    path = _write_scenario(tmp_path, taken)
    result = run_loadgen("run", path, "--metrics-port", taken, cwd=tmp_path)
    _assert_refused_untouched(result, tmp_path, listener, f"--metrics-port {taken}: already in use")


def _serve(tmp_path: Path, device_ca, *args: str | Path):
    return run_loadgen(
        "emulator",
        "serve",
        "--ca",
        device_ca.directory / "ca.pem",
        "--state-dir",
        tmp_path / "state",
        *args,
    )


def test_emulator_serve_refuses_a_port_in_use(tmp_path, listener, device_ca):
    taken = listener.getsockname()[1]
    result = _serve(tmp_path, device_ca, "--port", str(taken))
    assert_user_error(result, f"--port {taken}: already in use on 127.0.0.1")
    assert not (tmp_path / "state").exists()


def test_emulator_serve_refuses_a_host_that_is_not_local(tmp_path, device_ca):
    result = _serve(tmp_path, device_ca, "--host", "192.0.2.1", "--port", "0")
    assert_user_error(result, "--host 192.0.2.1: not a local address of this machine")
    assert not (tmp_path / "state").exists()


def test_emulator_serve_refuses_a_server_key_of_another_certificate(tmp_path, device_ca):
    for name in ("a", "b"):
        result = run_loadgen(
            "ca", "server-cert", "--ca", device_ca.directory, "--name", "localhost",
            "--out", tmp_path / name,
        )  # fmt: skip
        assert result.code == 0, result.err
    result = _serve(
        tmp_path, device_ca, "--port", "0",
        "--server-cert", tmp_path / "a.pem", "--server-key", tmp_path / "b.key",
    )  # fmt: skip
    assert_user_error(result, f"--server-key {tmp_path / 'b.key'}: does not match")
    assert not (tmp_path / "state").exists()


def test_emulator_serve_refuses_a_ca_that_is_not_a_ca(tmp_path, device_ca):
    """A device certificate given for --ca, as RegisterCACertificate refuses it."""
    result = run_loadgen(
        "ca", "server-cert", "--ca", device_ca.directory, "--name", "localhost",
        "--out", tmp_path / "leaf",
    )  # fmt: skip
    assert result.code == 0, result.err
    result = run_loadgen(
        "emulator", "serve", "--ca", tmp_path / "leaf.pem", "--state-dir", tmp_path / "state",
        "--port", "0",
    )  # fmt: skip
    assert_user_error(result, f"{tmp_path / 'leaf.pem'}: not a CA certificate")
    assert not (tmp_path / "state").exists()


def test_emulator_serve_refuses_one_ca_given_active_and_inactive(tmp_path, device_ca):
    (tmp_path / "copy.pem").write_bytes((device_ca.directory / "ca.pem").read_bytes())
    result = run_loadgen(
        "emulator", "serve", "--ca", device_ca.directory / "ca.pem",
        "--ca-inactive", tmp_path / "copy.pem", "--state-dir", tmp_path / "state", "--port", "0",
    )  # fmt: skip
    assert_user_error(result, f"{tmp_path / 'copy.pem'}: a CA given twice")
    assert not (tmp_path / "state").exists()


def test_emulator_serve_with_a_bad_ca_leaves_no_state_file(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    result = run_loadgen(
        "emulator", "serve", "--ca", tmp_path / "ca.pem", "--state", tmp_path / "r.db",
        "--state-dir", tmp_path / "state", "--port", "0",
    )  # fmt: skip
    assert_user_error(result, f"{tmp_path / 'ca.pem'}: not a PEM CA certificate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem"]


EMPTY_PATHS = {
    "ca init --out": ("ca", "init", "--out", ""),
    "ca server-cert --out": ("ca", "server-cert", "--ca", "ca", "--name", "a", "--out", ""),
    "certs mint --out": ("certs", "mint", "--ca", "ca", "--count", "1", "--out", ""),
    "emulator serve --state-dir": (
        "emulator", "serve", "--ca", "ca/ca.pem", "--port", "0", "--state-dir", "",
    ),
}  # fmt: skip


@pytest.mark.parametrize("args", list(EMPTY_PATHS.values()), ids=list(EMPTY_PATHS))
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, args):
    """An unset variable's ``--out "$DIR"``: the CA, fleet or state would land in
    the current folder."""
    (tmp_path / "work").mkdir()
    assert run_loadgen("ca", "init", "--out", tmp_path / "work" / "ca").code == 0
    result = run_loadgen(*args, cwd=tmp_path / "work")
    assert_user_error(result, f"'{args[-2]}': an empty path")
    assert os.listdir(tmp_path / "work") == ["ca"]


def test_placeholders_and_wildcards_make_a_valid_subscribe_filter(tmp_path):
    path = _write_scenario(
        tmp_path, 1883, "after_connect:\n  - subscribe: {topic: 'cmd/{client_id}/+/#'}\n"
    )
    assert load_scenario(path).after_connect[0].subscribe.topic == "cmd/{client_id}/+/#"


def test_a_profile_mistake_leaves_no_fleet_and_no_ca_behind(tmp_path, listener):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    path.write_text(path.read_text().replace("count: 5}", "count: 5, profile: profile.yaml}"))
    (tmp_path / "profile.yaml").write_text("subject:\n  country: SE\n  country: NO\n")
    result = run_loadgen("run", path, cwd=tmp_path)
    assert_user_error(result, f"{tmp_path / 'profile.yaml'}:3: subject.country: duplicate key")
    assert sorted(os.listdir(tmp_path)) == ["profile.yaml", "scenario.yaml"]
    assert not _connected(listener)


def test_a_client_id_of_fewer_values_than_the_devices_is_refused_naming_the_scenario_field(
    tmp_path, listener
):
    path = _write_scenario(tmp_path, listener.getsockname()[1], "mqtt: {client_id: '{country}'}\n")
    path.write_text(path.read_text().replace("count: 5}", "count: 5, profile: profile.yaml}"))
    (tmp_path / "profile.yaml").write_text(
        "subject:\n  common_name: 'bulb-{index}'\n  country: {choice: [SE, NO]}\n"
    )
    result = run_loadgen("run", path, cwd=tmp_path)
    assert_user_error(
        result, f"{path}:7: mqtt.client_id: at most 2 distinct client ids", "the run's 5 devices"
    )
    assert sorted(os.listdir(tmp_path)) == ["profile.yaml", "scenario.yaml"]
    assert not _connected(listener)


def test_report_merge_refuses_an_output_in_a_missing_folder_before_reading(tmp_path):
    result = run_loadgen("report", "merge", "a.json", "-o", tmp_path / "no" / "m.json")
    assert_user_error(result, "--out", "does not exist")


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:99999", "127.0.0.1:1:2", "[::1:8883", "a b:8883", ""]
)
def test_an_endpoint_option_that_is_not_host_and_port_is_refused(tmp_path, listener, endpoint):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    result = run_loadgen("run", path, "--endpoint", endpoint, cwd=tmp_path)
    _assert_refused_untouched(result, tmp_path, listener, f"--endpoint: '{endpoint}'", "host:port")


def test_an_ipv6_endpoint_in_brackets_is_its_address_and_port():
    from loadgen.scenario.schema import parse_endpoint

    assert parse_endpoint("[::1]:8883") == ("::1", 8883)
    assert parse_endpoint("iot.example.com:8883") == ("iot.example.com", 8883)


def test_a_scenario_endpoint_port_out_of_range_names_its_line(tmp_path, listener):
    path = _write_scenario(tmp_path, 99999)
    result = run_loadgen("run", path, cwd=tmp_path)
    _assert_refused_untouched(result, tmp_path, listener, f"{path}:2: endpoint:", "host:port")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("emulator", "serve", "--max-packet-size", "10"), ("'--max-packet-size'", "64<=x")),
        # Past what the serving processes can hand the account whole: one such
        # PUBLISH stopped the emulator.
        (
            ("emulator", "serve", "--max-packet-size", "70000000"),
            ("'--max-packet-size'", "x<=33554432"),
        ),
        (("run", "--bogus", "x"), ("No such option '--bogus'", "loadgen run --help")),
        (("certs", "mint", "--count", "many"), ("'--count'", "not a valid integer")),
        (("emulator", "serve", "--connect-timeout", "nan"), ("'--connect-timeout'", "finite")),
        (
            ("certs", "mint", "--ca", "ca", "--out", "f", "--count", "99999999999999999999"),
            ("--count 99999999999999999999: at most 100,000,000",),
        ),
        (
            ("certs", "mint", "--ca", "ca", "--out", "f", "--count", "2", "--workers", "100000"),
            ("--workers 100000: at most 1,024",),
        ),
        (("emulator", "serve", "--slow-consumer-timeout", "inf"), ("'inf' is not a finite",)),
    ],
)
def test_an_option_the_command_line_refuses_is_one_line_naming_it(args, fragments):
    assert_user_error(run_loadgen(*args), *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--linger", "nan"), ("'--linger'", "finite")),
        (
            ("--count", "99999999999999999999"),
            ("--count 99999999999999999999: at most 100,000,000",),
        ),
        (("--workers", "100000"), ("--workers 100000: at most 1,024",)),
        (("--linger", "-5"), ("'--linger'", "x>=0")),
        (("--pushgateway", "notaurl"), ("--pushgateway notaurl: no port",)),
        (("--pushgateway", "ftp://gw:9091"), ("--pushgateway ftp://gw:9091: not host:port",)),
        (
            ("--pushgateway", "http://127.0.0.1:9091/a b"),
            ("--pushgateway 'http://127.0.0.1:9091/a b': a space",),
        ),
        (("--report", "same.json", "--html", "same.json"), ("--html same.json: the same file as",)),
        (
            ("--report", "r.json", "--junit", "r.json"),
            ("--junit r.json: the same file as --report",),
        ),
    ],
    ids=[
        "linger nan",
        "count huge",
        "workers huge",
        "linger negative",
        "pushgateway no port",
        "pushgateway ftp",
        "pushgateway space",
        "html",
        "junit",
    ],
)
def test_a_run_option_mistake_is_refused_before_any_load(tmp_path, listener, args, fragments):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    result = run_loadgen("run", path, *args, cwd=tmp_path)
    _assert_refused_untouched(result, tmp_path, listener, *fragments)


def test_a_start_at_past_any_horizon_says_so_without_a_count_of_hours(tmp_path, listener):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    result = run_loadgen("run", path, "--start-at", "1e30")
    _assert_refused_untouched(
        result,
        tmp_path,
        listener,
        "--start-at 1e30: more than 24 h from now: likely a mistake",
    )


def test_a_fleet_count_past_any_machines_names_its_line(tmp_path, listener):
    path = _write_scenario(tmp_path, listener.getsockname()[1])
    path.write_text(path.read_text().replace("count: 5}", "count: 99999999999999999999999}"))
    result = run_loadgen("run", path, cwd=tmp_path)
    _assert_refused_untouched(
        result, tmp_path, listener, f"{path}:3: fleet.count:", "less than or equal to 100000000"
    )


@pytest.mark.parametrize(
    ("load", "rate", "field"),
    [
        ("load: {executor: constant-arrival-rate, rate: 0.0000000001/s}\n", None, "load.rate"),
        (
            "load:\n  executor: ramping-arrival-rate\n"
            "  stages: [{rate: 0.0000000001/s, duration: 24000h}]\n",
            None,
            "load.stages",
        ),
        (LOAD, "0.000001/s", "--rate 0.000001/s"),
    ],
    ids=["constant rate", "ramping stages", "rate option"],
)
def test_a_schedule_spanning_more_than_30_days_is_refused_naming_its_rate(
    tmp_path, listener, load, rate, field
):
    # In process: a run the check misses would wait for its second device.
    path = _write_scenario(tmp_path, listener.getsockname()[1], load=load)
    with pytest.raises(UserError) as refused:
        check_plan(load_scenario(path), RunOptions(rate=rate, workers=1))
    message = str(refused.value)
    assert f"{field}: starting 5 devices would take more than 30" in message
    # A scenario's field is named with its file and line; an option as given.
    assert message.startswith(f"{path}:" if rate is None else field)
    assert sorted(os.listdir(tmp_path)) == ["scenario.yaml"]
