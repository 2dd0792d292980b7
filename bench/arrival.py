"""Arrival-rate accuracy of `loadgen run` below the endpoint's capacity, the
schedule lag, and the generator's CPU per device next to `openssl s_time -new`'s
per handshake, against mosquitto on loopback.

    .venv/bin/python -m bench.arrival [--devices 3000] [--rate 250] [--repeats 3]
        [--no-publish] [--tree BEFORE --tree .]

Each repeat is bracketed by two `s_time` runs against the same mosquitto; the
ratio is the generator's whole-life CPU per device (its preparation included:
`generator.whole_cpu_ms_per_device`) over their mean. With ``--no-publish`` a
device only connects and disconnects: the whole life the issue measures
(prepare, TCP, TLS, CONNECT, CONNACK, DISCONNECT, record). With ``--tree`` (given
more than once), each repeat runs the `loadgen` of each checkout in turn inside
the same bracket (before and after a change, alternating), and prints each one's
figures and their ratio per repeat.

With ``--c-device``, each repeat also runs the same whole life in C
(`bench/c_device.c`, built with gcc against the system's OpenSSL: Debian's
libssl-dev), at the same rate on as many processes as workers, twice: every
device with one certificate loaded once, as `s_time` does (no preparation: a
floor below any fleet of distinct devices), and each with its own certificate
and key read by OpenSSL's PEM readers (a naive client's preparation). Both pay
what `s_time`'s back-to-back handshakes never do: the wake-ups of devices on a
schedule (the start, the server's flight, the session tickets, the CONNACK)
and the caches gone cold between them. The generator's ratio to the floor is
printed beside its ratio to `s_time`.

With ``--emqtt-bench ESCRIPT``, each repeat also runs emqtt-bench's `conn` (a
peer: EMQX's Erlang load generator; `bench/build_emqtt_bench.sh` builds it) at
the same rate against the same mosquitto, as shipped and with the Erlang
schedulers' spinning off (`bench/emqtt_bench.py` says what it does and does
not do next to a device of `loadgen run`).

A run that fell behind its schedule (achieved below 99% of the target: the
machine was too busy for the rate) measured a generator short of CPU, whose
devices waited and retried: the medians are over the runs that kept the
schedule, and every run is listed.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench import trees as trees_option
from bench.c_device import c_device
from bench.connect import loadgen_run, mosquitto_bed, s_time, worker_count
from bench.emqtt_bench import emqtt_bench
from loadgen.words import counted

_KEPT = 0.99  # achieved / target arrival rate of a run that kept its schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument(
        "--workers",
        type=lambda text: text if text == "auto" else int(text),
        help="N or auto, as `loadgen run --workers` takes it (default: its default, the cores)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s-time-seconds", type=int, default=3)
    parser.add_argument(
        "--no-publish", action="store_true", help="connect and disconnect only (no QoS 1 publish)"
    )
    parser.add_argument(
        "--c-device",
        action="store_true",
        help="also run the whole life in C at the same rate (bench/c_device.c), each repeat",
    )
    parser.add_argument(
        "--emqtt-bench",
        type=Path,
        metavar="ESCRIPT",
        help="also run emqtt-bench's `conn` at the same rate, each repeat, twice: as shipped "
        "and with the Erlang schedulers' spinning off (bench/build_emqtt_bench.sh builds it)",
    )
    trees_option.add_option(parser)
    args = parser.parse_args()
    if args.c_device and not args.no_publish:
        parser.error("--c-device: the C device connects and disconnects only; add --no-publish")
    if args.emqtt_bench and not args.no_publish:
        parser.error("--emqtt-bench: its `conn` only connects; add --no-publish")
    if args.emqtt_bench and not args.emqtt_bench.is_file():
        parser.error(f"--emqtt-bench: {args.emqtt_bench}: no such file")
    trees = trees_option.chosen(args)
    steps = [] if args.no_publish else [{"publish": {"topic": "dt/{client_id}", "qos": 1}}]
    reports: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(trees))}
    s_times: list[float] = []
    floors: list[float] = []
    owns: list[float] = []
    peers: dict[bool, list[float]] = {True: [], False: []}  # emqtt-bench's, by spinning
    with mosquitto_bed(args.devices) as bed:
        processes = worker_count(bed, rate=args.rate, after_connect=steps, workers=args.workers)
        for repeat in range(args.repeats):
            before = s_time(bed.broker, bed.fleet, bed.devices[0], args.s_time_seconds)
            if args.c_device:
                floors.append(c_device(bed, rate=args.rate, processes=processes, own=False) * 1e3)
                owns.append(c_device(bed, rate=args.rate, processes=processes, own=True) * 1e3)
            if args.emqtt_bench:
                for spin, values in peers.items():
                    values.append(
                        emqtt_bench(bed, binary=args.emqtt_bench, rate=args.rate, spin=spin) * 1e3
                    )
            for i in trees_option.turns(len(trees), repeat):
                reports[i].append(
                    loadgen_run(
                        bed,
                        rate=args.rate,
                        workers=args.workers,
                        after_connect=steps,
                        name=f"r{repeat}-{i}",
                        tree=trees[i],
                    )
                )
            after = s_time(bed.broker, bed.fleet, bed.devices[0], args.s_time_seconds)
            s_times.append((before + after) / 2 * 1e3)
    print(
        f"{args.devices} devices at {args.rate:g}/s, {counted(processes, 'worker')}"
        + {None: " (`loadgen run`'s default)", "auto": " (--workers auto)"}.get(args.workers, "")
        + ", "
        f"{args.repeats} runs, mosquitto on loopback"
        + (", connect and disconnect only" if args.no_publish else ", a QoS 1 publish each")
    )
    print()
    print("| measurement | median | runs |")
    print("| --- | ---: | --- |")
    _row(
        "`openssl s_time -new`: CPU per handshake (mean of a run before and one after)",
        f"{statistics.median(s_times):.3f} ms",
        s_times,
        "{:.3f}",
    )
    for what, values in (("one certificate for all", floors), ("each its own", owns)):
        _beside(
            f"the whole life in C (`bench/c_device.c`, {what}) at {args.rate:g}/s on "
            f"{processes} processes",
            f"the whole life in C ({what})",
            values,
            s_times,
        )
    for spin, values in peers.items():
        how = "as shipped" if spin else "schedulers not spinning, `+sbwt none`"
        _beside(
            f"emqtt-bench `conn` ({how}; one certificate for all, the server not verified) "
            f"at {round(args.rate)}/s",
            f"emqtt-bench ({how})",
            values,
            s_times,
            per_device="CPU per device connected after its first second",
        )
    # What each tree's whole life is also set against, repeat by repeat.
    references = [
        ("the whole life in C (one certificate for all)", floors),
        ("emqtt-bench's (as shipped)", peers[True]),
        ("emqtt-bench's (not spinning)", peers[False]),
    ]
    results = [
        _print_tree(reports[i], s_times, references, tree if len(trees) > 1 else None, args)
        for i, tree in enumerate(trees)
    ]
    if len(trees) > 1:
        (first, first_kept), (last, last_kept) = results[0], results[-1]
        each = [b / a for a, b in zip(first, last, strict=True)]
        both = [each[i] for i in sorted(first_kept & last_kept)] or each
        _row(
            f"`{trees[-1]}` / `{trees[0]}`: whole-life CPU per device, same repeat "
            "(median over the repeats both kept their schedule in)",
            f"**{statistics.median(both):.2f}x**",
            each,
            "{:.2f}",
        )


def _print_tree(
    rows: list[dict[str, Any]],
    s_times: list[float],
    references: list[tuple[str, list[float]]],
    tree: Path | None,
    args: argparse.Namespace,
) -> tuple[list[float], set[int]]:
    """This tree's rows; its whole-life CPU per device per run, and the runs that
    kept the schedule."""
    who = f"`{tree}`: " if tree is not None else ""
    achieved = [r["rate"]["achieved_per_s"] / r["rate"]["target_per_s"] for r in rows]
    kept = [i for i, a in enumerate(achieved) if a >= _KEPT]
    held = f"{len(kept)} of {len(rows)} kept the schedule"
    if not kept:
        held, kept = "none kept the schedule: medians over all", list(range(len(rows)))

    def median(values: list[float]) -> float:
        return statistics.median(values[i] for i in kept)

    lags = [r["schedule_lag_ms"]["p99"] for r in rows]
    connected = [float(r["outcomes"]["connected"]) for r in rows]
    cpu = [r["generator"]["cpu_ms_per_device"] for r in rows]
    whole = [r["generator"]["whole_cpu_ms_per_device"] for r in rows]
    # Reports before the coordinator's CPU was counted have none.
    coordinator = [r["generator"].get("coordinator_cpu_s", 0.0) * 1e3 / r["devices"] for r in rows]
    whole_ratio = [w / h for w, h in zip(whole, s_times, strict=True)]
    cpu_ratio = [c / h for c, h in zip(cpu, s_times, strict=True)]
    acts = "connecting and disconnecting" if args.no_publish else "connecting, publishing"
    _row(
        f"{who}achieved / target arrival rate ({held})",
        f"**{statistics.median(achieved):.2%}**",
        achieved,
        "{:.2%}",
    )
    _row(f"{who}schedule lag p99", f"{median(lags):.1f} ms", lags, "{:.1f}")
    _row(
        f"{who}generator CPU per device (preparing, {acts}, recording), from the schedule's start",
        f"{median(cpu):.2f} ms",
        cpu,
        "{:.2f}",
    )
    _row(
        f"{who}generator CPU per device, whole life (the first window prepared before the "
        "start included)",
        f"{median(whole):.2f} ms",
        whole,
        "{:.2f}",
    )
    _row(
        f"{who}whole life / `s_time`, same repeat",
        f"**{median(whole_ratio):.2f}x**",
        whole_ratio,
        "{:.2f}",
    )
    for name, values in references:
        if values:
            ratio = [w / v for w, v in zip(whole, values, strict=True)]
            _row(
                f"{who}whole life / {name}, same repeat",
                f"**{median(ratio):.2f}x**",
                ratio,
                "{:.2f}",
            )
    _row(
        f"{who}from the schedule's start / `s_time`, same repeat",
        f"{median(cpu_ratio):.2f}x",
        cpu_ratio,
        "{:.2f}",
    )
    _row(
        f"{who}the coordinating process's CPU per device while the workers ran (not above)",
        f"{median(coordinator):.3f} ms",
        coordinator,
        "{:.3f}",
    )
    _row(f"{who}devices connected", f"{median(connected):.0f}", connected, "{:.0f}")
    return whole, set(kept)


def _beside(
    what: str,
    short: str,
    values: list[float],
    s_times: list[float],
    per_device: str = "CPU per device",
) -> None:
    """Rows for a client run in each repeat beside the generator's: its CPU per
    device, and that over the repeat's `s_time` (nothing when it did not run)."""
    if not values:
        return
    ratios = [v / s for v, s in zip(values, s_times, strict=True)]
    _row(f"{what}: {per_device}", f"{statistics.median(values):.3f} ms", values, "{:.3f}")
    _row(
        f"{short} / `s_time`, same repeat",
        f"{statistics.median(ratios):.2f}x",
        ratios,
        "{:.2f}",
    )


def _row(what: str, median: str, values: list[float], form: str) -> None:
    print(f"| {what} | {median} | " + ", ".join(form.format(x) for x in values) + " |")


if __name__ == "__main__":
    main()
