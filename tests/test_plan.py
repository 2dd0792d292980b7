"""Templates over a device's manifest line, rendered as each device is prepared."""

from __future__ import annotations

from loadgen.certs.store import Device
from loadgen.load.plan import device_client_id, render


def _device(subject: dict[str, str]) -> Device:
    return Device(
        index=42,
        client_id="device-0000042",
        certificate_id="ab" * 32,
        subject=subject,
        key_type="ec-p256",
        fault=None,
        cert="devices/0000/0000042.pem",
        key="devices/0000/0000042.key",
        not_before="2026-01-01T00:00:00Z",
        not_after="2027-01-01T00:00:00Z",
    )


def test_a_template_renders_fields_with_format_specs_and_missing_subject_fields_empty():
    device = _device({"common_name": "bulb-42"})
    rendered = render("{common_name}/{index:05d}/{serial_number}/{client_id}", device, "bulb")
    assert rendered == "bulb-42/00042//bulb"


def test_a_client_id_template_that_renders_empty_falls_back_to_the_manifests():
    assert device_client_id("{serial_number}", _device({})) == "device-0000042"
