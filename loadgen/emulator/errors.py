"""How provisioning fails, in AWS's terms (the CloudWatch metrics name them)."""

from __future__ import annotations

from loadgen.errors import LoadgenError


class ProvisioningError(LoadgenError):
    """Provisioning failed; nothing it would have created exists."""

    metric = "ServerError"


class ClientError(ProvisioningError):
    """The template or the certificate is at fault: a missing parameter, a bad
    intrinsic function, a resource that conflicts (ProvisionThing.ClientError)."""

    metric = "ClientError"


class TemplateError(ClientError):
    """The template itself is malformed."""


class StateUnwritten(ProvisioningError):
    """The state file could not keep the provisioning (the disk full, say): on
    AWS, an internal error (ProvisionThing.ServerError)."""
