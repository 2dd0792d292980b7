"""The emulator's limits against hostile clients (docs/emulator.md, "Limits"): raw
TLS clients with fleet certificates declare huge packets, send nothing, go
silent or stop reading; each is cut off, the emulator's memory (the RSS of its
process) stays bounded, and a healthy paho device is served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
import uvloop
import yaml

from loadgen import mqtt
from loadgen.emulator.defaults import REGISTRATION_CONFIG, TEMPLATE
from loadgen.emulator.limits import Limits
from loadgen.emulator.quota import Quotas
from loadgen.emulator.registry import Registry
from loadgen.emulator.serve import EmbeddedEmulator, server_identity, start_embedded
from loadgen.emulator.server import Emulator
from loadgen.mqtt import wire
from loadgen.mqtt.properties import Properties
from tests.conftest import assert_user_error, run_loadgen
from tests.test_emulator_clients import _context
from tests.test_emulator_processes import _until

# Generous: the emulator's own growth for a few connections is a few MB; what the
# limits prevent is tens to hundreds of MB.
RSS_BOUND_KB = 30 * 1024
# Short deadlines, and keepalives taken as asked (AWS raises them to 30 s).
LIMITS = Limits(connect_timeout=1.0, slow_consumer_timeout=1.0, min_keepalive=0)
_ANYTHING = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
}


@pytest.fixture
def emulator(tmp_path, device_ca):
    """An emulator process of its own (its peak RSS is this test's), with short
    deadlines and a policy that allows every device everything."""
    template = json.loads(json.dumps(TEMPLATE))
    template["Resources"]["policy"]["Properties"]["PolicyDocument"] = json.dumps(_ANYTHING)
    config = tmp_path / "config.json"
    role = REGISTRATION_CONFIG["roleArn"]
    config.write_text(json.dumps({"templateBody": json.dumps(template), "roleArn": role}))
    emulator = start_embedded(
        device_ca.directory,
        config,
        tmp_path / "emulator",
        quotas={"connect-per-client": "off"},
        limits=LIMITS,
    )
    yield emulator
    emulator.stop()


@pytest.fixture
def devices(small_fleet):
    return [d for d in small_fleet.devices() if d.fault is None]


def _memory_kb(emulator: EmbeddedEmulator) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of the emulator's process, in kB."""
    status = Path(f"/proc/{emulator.process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


async def _open(emulator, fleet, device, receive_buffer: int | None = None):
    """A TLS connection as the device; ``receive_buffer`` fixes the socket's
    (Linux otherwise grows it to tens of MB on loopback, absorbing what a
    reader that does not read was sent)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", emulator.port))
    return await asyncio.open_connection(
        sock=sock, ssl=_context(fleet, device, emulator.server_ca), server_hostname="localhost"
    )


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the emulator sends until it closes the connection."""
    received = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            received += data
    return received


async def _provision(emulator, fleet, devices) -> None:
    """JITP runs on each device's first connection, which it then closes."""
    for device in devices:
        reader, writer = await _open(emulator, fleet, device)
        await _until_closed(reader)
        writer.close()


async def _connect(emulator, fleet, device, version=mqtt.MQTT_5, keepalive=60, receive_buffer=None):
    reader, writer = await _open(emulator, fleet, device, receive_buffer)
    connect = mqtt.Connect(device.client_id, protocol_version=version, keepalive=keepalive)
    writer.write(mqtt.encode(connect, version))
    decoder = mqtt.Decoder(version)
    packets: list[mqtt.Packet] = []
    while not packets:
        data = await reader.read(1024)
        assert data, "closed before CONNACK"
        packets += decoder.feed(data)
    assert isinstance(packets[0], mqtt.ConnAck) and packets[0].reason_code == 0, packets
    return reader, writer, decoder


async def _healthy_paho_device(emulator, fleet, device) -> None:
    """A paho device that connects, subscribes, publishes at QoS 1 and receives
    its own message: what everyone else keeps getting."""
    topic = f"dt/{device.client_id}/healthy"
    async with aiomqtt.Client(
        "127.0.0.1",
        emulator.port,
        identifier=device.client_id,
        tls_context=_context(fleet, device, emulator.server_ca),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=10,
    ) as client:
        await client.subscribe(topic)
        await client.publish(topic, b"still served", qos=1)
        async for message in client.messages:
            assert message.payload == b"still served"
            return


async def _closes(emulator, reason: str, at_least: int = 1) -> dict:
    """The emulator's counts once it has closed ``at_least`` sessions for
    ``reason`` (asked until then, within the caller's deadline)."""
    while True:
        stats = await asyncio.to_thread(emulator.stats)
        assert stats is not None, "the emulator did not answer for its stats"
        if stats["closes"].get(reason, 0) >= at_least:
            return stats
        await asyncio.sleep(0.1)


async def test_clients_declaring_200_mb_connects_are_cut_off_with_memory_bounded(
    emulator, small_fleet, devices
):
    hostile, healthy = devices[:3], devices[3]
    async with asyncio.timeout(120):
        await _provision(emulator, small_fleet, [*hostile, healthy])
        before = _memory_kb(emulator)

        async def stream_a_huge_connect(device) -> int:
            """The header of a 200 MB CONNECT, then 40 MB of it (asyncio's TLS
            client may go on writing into the connection the emulator cut)."""
            _, writer = await _open(emulator, small_fleet, device)
            sent = 0
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                writer.write(b"\x10" + wire.varint(200 * 1024 * 1024))
                chunk = b"\x00" * 65536
                while sent < 40 * 1024 * 1024:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
            writer.close()
            return sent

        sent = await asyncio.gather(
            *(stream_a_huge_connect(d) for d in hostile),
            _healthy_paho_device(emulator, small_fleet, healthy),
        )
        stats = await _closes(emulator, "packet too large", at_least=3)
    after = _memory_kb(emulator)
    assert stats["connects"]["accepted"] == 1  # the paho device; no hostile CONNECT was taken
    assert after["VmHWM"] - before["VmRSS"] < RSS_BOUND_KB, (before, after, sent)


@pytest.mark.parametrize("version", [mqtt.MQTT_5, mqtt.MQTT_3_1_1])
async def test_a_connected_client_sending_a_packet_over_the_maximum_is_disconnected(
    emulator, small_fleet, devices, version
):
    device = devices[0]
    async with asyncio.timeout(60):
        await _provision(emulator, small_fleet, [device])
        reader, writer, decoder = await _connect(emulator, small_fleet, device, version)
        too_large = mqtt.encode(mqtt.Publish("dt/x", b"x" * LIMITS.max_packet_size), version)
        writer.write(too_large[:16])
        answer = decoder.feed(await _until_closed(reader))
        writer.close()
        await _closes(emulator, "packet too large")
    # MQTT 5 names the reason (0x95 Packet too large); 3.1.1 has no way to.
    expected = [mqtt.Disconnect(0x95)] if version == mqtt.MQTT_5 else []
    assert answer == expected


async def test_a_connected_mqtt_5_client_breaking_the_protocol_hears_why(
    emulator, small_fleet, devices
):
    device = devices[0]
    async with asyncio.timeout(60):
        await _provision(emulator, small_fleet, [device])
        reader, writer, decoder = await _connect(emulator, small_fleet, device)
        writer.write(mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5))  # twice
        answer = decoder.feed(await _until_closed(reader))
        writer.close()
        await _closes(emulator, "protocol error")
    assert answer == [mqtt.Disconnect(mqtt.ReasonCode.PROTOCOL_ERROR)]


@pytest.mark.parametrize("sent", ["nothing", "half a CONNECT"])
async def test_a_client_without_a_whole_connect_is_closed_after_the_deadline(
    emulator, small_fleet, devices, sent
):
    device = devices[0]
    connect = mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5)
    async with asyncio.timeout(60):
        await _provision(emulator, small_fleet, [device])
        reader, writer = await _open(emulator, small_fleet, device)
        if sent != "nothing":
            writer.write(connect[: len(connect) // 2])
        assert await _until_closed(reader) == b""
        writer.close()
        stats = await _closes(emulator, "connect timeout")
    assert stats["closes"]["connect timeout"] == 1


async def test_a_client_that_stops_pinging_is_closed_after_one_and_a_half_keepalives(
    emulator, small_fleet, devices
):
    device = devices[0]
    async with asyncio.timeout(60):
        await _provision(emulator, small_fleet, [device])
        reader, writer, decoder = await _connect(emulator, small_fleet, device, keepalive=2)
        # Pinging every quarter keepalive for two keepalives, past the 1.5 it is
        # allowed, it is kept (a loaded machine may hold this loop up for 2.5 s).
        for _ in range(8):
            writer.write(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))
            assert decoder.feed(await reader.read(1024)) == [mqtt.PingResp()]
            await asyncio.sleep(0.5)
        # Silent, it is closed, hearing why (MQTT 5: 0x8D Keep Alive timeout).
        assert decoder.feed(await _until_closed(reader)) == [mqtt.Disconnect(0x8D)]
        writer.close()
        stats = await _closes(emulator, "keepalive timeout")
    assert stats["closes"]["keepalive timeout"] == 1


async def test_a_subscriber_that_does_not_read_is_disconnected_with_memory_bounded(
    emulator, small_fleet, devices
):
    subscriber, publisher, healthy = devices[:3]
    data = mqtt.encode(mqtt.Publish("flood/data", b"m" * (100 * 1024)), mqtt.MQTT_5)
    async with asyncio.timeout(120):
        await _provision(emulator, small_fleet, [subscriber, publisher, healthy])
        reader, writer, decoder = await _connect(
            emulator, small_fleet, subscriber, receive_buffer=16384
        )
        subscribe = mqtt.Subscribe(1, (mqtt.Subscription("flood/#"),))
        writer.write(mqtt.encode(subscribe, mqtt.MQTT_5))
        assert isinstance(decoder.feed(await reader.read(1024))[0], mqtt.SubAck)
        before = _memory_kb(emulator)
        # From here on the subscriber reads nothing.
        p_reader, p_writer, p_decoder = await _connect(emulator, small_fleet, publisher)

        async def flood_until_the_subscriber_is_cut_off() -> tuple[int, dict]:
            """60 MB at once (without backpressure the emulator would keep it
            all), then a message every 0.1 s until the emulator has closed the
            subscriber, which stays over its write buffer all along."""
            sent = 0
            for batch in range(1, 601):
                for _ in range(600 if batch == 1 else 1):
                    p_writer.write(data)
                    await p_writer.drain()
                    sent += 1
                # Its PUBACK says the emulator has routed every message before it.
                end = mqtt.Publish("flood/end", b"", qos=1, packet_id=batch)
                p_writer.write(mqtt.encode(end, mqtt.MQTT_5))
                assert p_decoder.feed(await p_reader.read(1024)) == [mqtt.PubAck(batch)]
                stats = await asyncio.to_thread(emulator.stats)
                assert stats is not None
                if stats["closes"].get("slow consumer"):
                    return sent, stats
                await asyncio.sleep(0.1)
            raise AssertionError(f"the subscriber that does not read was kept: {stats}")

        (sent, stats), _ = await asyncio.gather(
            flood_until_the_subscriber_is_cut_off(),
            _healthy_paho_device(emulator, small_fleet, healthy),
        )
        after = _memory_kb(emulator)
        received = await _until_closed(reader)  # what it had been sent, then the end
        writer.close()
        p_writer.close()
    assert stats["closes"]["slow consumer"] == 1
    assert stats["dropped"]["slow consumer"] > 0
    assert len(received) < sent * len(data)
    assert after["VmHWM"] - before["VmRSS"] < RSS_BOUND_KB, (before, after, sent)


@pytest.mark.parametrize(("asked", "held_to"), [(10, 30), (0, 1200), (60, None), (65535, 1200)])
async def test_an_mqtt_5_connack_tells_the_client_the_limits_it_is_held_to(
    tmp_path, device_ca, small_fleet, devices, asked, held_to
):
    """Maximum Packet Size always; Server Keep Alive when AWS's rule changed the
    client's keepalive (under 30 s: 30 s; 0 and over 1200 s: 1200 s)."""
    cert, key, server_ca = server_identity(tmp_path)
    registry = Registry()
    registry.register_ca(device_ca.cert, REGISTRATION_CONFIG)
    emulator = Emulator(registry, str(cert), str(key), Quotas(None, None, None), Limits())
    server = await emulator.serve("127.0.0.1", 0)
    port, device = server.sockets[0].getsockname()[1], devices[0]
    context = _context(small_fleet, device, server_ca)
    async with asyncio.timeout(30), server:
        for _attempt in range(2):  # the first connection is JITP's: closed at once
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            connect = mqtt.Connect(device.client_id, keepalive=asked)
            writer.write(mqtt.encode(connect, mqtt.MQTT_5))
            data = await reader.read(1024)
            writer.close()
    (connack,) = mqtt.Decoder(mqtt.MQTT_5).feed(data)
    assert connack.properties.maximum_packet_size == Limits().max_packet_size
    assert connack.properties.maximum_qos == 1  # AWS IoT: QoS 0 and 1
    assert connack.properties.subscription_identifier_available == 0  # nor does AWS IoT
    assert connack.properties.server_keep_alive == held_to


def _embedded_scenario(tmp_path, fleet, device_ca, **fields):
    scenario = {
        "name": "limits",
        "endpoint": "embedded",
        "mqtt": {"client_id": "{common_name}", "keepalive": 1},
        "fleet": {"ca": str(device_ca.directory), "store": str(fleet.path), "count": 10},
        "jitp": {"expect_first_connect_rejected": True},
        "retry": {"initial": "20ms", "max": "100ms", "max_attempts": 4},
        "load": {"executor": "burst"},
        "emulator": {"quotas": {"connect-per-client": "off"}},
        **fields,
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_an_embedded_run_takes_the_scenarios_limits_and_reports_who_they_closed(
    tmp_path, device_ca, small_fleet
):
    # Devices that hold without pinging, against keepalives taken as asked (1 s).
    path = _embedded_scenario(
        tmp_path,
        small_fleet,
        device_ca,
        after_connect=[{"hold": {"duration": "4s", "keepalive": 0}}],
        emulator={"quotas": {"connect-per-client": "off"}, "limits": {"min_keepalive": 0}},
    )
    result = run_loadgen("run", path, "--workers", "1", "--report", tmp_path / "r.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "r.json").read_text())
    healthy = sum(d.fault is None for d in list(small_fleet.devices())[:10])
    assert report["jitp"]["emulator_closes"] == {"keepalive timeout": healthy}
    assert f"the emulator closed {healthy} sessions: keepalive timeout" in result.out


def test_a_scenarios_heartbeat_timeout_reaches_the_embedded_emulators_command():
    from loadgen.emulator.serve import limit_options
    from loadgen.scenario.schema import EmulatorLimits

    limits = EmulatorLimits.model_validate({"heartbeat_timeout": "3s"}).to_limits()
    options = limit_options(limits)
    assert options[options.index("--heartbeat-timeout") + 1] == "3.0"


def test_a_limit_out_of_range_in_the_scenario_is_a_user_error(tmp_path, device_ca, small_fleet):
    path = _embedded_scenario(
        tmp_path, small_fleet, device_ca, emulator={"limits": {"connect_timeout": "0s"}}
    )
    result = run_loadgen("run", path, "--report", tmp_path / "r.json")
    assert_user_error(result, "emulator.limits.connect_timeout")
    assert not (tmp_path / "r.json").exists()


def test_the_closes_and_drops_are_prometheus_metrics_with_every_reason_from_the_start(
    tmp_path, device_ca
):
    from prometheus_client import CollectorRegistry, generate_latest

    from loadgen.emulator.metrics import EmulatorCollector

    cert, key, _ = server_identity(tmp_path)
    emulator = Emulator(Registry(), str(cert), str(key))
    emulator.stats.closes["slow consumer"] += 2
    emulator.stats.dropped["slow consumer"] += 7
    registry = CollectorRegistry()
    registry.register(EmulatorCollector(emulator))
    text = generate_latest(registry).decode()
    assert 'loadgen_emulator_closes_total{reason="slow consumer"} 2.0' in text
    assert 'loadgen_emulator_closes_total{reason="keepalive timeout"} 0.0' in text
    assert 'loadgen_emulator_dropped_messages_total{reason="slow consumer"} 7.0' in text


def test_a_pingreq_sent_in_time_while_the_emulator_was_busy_keeps_the_device(
    tmp_path, device_ca, small_fleet, devices
):
    """uvloop runs due timers before it reads the sockets again: a PINGREQ that
    arrived while the emulator's loop was busy handling other sockets past the
    device's deadline is read before the emulator judges it silent."""
    cert, key, server_ca = server_identity(tmp_path)
    registry = Registry()
    registry.register_ca(device_ca.cert, REGISTRATION_CONFIG)
    emulator = Emulator(registry, str(cert), str(key), Quotas(None, None, None), LIMITS)
    context = _context(small_fleet, devices[0], server_ca)
    connect = mqtt.encode(mqtt.Connect(devices[0].client_id, keepalive=1), mqtt.MQTT_5)
    busy_in, busy_out = socket.socketpair()
    busy, pinged = threading.Event(), threading.Event()
    heard: list[mqtt.Packet] = []

    def device(port: int) -> None:
        for attempt in range(2):  # JITP's first connection is closed at once
            with context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=30),
                server_hostname="localhost",
            ) as tls:
                tls.sendall(connect)
                decoder = mqtt.Decoder(mqtt.MQTT_5)
                if attempt == 0:
                    with contextlib.suppress(OSError):
                        while tls.recv(1024):
                            pass
                    continue
                (connack,) = decoder.feed(tls.recv(1024))
                assert isinstance(connack, mqtt.ConnAck) and connack.reason_code == 0
                busy_out.send(b"x")  # the emulator's loop gets busy elsewhere
                assert busy.wait(30)
                tls.sendall(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))
                pinged.set()
                while not heard and (data := tls.recv(1024)):
                    heard.extend(decoder.feed(data))

    def busy_elsewhere() -> None:
        # Runs as a socket's callback, inside uvloop's poll for I/O, and keeps
        # the loop there past the device's deadline (1.5 keepalives).
        busy_in.recv(1)
        busy.set()
        assert pinged.wait(30)
        time.sleep(2.0)

    async def main() -> None:
        server = await emulator.serve("127.0.0.1", 0)
        asyncio.get_running_loop().add_reader(busy_in.fileno(), busy_elsewhere)
        async with server, asyncio.timeout(60):
            await asyncio.to_thread(device, server.sockets[0].getsockname()[1])

    uvloop.run(main())
    assert heard == [mqtt.PingResp()]
    assert emulator.stats.closes["keepalive timeout"] == 0


@pytest.mark.parametrize("version", [mqtt.MQTT_5, mqtt.MQTT_3_1_1])
async def test_a_packet_larger_than_one_read_arrives_whole_and_is_delivered(
    emulator, small_fleet, devices, version
):
    """A session's decrypted bytes are read into a buffer its process shares
    (64 KiB): a PUBLISH near the 128 KiB maximum comes in several reads and is
    still decoded as one, and delivered to its subscriber whole."""
    device = devices[0]
    payload = bytes(range(256)) * 480  # 120 KiB
    async with asyncio.timeout(60):
        await _provision(emulator, small_fleet, [device])
        reader, writer, decoder = await _connect(emulator, small_fleet, device, version)
        topic = f"dt/{device.client_id}/large"
        writer.write(mqtt.encode(mqtt.Subscribe(1, (mqtt.Subscription(topic),)), version))
        writer.write(mqtt.encode(mqtt.Publish(topic, payload), version))
        received: list[mqtt.Packet] = []
        while not any(isinstance(packet, mqtt.Publish) for packet in received):
            data = await reader.read(65536)
            assert data, f"closed after {received}"
            received += decoder.feed(data)
        writer.close()
    (delivered,) = [packet for packet in received if isinstance(packet, mqtt.Publish)]
    assert (delivered.topic, delivered.payload) == (topic, payload)


async def _until_packet(reader, decoder, kind, timeout=10.0):
    async with asyncio.timeout(timeout):
        return await _until(reader, decoder, kind)


async def _subscribed(emulator, fleet, device, filters):
    reader, writer, decoder = await _connect(emulator, fleet, device)
    subscriptions = tuple(mqtt.Subscription(f) for f in filters)
    writer.write(mqtt.encode(mqtt.Subscribe(1, subscriptions), mqtt.MQTT_5))
    suback = await _until_packet(reader, decoder, mqtt.SubAck)
    return reader, writer, decoder, suback


async def test_an_unsubscribed_filter_gets_nothing_more(emulator, small_fleet, devices):
    await _provision(emulator, small_fleet, devices[:2])
    topic = f"dt/{devices[0].client_id}/news"
    reader, writer, decoder, _ = await _subscribed(emulator, small_fleet, devices[0], [topic])
    writer.write(mqtt.encode(mqtt.Unsubscribe(2, (topic, "never/subscribed")), mqtt.MQTT_5))
    unsuback = await _until_packet(reader, decoder, mqtt.UnsubAck)
    assert unsuback.reason_codes == (0x00, 0x11)  # Success; No subscription existed
    _, other, _ = await _connect(emulator, small_fleet, devices[1])
    other.write(mqtt.encode(mqtt.Publish(topic, b"after"), mqtt.MQTT_5))
    # A PINGREQ after it: its answer comes after anything the publish would bring.
    await asyncio.sleep(0.5)
    writer.write(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))
    async with asyncio.timeout(10):
        while True:
            packets = decoder.feed(await reader.read(65536))
            assert not any(isinstance(p, mqtt.Publish) for p in packets), packets
            if any(isinstance(p, mqtt.PingResp) for p in packets):
                break
    writer.close()
    other.close()


async def test_a_filter_that_is_no_filter_is_refused_in_the_suback(emulator, small_fleet, devices):
    await _provision(emulator, small_fleet, devices[:1])
    filters = ["a/#/b", "a/b+", "", "a/+/c/#"]
    _, writer, _, suback = await _subscribed(emulator, small_fleet, devices[0], filters)
    assert suback.reason_codes == (0x8F, 0x8F, 0x8F, 0x00)  # Topic Filter invalid
    writer.close()


async def test_a_session_holds_at_most_max_subscriptions_filters(emulator, small_fleet, devices):
    await _provision(emulator, small_fleet, devices[:1])
    held = LIMITS.max_subscriptions
    filters = [f"t/{i}" for i in range(held + 2)]
    _, writer, _, suback = await _subscribed(
        emulator,
        small_fleet,
        devices[0],
        ["t/0", *filters],  # t/0 twice: held once
    )
    assert suback.reason_codes == (0,) * (held + 1) + (0x97, 0x97)  # Quota exceeded
    writer.close()


async def test_a_qos_2_publish_is_disconnected_as_qos_not_supported(emulator, small_fleet, devices):
    await _provision(emulator, small_fleet, devices[:1])
    reader, writer, decoder = await _connect(emulator, small_fleet, devices[0])
    publish = mqtt.Publish(f"dt/{devices[0].client_id}/x", b"twice", qos=2, packet_id=1)
    writer.write(mqtt.encode(publish, mqtt.MQTT_5))
    async with asyncio.timeout(10):
        (disconnect,) = decoder.feed(await _until_closed(reader))
    assert isinstance(disconnect, mqtt.Disconnect) and disconnect.reason_code == 0x9B
    writer.close()


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (mqtt.PubRel(1), 0x82),  # QoS 2's flow, never offered: Protocol Error
        (mqtt.PubRec(1), 0x82),
        (mqtt.Auth(0x18), 0x82),  # re-authenticate, without an Authentication Method
        (mqtt.Publish("", b"x", properties=Properties(topic_alias=1)), 0x94),
        (mqtt.Publish("dt/x", b"x", properties=Properties(topic_alias=0)), 0x94),
        # A client's PUBLISH carries no Subscription Identifier [MQTT-3.3.4-6].
        (mqtt.Publish("dt/x", b"x", properties=Properties(subscription_identifier=(1,))), 0x82),
    ],
    ids=["pubrel", "pubrec", "auth", "alias", "alias-0", "subscription-identifier"],
)
async def test_a_packet_the_session_never_allowed_is_disconnected_with_its_reason(
    emulator, small_fleet, devices, packet, code
):
    await _provision(emulator, small_fleet, devices[:1])
    reader, writer, decoder = await _connect(emulator, small_fleet, devices[0])
    writer.write(mqtt.encode(packet, mqtt.MQTT_5))
    async with asyncio.timeout(10):
        (disconnect,) = decoder.feed(await _until_closed(reader))
    assert isinstance(disconnect, mqtt.Disconnect) and disconnect.reason_code == code
    writer.close()


async def test_a_newer_connection_of_a_client_id_takes_over_the_older_session(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    old_reader, old_writer, old_decoder = await _connect(emulator, small_fleet, devices[0])
    reader, writer, decoder = await _connect(emulator, small_fleet, devices[0])
    async with asyncio.timeout(10):
        (disconnect,) = old_decoder.feed(await _until_closed(old_reader))
    assert isinstance(disconnect, mqtt.Disconnect) and disconnect.reason_code == 0x8E
    writer.write(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))  # the newer one is served
    assert isinstance(await _until_packet(reader, decoder, mqtt.PingResp), mqtt.PingResp)
    async with asyncio.timeout(10):
        stats = await _closes(emulator, "session taken over")
    assert stats["closes"]["session taken over"] == 1
    old_writer.close()
    writer.close()


async def test_an_mqtt_3_1_connect_hears_unacceptable_protocol_level(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    reader, writer = await _open(emulator, small_fleet, devices[0])
    # MQTT 3.1's CONNECT: protocol name MQIsdp, level 3, clean session, keepalive 60.
    client_id = devices[0].client_id.encode()
    body = b"\x00\x06MQIsdp\x03\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    writer.write(bytes([0x10, len(body)]) + body)
    async with asyncio.timeout(10):
        answer = await _until_closed(reader)
    assert answer == b"\x20\x02\x00\x01"  # CONNACK: unacceptable protocol level
    writer.close()


async def _answered(emulator, fleet, device, connect: mqtt.Connect):
    """A connection as ``device`` that sent ``connect``; what came back first."""
    reader, writer = await _open(emulator, fleet, device)
    writer.write(mqtt.encode(connect, connect.protocol_version))
    decoder = mqtt.Decoder(connect.protocol_version)
    packets: list[mqtt.Packet] = []
    async with asyncio.timeout(10):
        while not packets:
            data = await reader.read(1024)
            assert data, "closed before CONNACK"
            packets += decoder.feed(data)
    return reader, writer, decoder, packets


async def _still_served(reader, writer, decoder, version=mqtt.MQTT_5) -> list[mqtt.Packet]:
    """What arrives up to the PINGRESP to a PINGREQ sent now (failing if the
    connection closes first)."""
    writer.write(mqtt.encode(mqtt.PingReq(), version))
    packets: list[mqtt.Packet] = []
    async with asyncio.timeout(10):
        while not any(isinstance(p, mqtt.PingResp) for p in packets):
            data = await reader.read(65536)
            assert data, f"closed after {packets}"
            packets += decoder.feed(data)
    return packets


async def test_mqtt_5_clients_with_an_empty_client_id_are_each_assigned_one_of_their_own(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:2])
    sessions = [await _answered(emulator, small_fleet, d, mqtt.Connect("")) for d in devices[:2]]
    assigned = [s[3][0].properties.assigned_client_identifier for s in sessions]
    assert all(s[3][0].reason_code == 0 for s in sessions)
    assert all(assigned) and assigned[0] != assigned[1]  # [MQTT-3.2.2-16]
    for reader, writer, decoder, _ in sessions:  # neither took the other over
        assert [type(p) for p in await _still_served(reader, writer, decoder)] == [mqtt.PingResp]
        writer.close()


async def test_mqtt_3_1_1_clients_with_an_empty_client_id_do_not_take_each_other_over(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:2])
    connect = mqtt.Connect("", protocol_version=mqtt.MQTT_3_1_1)
    sessions = [await _answered(emulator, small_fleet, d, connect) for d in devices[:2]]
    assert [s[3] for s in sessions] == [[mqtt.ConnAck()]] * 2
    for reader, writer, decoder, _ in sessions:
        assert await _still_served(reader, writer, decoder, mqtt.MQTT_3_1_1) == [mqtt.PingResp()]
        writer.close()


async def test_an_mqtt_3_1_1_empty_client_id_asking_to_keep_its_session_is_rejected(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    reader, writer = await _open(emulator, small_fleet, devices[0])
    connect = mqtt.Connect("", protocol_version=mqtt.MQTT_3_1_1, clean_start=False)
    writer.write(mqtt.encode(connect, mqtt.MQTT_3_1_1))
    async with asyncio.timeout(10):
        answer = await _until_closed(reader)
    assert answer == b"\x20\x02\x00\x02"  # CONNACK: identifier rejected [MQTT-3.1.3-8]
    writer.close()


@pytest.mark.parametrize(
    ("connect", "code"),
    [
        (mqtt.Connect("", properties=Properties(authentication_method="SCRAM-SHA-1")), 0x8C),
        (mqtt.Connect("", will=mqtt.Will("dt/gone", b"x", qos=2)), 0x9B),
    ],
    ids=["authentication method", "will QoS 2"],
)
async def test_a_connect_asking_for_what_the_emulator_does_not_offer_is_refused_with_why(
    emulator, small_fleet, devices, connect, code
):
    await _provision(emulator, small_fleet, devices[:1])
    connect = replace(connect, client_id=devices[0].client_id)
    reader, writer = await _open(emulator, small_fleet, devices[0])
    writer.write(mqtt.encode(connect, mqtt.MQTT_5))
    async with asyncio.timeout(10):
        answer = mqtt.Decoder(mqtt.MQTT_5).feed(await _until_closed(reader))
    assert answer == [mqtt.ConnAck(code)]
    writer.close()


async def test_a_no_local_subscriber_gets_others_messages_and_not_its_own(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:2])
    topic = f"dt/{devices[0].client_id}/echo"
    reader, writer, decoder = await _connect(emulator, small_fleet, devices[0])
    subscribe = mqtt.Subscribe(1, (mqtt.Subscription(topic, no_local=True),))
    writer.write(mqtt.encode(subscribe, mqtt.MQTT_5))
    await _until_packet(reader, decoder, mqtt.SubAck)
    writer.write(mqtt.encode(mqtt.Publish(topic, b"own"), mqtt.MQTT_5))
    _, other, _ = await _connect(emulator, small_fleet, devices[1])
    other.write(mqtt.encode(mqtt.Publish(topic, b"other's"), mqtt.MQTT_5))
    delivered = await _until_packet(reader, decoder, mqtt.Publish)
    assert delivered.payload == b"other's"  # [MQTT-3.8.3-3]
    writer.close()
    other.close()


async def test_a_subscription_identifier_is_disconnected_as_not_supported(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    reader, writer, decoder, (connack,) = await _answered(
        emulator, small_fleet, devices[0], mqtt.Connect(devices[0].client_id)
    )
    assert connack.properties.subscription_identifier_available == 0  # as AWS IoT's says
    subscribe = mqtt.Subscribe(
        1, (mqtt.Subscription("dt/x"),), Properties(subscription_identifier=(7,))
    )
    writer.write(mqtt.encode(subscribe, mqtt.MQTT_5))
    async with asyncio.timeout(10):
        answer = decoder.feed(await _until_closed(reader))
    assert answer == [mqtt.Disconnect(0xA1)]  # Subscription Identifiers not supported
    writer.close()


async def test_a_suback_over_the_clients_maximum_packet_size_is_not_sent(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    connect = mqtt.Connect(devices[0].client_id, properties=Properties(maximum_packet_size=16))
    reader, writer, decoder, _ = await _answered(emulator, small_fleet, devices[0], connect)
    filters = tuple(mqtt.Subscription(f"t/{i}") for i in range(30))  # a 35-byte SUBACK
    writer.write(mqtt.encode(mqtt.Subscribe(1, filters), mqtt.MQTT_5))
    assert await _still_served(reader, writer, decoder) == [mqtt.PingResp()]  # [MQTT-3.1.2-25]
    writer.close()


async def test_a_connack_over_the_clients_maximum_packet_size_goes_without_its_properties(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    connect = mqtt.Connect(devices[0].client_id, properties=Properties(maximum_packet_size=8))
    _, writer, _, packets = await _answered(emulator, small_fleet, devices[0], connect)
    assert packets == [mqtt.ConnAck()]  # 5 bytes, within the 8 [MQTT-3.1.2-24]
    writer.close()


async def test_a_disconnect_keeping_a_session_its_connect_did_not_is_a_protocol_error(
    emulator, small_fleet, devices
):
    await _provision(emulator, small_fleet, devices[:1])
    reader, writer, decoder = await _connect(emulator, small_fleet, devices[0])
    disconnect = mqtt.Disconnect(properties=Properties(session_expiry_interval=60))
    writer.write(mqtt.encode(disconnect, mqtt.MQTT_5))
    async with asyncio.timeout(10):
        answer = decoder.feed(await _until_closed(reader))
    assert answer == [mqtt.Disconnect(0x82)]  # [MQTT-3.14.2-2]
    writer.close()
