"""`loadgen aws teardown` throughput against the emulator's control plane at
AWS's default rates: devices torn down per second, next to what the rate limits
allow at most (the slowest API's rate: the floor of a teardown's time).

    .venv/bin/python -m bench.teardown [--devices 200] [--repeats 1]

Each repeat mints a fleet, provisions it through JITP on an embedded emulator
(provisioning and connect quotas off, so that part is quick), then times
Teardown.find() and Teardown.run() against the emulator's API, throttled as
AWS throttles: the same numbers a real account would give, bar the network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import uvloop

from bench.emulator import _connect_all
from loadgen.aws.account import Account
from loadgen.aws.ratelimit import AWS_RATES, DEFAULT_RATE, RateLimits
from loadgen.aws.teardown import Teardown
from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from loadgen.certs.profile import Profile
from loadgen.certs.store import FleetStore
from loadgen.emulator.serve import start_embedded
from tests.brokers import free_port

# What teardown calls per device when each device has one thing and shares one
# policy with the others (the built-in template). They are made in one pass over
# the certificates, every API at its own rate at once.
CALLS = {
    "ListAttachedPolicies": 1,
    "ListPrincipalThings": 1,
    "DetachPolicy": 1,
    "DetachThingPrincipal": 1,
    "UpdateCertificate": 1,
    "DeleteCertificate": 1,
    "ListThingPrincipals": 1,
    "DeleteThing": 1,
}


def ceiling() -> float:
    """Devices per second the rate limits allow at most: the slowest API's."""
    return 1 / max(n / AWS_RATES.get(api, DEFAULT_RATE) for api, n in CALLS.items())


def one_run(root: Path, devices: int) -> tuple[float, float, Counter[str]]:
    """(seconds to find, seconds to remove, the outcomes) for one fleet."""
    ca = init_ca(root / "ca")
    profile = Profile.model_validate({"subject": {"common_name": "bench-{index:05d}"}})
    mint(MintRequest(root / "fleet", ca.directory, devices, profile, seed=1))
    fleet = FleetStore(root / "fleet")
    emulator = start_embedded(
        ca.directory,
        None,
        root / "emulator",
        quotas={"provision": "off", "connect": "off", "connect-per-client": "off"},
        api_port=free_port(),
    )
    try:
        assert emulator.api_url is not None
        # JITP closes each first connection: this provisions, connecting none.
        uvloop.run(_connect_all(emulator.port, emulator.server_ca, fleet, list(fleet.devices())))
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIDBENCH")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
        iot = Account(None, "us-east-1", emulator.api_url).iot()
        teardown = Teardown(iot, ca.directory, RateLimits())
        start = time.monotonic()
        found = teardown.find(attachments=False)
        found_at = time.monotonic()
        if len(found.certificates) != devices:
            raise SystemExit(f"provisioned {len(found.certificates)} of {devices} devices")
        summary = teardown.run(found)
        done_at = time.monotonic()
        if not summary.complete:
            raise SystemExit("teardown left something behind: " + "; ".join(summary.lines()))
        stats = emulator.stop() or {}
    except BaseException:
        emulator.stop()
        raise
    throttled = Counter(stats.get("api", {}).get("throttled", {}))
    return found_at - start, done_at - found_at, throttled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    limit = ceiling()
    rates = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-teardown-") as tmp:
            find_s, run_s, throttled = one_run(Path(tmp), args.devices)
        rate = args.devices / (find_s + run_s)
        rates.append(rate)
        print(
            f"run {i + 1}: {args.devices} devices: find {find_s:.1f} s, remove {run_s:.1f} s: "
            f"{rate:.2f} devices/s; throttled by the emulator: {sum(throttled.values())}"
            + (f" ({dict(throttled)})" if throttled else "")
        )
    print(
        f"median {statistics.median(rates):.2f} devices/s; AWS's default rates allow at most "
        f"{limit:.2f} devices/s ({statistics.median(rates) / limit:.0%} of it)"
    )


if __name__ == "__main__":
    main()
