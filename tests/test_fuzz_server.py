"""The server side of the MQTT layer takes anything a client sends: malformed,
truncated and oversized packets, byte by byte or all at once, and only ever
raises ProtocolError."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen import mqtt
from tests.mqtt_strategies import connects, packets

# Inputs per run of the plain random test: cheap enough for the suite's budget.
RANDOM_INPUTS = 100_000


def _feed(chunks: list[bytes], max_packet_size: int = 4096) -> None:
    conn = mqtt.Connection(mqtt.Role.SERVER, max_packet_size=max_packet_size)
    try:
        for chunk in chunks:
            for packet in conn.receive(chunk):
                if isinstance(packet, mqtt.Connect) and conn.state is mqtt.State.CONNECTING:
                    conn.send(mqtt.ConnAck())
    except mqtt.ProtocolError:
        _receives_nothing_more(conn)


def _receives_nothing_more(conn: mqtt.Connection) -> None:
    with pytest.raises(mqtt.ProtocolError):
        conn.receive(mqtt.encode(mqtt.PingReq(), mqtt.MQTT_5))


def test_a_hundred_thousand_random_inputs_raise_only_protocol_errors():
    rng = random.Random(20261126)
    valid = mqtt.encode(mqtt.Connect("fuzz", keepalive=30), mqtt.MQTT_5)
    for i in range(RANDOM_INPUTS):
        kind = i % 4
        if kind == 0:  # noise
            data = rng.randbytes(rng.randint(0, 64))
        elif kind == 1:  # a valid CONNECT, then noise
            data = valid + rng.randbytes(rng.randint(0, 32))
        elif kind == 2:  # a valid CONNECT with one byte changed
            buf = bytearray(valid)
            buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf)
        else:  # truncated
            data = valid[: rng.randrange(len(valid))]
        cut = rng.randint(0, len(data))
        _feed([data[:cut], data[cut:]])


@settings(max_examples=500)
@given(st.data())
def test_a_valid_session_cut_into_any_chunks_with_garbage_after(data):
    version = data.draw(st.sampled_from([mqtt.MQTT_3_1_1, mqtt.MQTT_5]))
    first = data.draw(connects(version))
    rest = data.draw(st.lists(packets(version), max_size=5))
    stream = mqtt.encode(first, version) + b"".join(mqtt.encode(p, version) for p in rest)
    stream += data.draw(st.binary(max_size=40))
    sizes = data.draw(st.lists(st.integers(1, 50), max_size=20))
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(stream[pos : pos + size])
        pos += size
    chunks.append(stream[pos:])
    _feed(chunks)


def test_an_oversized_packet_is_refused_as_soon_as_its_length_is_read():
    conn = mqtt.Connection(mqtt.Role.SERVER, max_packet_size=1024)
    header = b"\x10\xff\xff\x7f"  # CONNECT claiming 2 MiB
    try:
        conn.receive(header)
    except mqtt.PacketTooLarge:
        _receives_nothing_more(conn)
    else:
        raise AssertionError("an oversized CONNECT was buffered")


def test_atheris_finds_nothing_in_a_hundred_thousand_runs():
    """Coverage-guided fuzzing when atheris installs (it needs a matching wheel)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed on this platform")
    target = Path(__file__).with_name("fuzz_mqtt_server.py")
    result = subprocess.run(
        [sys.executable, str(target), "-runs=100000", "-seed=1", "-max_len=512"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Done 100000 runs" in result.stderr
