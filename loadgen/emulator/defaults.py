"""What the embedded emulator uses when a scenario says no more than
``endpoint: embedded``: a template like the reference document's, with a policy
that lets each device connect as its thing and use its own topics."""

from __future__ import annotations

import json
from typing import Any

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:*:*:topic/*/${iot:Connection.Thing.ThingName}/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:*:*:topicfilter/*/${iot:Connection.Thing.ThingName}/*",
        },
    ],
}

TEMPLATE: dict[str, Any] = {
    "Parameters": {
        "AWS::IoT::Certificate::CommonName": {"Type": "String"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}},
            "OverrideSettings": {"AttributePayload": "MERGE"},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                "Status": "ACTIVE",
            },
        },
        "policy": {
            "Type": "AWS::IoT::Policy",
            "Properties": {"PolicyDocument": json.dumps(POLICY)},
        },
    },
}

REGISTRATION_CONFIG = {
    "templateBody": json.dumps(TEMPLATE),
    "roleArn": "arn:aws:iam::123456789012:role/JITPRole",
}
