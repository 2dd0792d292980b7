"""The control plane's operations, by botocore's operation names, on the
registry the MQTT side uses: what it registers, changes or deletes here, the
next device connection sees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loadgen.emulator.api import cas, certificates, groups, policies, things
from loadgen.emulator.api.app import REGION as MQTT_REGION
from loadgen.emulator.api.base import Account, Params, Result, invalid
from loadgen.emulator.api.errors import ApiError
from loadgen.emulator.registry import Registry
from loadgen.emulator.state import StateWriteError

Operation = Callable[[Account, Params], Result]

# Endpoint types DescribeEndpoint knows; the emulator serves MQTT on one address
# for both data endpoints, and has no credentials provider or jobs endpoint.
_DATA_ENDPOINTS = ("iot:Data-ATS", "iot:Data")
_OTHER_ENDPOINTS = ("iot:CredentialProvider", "iot:Jobs")


def describe_endpoint(account: Account, params: Params) -> Result:
    kind = params.get("endpointType") or "iot:Data"
    if kind in _OTHER_ENDPOINTS:
        raise invalid(f"endpointType {kind}: the emulator serves only MQTT (iot:Data-ATS)")
    if kind not in _DATA_ENDPOINTS:
        raise invalid(
            f"endpointType {kind!r}: one of {', '.join(_DATA_ENDPOINTS + _OTHER_ENDPOINTS)}"
        )
    if account.mqtt_address is None:
        # An address here would send devices where their CA is unknown: every
        # one of them refused, with nothing to say why.
        raise invalid(
            f"region {account.region}: the emulator's MQTT endpoint serves the devices of "
            f"one region's registry, {MQTT_REGION}'s: use region {MQTT_REGION}"
        )
    return {"endpointAddress": account.mqtt_address}


def _operations() -> dict[str, Operation]:
    table: dict[str, Operation] = {"DescribeEndpoint": describe_endpoint}
    for module in (cas, certificates, things, groups, policies):
        table.update(module.OPERATIONS)
    return table


class ControlPlane:
    def __init__(
        self,
        registry: Registry,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        mqtt_address: str | None = "127.0.0.1:8883",
    ) -> None:
        self.registry = registry
        self.account = Account(registry, region, account_id, mqtt_address)
        self.operations = _operations()

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One AWS IoT control-plane operation, by botocore's operation name
        ("DeleteCertificate"), with params keyed by botocore's input shape member
        names ("certificateId", "forceDelete", "pageSize", "marker", ...) already
        typed (ints, bools, strings; the request body's JSON members as parsed).
        Returns the output shape's members (AWS's JSON names; timestamps as epoch
        seconds floats). Raises ApiError for what AWS refuses."""
        handler = self.operations.get(operation)
        if handler is None:
            raise ApiError(
                "UnknownOperationException", f"the emulator has no operation {operation}", 404
            )
        try:
            return handler(self.account, params)
        except StateWriteError:
            # AWS's answer to a failure of its own; the store has said why on
            # stderr, once for as long as it cannot write.
            raise ApiError(
                "InternalFailureException",
                "the emulator could not write its state file: nothing was changed",
                500,
            ) from None
