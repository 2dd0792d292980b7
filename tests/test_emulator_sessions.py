"""What each device's session costs the emulator, seen from the device: the
TLS it is given, and what a reconnect needs of the registry."""

from __future__ import annotations

import asyncio

from loadgen import mqtt
from tests.test_emulator_robustness import _client_context, _open, _serve


async def _connack(reader: asyncio.StreamReader) -> mqtt.Packet:
    decoder, packets = mqtt.Decoder(mqtt.MQTT_5), []
    while not packets:
        data = await reader.read(1024)
        assert data, "closed before CONNACK"
        packets += decoder.feed(data)
    return packets[0]


async def test_a_device_is_sent_no_session_ticket_it_would_never_resume(
    tmp_path, device_ca, small_fleet
):
    _, server, port, server_ca = await _serve(tmp_path, device_ca)
    device = next(d for d in small_fleet.devices() if d.fault is None)
    async with asyncio.timeout(30):
        _, writer = await _open(port, _client_context(small_fleet, device, server_ca))
        writer.close()  # JITP's connection, closed by the emulator
        reader, writer = await _open(port, _client_context(small_fleet, device, server_ca))
        writer.write(mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5))
        connack = await _connack(reader)
        # TLS 1.3 tickets follow the server's Finished, before anything else it
        # sends: by the CONNACK, a ticket sent would have been read.
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(connack, mqtt.ConnAck) and connack.reason_code == 0
        assert ssl_object.version() == "TLSv1.3"
        assert not ssl_object.session.has_ticket
        writer.close()
    server.close()
