"""How provisioning fails, in AWS's terms (the CloudWatch metrics name them)."""

from __future__ import annotations

from loadgen.errors import LoadgenError


class ProvisioningError(LoadgenError):
    """Provisioning failed; nothing it would have created exists. ``reason`` is
    why without the device's own values (its thing's name), so that devices
    failing alike are counted under one reason; the message names them."""

    metric = "ServerError"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class ClientError(ProvisioningError):
    """The template or the certificate is at fault: a missing parameter, a bad
    intrinsic function, a resource that conflicts (ProvisionThing.ClientError)."""

    metric = "ClientError"


class TemplateError(ClientError):
    """The template itself is malformed."""


class StateUnwritten(ProvisioningError):
    """The state file could not keep the provisioning (the disk full, say): on
    AWS, an internal error (ProvisionThing.ServerError)."""
