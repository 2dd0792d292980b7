"""The emulator checked by clients nobody here wrote: paho (through aiomqtt) and
mosquitto_pub, with fleet certificates."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys

import aiomqtt
import pytest

from loadgen.certs.store import FleetStore
from loadgen.emulator.serve import start_embedded


@pytest.fixture(scope="module")
def emulator(tmp_path_factory, device_ca):
    """The emulator with the device CA and the quickstart's lightbulb template."""
    from tests.conftest import ROOT

    state = tmp_path_factory.mktemp("emulator")
    rendered = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadgen",
            "template",
            "render",
            str(ROOT / "scenarios" / "templates" / "lightbulb.yaml"),
            "--role-arn",
            "arn:aws:iam::123456789012:role/JITPRole",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (state / "config.json").write_text(rendered)
    emulator = start_embedded(
        device_ca.directory, state / "config.json", state, quotas={"connect-per-client": "off"}
    )
    yield emulator.port, emulator.server_ca
    emulator.stop()


@pytest.fixture(scope="module")
def bulbs(tmp_path_factory, device_ca):
    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.profile import Profile

    path = tmp_path_factory.mktemp("bulbs") / "fleet"
    profile = Profile.model_validate(
        {
            "subject": {
                "common_name": "bulb-{index:03d}",
                "serial_number": "{hex:6}",
                "country": "DE",
            },
            "faults": {"unknown_ca": 0.1},
        }
    )
    mint(MintRequest(path, device_ca.directory, 20, profile, seed=9))
    return FleetStore(path)


def _context(fleet, device, server_ca):
    context = ssl.create_default_context(cafile=str(server_ca))
    context.load_cert_chain(fleet.path / device.cert, fleet.path / device.key)
    return context


def _paho(port, device, context):
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=device.client_id,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=3,
    )


async def test_paho_is_rejected_first_then_accepted_and_publishes(emulator, bulbs):
    port, server_ca = emulator
    device = next(d for d in bulbs.devices() if d.fault is None)
    context = _context(bulbs, device, server_ca)
    # JITP closes the first connection; aiomqtt only notices by timing out.
    with pytest.raises(aiomqtt.MqttError):
        async with _paho(port, device, context):
            pass
    async with asyncio.timeout(10), _paho(port, device, context) as client:
        await client.publish(f"dt/{device.client_id}/telemetry", b"21.5", qos=1)


async def test_a_publish_the_policy_denies_disconnects_paho(emulator, bulbs):
    port, server_ca = emulator
    device = [d for d in bulbs.devices() if d.fault is None][1]
    context = _context(bulbs, device, server_ca)
    with pytest.raises(aiomqtt.MqttError):  # the JITP trigger
        async with _paho(port, device, context):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(10), _paho(port, device, context) as client:
            await client.publish("not/allowed", b"x", qos=1)


def _mosquitto_pub(port, server_ca, fleet, device, topic, *extra):
    return subprocess.run(
        [
            "mosquitto_pub",
            *extra,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "--cafile",
            str(server_ca),
            "--cert",
            str(fleet.path / device.cert),
            "--key",
            str(fleet.path / device.key),
            "-i",
            device.client_id,
            "-t",
            topic,
            "-m",
            "on",
            "-q",
            "1",
            "-V",
            "mqttv5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_mosquitto_pub_is_rejected_first_then_publishes(emulator, bulbs):
    port, server_ca = emulator
    device = [d for d in bulbs.devices() if d.fault is None][2]
    first = _mosquitto_pub(port, server_ca, bulbs, device, f"dt/{device.client_id}/x")
    assert first.returncode != 0
    second = _mosquitto_pub(port, server_ca, bulbs, device, f"dt/{device.client_id}/x")
    assert second.returncode == 0, second.stderr


def _s_client_tls12(port, server_ca, fleet, device):
    """openssl s_client's verdict on a TLS 1.2 handshake (in 1.2 the server judges
    the client certificate inside the handshake)."""
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-tls1_2",
            "-CAfile",
            str(server_ca),
            "-cert",
            str(fleet.path / device.cert),
            "-key",
            str(fleet.path / device.key),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    ).stderr


def test_a_certificate_of_an_unregistered_ca_fails_the_handshake(emulator, bulbs):
    port, server_ca = emulator
    device = next(d for d in bulbs.devices() if d.fault == "unknown_ca")
    result = _mosquitto_pub(port, server_ca, bulbs, device, f"dt/{device.client_id}/x")
    assert result.returncode != 0
    # The server drops the handshake before its Finished (no alert is sent).
    assert "SSL routines" in _s_client_tls12(port, server_ca, bulbs, device)
    healthy = next(d for d in bulbs.devices() if d.fault is None)
    assert "SSL routines" not in _s_client_tls12(port, server_ca, bulbs, healthy)


async def test_a_provisioned_fleet_reconnects_after_the_emulator_is_killed(
    tmp_path, device_ca, bulbs
):
    import time

    from loadgen import mqtt
    from loadgen.transport.client import Target, connect
    from loadgen.transport.errors import Closed
    from loadgen.transport.timing import AttemptTimes
    from loadgen.transport.tls import ClientTls

    db = tmp_path / "registry.db"
    devices = [d for d in bulbs.devices() if d.fault is None][:3]
    server_ca = tmp_path / "server-ca" / "ca.pem"

    async def attempt(port, device):
        tls = ClientTls(ca_file=server_ca).session(
            bulbs.path / device.cert, bulbs.path / device.key, "localhost"
        )
        async with asyncio.timeout(10):
            client = await connect(
                Target("127.0.0.1", port),
                tls,
                mqtt.Connect(device.client_id),
                AttemptTimes(time.monotonic()),
            )
        client.disconnect()

    def start():
        return start_embedded(
            device_ca.directory, None, tmp_path, quotas={"connect-per-client": "off"}, state_db=db
        )

    emulator = start()
    try:
        for device in devices:
            with pytest.raises(Closed):
                await attempt(emulator.port, device)  # JITP's trigger
            await attempt(emulator.port, device)
    finally:
        emulator.process.kill()  # no clean shutdown: what was committed must survive
        emulator.process.wait()
    emulator = start()
    try:
        for device in devices:
            await attempt(emulator.port, device)  # accepted at once: no JITP again
    finally:
        emulator.stop()


async def test_publishes_reach_subscribers_the_policy_lets_receive(tmp_path, device_ca, bulbs):
    import time

    from loadgen import mqtt
    from loadgen.transport.client import Target, connect
    from loadgen.transport.errors import AckRefused, Closed
    from loadgen.transport.timing import AttemptTimes
    from loadgen.transport.tls import ClientTls

    # The built-in template: each device may use topics with its thing name.
    emulator = start_embedded(
        device_ca.directory, None, tmp_path, quotas={"connect-per-client": "off"}
    )
    device = [d for d in bulbs.devices() if d.fault is None][3]
    tls = ClientTls(ca_file=emulator.server_ca)

    async def connected():
        session = tls.session(bulbs.path / device.cert, bulbs.path / device.key, "localhost")
        return await connect(
            Target("127.0.0.1", emulator.port),
            session,
            mqtt.Connect(device.client_id),
            AttemptTimes(time.monotonic()),
        )

    try:
        async with asyncio.timeout(15):
            with pytest.raises(Closed):
                await connected()  # JITP's trigger
            client = await connected()
            assert await client.subscribe(f"cmd/{device.client_id}/#", qos=1) == 1
            with pytest.raises(AckRefused):  # not its own topics: iot:Subscribe denied
                await client.subscribe("cmd/+/all")
            await client.publish(f"cmd/{device.client_id}/light", b"on", qos=1)
            while client.publishes_received < 1:
                await asyncio.sleep(0.01)
            client.disconnect()
    finally:
        emulator.stop()
