"""Arrival-rate accuracy of `loadgen run` below the endpoint's capacity, and the
schedule lag, against mosquitto on loopback.

    .venv/bin/python -m bench.arrival [--devices 3000] [--rate 250] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from loadgen.certs.ca import init_ca
from loadgen.certs.mint import MintRequest, mint
from tests.brokers import start_mosquitto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-", dir="/dev/shm") as tmp:
        root = Path(tmp)
        ca = init_ca(root / "ca")
        mint(MintRequest(root / "fleet", ca.directory, args.devices, workers=2))
        broker = start_mosquitto(root / "broker", ca.directory / "ca.pem")
        scenario = {
            "name": "arrival-bench",
            "endpoint": f"127.0.0.1:{broker.tls_port}",
            "tls": {
                "ca_file": str(broker.server_ca.directory / "ca.pem"),
                "server_name": "localhost",
            },
            "fleet": {"ca": str(ca.directory), "store": str(root / "fleet"), "count": args.devices},
            "load": {
                "executor": "constant-arrival-rate",
                "rate": f"{args.rate}/s",
                "max_in_flight": 1000,
            },
            "after_connect": [{"publish": {"topic": "dt/{client_id}", "qos": 1}}],
        }
        path = root / "scenario.yaml"
        path.write_text(yaml.safe_dump(scenario))
        try:
            for i in range(args.repeats):
                report_path = root / f"report-{i}.json"
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "loadgen",
                        "run",
                        str(path),
                        "--workers",
                        str(args.workers),
                        "--report",
                        str(report_path),
                    ],
                    check=True,
                    capture_output=True,
                )
                rows.append(json.loads(report_path.read_text()))
        finally:
            broker.stop()
    ratios = [r["rate"]["achieved_per_s"] / r["rate"]["target_per_s"] for r in rows]
    lags = [r["schedule_lag_ms"]["p99"] for r in rows]
    connected = [r["outcomes"]["connected"] for r in rows]
    cpu = [r["generator"]["cpu_ms_per_device"] for r in rows]
    print(
        f"{args.devices} devices at {args.rate:g}/s, {args.workers} workers, "
        f"{args.repeats} runs, mosquitto on loopback"
    )
    print()
    print("| measurement | median | runs |")
    print("| --- | ---: | --- |")
    print(
        f"| achieved / target arrival rate | **{statistics.median(ratios):.2%}** | "
        + ", ".join(f"{x:.2%}" for x in ratios)
        + " |"
    )
    print(
        f"| schedule lag p99 | {statistics.median(lags):.1f} ms | "
        + ", ".join(f"{x:.1f}" for x in lags)
        + " |"
    )
    print(
        f"| generator CPU per device (preparing, connecting, publishing, recording) | "
        f"{statistics.median(cpu):.2f} ms | " + ", ".join(f"{x:.2f}" for x in cpu) + " |"
    )
    print(
        f"| devices connected | {statistics.median(connected):.0f} | "
        + ", ".join(str(x) for x in connected)
        + " |"
    )


if __name__ == "__main__":
    main()
