"""A device's life: the JITP trigger, back-off, retries, and the one outcome each
device ends in, against mosquitto and against brokers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time

import pytest

from loadgen import mqtt
from loadgen.device.aiomqtt_driver import AiomqttDevice
from loadgen.device.lifecycle import (
    Census,
    Device,
    DeviceConfig,
    DeviceSpec,
    HoldStep,
    PublishStep,
    SubscribeStep,
)
from loadgen.device.outcome import Outcome
from loadgen.device.retry import Jitter, RetryPolicy
from loadgen.transport.client import Target
from tests.brokers import refusing_port
from tests.conftest import device_tls
from tests.echo_broker import EchoBroker

FAST_RETRY = RetryPolicy(initial=0.01, max=0.05, multiplier=2, max_attempts=3)


async def _run(target, config, *, tls=None, version=mqtt.MQTT_5, steps=(), client_id="dev"):
    spec = DeviceSpec(0, client_id, target, tls, version, time.monotonic(), steps)
    async with asyncio.timeout(30):
        return await Device(spec, config, time.monotonic, random.Random(0)).run()


async def _run_aiomqtt(target, config, *, tls=None, version=mqtt.MQTT_5, steps=(), client_id="dev"):
    """The same device life through the aiomqtt driver."""
    spec = DeviceSpec(0, client_id, target, tls, version, time.monotonic(), steps)
    async with asyncio.timeout(30):
        return await AiomqttDevice(spec, config, time.monotonic, random.Random(0)).run()


async def _broker(decide=lambda _c, _n: None, **acks):
    broker = EchoBroker(decide=decide, **acks)
    server = await asyncio.get_running_loop().create_server(broker.protocol, "127.0.0.1", 0)
    return broker, server, Target("127.0.0.1", server.sockets[0].getsockname()[1])


async def test_a_device_connects_acts_and_ends_connected(small_fleet, mosquitto):
    device, tls = device_tls(small_fleet, mosquitto)
    steps = (
        SubscribeStep(f"cmd/{device.client_id}", qos=1),
        PublishStep(f"dt/{device.client_id}", qos=1, count=3, payload_bytes=64),
        HoldStep(0.2, keepalive=0.05),
    )
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    result = await _run(target, DeviceConfig(), tls=tls, steps=steps, client_id=device.client_id)
    assert result.outcome is Outcome.CONNECTED, result.reason
    assert result.attempts == 1 and result.publishes == 3 and len(result.publish_acks) == 3
    assert {name for name, _ in result.phases} == {"tcp_connect", "tls_handshake", "connack"}
    assert result.provision is not None and result.provision > 0


async def test_a_census_counts_a_device_from_its_connack_until_it_finishes(small_fleet, mosquitto):
    device, tls = device_tls(small_fleet, mosquitto)
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    steps = (HoldStep(0.5, keepalive=0),)
    spec = DeviceSpec(0, device.client_id, target, tls, mqtt.MQTT_5, time.monotonic(), steps)
    census = Census()
    driver = Device(spec, DeviceConfig(), time.monotonic, random.Random(0), census=census)
    async with asyncio.timeout(30):
        life = asyncio.create_task(driver.run())
        while census.connected == 0:  # holding, once its CONNACK came
            await asyncio.sleep(0.01)
        result = await life
    assert result.outcome is Outcome.CONNECTED and census.connected == 1
    driver.finished()
    assert census.connected == 0


async def test_a_device_that_never_connected_leaves_the_census_alone():
    census = Census()
    with refusing_port() as port:
        spec = DeviceSpec(0, "dev", Target("127.0.0.1", port), None, mqtt.MQTT_5, 0.0, ())
        config = DeviceConfig(retry=FAST_RETRY)
        driver = Device(spec, config, time.monotonic, random.Random(0), census=census)
        async with asyncio.timeout(30):
            assert (await driver.run()).outcome is Outcome.REFUSED
    driver.finished()
    assert census.connected == 0


async def test_an_unknown_ca_device_ends_tls_rejected_after_its_attempts(small_fleet, mosquitto):
    device, tls = device_tls(small_fleet, mosquitto, fault="unknown_ca")
    target = Target("127.0.0.1", mosquitto.tls_port, server_name="localhost")
    result = await _run(target, DeviceConfig(retry=FAST_RETRY), tls=tls, client_id=device.client_id)
    assert result.outcome is Outcome.TLS_REJECTED
    assert result.attempts == 3 and result.reason


async def test_the_first_rejection_is_the_jitp_trigger_and_the_retry_connects():
    broker, server, target = await _broker(lambda _c, seen: "close" if seen == 0 else None)
    config = DeviceConfig(retry=FAST_RETRY, expect_first_connect_rejected=True)
    result = await _run(target, config)
    server.close()
    assert result.outcome is Outcome.CONNECTED
    assert result.provisioning_triggered and result.attempts == 2
    assert result.reason is None
    assert broker.connects == {"dev": 2}


async def test_without_jitp_a_closed_first_connect_is_a_failure_that_is_retried():
    broker, server, target = await _broker(lambda _c, seen: "close" if seen == 0 else None)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY))
    server.close()
    assert result.outcome is Outcome.CONNECTED and result.attempts == 2
    assert not result.provisioning_triggered
    assert broker.connects == {"dev": 2}


async def test_a_device_always_closed_ends_closed_when_its_attempts_run_out():
    broker, server, target = await _broker(lambda _c, _n: "close")
    config = DeviceConfig(retry=FAST_RETRY, expect_first_connect_rejected=True)
    result = await _run(target, config)
    server.close()
    assert result.outcome is Outcome.CLOSED
    assert result.attempts == 3  # max_attempts counts the trigger too
    assert broker.connects == {"dev": 3}


async def test_the_trigger_on_the_last_attempt_allowed_ends_the_device_without_another():
    broker, server, target = await _broker(lambda _c, _n: "close")
    config = DeviceConfig(
        retry=RetryPolicy(initial=0.01, max_attempts=1), expect_first_connect_rejected=True
    )
    result = await _run(target, config)
    server.close()
    assert result.outcome is Outcome.CLOSED and result.provisioning_triggered
    assert result.attempts == 1 and broker.connects == {"dev": 1}


async def test_a_trigger_after_a_throttled_attempt_counts_against_max_attempts():
    broker, server, target = await _broker(lambda _c, seen: 0x97 if seen == 0 else "close")
    config = DeviceConfig(
        retry=RetryPolicy(initial=0.01, max_attempts=2), expect_first_connect_rejected=True
    )
    result = await _run(target, config)
    server.close()
    assert result.outcome is Outcome.CLOSED and result.provisioning_triggered
    assert result.attempts == 2 and broker.connects == {"dev": 2}


@pytest.mark.parametrize(
    ("version", "code", "outcome"),
    [
        (mqtt.MQTT_5, 0x97, Outcome.THROTTLED),
        (mqtt.MQTT_5, 0x9F, Outcome.THROTTLED),
        (mqtt.MQTT_5, 0x89, Outcome.THROTTLED),
        (mqtt.MQTT_3_1_1, 3, Outcome.THROTTLED),
        (mqtt.MQTT_5, 0x86, Outcome.NOT_AUTHORIZED),
        (mqtt.MQTT_5, 0x87, Outcome.NOT_AUTHORIZED),
        (mqtt.MQTT_3_1_1, 4, Outcome.NOT_AUTHORIZED),
        (mqtt.MQTT_3_1_1, 5, Outcome.NOT_AUTHORIZED),
        (mqtt.MQTT_5, 0x85, Outcome.ERROR),
    ],
)
async def test_connack_codes_map_to_outcomes(version, code, outcome):
    _, server, target = await _broker(lambda _c, _n: code)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY), version=version)
    server.close()
    assert result.outcome is outcome
    assert f"0x{code:02x}" in result.reason


async def test_a_throttled_device_that_gets_through_on_retry_is_connected():
    _, server, target = await _broker(lambda _c, seen: 0x97 if seen < 2 else None)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY))
    server.close()
    assert result.outcome is Outcome.CONNECTED and result.attempts == 3


@pytest.mark.parametrize("run", [_run, _run_aiomqtt])
async def test_a_device_counts_each_throttled_answer_even_once_it_got_through(run):
    _, server, target = await _broker(lambda _c, seen: 0x9F if seen < 2 else None)
    result = await run(target, DeviceConfig(retry=FAST_RETRY))
    server.close()
    assert result.outcome is Outcome.CONNECTED and result.throttled == 2


@pytest.mark.parametrize("run", [_run, _run_aiomqtt])
async def test_a_throttled_puback_is_counted_as_a_throttled_answer(run):
    _, server, target = await _broker(puback_code=0x97)
    steps = (PublishStep("dt/dev", qos=1, count=1, payload_bytes=8),)
    result = await run(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is Outcome.THROTTLED and result.throttled == 1


async def test_a_closed_port_ends_refused():
    with refusing_port() as port:
        result = await _run(Target("127.0.0.1", port), DeviceConfig(retry=FAST_RETRY))
    assert result.outcome is Outcome.REFUSED and result.phase == "tcp"


async def test_a_name_that_does_not_resolve_ends_error_with_the_reason():
    target = Target("no-such-host.invalid", 8883)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY))
    assert result.outcome is Outcome.ERROR
    assert result.reason.startswith("DNS")


async def _silent_server():
    """A server that takes connections and never says a word (for 5 s)."""

    async def silent(reader, writer):
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    return server, Target("127.0.0.1", server.sockets[0].getsockname()[1])


async def test_a_silent_server_ends_timeout_in_the_connack_phase():
    server, target = await _silent_server()
    config = DeviceConfig(retry=RetryPolicy(initial=0.01, max_attempts=1), connect_timeout=0.2)
    result = await _run(target, config)
    server.close()
    assert result.outcome is Outcome.TIMEOUT and result.phase == "connack"


async def test_a_device_the_endpoint_never_answers_spends_its_life_waiting_on_the_endpoint():
    # What the capacity search reads to tell slots a stalled endpoint held from
    # slots the generator could not free: both timed-out attempts and the
    # back-off between them count, measured on the device's own clock.
    server, target = await _silent_server()
    config = DeviceConfig(retry=RetryPolicy(initial=0.05, max_attempts=2), connect_timeout=0.2)
    began = time.monotonic()
    result = await _run(target, config)
    life = time.monotonic() - began
    server.close()
    assert result.outcome is Outcome.TIMEOUT and result.attempts == 2
    assert result.endpoint_wait > 0.75 * life  # a share of its life, not a duration


async def _answering(answer: bytes):
    """A server that answers each CONNECT with ``answer``, in one write, then waits."""

    async def handle(reader, writer):
        await reader.read(100)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, Target("127.0.0.1", server.sockets[0].getsockname()[1])


_ACCEPTED = b"\x20\x03\x00\x00\x00"  # CONNACK: accepted, MQTT 5


async def test_an_accepted_connack_stands_when_garbage_follows_it_in_the_same_read():
    server, target = await _answering(_ACCEPTED + b"\xff\x00")
    steps = (PublishStep("dt/x", qos=1, count=1, payload_bytes=8),)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is Outcome.ERROR and result.phase == "acting"
    assert result.attempts == 1 and result.provision is not None
    assert "connack" in {name for name, _ in result.phases}


async def test_a_disconnect_right_after_the_connack_fails_the_device_acting():
    server, target = await _answering(_ACCEPTED + b"\xe0\x02\x97\x00")  # DISCONNECT 0x97
    steps = (PublishStep("dt/x", qos=1, count=1, payload_bytes=8),)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is Outcome.CLOSED and result.phase == "acting"
    assert "quota_exceeded" in result.reason


async def test_garbage_instead_of_a_connack_ends_error_with_the_reason():
    async def garbage(reader, writer):
        await reader.read(100)
        writer.write(b"\x20\x02\x07\x00")  # CONNACK with reserved flags set
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    result = await _run(target, DeviceConfig(retry=RetryPolicy(max_attempts=1)))
    server.close()
    assert result.outcome is Outcome.ERROR
    assert "MQTT" in result.reason and "CONNACK" in result.reason


@pytest.mark.parametrize(
    "connack",
    [b"\x20\x05\x00\x00\x02\x24\x02", b"\x20\x03\x01\x87\x00"],
    ids=["Maximum QoS 2", "session present with a refusal"],
)
async def test_a_connack_mqtt_5_rules_out_ends_error_as_a_protocol_error(connack):
    server, target = await _answering(connack)
    result = await _run(target, DeviceConfig(retry=RetryPolicy(max_attempts=1)))
    server.close()
    assert result.outcome is Outcome.ERROR and result.phase == "connack"
    assert "MQTT" in result.reason and "CONNACK" in result.reason


async def test_latency_counts_from_the_scheduled_start():
    _, server, target = await _broker()
    spec = DeviceSpec(0, "late", target, None, mqtt.MQTT_5, time.monotonic() - 1.0)
    result = await Device(spec, DeviceConfig(), time.monotonic, random.Random(0)).run()
    server.close()
    assert result.lag >= 1.0
    assert result.provision >= 1.0


def test_full_jitter_stays_within_the_capped_exponential():
    policy = RetryPolicy(initial=0.1, max=1.0, multiplier=2, jitter=Jitter.FULL)
    rng = random.Random(1)
    for failed, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(failed, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap
        assert max(delays) > cap * 0.8


def test_no_jitter_is_the_capped_exponential_itself():
    policy = RetryPolicy(initial=0.1, max=1.0, multiplier=3, jitter=Jitter.NONE)
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in (1, 2, 3)] == pytest.approx([0.1, 0.3, 0.9])
    assert policy.delay(4, rng) == 1.0


async def test_the_same_worker_of_two_shards_draws_different_back_off_jitter():
    # Seeded by its index alone, worker 0 of every shard (and of every run)
    # drew the same delays in the same order: the shards retried together.
    from loadgen.load.runner import Worker
    from tests.test_report_merge import _plan

    policy = RetryPolicy(initial=2.0, max=2.0, multiplier=2, jitter=Jitter.FULL)
    plan = _plan(10)
    first, second = Worker(plan, 0, print), Worker(plan, 0, print)
    assert [policy.delay(1, first.rng) for _ in range(5)] != [
        policy.delay(1, second.rng) for _ in range(5)
    ]


async def test_a_source_address_that_is_not_local_ends_the_device_as_error_in_tcp():
    _, server, target = await _broker()
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: bind() refuses it.
    unbindable = Target("127.0.0.1", target.port, source_address="192.0.2.1")
    result = await _run(unbindable, DeviceConfig(retry=FAST_RETRY))
    server.close()
    assert result.outcome is Outcome.ERROR and result.phase == "tcp"
    assert "assign requested address" in result.reason


async def test_a_payload_too_large_to_encode_ends_the_device_as_error_in_publish():
    _, server, target = await _broker()
    too_large = PublishStep("dt/dev", payload_bytes=mqtt.MAX_PACKET_SIZE)
    result = await _run(target, DeviceConfig(retry=FAST_RETRY), steps=(too_large,))
    server.close()
    assert result.outcome is Outcome.ERROR and result.phase == "publish"
    assert result.attempts == 1


def _jitp_config():
    return DeviceConfig(retry=FAST_RETRY, expect_first_connect_rejected=True, connect_timeout=5)


async def test_an_http_server_is_tls_rejected_as_not_tls_and_never_the_jitp_trigger(
    small_fleet, mosquitto
):
    import http.server
    import threading

    device, tls = device_tls(small_fleet, mosquitto)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        target = Target("127.0.0.1", httpd.server_address[1], server_name="localhost")
        result = await _run(target, _jitp_config(), tls=tls, client_id=device.client_id)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.outcome is Outcome.TLS_REJECTED and result.phase == "tls"
    assert "the server does not speak TLS here" in result.reason
    assert not result.provisioning_triggered
    assert not result.judged  # no endpoint's verdict: no fault predicts it


@pytest.mark.parametrize("driver", ["native", "aiomqtt"])
async def test_a_plain_port_that_closes_at_once_is_closed_before_tls_and_never_the_trigger(
    small_fleet, mosquitto, driver
):
    device, tls = device_tls(small_fleet, mosquitto)
    # mosquitto's plain MQTT listener takes the ClientHello for a bad packet.
    target = Target("127.0.0.1", mosquitto.plain_port, server_name="localhost")
    run = _run if driver == "native" else _run_aiomqtt
    result = await run(target, _jitp_config(), tls=tls, client_id=device.client_id)
    assert result.outcome is Outcome.CLOSED and result.phase == "tls"
    assert "before the server sent any TLS" in result.reason
    assert not result.provisioning_triggered
    assert not result.judged


_EXHAUSTION = """
import asyncio, json, random, time
from loadgen import mqtt
from loadgen.device.lifecycle import Device, DeviceConfig, DeviceSpec, HoldStep
from loadgen.device.retry import RetryPolicy
from loadgen.transport.client import Target
from tests.echo_broker import EchoBroker

async def main():
    broker = EchoBroker()
    server = await asyncio.get_running_loop().create_server(broker.protocol, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    config = DeviceConfig(retry=RetryPolicy(initial=0.01, max_attempts=2))
    devices = [
        Device(DeviceSpec(i, f"d{i}", target, None, mqtt.MQTT_5, time.monotonic(),
               (HoldStep(1.0, keepalive=5),)), config, time.monotonic, random.Random(i))
        for i in range(4)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(d.run() for d in devices)), 30)
    print(json.dumps([[r.outcome.value, r.phase, r.reason] for r in results]))

asyncio.run(main())
"""


def test_ephemeral_ports_running_out_end_the_devices_left_over_as_error_in_tcp():
    import json

    from tests.conftest import python_in_netns

    # A network namespace of the test's own, whose loopback has two ephemeral
    # ports: four devices holding connections to one address need four. Every
    # device that got no port must end alone, as error in tcp.
    proc = python_in_netns("40000 40001", _EXHAUSTION)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    # (The kernel may hand out one port of the two.)
    assert {outcome for outcome, _, _ in results} == {"connected", "error"}
    for outcome, phase, reason in results:
        if outcome == "error":
            assert phase == "tcp" and "Cannot assign requested address" in reason


def test_a_fault_predicts_a_failure_only_when_the_endpoint_judged_the_device():
    from loadgen.device.outcome import expectation

    assert expectation("expired", Outcome.TLS_REJECTED, "tls") is True
    # An HTTP port answering the ClientHello is tls_rejected too, but judged nothing.
    assert expectation("expired", Outcome.TLS_REJECTED, "tls", judged=False) is False
    # JITP refuses a device missing a field after the handshake, never during it.
    assert expectation("missing_country", Outcome.CLOSED, "connack") is True
    assert expectation("missing_country", Outcome.CLOSED, "tls") is False
    assert expectation(None, Outcome.CLOSED, "connack") is False


# The aiomqtt driver: what it reports must be what the native driver reports.


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(3, Outcome.THROTTLED), (4, Outcome.NOT_AUTHORIZED), (5, Outcome.NOT_AUTHORIZED)],
)
async def test_aiomqtt_maps_a_3_1_1_connack_code_as_the_native_driver_does(code, outcome):
    # paho 2.x hands a 3.1.1 return code over as the MQTT 5 reason code of its
    # meaning (3 as 0x88): the 3.1.1 table must see the code the server sent.
    _, server, target = await _broker(lambda _c, _n: code)
    result = await _run_aiomqtt(target, DeviceConfig(retry=FAST_RETRY), version=mqtt.MQTT_3_1_1)
    server.close()
    assert result.outcome is outcome, result.reason
    assert result.phase == "connack" and f"(0x{code:02x})" in result.reason


async def test_aiomqtt_takes_a_refused_3_1_1_connack_for_the_jitp_trigger():
    _, server, target = await _broker(lambda _c, seen: 5 if seen == 0 else None)
    config = DeviceConfig(retry=FAST_RETRY, expect_first_connect_rejected=True)
    result = await _run_aiomqtt(target, config, version=mqtt.MQTT_3_1_1)
    server.close()
    assert result.outcome is Outcome.CONNECTED and result.attempts == 2
    assert result.provisioning_triggered


async def test_aiomqtt_names_the_server_by_its_server_name_not_the_address_it_connects_to(
    small_fleet, mosquitto, tmp_path
):
    # The runner resolves the endpoint: the device connects to an address, and
    # names the server (SNI, the certificate's check) by tls.server_name.
    import ssl

    from loadgen.certs.ca import server_cert

    cert, key = server_cert(mosquitto.server_ca, ["localhost"])  # no IP address in it
    (tmp_path / "server.pem").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    named = []
    context.sni_callback = lambda _sock, name, _ctx: named.append(name)
    broker = EchoBroker()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(broker.protocol, "127.0.0.1", 0, ssl=context)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1], server_name="localhost")
    device, tls = device_tls(small_fleet, mosquitto)
    config = DeviceConfig(retry=RetryPolicy(initial=0.01, max_attempts=1))
    result = await _run_aiomqtt(target, config, tls=tls, client_id=device.client_id)
    server.close()
    assert result.outcome is Outcome.CONNECTED, result.reason
    assert named == ["localhost"]


async def test_aiomqtt_takes_a_name_dns_does_not_know_for_an_error_in_tcp():
    target = Target("no-such-host.invalid", 8883)
    result = await _run_aiomqtt(
        target, DeviceConfig(retry=RetryPolicy(initial=0.01, max_attempts=1))
    )
    assert result.outcome is Outcome.ERROR and result.phase == "tcp"
    assert result.reason.startswith("DNS: ")


async def test_aiomqtt_takes_a_connect_closed_before_its_connack_for_the_jitp_trigger():
    """JITP's first connect is closed before its CONNACK: aiomqtt ignored that,
    and the attempt waited out timeouts.connect (here longer than the test's
    bound of 30 s) instead of backing off and reconnecting."""
    broker, server, target = await _broker(lambda _c, seen: "close" if seen == 0 else None)
    config = DeviceConfig(retry=FAST_RETRY, expect_first_connect_rejected=True, connect_timeout=60)
    result = await _run_aiomqtt(target, config)
    server.close()
    assert result.outcome is Outcome.CONNECTED and result.attempts == 2
    assert result.provisioning_triggered
    assert broker.connects == {"dev": 2}


async def test_aiomqtt_closes_a_connect_attempt_that_timed_out():
    ended = []  # per connection: the client closed it

    async def silent(reader, writer):
        await reader.read(1024)  # the CONNECT, never answered
        with contextlib.suppress(ConnectionError):
            ended.append(await reader.read(1024) == b"")
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    config = DeviceConfig(retry=RetryPolicy(initial=0.01, max_attempts=2), connect_timeout=0.3)
    result = await _run_aiomqtt(target, config)
    assert result.outcome is Outcome.TIMEOUT and result.attempts == 2
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.5):  # paho's own timers tick once a second
            while len(ended) < 2:
                await asyncio.sleep(0.01)
    server.close()
    assert ended == [True, True]
    assert not [t for t in asyncio.all_tasks() if "_misc_loop" in repr(t.get_coro())]


@pytest.mark.parametrize(
    ("code", "outcome"), [(0x87, Outcome.NOT_AUTHORIZED), (0x97, Outcome.THROTTLED)]
)
async def test_aiomqtt_fails_a_device_on_a_puback_failure_code(code, outcome):
    _, server, target = await _broker(puback_code=code)
    steps = (PublishStep("dt/dev", qos=1, count=2, payload_bytes=8),)
    result = await _run_aiomqtt(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is outcome and result.phase == "publish"
    assert f"(0x{code:02x})" in result.reason
    assert result.publishes == 0 and not result.publish_acks


@pytest.mark.parametrize(
    ("version", "code", "outcome"),
    [
        (mqtt.MQTT_5, 0x87, Outcome.NOT_AUTHORIZED),
        (mqtt.MQTT_5, 0x80, Outcome.ERROR),
        (mqtt.MQTT_3_1_1, 0x80, Outcome.ERROR),
    ],
)
async def test_aiomqtt_fails_a_device_on_a_suback_failure_code(version, code, outcome):
    _, server, target = await _broker(suback_code=code)
    steps = (SubscribeStep("cmd/dev", qos=1),)
    config = DeviceConfig(retry=FAST_RETRY)
    result = await _run_aiomqtt(target, config, version=version, steps=steps)
    server.close()
    assert result.outcome is outcome and result.phase == "subscribe"
    assert f"SUBACK 0x{code:02x} for cmd/dev" == result.reason


async def test_aiomqtt_bounds_a_step_by_the_step_timeout_not_the_connect_timeout():
    _, server, target = await _broker(puback_code=None)  # never a PUBACK
    config = DeviceConfig(retry=FAST_RETRY, connect_timeout=0.2, step_timeout=0.6)
    steps = (PublishStep("dt/dev", qos=1, payload_bytes=8),)
    began = time.monotonic()
    result = await _run_aiomqtt(target, config, steps=steps)
    server.close()
    assert result.outcome is Outcome.TIMEOUT, result.reason
    assert result.phase == "publish" and time.monotonic() - began >= 0.6


async def test_aiomqtt_fails_a_hold_whose_connection_the_server_closes():
    async def closing(reader, writer):
        await reader.read(1024)
        writer.write(_ACCEPTED)
        await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    began = time.monotonic()
    result = await _run_aiomqtt(target, DeviceConfig(retry=FAST_RETRY), steps=(HoldStep(3.0),))
    server.close()
    assert result.outcome is Outcome.CLOSED and result.phase == "hold", result.reason
    assert time.monotonic() - began < 2


async def _cutting_after_the_publish(cut):
    """A server that accepts the CONNECT, reads the PUBLISH and ``cut``s its
    writer (resets it, or sends a DISCONNECT) instead of a PUBACK."""

    async def serve(reader, writer):
        await reader.read(1024)  # the CONNECT
        writer.write(_ACCEPTED)
        await writer.drain()
        await reader.read(1024)  # the PUBLISH
        cut(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, Target("127.0.0.1", server.sockets[0].getsockname()[1])


def _reset(writer):
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _disconnect_quota_exceeded(writer):
    writer.write(b"\xe0\x02\x97\x00")
    writer.close()


@pytest.mark.parametrize("run", [_run, _run_aiomqtt], ids=["native", "aiomqtt"])
async def test_a_connection_reset_while_a_puback_is_awaited_ends_the_device_closed(run):
    server, target = await _cutting_after_the_publish(_reset)
    config = DeviceConfig(retry=FAST_RETRY, step_timeout=20.0)
    steps = (PublishStep("dt/x", qos=1, count=1, payload_bytes=8),)
    result = await run(target, config, steps=steps)
    server.close()
    # Not a timeout: the step's 20 s bound was never reached (_run's is 30 s).
    assert result.outcome is Outcome.CLOSED and result.phase == "publish", result.reason


@pytest.mark.parametrize("run", [_run, _run_aiomqtt], ids=["native", "aiomqtt"])
async def test_a_disconnect_instead_of_a_puback_names_the_servers_reason(run):
    server, target = await _cutting_after_the_publish(_disconnect_quota_exceeded)
    config = DeviceConfig(retry=FAST_RETRY, step_timeout=20.0)
    steps = (PublishStep("dt/x", qos=1, count=1, payload_bytes=8),)
    result = await run(target, config, steps=steps)
    server.close()
    assert result.outcome is Outcome.CLOSED and result.phase == "publish"
    assert result.reason.startswith("server sent DISCONNECT quota_exceeded"), result.reason


async def test_aiomqtt_pings_every_hold_keepalive():
    broker, server, target = await _broker()
    steps = (HoldStep(0.5, keepalive=0.1),)
    result = await _run_aiomqtt(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is Outcome.CONNECTED, result.reason
    assert sum(isinstance(p, mqtt.PingReq) for p in broker.received) >= 3


async def test_aiomqtt_pings_only_after_a_keepalive_of_silence_as_the_native_driver():
    # Pings due 0.5 s and 1.0 s in; at the hold's end (1.2 s) the last went out
    # 0.2 s before. paho's PINGREQ was not counted as sent: the end found 1.2 s
    # of silence and sent one more, just before the DISCONNECT.
    broker, server, target = await _broker()
    steps = (HoldStep(1.2, keepalive=0.5),)
    result = await _run_aiomqtt(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is Outcome.CONNECTED, result.reason
    assert 1 <= sum(isinstance(p, mqtt.PingReq) for p in broker.received) <= 2


@pytest.mark.parametrize("driver", ["native", "aiomqtt"])
@pytest.mark.parametrize("pings", [0.0, 60.0], ids=["never", "every 60 s"])
async def test_a_held_device_pings_as_often_as_the_servers_keep_alive_asks(driver, pings):
    # [MQTT-3.2.2-21]: the CONNACK's Server Keep Alive replaces the client's.
    # AWS IoT answers 1200 s to a CONNECT asking 0 or more; a device pinging on
    # its own plan was closed after 1.5 times that.
    broker, server, target = await _broker(server_keep_alive=1)
    run = _run if driver == "native" else _run_aiomqtt
    steps = (HoldStep(2.5, keepalive=pings),)
    result = await run(target, DeviceConfig(retry=FAST_RETRY), steps=steps)
    server.close()
    assert result.outcome is Outcome.CONNECTED, result.reason
    assert sum(isinstance(p, mqtt.PingReq) for p in broker.received) >= 1


async def test_aiomqtt_ends_a_hold_timeout_when_its_ping_went_unanswered():
    server, target = await _answering(_ACCEPTED)  # then silent: no PINGRESP
    config = DeviceConfig(retry=FAST_RETRY, step_timeout=0.1)
    result = await _run_aiomqtt(target, config, steps=(HoldStep(0.4, keepalive=0.1),))
    server.close()
    assert result.outcome is Outcome.TIMEOUT and result.phase == "hold", result.reason


async def test_aiomqtt_does_not_end_a_hold_early_for_a_slow_pingresp():
    # Past paho's misc loop's tick (1 s), which ends a connection whose PINGREQ
    # waited its keepalive: a slow answer is judged at the hold's end.
    async def slow(reader, writer):
        await reader.read(1024)
        writer.write(_ACCEPTED)  # then silent: no PINGRESP in the hold
        await asyncio.sleep(3)
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    target = Target("127.0.0.1", server.sockets[0].getsockname()[1])
    config = DeviceConfig(retry=FAST_RETRY, step_timeout=5)
    result = await _run_aiomqtt(target, config, steps=(HoldStep(1.5, keepalive=0.2),))
    server.close()
    assert result.outcome is Outcome.CONNECTED, result.reason
