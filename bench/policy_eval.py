"""The policy work of one CONNECT and of one PUBLISH, in the emulator's own
functions: a connection's variables, what of them it keeps, iot:Connect, and
iot:Publish on its topic. For the default policy (no conditions) and for the
same policy with AWS's recommended connect condition.

    .venv/bin/python -m bench.policy_eval [--rounds 7] [--number 20000]

Run it at two commits (PYTHONPATH) to compare: prints µs per operation,
the median of the rounds.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import timeit

from loadgen.emulator import policy
from loadgen.emulator.defaults import POLICY

_PARAMETERS = {
    "AWS::IoT::Certificate::CommonName": "bulb-000001",
    "AWS::IoT::Certificate::Country": "DE",
    "AWS::IoT::Certificate::Id": "ab" * 32,
}


def _conditioned() -> str:
    document = copy.deepcopy(POLICY)
    document["Statement"][0]["Condition"] = {
        "Bool": {"iot:Connection.Thing.IsAttached": "true"},
        "StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"},
    }
    return json.dumps(document)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    documents = {"default": json.dumps(POLICY)}
    try:
        policy.parse(_conditioned())[0].condition  # type: ignore[attr-defined]  # noqa: B018
        documents["conditioned"] = _conditioned()
    except AttributeError:
        pass  # a commit before conditions were evaluated
    client = "bulb-000001"
    resource = policy.arn("client", client)
    topic = policy.arn("topic", f"dt/{client}/status")
    for name, document in documents.items():
        policies = [policy.parse(document)]

        def connect(policies: list[list[policy.Statement]] = policies) -> None:
            variables = policy.connection_variables(client, "ab" * 32, _PARAMETERS, client)
            kept = policy.only(variables, policies)
            assert policy.allowed(policies, "iot:Connect", resource, kept)

        kept = policy.only(
            policy.connection_variables(client, "ab" * 32, _PARAMETERS, client), policies
        )

        def publish(
            policies: list[list[policy.Statement]] = policies, kept: dict[str, str] = kept
        ) -> None:
            assert policy.allowed(policies, "iot:Publish", topic, kept)

        for label, work in (("connect", connect), ("publish", publish)):
            times = timeit.repeat(work, number=args.number, repeat=args.rounds)
            median = statistics.median(times) / args.number * 1e6
            print(f"{name:12} {label:8} {median:6.2f} µs")


if __name__ == "__main__":
    main()
