"""An atheris (libFuzzer) target: the server end of the MQTT layer, fed whatever
the fuzzer makes. Only ProtocolError may come out.

    python tests/fuzz_mqtt_server.py -runs=100000
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from loadgen import mqtt


def one_input(data: bytes) -> None:
    conn = mqtt.Connection(mqtt.Role.SERVER, max_packet_size=4096)
    cut = data[0] % (len(data) + 1) if data else 0
    try:
        for chunk in (data[1:cut], data[cut:]):
            for packet in conn.receive(chunk):
                if isinstance(packet, mqtt.Connect) and conn.state is mqtt.State.CONNECTING:
                    conn.send(mqtt.ConnAck())
    except mqtt.ProtocolError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
