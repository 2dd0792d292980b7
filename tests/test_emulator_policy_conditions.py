"""Policy conditions through the emulator: devices of a real fleet, over TLS,
provisioned by JITP with a policy whose statements hold only under conditions."""

from __future__ import annotations

import asyncio
import json

from loadgen import mqtt
from loadgen.emulator.defaults import REGISTRATION_CONFIG, TEMPLATE
from loadgen.emulator.quota import Quotas
from loadgen.emulator.registry import Registry
from loadgen.emulator.serve import server_identity
from loadgen.emulator.server import Emulator
from tests.test_emulator_robustness import _client_context, _open
from tests.test_emulator_sessions import _connack

# AWS's recommended connect policy for registered devices, as a condition: the
# certificate's thing is attached and the client id is its name.
_CONNECT_AS_THE_THING = {
    "Effect": "Allow",
    "Action": "iot:Connect",
    "Resource": "*",
    "Condition": {
        "Bool": {"iot:Connection.Thing.IsAttached": "true"},
        "StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"},
    },
}


async def _serving(tmp_path, device_ca, statements, attributes=None):
    """An emulator in this process provisioning with a policy of ``statements``
    (and things with ``attributes``): (emulator, server, port, its server CA)."""
    template = json.loads(json.dumps(TEMPLATE))
    document = {"Version": "2012-10-17", "Statement": statements}
    template["Resources"]["policy"]["Properties"]["PolicyDocument"] = json.dumps(document)
    if attributes is not None:
        template["Resources"]["thing"]["Properties"]["AttributePayload"] = attributes
    config = {**REGISTRATION_CONFIG, "templateBody": json.dumps(template)}
    cert, key, server_ca = server_identity(tmp_path)
    registry = Registry()
    registry.register_ca(device_ca.cert, config)
    emulator = Emulator(registry, str(cert), str(key), Quotas(None, None, None))
    server = await emulator.serve("127.0.0.1", 0)
    return emulator, server, server.sockets[0].getsockname()[1], server_ca


async def _connect_as(port, context, client_id) -> mqtt.Packet:
    reader, writer = await _open(port, context)
    writer.write(mqtt.encode(mqtt.Connect(client_id), mqtt.MQTT_5))
    try:
        return await _connack(reader)
    finally:
        writer.transport.abort()


async def _provisioned_device(port, fleet, server_ca):
    """A device of ``fleet`` the emulator has provisioned (JITP closes the
    first connection), and its TLS context."""
    device = next(d for d in fleet.devices() if d.fault is None)
    context = _client_context(fleet, device, server_ca)
    _, writer = await _open(port, context)
    writer.close()
    return device, context


async def test_a_conditioned_connect_admits_the_thing_s_client_id_and_refuses_another(
    tmp_path, device_ca, small_fleet
):
    async with asyncio.timeout(30):
        emulator, server, port, server_ca = await _serving(
            tmp_path, device_ca, [_CONNECT_AS_THE_THING]
        )
        device, context = await _provisioned_device(port, small_fleet, server_ca)
        as_thing = await _connect_as(port, context, device.client_id)
        as_other = await _connect_as(port, context, f"{device.client_id}-other")
    server.close()
    assert isinstance(as_thing, mqtt.ConnAck) and as_thing.reason_code == 0
    assert isinstance(as_other, mqtt.ConnAck) and as_other.reason_code == 0x87  # not authorized
    assert emulator.stats.connects["not authorized"] == 1


async def test_a_deny_conditioned_on_a_thing_attribute_refuses_only_the_things_that_have_it(
    tmp_path, device_ca, small_fleet
):
    retired = {
        "Effect": "Deny",
        "Action": "iot:Connect",
        "Resource": "*",
        "Condition": {"StringEquals": {"iot:Connection.Thing.Attributes[state]": "retired"}},
    }
    codes = {}
    async with asyncio.timeout(30):
        for state in ("active", "retired"):
            _, server, port, server_ca = await _serving(
                tmp_path, device_ca, [_CONNECT_AS_THE_THING, retired], {"state": state}
            )
            device, context = await _provisioned_device(port, small_fleet, server_ca)
            connack = await _connect_as(port, context, device.client_id)
            server.close()
            assert isinstance(connack, mqtt.ConnAck)
            codes[state] = connack.reason_code
    assert codes == {"active": 0, "retired": 0x87}
