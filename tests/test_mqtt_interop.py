"""The codec against peers nobody here wrote: mosquitto as the broker for our
client end; paho (through aiomqtt) and mosquitto_pub as clients of our server end."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aiomqtt
import pytest

from loadgen import mqtt
from loadgen.transport.client import Target, connect
from loadgen.transport.timing import AttemptTimes
from tests.echo_broker import EchoBroker

VERSIONS = [mqtt.MQTT_3_1_1, mqtt.MQTT_5]


@pytest.mark.parametrize("version", VERSIONS)
async def test_our_client_subscribes_publishes_and_receives_through_mosquitto(mosquitto, version):
    target = Target("127.0.0.1", mosquitto.plain_port)
    packet = mqtt.Connect(f"interop-{version}", protocol_version=version, keepalive=30)
    async with asyncio.timeout(10):
        client = await connect(target, None, packet, AttemptTimes(time.monotonic()))
        assert await client.subscribe(f"interop/{version}/#", qos=1) == 1
        await client.publish(f"interop/{version}/x", b"hello", qos=1)
        await client.publish(f"interop/{version}/y", b"again", qos=0)
        while client.publishes_received < 2:
            await asyncio.sleep(0.01)
        await client.ping()
        client.disconnect()
    assert len(client.times.pubacks) == 1


async def _serve(broker: EchoBroker) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(broker.protocol, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "version", [aiomqtt.ProtocolVersion.V311, aiomqtt.ProtocolVersion.V5], ids=["3.1.1", "5"]
)
async def test_paho_through_aiomqtt_talks_to_our_server_end(version):
    broker = EchoBroker()
    server = await _serve(broker)
    port = server.sockets[0].getsockname()[1]
    async with (
        asyncio.timeout(10),
        aiomqtt.Client("127.0.0.1", port, identifier="paho-1", protocol=version) as client,
    ):
        await client.subscribe("room/#", qos=1)
        await client.publish("room/1", b"lights on", qos=1)
        async for message in client.messages:
            assert (str(message.topic), message.payload) == ("room/1", b"lights on")
            break
    server.close()
    assert broker.errors == []
    kinds = [type(p).__name__ for p in broker.received]
    assert kinds[:3] == ["Connect", "Subscribe", "Publish"]


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_mosquitto_pub_publishes_to_our_server_end(version):
    broker = EchoBroker()
    server = await _serve(broker)
    port = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-V",
        version,
        "-t",
        "sensors/temp",
        "-m",
        "21.5",
        "-q",
        "1",
        "-i",
        "pub-1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        _, err = await proc.communicate()
    server.close()
    assert proc.returncode == 0, err
    publishes = [p for p in broker.received if isinstance(p, mqtt.Publish)]
    assert [(p.topic, p.payload, p.qos) for p in publishes] == [("sensors/temp", b"21.5", 1)]
    assert broker.errors == []
