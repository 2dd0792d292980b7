"""What each device's session costs the emulator, seen from the device: the
TLS it is given, and what a reconnect needs of the registry."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from loadgen import mqtt
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.certs.store import FleetStore
from loadgen.emulator.account import Admission
from loadgen.emulator.defaults import REGISTRATION_CONFIG
from loadgen.emulator.parameters import jitp_parameters
from loadgen.emulator.registry import CertRecord, CertStatus, Registry
from loadgen.emulator.server import Emulator
from tests.test_emulator_robustness import _client_context, _emulator, _open, _serve
from tests.tls_buffers import bio_capacities


async def _provisioned(tmp_path, device_ca, fleet):
    """An emulator in this process, and a device of ``fleet`` it has provisioned
    (the connection that triggered JITP, closed): (emulator, server, port, that
    device's TLS context, the device)."""
    emulator, server, port, server_ca = await _serve(tmp_path, device_ca)
    device = next(d for d in fleet.devices() if d.fault is None)
    context = _client_context(fleet, device, server_ca)
    _, writer = await _open(port, context)
    writer.close()
    return emulator, server, port, context, device


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
    async with asyncio.timeout(30):
        _, server, port, context, device = await _provisioned(tmp_path, device_ca, small_fleet)
        reader, writer = await _open(port, context)
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


async def test_an_accepted_session_gives_back_its_handshake_sized_bio_buffers_and_works_on(
    tmp_path, device_ca, small_fleet
):
    # The handshake's flights (the certificates) grow both memory BIOs of the
    # session past a kilobyte; once its CONNACK is out they are swapped for
    # empty ones, and the session answers on.
    emulator, server_ca = _emulator(tmp_path, device_ca)
    sessions = []
    accept = emulator._accepted

    def accepted():  # type: ignore[no-untyped-def]
        sessions.append(accept())
        return sessions[-1]

    emulator._accepted = accepted  # type: ignore[method-assign]
    server = await emulator.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    device = next(d for d in small_fleet.devices() if d.fault is None)
    context = _client_context(small_fleet, device, server_ca)
    async with asyncio.timeout(30):
        _, writer = await _open(port, context)  # the JITP trigger, closed
        writer.close()
        reader, writer = await _open(port, context)
        writer.write(mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5))
        assert (await _connack(reader)).reason_code == 0
        session = sessions[-1]
        assert emulator.idle is not None and session.tls_pointer
        assert max(bio_capacities(session.tls_pointer)) < 256
        writer.write(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))
        assert isinstance(await _connack(reader), mqtt.PingResp)
        writer.close()
    server.close()


def test_the_jitp_parameters_read_from_the_der_are_those_of_the_parsed_certificate(
    tmp_path, device_ca
):
    profile = Profile.model_validate(
        {
            "subject": {
                "country": "DE",
                "state": "Baden-Württemberg",
                "organization": "Zürcher Lampen AG",
                "organizational_unit": "bulbs",
                "common_name": "bulb-{index:03d}",
                "serial_number": "{hex:6}",
                "dn_qualifier": "q{index}",
            }
        }
    )
    mint(MintRequest(tmp_path / "fleet", device_ca.directory, 5, profile, seed=3))
    fleet = FleetStore(tmp_path / "fleet")
    for device in fleet.devices():
        cert = x509.load_pem_x509_certificate((fleet.path / device.cert).read_bytes())
        parameters = jitp_parameters(cert.public_bytes(Encoding.DER))
        assert parameters == jitp_parameters(cert)
        assert len(parameters) == 8  # the seven fields and the id
        assert parameters["AWS::IoT::Certificate::StateName"] == "Baden-Württemberg"


def test_a_subject_in_a_string_type_devices_seldom_use_is_read_all_the_same(device_ca):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "bulb-bmp", _ASN1Type.BMPString),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lampen", _ASN1Type.T61String),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(device_ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    parameters = jitp_parameters(cert.public_bytes(Encoding.DER))
    assert parameters == jitp_parameters(cert)
    assert parameters["AWS::IoT::Certificate::CommonName"] == "bulb-bmp"
    assert parameters["AWS::IoT::Certificate::Organization"] == "Lampen"


async def test_a_disconnect_ends_the_connection_from_the_emulator_side(
    tmp_path, device_ca, small_fleet
):
    async with asyncio.timeout(30):
        emulator, server, port, context, device = await _provisioned(
            tmp_path, device_ca, small_fleet
        )
        for _ in range(2):  # and it is served again after it
            reader, writer = await _open(port, context)
            writer.write(mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5))
            assert isinstance(await _connack(reader), mqtt.ConnAck)
            writer.write(mqtt.encode(mqtt.Disconnect(), mqtt.MQTT_5))
            # The emulator closes it (this end never does): no TLS close_notify
            # first, so the end reads as an EOF or as an SSL error, never as data.
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                assert await reader.read(1024) == b""
            writer.transport.abort()
    assert emulator.stats.connects["accepted"] == 2
    server.close()


async def _everything_until_closed(reader: asyncio.StreamReader) -> list[mqtt.Packet]:
    data = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := await reader.read(65536):
            data += chunk
    return mqtt.Decoder(mqtt.MQTT_5).feed(data)


async def test_a_publish_the_policy_denies_is_counted_as_a_close_and_what_follows_it_unanswered(
    tmp_path, device_ca, small_fleet
):
    async with asyncio.timeout(30):
        emulator, server, port, context, device = await _provisioned(
            tmp_path, device_ca, small_fleet
        )
        reader, writer = await _open(port, context)
        denied = mqtt.Publish("not/its/topic", b"x")  # the default policy: dt/THING/...
        packets = (mqtt.Connect(device.client_id), denied, mqtt.PingReq())
        writer.write(b"".join(mqtt.encode(p, mqtt.MQTT_5) for p in packets))
        answers = await _everything_until_closed(reader)
        writer.transport.abort()
    assert [type(a) for a in answers] == [mqtt.ConnAck]
    # One connection, accepted; the emulator ended it, as it ends a protocol error.
    assert emulator.stats.connects == {
        "provisioned (JITP closes the first connection)": 1,
        "accepted": 1,
    }
    assert emulator.stats.closes == {"publish denied": 1}
    server.close()


async def test_nothing_after_a_refused_connect_in_the_same_read_is_answered_or_counted(
    tmp_path, device_ca, small_fleet
):
    async with asyncio.timeout(30):
        emulator, server, port, context, _ = await _provisioned(tmp_path, device_ca, small_fleet)
        reader, writer = await _open(port, context)
        # Not its thing's name: the default policy does not allow iot:Connect.
        packets = (mqtt.Connect("someone-else"), mqtt.Publish("x", b"x"), mqtt.PingReq())
        writer.write(b"".join(mqtt.encode(p, mqtt.MQTT_5) for p in packets))
        answers = await _everything_until_closed(reader)
        writer.transport.abort()
    assert answers == [mqtt.ConnAck(0x87)]
    assert emulator.stats.connects["not authorized"] == 1
    assert "publish denied" not in emulator.stats.connects
    assert emulator.stats.closes == {}
    server.close()


def test_the_issuer_of_a_handshake_verified_certificate_is_found_by_name_or_by_signature(
    tmp_path,
):
    # The handshake verified the signature: a CA alone with that name is the one;
    # of two CAs of one name, the signature still tells which.
    first = init_ca(tmp_path / "first", subject="CN=twin fleet CA")
    second = init_ca(tmp_path / "second", subject="CN=twin fleet CA")
    mint(MintRequest(tmp_path / "fleet", second.directory, 1, seed=5))
    fleet = FleetStore(tmp_path / "fleet")
    device = next(iter(fleet.devices()))
    cert = x509.load_pem_x509_certificate((fleet.path / device.cert).read_bytes())
    alone = Registry()
    only = alone.register_ca(second.cert, REGISTRATION_CONFIG)
    assert alone.issuer_of(cert, verified=True) is only
    twins = Registry()
    twins.register_ca(first.cert, REGISTRATION_CONFIG)
    signer = twins.register_ca(second.cert, REGISTRATION_CONFIG)
    assert twins.issuer_of(cert, verified=True) is signer
    assert twins.issuer_of(cert) is signer


def test_a_session_is_admitted_from_its_certificate_s_der_as_from_the_certificate(
    device_ca, small_fleet
):
    registry = Registry()
    registry.register_ca(device_ca.cert, REGISTRATION_CONFIG)
    emulator = Emulator(registry, "unused.pem", "unused.key")
    device, other = [d for d in small_fleet.devices() if d.fault is None][:2]
    cert = x509.load_pem_x509_certificate((small_fleet.path / device.cert).read_bytes())
    der = cert.public_bytes(Encoding.DER)
    account = emulator.local
    assert account is not None
    assert "provisioned" in account.admission(der)  # JITP, from the DER
    admitted = account.admission(der)
    record = emulator.admit(cert)
    assert isinstance(admitted, Admission) and isinstance(record, CertRecord)
    assert admitted.cert_id == record.id
    registry.set_certificate_status(record, CertStatus.REVOKED)
    assert account.admission(der) == emulator.admit(cert) == "certificate REVOKED"
    other_cert = x509.load_pem_x509_certificate((small_fleet.path / other.cert).read_bytes())
    assert "provisioned" in emulator.admit(other_cert)
    assert emulator.stats.provision["Success"] == 2


async def test_a_connect_with_a_malformed_packet_in_the_same_read_is_answered_then_disconnected(
    tmp_path, device_ca, small_fleet
):
    async with asyncio.timeout(30):
        emulator, server, port, context, device = await _provisioned(
            tmp_path, device_ca, small_fleet
        )
        reader, writer = await _open(port, context)
        connect = mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5)
        writer.write(connect + b"\xff\x00")  # a reserved packet type
        answers = await _everything_until_closed(reader)
        writer.transport.abort()
    # As if the CONNECT had come alone, then the malformed packet.
    assert answers == [mqtt.ConnAck(properties=emulator.connack_properties), mqtt.Disconnect(0x81)]
    assert emulator.stats.connects["accepted"] == 1
    assert emulator.stats.closes == {"protocol error": 1}
    server.close()


async def test_a_qos_1_publish_before_a_malformed_packet_is_acknowledged_and_routed(
    tmp_path, device_ca, small_fleet
):
    async with asyncio.timeout(30):
        _, server, port, context, device = await _provisioned(tmp_path, device_ca, small_fleet)
        reader, writer = await _open(port, context)
        subscribe = mqtt.Subscribe(1, (mqtt.Subscription(f"dt/{device.client_id}/#"),))
        writer.write(
            mqtt.encode(mqtt.Connect(device.client_id), mqtt.MQTT_5)
            + mqtt.encode(subscribe, mqtt.MQTT_5)
        )
        decoder = mqtt.Decoder(mqtt.MQTT_5)
        answers: list[mqtt.Packet] = []
        while len(answers) < 2:
            data = await reader.read(1024)
            assert data, f"closed after {answers}"
            answers += decoder.feed(data)
        publish = mqtt.Publish(f"dt/{device.client_id}/x", b"before", qos=1, packet_id=7)
        writer.write(mqtt.encode(publish, mqtt.MQTT_5) + b"\xff\x00")
        answers = await _everything_until_closed(reader)
        writer.transport.abort()
    # Its own subscription takes it back (no No Local), at QoS 0.
    assert answers == [
        mqtt.PubAck(7),
        mqtt.Publish(f"dt/{device.client_id}/x", b"before"),
        mqtt.Disconnect(0x81),
    ]
    server.close()
