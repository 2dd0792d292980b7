"""The control plane's API for `loadgen emulator serve --api-port`: the
operations' semantics (``ControlPlane``) behind the HTTP side."""

from __future__ import annotations

from loadgen.emulator.api.app import ACCOUNT_ID, REGION, Call, ControlPlaneApi
from loadgen.emulator.api.control import ControlPlane
from loadgen.emulator.api.throttle import ApiThrottle
from loadgen.emulator.registry import Registry


def api_control_plane(
    registry: Registry, mqtt_address: str, rates: dict[str, float | None]
) -> ControlPlaneApi:
    """The API on ``registry`` (the MQTT side's), answering DescribeEndpoint
    with ``mqtt_address``, throttled at AWS's rates but for ``rates``."""
    plane = ControlPlane(registry, region=REGION, account_id=ACCOUNT_ID, mqtt_address=mqtt_address)

    def other_region(region: str) -> Call:
        # Its own account-region: empty, in memory, and no MQTT side trusts it.
        return ControlPlane(
            Registry(), region=region, account_id=ACCOUNT_ID, mqtt_address=None
        ).call

    return ControlPlaneApi(
        plane.call,
        ApiThrottle(rates),
        account_id=ACCOUNT_ID,
        region=REGION,
        other_region=other_region,
    )
