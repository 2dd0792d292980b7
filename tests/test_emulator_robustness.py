"""The emulator's server side under clients that misbehave: slow senders, sudden
disconnects mid-packet, garbage; it keeps serving and keeps nothing behind."""

from __future__ import annotations

import asyncio
import ssl

from loadgen import mqtt
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.quota import Quotas
from loadgen.emulator.registry import Registry
from loadgen.emulator.serve import server_identity
from loadgen.emulator.server import Emulator


def _emulator(tmp_path, device_ca):
    """An emulator in this process trusting ``device_ca``, quotas off, not yet
    serving; and the CA its server certificate is signed by."""
    cert, key, server_ca = server_identity(tmp_path)
    registry = Registry()
    registry.register_ca(device_ca.cert, REGISTRATION_CONFIG)
    return Emulator(registry, str(cert), str(key), Quotas(None, None, None)), server_ca


async def _serve(tmp_path, device_ca):
    emulator, server_ca = _emulator(tmp_path, device_ca)
    server = await emulator.serve("127.0.0.1", 0)
    return emulator, server, server.sockets[0].getsockname()[1], server_ca


def _client_context(fleet, device, server_ca):
    context = ssl.create_default_context(cafile=str(server_ca))
    context.load_cert_chain(fleet.path / device.cert, fleet.path / device.key)
    return context


async def _open(port, context):
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )


async def test_slow_senders_abrupt_disconnects_and_garbage_leave_it_serving(
    tmp_path, device_ca, small_fleet
):
    emulator, server, port, server_ca = await _serve(tmp_path, device_ca)
    devices = [d for d in small_fleet.devices() if d.fault is None][:6]
    connect = mqtt.encode(mqtt.Connect(devices[0].client_id), mqtt.MQTT_5)
    async with asyncio.timeout(60):
        for device in devices:  # provision them all: the first connect is JITP's
            _, writer = await _open(port, _client_context(small_fleet, device, server_ca))
            writer.close()
        # Slow: the CONNECT a byte at a time.
        reader, writer = await _open(port, _client_context(small_fleet, devices[0], server_ca))
        for byte in connect:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.002)
        assert (await reader.readexactly(2))[0] == 0x20  # CONNACK
        writer.close()
        # Abrupt: half a CONNECT, then gone; and garbage.
        for i in range(200):
            device = devices[1 + i % 5]
            _, writer = await _open(port, _client_context(small_fleet, device, server_ca))
            writer.write(connect[: 1 + i % (len(connect) - 1)] if i % 2 else b"\xff" * 64)
            await writer.drain()
            writer.transport.abort()
        await asyncio.sleep(0.2)
        # A subscriber that vanishes without a DISCONNECT.
        reader, writer = await _open(port, _client_context(small_fleet, devices[0], server_ca))
        subscribe = mqtt.Subscribe(1, (mqtt.Subscription(f"cmd/{devices[0].client_id}/#"),))
        writer.write(connect + mqtt.encode(subscribe, mqtt.MQTT_5))
        decoder, answers = mqtt.Decoder(mqtt.MQTT_5), []
        while len(answers) < 2:
            data = await reader.read(1024)
            assert data, f"closed after {answers}: {emulator.stats}"
            answers += decoder.feed(data)
        assert [type(a) for a in answers] == [mqtt.ConnAck, mqtt.SubAck]
        assert len(emulator.subscribers) == 1
        writer.transport.abort()
        await asyncio.sleep(0.2)
        # Still serving, and nothing kept for the dead connections.
        reader, writer = await _open(port, _client_context(small_fleet, devices[0], server_ca))
        writer.write(connect)
        assert (await reader.readexactly(2))[0] == 0x20
        writer.close()
    assert emulator.subscribers == set()
    server.close()
    await server.wait_closed()
