"""The timed TLS transport: phases in order, the chain presented, SNI, ALPN, the
source address, and each way a connection can fail."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import ssl
import struct
import threading
import time

import pytest
import uvloop
from cryptography.hazmat.primitives import serialization

from loadgen import mqtt, openssl
from loadgen.certs.ca import server_cert
from loadgen.files import write
from loadgen.transport.client import Target, connect
from loadgen.transport.errors import (
    Closed,
    DeviceFilesError,
    PeerProtocolError,
    Refused,
    TlsRejected,
    TransportError,
)
from loadgen.transport.timing import AttemptTimes
from loadgen.transport.tls import ALPN_AWS_MQTT, ClientTls, DeviceTls, device_context
from tests.conftest import device_tls, python_in_netns
from tests.echo_broker import EchoBroker
from tests.tls_buffers import bio_capacities


def _device(fleet, fault=None):
    device = next(d for d in fleet.devices() if d.fault == fault)
    return device, device_context(
        fleet.path / device.cert, fleet.path / device.key, ca_file=None, verify_server=False
    )


async def test_phases_are_timed_in_order_over_mutual_tls(small_fleet, mosquitto):
    device, tls = device_tls(small_fleet, mosquitto)
    times = AttemptTimes(time.monotonic())
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    async with asyncio.timeout(10):
        client = await connect(target, tls.session(), mqtt.Connect(device.client_id), times)
        await client.publish(f"dt/{device.client_id}", b"x" * 64, qos=1)
        client.disconnect()
    assert times.started <= times.tcp_connected <= times.tls_done
    assert times.tls_done <= times.connect_sent <= times.connack <= times.pubacks[0]
    assert set(times.durations()) == {"tcp_connect", "tls_handshake", "connack"}


async def test_a_connection_works_on_once_its_idle_tls_buffers_and_certificate_are_freed(
    small_fleet, mosquitto
):
    # Each read that empties the connection frees its record buffers, and the
    # handshake's end drops the device's certificate and key (transport/idle.py).
    # mosquitto's session tickets come before the CONNACK: after a ping's answer
    # they are surely read, and what follows must miss nothing that was freed.
    device, tls = device_tls(small_fleet, mosquitto)
    assert tls.shared.idle is not None  # OpenSSL reached, as on CPython here
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    times = AttemptTimes(time.monotonic())
    async with asyncio.timeout(20):
        client = await connect(target, tls.session(), mqtt.Connect(device.client_id), times)
        await client.ping()
        await client.publish(f"dt/{device.client_id}", b"x" * 40_000, qos=1)
        await client.ping()
        await client.publish(f"dt/{device.client_id}", b"after", qos=1)
        client.disconnect()
        # The device's next attempt presents its certificate again.
        again = await connect(target, tls.session(), mqtt.Connect(device.client_id), times)
        again.disconnect()
    assert len(times.pubacks) == 2


async def test_what_a_connection_frees_when_idle_is_its_own_tls_state(small_fleet, mosquitto):
    # The SSL a session's pointer names is read once, when the session is made:
    # its certificate is there until the handshake is done, then dropped.
    lib = openssl.load()
    assert lib is not None
    certificate_of = openssl.bind(lib.SSL_get_certificate, ctypes.c_void_p, [ctypes.c_void_p])
    device, tls = device_tls(small_fleet, mosquitto)
    session, other = tls.shared.sessions(tls.cert_chain, tls.key, "localhost", 2)
    assert session.pointer and session.pointer != other.pointer
    assert certificate_of(session.pointer)
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    async with asyncio.timeout(20):
        client = await connect(
            target, session, mqtt.Connect(device.client_id), AttemptTimes(time.monotonic())
        )
        await client.ping()
        client.disconnect()
    assert not certificate_of(session.pointer)
    assert certificate_of(other.pointer)  # the other attempt's untouched


async def test_a_held_connection_gives_back_its_handshake_sized_bio_buffers_and_works_on(
    small_fleet, mosquitto
):
    # The handshake's flights (the certificates) grow both memory BIOs past a
    # kilobyte; a hold swaps in empty buffers, which its PINGREQs grow to a few
    # dozen bytes, and the connection answers and publishes as before.
    device, tls = device_tls(small_fleet, mosquitto)
    session = tls.session()
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    times = AttemptTimes(time.monotonic())
    async with asyncio.timeout(20):
        client = await connect(target, session, mqtt.Connect(device.client_id, keepalive=5), times)
        assert min(bio_capacities(session.pointer)) > 1000
        await client.hold(1.5, keepalive=0.5)
        assert max(bio_capacities(session.pointer)) < 256
        await client.publish(f"dt/{device.client_id}", b"after the hold", qos=1)
        client.disconnect()
    assert client._p.pingresps >= 1
    assert len(times.pubacks) == 1


async def test_a_device_expecting_jitp_has_its_retry_session_made_with_the_first(
    tmp_path, small_fleet, mosquitto
):
    # One load of its chain and key for both attempts: with its files gone after
    # preparing, both still connect presenting its certificate; a third needs them.
    device = next(d for d in small_fleet.devices() if d.fault is None)
    cert, key = tmp_path / "device.pem", tmp_path / "device.key"
    cert.write_bytes((small_fleet.path / device.cert).read_bytes())
    write(key, (small_fleet.path / device.key).read_bytes(), private=True)
    shared = ClientTls(ca_file=mosquitto.server_ca.directory / "ca.pem")
    tls = DeviceTls(shared, cert, key, "localhost", retry_ahead=True)
    cert.unlink()
    key.unlink()
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    async with asyncio.timeout(20):
        for _attempt in range(2):
            packet = mqtt.Connect(device.client_id)
            client = await connect(target, tls.session(), packet, AttemptTimes(0.0))
            client.disconnect()
    with pytest.raises(DeviceFilesError, match=r"^its key file is missing$"):
        tls.session()


async def test_a_publish_larger_than_the_socket_takes_at_once_arrives_whole(small_fleet, mosquitto):
    # 8 MiB: more than a loopback socket's send buffer, so the rest waits for the
    # socket to turn writable. mosquitto's PUBACK says the packet arrived intact:
    # a byte lost or out of order would break the TLS record or the MQTT frame.
    device, tls = device_tls(small_fleet, mosquitto)
    times = AttemptTimes(time.monotonic())
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    async with asyncio.timeout(30):
        client = await connect(target, tls.session(), mqtt.Connect(device.client_id), times)
        await client.publish(f"dt/{device.client_id}", b"x" * (8 << 20), qos=1)
        await client.publish(f"dt/{device.client_id}", b"after", qos=1)
        client.disconnect()
    assert len(times.pubacks) == 2


async def test_a_certificate_from_an_unknown_ca_is_rejected_by_tls(small_fleet, mosquitto):
    device, tls = device_tls(small_fleet, mosquitto, fault="unknown_ca")
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    with pytest.raises(TlsRejected):
        async with asyncio.timeout(10):
            await connect(target, tls.session(), mqtt.Connect(device.client_id), AttemptTimes(0.0))


async def test_a_wrong_server_name_fails_the_hostname_check(small_fleet, mosquitto):
    device, tls = device_tls(small_fleet, mosquitto, server_name="not-the-broker.example")
    target = Target("127.0.0.1", mosquitto.tls_port)
    with pytest.raises(TlsRejected, match="CERTIFICATE_VERIFY_FAILED"):
        async with asyncio.timeout(10):
            await connect(target, tls.session(), mqtt.Connect(device.client_id), AttemptTimes(0.0))


def _client_certificates(stream: bytes) -> int:
    """How many certificates the client's TLS 1.2 Certificate message carries."""
    records = bytearray()
    pos = 0
    while pos + 5 <= len(stream):
        kind, length = stream[pos], int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if kind == 0x16:  # handshake
            records += stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
    pos = 0
    while pos + 4 <= len(records):
        kind, length = records[pos], int.from_bytes(records[pos + 1 : pos + 4], "big")
        if kind == 11:  # Certificate
            body, count, at = records[pos + 4 : pos + 4 + length], 0, 3
            while at < len(body):
                at += 3 + int.from_bytes(body[at : at + 3], "big")
                count += 1
            return count
        pos += 4 + length
    return 0


class _Recorder:
    """A TLS 1.2 server behind a proxy that records what the client sent (in
    TLS 1.2 the client's certificates cross in the clear, so they can be
    counted), and the SNI and ALPN the server saw."""

    def __init__(self, target, seen, from_client, servers):
        self.target, self.seen, self.from_client, self.servers = target, seen, from_client, servers

    def close(self):
        for server in self.servers:
            server.close()


async def _recorder(tmp_path, device_ca, server_ca) -> _Recorder:
    # Signed by a CA of its own: a client trusting the device CA could otherwise
    # complete its chain from its trust store, hiding what it was given to send.
    cert, key = server_cert(server_ca, ["localhost"])
    write(tmp_path / "s.pem", cert)
    write(tmp_path / "s.key", key, private=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    server_ctx.set_alpn_protocols([ALPN_AWS_MQTT])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(device_ca.directory / "ca.pem")
    # TLS 1.2 sends the client's certificates in the clear: a proxy can count them.
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    seen = {}

    def on_sni(_sock, name, _ctx):
        seen["sni"] = name

    server_ctx.sni_callback = on_sni
    broker = EchoBroker()

    class Recording(asyncio.Protocol):
        def __init__(self):
            self.inner = broker.protocol()

        def connection_made(self, transport):
            seen["alpn"] = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            self.inner.connection_made(transport)

        def data_received(self, data):
            self.inner.data_received(data)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Recording, "127.0.0.1", 0, ssl=server_ctx)
    upstream_port = server.sockets[0].getsockname()[1]
    from_client = bytearray()

    async def pipe(reader, writer, record=None):
        while data := await reader.read(65536):
            if record is not None:
                record += data
            writer.write(data)
        writer.close()

    async def proxy(client_reader, client_writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(
            pipe(client_reader, up_writer, from_client), pipe(up_reader, client_writer)
        )

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    target = Target("127.0.0.1", proxy_server.sockets[0].getsockname()[1], server_name="localhost")
    return _Recorder(target, seen, from_client, [server, proxy_server])


async def test_sni_alpn_and_the_certificate_chain_reach_the_server(
    tmp_path, small_fleet, device_ca, session_ca
):
    recorder = await _recorder(tmp_path, device_ca, session_ca)
    device = next(d for d in small_fleet.devices() if d.fault is None)
    context = device_context(
        small_fleet.path / device.cert,
        small_fleet.path / device.key,
        ca_file=session_ca.directory / "ca.pem",
        alpn=[ALPN_AWS_MQTT],
    )
    async with asyncio.timeout(10):
        packet = mqtt.Connect(device.client_id)
        client = await connect(recorder.target, context, packet, AttemptTimes(0.0))
        client.disconnect()
    recorder.close()
    assert recorder.seen == {"sni": "localhost", "alpn": ALPN_AWS_MQTT}
    assert _client_certificates(bytes(recorder.from_client)) == 2  # device certificate, its CA


async def test_devices_sharing_one_parsed_ca_still_present_the_whole_chain(
    tmp_path, small_fleet, device_ca, session_ca
):
    recorder = await _recorder(tmp_path, device_ca, session_ca)
    shared = ClientTls(ca_file=session_ca.directory / "ca.pem", alpn=[ALPN_AWS_MQTT])
    assert shared.chains.active  # on CPython with OpenSSL reachable, as here
    first, second = [d for d in small_fleet.devices() if d.fault is None][:2]
    shared.session(small_fleet.path / first.cert, small_fleet.path / first.key, "localhost")
    # The second device's session takes the CA parsed for the first.
    session = shared.session(
        small_fleet.path / second.cert, small_fleet.path / second.key, "localhost"
    )
    assert shared.chains.fast_loads == 1  # the second device took the short way
    async with asyncio.timeout(10):
        packet = mqtt.Connect(second.client_id)
        client = await connect(recorder.target, session, packet, AttemptTimes(0.0))
        client.disconnect()
    recorder.close()
    assert _client_certificates(bytes(recorder.from_client)) == 2  # device certificate, its CA


def _mixed_fleet(tmp_path, device_ca):
    """Twelve devices of three key types (P-256, P-384, RSA-2048), mixed."""
    from loadgen.certs.mint import MintRequest, mint
    from loadgen.certs.profile import Profile
    from loadgen.certs.store import FleetStore

    profile = Profile.model_validate(
        {
            "subject": {"common_name": "mix-{index:03d}"},
            "key_type": {"ec-p256": 1, "ec-p384": 1, "rsa-2048": 1},
        }
    )
    mint(MintRequest(tmp_path / "mix", device_ca.directory, 12, profile, seed=3))
    fleet = FleetStore(tmp_path / "mix")
    return fleet, list(fleet.devices())


async def _identities(tmp_path, device_ca, server_ca):
    """A TLS server (any version) that asks for a client certificate signed by
    ``device_ca`` and records the common name each connection presented, then
    answers MQTT. Returns its target, the names, and the server to close."""
    cert, key = server_cert(server_ca, ["localhost"])
    write(tmp_path / "id.pem", cert)
    write(tmp_path / "id.key", key, private=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "id.pem", tmp_path / "id.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(device_ca.directory / "ca.pem")
    names: list[str] = []
    broker = EchoBroker()

    class Recording(asyncio.Protocol):
        def __init__(self):
            self.inner = broker.protocol()

        def connection_made(self, transport):
            subject = transport.get_extra_info("peercert")["subject"]
            names.append(dict(rdn[0] for rdn in subject)["commonName"])
            self.inner.connection_made(transport)

        def data_received(self, data):
            self.inner.data_received(data)

    server = await asyncio.get_running_loop().create_server(
        Recording, "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    return Target("127.0.0.1", port, server_name="localhost"), names, server


async def test_devices_of_every_key_type_present_their_own_certificate_from_one_worker(
    tmp_path, device_ca, session_ca
):
    """OpenSSL keeps a certificate per key algorithm in a context: an RSA device
    loaded after an EC one must not present the EC device's."""
    fleet, devices = _mixed_fleet(tmp_path, device_ca)
    assert {d.key_type for d in devices} == {"ec-p256", "ec-p384", "rsa-2048"}
    shared = ClientTls(ca_file=session_ca.directory / "ca.pem")
    sessions = [
        shared.session(fleet.path / d.cert, fleet.path / d.key, "localhost") for d in devices
    ]
    target, presented, server = await _identities(tmp_path, device_ca, session_ca)
    try:
        async with asyncio.timeout(20):
            for device, session in zip(devices, sessions, strict=True):
                client = await connect(
                    target, session, mqtt.Connect(device.client_id), AttemptTimes(0.0)
                )
                client.disconnect()
    finally:
        server.close()
    assert presented == [f"mix-{d.index:03d}" for d in devices]


async def test_keys_with_the_same_text_before_their_pem_still_go_to_their_own_context(
    tmp_path, device_ca, session_ca
):
    """OpenSSL reads past text before ``-----BEGIN``: an RSA key after an EC key
    with the same first line must not be taken for one of the EC key's kind."""
    fleet, devices = _mixed_fleet(tmp_path, device_ca)
    ec = next(d for d in devices if d.key_type == "ec-p256")
    rsa = next(d for d in devices if d.key_type == "rsa-2048")
    comment = b"# device key exported from our PKI, keep secret, do not commit\n"
    for device in (ec, rsa):
        key = fleet.path / device.key
        write(key, comment + key.read_bytes(), private=True)
    shared = ClientTls(ca_file=session_ca.directory / "ca.pem")
    sessions = [
        shared.session(fleet.path / d.cert, fleet.path / d.key, "localhost") for d in (ec, rsa)
    ]
    target, presented, server = await _identities(tmp_path, device_ca, session_ca)
    try:
        async with asyncio.timeout(20):
            for device, session in zip((ec, rsa), sessions, strict=True):
                client = await connect(
                    target, session, mqtt.Connect(device.client_id), AttemptTimes(0.0)
                )
                client.disconnect()
    finally:
        server.close()
    assert presented == [f"mix-{d.index:03d}" for d in (ec, rsa)]


def test_devices_of_one_key_algorithm_share_a_context_and_its_parsed_ca(tmp_path, device_ca):
    """P-256 and P-384 keys fill the same slot: EC devices after the fleet's first
    (which shares the CA) take the short way; RSA ones the long way."""
    fleet, devices = _mixed_fleet(tmp_path, device_ca)
    shared = ClientTls(ca_file=None, verify_server=False)
    for d in devices:
        shared.session(fleet.path / d.cert, fleet.path / d.key, "localhost")
    ec = sum(d.key_type != "rsa-2048" for d in devices)
    assert 0 < ec < len(devices)
    assert shared.fast_loads == ec - 1


def _healthy(fleet, n):
    return [d for d in fleet.devices() if d.fault is None and d.key_type == "ec-p256"][:n]


async def test_a_key_in_another_encoding_is_loaded_the_long_way(tmp_path, small_fleet, mosquitto):
    first, second = _healthy(small_fleet, 2)
    key = serialization.load_pem_private_key((small_fleet.path / second.key).read_bytes(), None)
    sec1 = tmp_path / "sec1.key"
    write(
        sec1,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    shared = ClientTls(ca_file=mosquitto.server_ca.directory / "ca.pem")
    shared.session(small_fleet.path / first.cert, small_fleet.path / first.key, "localhost")
    session = shared.session(small_fleet.path / second.cert, sec1, "localhost")
    assert shared.chains.fast_loads == 0
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    async with asyncio.timeout(10):
        client = await connect(target, session, mqtt.Connect(second.client_id), AttemptTimes(0.0))
        client.disconnect()


async def test_a_key_that_is_not_the_certificates_fails_as_load_cert_chain_fails(
    small_fleet, mosquitto
):
    first, second, third = _healthy(small_fleet, 3)
    shared = ClientTls(ca_file=mosquitto.server_ca.directory / "ca.pem")
    shared.session(small_fleet.path / first.cert, small_fleet.path / first.key, "localhost")
    with pytest.raises(DeviceFilesError, match=r"would not load: .*KEY_VALUES_MISMATCH") as failed:
        shared.session(small_fleet.path / second.cert, small_fleet.path / first.key, "localhost")
    assert isinstance(failed.value.__cause__, ssl.SSLError)
    # Nothing of that failure lingers for the next device.
    session = shared.session(
        small_fleet.path / third.cert, small_fleet.path / third.key, "localhost"
    )
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    async with asyncio.timeout(10):
        client = await connect(target, session, mqtt.Connect(third.client_id), AttemptTimes(0.0))
        client.disconnect()


async def test_the_connection_comes_from_the_chosen_source_address():
    broker = EchoBroker()
    peers = []

    class Recording(asyncio.Protocol):
        def __init__(self):
            self.inner = broker.protocol()

        def connection_made(self, transport):
            peers.append(transport.get_extra_info("peername")[0])
            self.inner.connection_made(transport)

        def data_received(self, data):
            self.inner.data_received(data)

    server = await asyncio.get_running_loop().create_server(Recording, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target("127.0.0.1", port, source_address="127.0.0.7")
    async with asyncio.timeout(10):
        client = await connect(target, None, mqtt.Connect("src"), AttemptTimes(0.0))
        client.disconnect()
    server.close()
    assert peers == ["127.0.0.7"]


_SOURCE_PORTS = """
import asyncio, socket
from loadgen import mqtt
from loadgen.transport.client import Target, connect
from loadgen.transport.timing import AttemptTimes
from tests.echo_broker import EchoBroker
from tests.tls_buffers import bio_capacities

async def main():
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(EchoBroker().protocol, "127.0.0.1", p)
               for p in (12345, 12346)]
    async def device(port, name):
        target = Target("127.0.0.1", port, source_address="127.0.0.5")
        attempt = connect(target, None, mqtt.Connect(name), AttemptTimes(0.0))
        return await asyncio.wait_for(attempt, 10)
    # Every ephemeral port of the source address, each held to the first server.
    held = [await device(12345, f"d{i}") for i in range(4)]
    try:
        socket.socket().bind(("127.0.0.5", 0))
        print("bound")
    except OSError:
        print("no port left to bind")
    again = await device(12346, "other")  # the same ports serve another destination
    print("connected", len(held) + 1)
    for client in (*held, again):
        client.disconnect()
    for server in servers:
        server.close()

asyncio.run(main())
"""


def test_a_source_address_takes_its_port_at_connect_for_that_destination():
    # In a network namespace of the test's own, whose loopback has four ephemeral
    # ports: four devices hold all of them from 127.0.0.5, so bind() has none to
    # give; a fifth device to another destination still connects (Linux picks a
    # bound socket's port at connect(): IP_BIND_ADDRESS_NO_PORT).
    proc = python_in_netns("40000 40003", _SOURCE_PORTS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["no port left to bind", "connected 5"]


async def test_a_closed_port_is_refused():
    from tests.brokers import refusing_port

    with refusing_port() as port, pytest.raises(Refused):
        await connect(Target("127.0.0.1", port), None, mqtt.Connect("x"), AttemptTimes(0.0))


async def _one_shot_server(handler):
    async def on_client(reader, writer):
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(on_client, "127.0.0.1", 0)


async def test_garbage_instead_of_a_connack_is_a_protocol_error():
    async def garbage(reader, writer):
        await reader.read(100)
        writer.write(b"\x00\xff\xff\xff\xff\xff")
        await writer.drain()
        await asyncio.sleep(1)

    server = await _one_shot_server(garbage)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    with pytest.raises(PeerProtocolError):
        async with asyncio.timeout(10):
            await connect(target, None, mqtt.Connect("x"), AttemptTimes(0.0))
    server.close()


async def test_a_server_that_closes_mid_handshake_is_reported(small_fleet, device_ca):
    async def hang_up(reader, writer):
        await reader.read(10)  # the start of the ClientHello

    server = await _one_shot_server(hang_up)
    _, context = _device(small_fleet)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1], server_name="localhost")
    with pytest.raises((TlsRejected, Closed)) as info:  # reset or alert, by timing
        async with asyncio.timeout(10):
            await connect(target, context, mqtt.Connect("x"), AttemptTimes(0.0))
    assert info.value.phase == "tls"
    server.close()


async def _dropping_server(tmp_path, session_ca, handler):
    """A TLS 1.3 server whose ``handler`` ends each connection with TCP alone
    (``transport.abort()``): no alert, no close_notify."""
    cert, key = server_cert(session_ca, ["localhost"])
    write(tmp_path / "s.pem", cert)
    write(tmp_path / "s.key", key, private=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    server_ctx.num_tickets = 0
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    return server, Target("127.0.0.1", server.sockets[0].getsockname()[1], server_name="localhost")


async def test_a_server_that_drops_the_connection_after_the_handshake_rejected_the_certificate(
    tmp_path, small_fleet, session_ca
):
    # As a TLS 1.3 server that rejects the client's certificate often ends it,
    # once the client's handshake is done. Python 3.11.0-3.11.2 read that as a
    # clean close unless the context says otherwise, and name it differently.
    async def drop(reader, writer):
        await reader.readexactly(2)  # the CONNECT's first bytes: nothing left unread
        writer.transport.abort()

    server, target = await _dropping_server(tmp_path, session_ca, drop)
    _, context = _device(small_fleet)
    with pytest.raises(TlsRejected, match="right after the handshake") as info:
        async with asyncio.timeout(10):
            await connect(target, context, mqtt.Connect("x"), AttemptTimes(0.0))
    assert info.value.phase == "connack"
    server.close()


async def test_a_connection_dropped_without_close_notify_after_the_connack_is_closed(
    tmp_path, small_fleet, session_ca
):
    async def answer_then_drop(reader, writer):
        header = await reader.readexactly(2)  # a short CONNECT's fixed header
        await reader.readexactly(header[1])  # and the rest of it
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK: accepted, MQTT 5
        await reader.readexactly(2)  # the PINGREQ
        writer.transport.abort()

    server, target = await _dropping_server(tmp_path, session_ca, answer_then_drop)
    _, context = _device(small_fleet)
    async with asyncio.timeout(10):
        client = await connect(target, context, mqtt.Connect("x"), AttemptTimes(0.0))
        with pytest.raises(Closed):
            await client.ping()
    server.close()


_SERVER_PUBLISH = b"\x30\x05\x00\x01t\x00x"  # QoS 0 to "t", no properties, payload "x"


async def _reset_after_data(act) -> type[BaseException] | None:
    """What ``act(client)`` raises against a server that, once the client acts,
    sends a PUBLISH and resets at once (SO_LINGER 0): the data and the reset
    leave before the client's loop runs again, so they arrive together."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def serve() -> None:
        sock, _ = await loop.sock_accept(listener)
        with sock:
            await loop.sock_recv(sock, 1024)  # the CONNECT
            sock.send(b"\x20\x03\x00\x00\x00")  # CONNACK: accepted, MQTT 5
            await loop.sock_recv(sock, 1024)  # the client's next packet
            sock.send(_SERVER_PUBLISH)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = loop.create_task(serve())
    target = Target("127.0.0.1", listener.getsockname()[1])
    try:
        async with asyncio.timeout(10):
            client = await connect(target, None, mqtt.Connect("x"), AttemptTimes(0.0))
            try:
                await act(client)
            except (Closed, TimeoutError) as exc:
                return type(exc)
            return None
    finally:
        server.cancel()
        listener.close()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_reset_that_comes_with_data_ends_a_hold_at_once(run):
    async def ping_then_hold(client) -> None:
        client._p.write(mqtt.PingReq())  # what the server answers with data and a reset
        await client.hold(3.0, keepalive=0)  # nothing sent: only reading can tell

    began = time.monotonic()
    assert run(_reset_after_data(ping_then_hold)) is Closed
    assert time.monotonic() - began < 2.5


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_reset_that_comes_with_data_fails_a_publish_waiting_for_its_puback(run):
    async def publish(client) -> None:
        async with asyncio.timeout(3):
            await client.publish("dt/x", b"x", qos=1)

    assert run(_reset_after_data(publish)) is Closed


def test_a_server_that_accepts_and_resets_at_once_turns_the_connection_away(small_fleet):
    """A connection limit's way: TCP comes up, the reset follows at once, from
    another process's timing (a thread here). Whether the client saw TCP up
    before the reset or not, it is a connection closed before any TLS, never a
    TCP failure of the client's own."""
    listener = socket.create_server(("127.0.0.1", 0))

    def reset_each() -> None:
        with contextlib.suppress(OSError):  # the listener closed: done
            while True:
                sock, _ = listener.accept()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    threading.Thread(target=reset_each, daemon=True).start()
    _, context = _device(small_fleet)
    target = Target("127.0.0.1", listener.getsockname()[1], server_name="localhost")

    async def each() -> list[tuple[str, str]]:
        seen = []
        for _ in range(30):
            times = AttemptTimes(0.0)
            with pytest.raises(TransportError) as info:
                await connect(target, context, mqtt.Connect("x"), times, timeout=5)
            seen.append((type(info.value).__name__, info.value.phase))
            assert times.tcp_connected is not None
        return seen

    try:
        seen = uvloop.run(each())
    finally:
        listener.close()
    assert set(seen) == {("ClosedBeforeTls", "tls")}


async def test_a_silent_server_leaves_the_timeout_to_the_caller():
    async def silent(reader, writer):
        await asyncio.sleep(5)

    server = await _one_shot_server(silent)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    times = AttemptTimes(0.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await connect(target, None, mqtt.Connect("x"), times)
    assert times.connect_sent is not None and times.connack is None
    server.close()


async def test_a_silent_server_times_out_at_the_connects_own_timeout_and_the_socket_closes():
    closed = asyncio.Event()

    async def silent(reader, writer):
        await reader.read()  # until the client closes its end
        closed.set()

    server = await _one_shot_server(silent)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    times = AttemptTimes(0.0)
    with pytest.raises(TimeoutError):
        await connect(target, None, mqtt.Connect("x"), times, timeout=0.3)
    assert times.connect_sent is not None and times.connack is None
    async with asyncio.timeout(10):
        await closed.wait()
    server.close()


async def test_a_connect_packet_the_codec_refuses_fails_before_any_connection():
    accepted = []

    async def count(reader, writer):
        accepted.append(writer)

    server = await _one_shot_server(count)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    with pytest.raises(ValueError, match="65,535"):
        async with asyncio.timeout(10):
            await connect(target, None, mqtt.Connect("x" * 70_000), AttemptTimes(0.0))
    await asyncio.sleep(0.2)
    assert accepted == []
    server.close()


async def test_a_connection_still_coming_up_waits_until_tcp_is_up():
    # A listener whose accept queue is full drops the SYN: TCP is not up when
    # connect returns, and comes up only with the SYN's retransmission (1 s).
    import socket

    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    listener.setblocking(False)
    filler = socket.create_connection(listener.getsockname())
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        await asyncio.sleep(0.3)
        (await loop.sock_accept(listener))[0].close()  # room for the retransmission
        sock, _ = await loop.sock_accept(listener)
        with sock:
            await loop.sock_recv(sock, 100)
            await loop.sock_sendall(sock, b"\x20\x02\x00\x00")  # CONNACK, 3.1.1
            await asyncio.sleep(0.5)

    server = asyncio.create_task(serve())
    times = AttemptTimes(time.monotonic())
    target = Target("127.0.0.1", listener.getsockname()[1])
    try:
        async with asyncio.timeout(10):
            client = await connect(target, None, mqtt.Connect("x", protocol_version=4), times)
        client.disconnect()
        await server
    finally:
        filler.close()
        listener.close()
    assert times.tcp_connected is not None and times.connack is not None
    assert times.tcp_connected - times.started > 0.3  # waited for the retransmitted SYN
