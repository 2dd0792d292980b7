"""Arrival-rate accuracy of `loadgen run` below the endpoint's capacity, the
schedule lag, and the generator's CPU per device next to `openssl s_time -new`'s
per handshake, against mosquitto on loopback.

    .venv/bin/python -m bench.arrival [--devices 3000] [--rate 250] [--repeats 3]
        [--no-publish]

Each run is bracketed by two `s_time` runs against the same mosquitto; the ratio
is the generator's whole-life CPU per device (its preparation included:
`generator.whole_cpu_ms_per_device`) over their mean. With ``--no-publish`` a
device only connects and disconnects: the whole life the issue measures
(prepare, TCP, TLS, CONNECT, CONNACK, DISCONNECT, record).
"""

from __future__ import annotations

import argparse
import statistics

from bench.connect import loadgen_run, mosquitto_bed, s_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s-time-seconds", type=int, default=3)
    parser.add_argument(
        "--no-publish", action="store_true", help="connect and disconnect only (no QoS 1 publish)"
    )
    args = parser.parse_args()
    steps = [] if args.no_publish else [{"publish": {"topic": "dt/{client_id}", "qos": 1}}]
    rows = []
    s_times = []
    with mosquitto_bed(args.devices) as bed:
        for i in range(args.repeats):
            before = s_time(bed.broker, bed.fleet, bed.devices[0], args.s_time_seconds)
            rows.append(
                loadgen_run(
                    bed, rate=args.rate, workers=args.workers, after_connect=steps, name=f"r{i}"
                )
            )
            after = s_time(bed.broker, bed.fleet, bed.devices[0], args.s_time_seconds)
            s_times.append((before + after) / 2)
    ratios = [r["rate"]["achieved_per_s"] / r["rate"]["target_per_s"] for r in rows]
    lags = [r["schedule_lag_ms"]["p99"] for r in rows]
    connected = [r["outcomes"]["connected"] for r in rows]
    cpu = [r["generator"]["cpu_ms_per_device"] for r in rows]
    whole = [r["generator"]["whole_cpu_ms_per_device"] for r in rows]
    handshake = [s * 1e3 for s in s_times]
    whole_ratio = [w / h for w, h in zip(whole, handshake, strict=True)]
    cpu_ratio = [c / h for c, h in zip(cpu, handshake, strict=True)]
    acts = "connecting and disconnecting" if args.no_publish else "connecting, publishing"

    def row(what: str, median: str, values: list[float], form: str) -> None:
        print(f"| {what} | {median} | " + ", ".join(form.format(x) for x in values) + " |")

    print(
        f"{args.devices} devices at {args.rate:g}/s, {args.workers} workers, "
        f"{args.repeats} runs, mosquitto on loopback"
        + (", connect and disconnect only" if args.no_publish else ", a QoS 1 publish each")
    )
    print()
    print("| measurement | median | runs |")
    print("| --- | ---: | --- |")
    row(
        "achieved / target arrival rate",
        f"**{statistics.median(ratios):.2%}**",
        ratios,
        "{:.2%}",
    )
    row("schedule lag p99", f"{statistics.median(lags):.1f} ms", lags, "{:.1f}")
    row(
        f"generator CPU per device (preparing, {acts}, recording), from the schedule's start",
        f"{statistics.median(cpu):.2f} ms",
        cpu,
        "{:.2f}",
    )
    row(
        "generator CPU per device, whole life (with the first window prepared before the start)",
        f"{statistics.median(whole):.2f} ms",
        whole,
        "{:.2f}",
    )
    row(
        "`openssl s_time -new`: CPU per handshake (mean of a run before and one after)",
        f"{statistics.median(handshake):.3f} ms",
        handshake,
        "{:.3f}",
    )
    row(
        "whole life / `s_time`, same run",
        f"**{statistics.median(whole_ratio):.2f}x**",
        whole_ratio,
        "{:.2f}",
    )
    row(
        "from the schedule's start / `s_time`, same run",
        f"{statistics.median(cpu_ratio):.2f}x",
        cpu_ratio,
        "{:.2f}",
    )
    row(
        "devices connected",
        f"{statistics.median(connected):.0f}",
        [float(c) for c in connected],
        "{:.0f}",
    )


if __name__ == "__main__":
    main()
