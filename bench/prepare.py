"""CPU to prepare a device for its connect: its certificate and key loaded into
the worker's TLS context and its session made (``DeviceTls``), as a `loadgen
run` worker prepares each device ahead of its schedule.

    .venv/bin/python -m bench.prepare [--devices 2000] [--repeats 5] [--tree BEFORE --tree .]

Each repeat prepares the fleet's devices in a fresh process, in batches of 100,
and takes the median and the minimum of the batches' CPU per device. With
``--tree`` (given more than once) each repeat runs each checkout's ``loadgen`` in
turn, the order alternating from repeat to repeat, and prints their ratio per
repeat: the machine drifts within minutes, a ratio in one repeat does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from bench import trees as trees_option
from bench.connect import mosquitto_bed

_BATCH = 100

_CHILD = """
import gc, json, sys, time
from pathlib import Path
BATCH = int(sys.argv[4])
from loadgen.certs.store import FleetStore
from loadgen.transport.tls import ClientTls, DeviceTls
fleet = FleetStore(Path(sys.argv[1]))
devices = list(fleet.devices())[: int(sys.argv[3])]
paths = [(f"{fleet.path}/{d.cert}", f"{fleet.path}/{d.key}") for d in devices]
tls = ClientTls(ca_file=Path(sys.argv[2]))
DeviceTls(tls, *paths[0], "localhost")  # the first of a chain takes the long way
kept, batches = [], []
for start in range(1, len(paths) - BATCH + 1, BATCH):
    gc.collect()
    cpu = time.process_time()
    for cert, key in paths[start : start + BATCH]:
        kept.append(DeviceTls(tls, cert, key, "localhost"))
    batches.append((time.process_time() - cpu) / BATCH * 1e6)
print(json.dumps(batches))
"""


def _prepare(tree: Path | None, fleet: Path, ca: Path, devices: int) -> list[float]:
    out = subprocess.run(
        [trees_option.python(tree), "-c", _CHILD, str(fleet), str(ca), str(devices), str(_BATCH)],
        capture_output=True,
        text=True,
        **trees_option.started_in(tree),
    )
    if out.returncode:
        raise SystemExit(f"preparing in {tree or '.'} failed:\n{out.stderr}")
    batches: list[float] = json.loads(out.stdout)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    trees_option.add_option(parser)
    args = parser.parse_args()
    trees = trees_option.chosen(args)
    medians: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    minima: dict[int, list[float]] = {i: [] for i in range(len(trees))}
    with mosquitto_bed(args.devices) as bed:
        ca = bed.broker.server_ca.directory / "ca.pem"
        for repeat in range(args.repeats):
            for i in trees_option.turns(len(trees), repeat):
                batches = _prepare(trees[i], bed.fleet.path, ca, args.devices)
                medians[i].append(statistics.median(batches))
                minima[i].append(min(batches))
    print(
        f"{args.devices} devices prepared in batches of {_BATCH}, "
        f"{args.repeats} repeats, a fresh process each"
    )
    print()
    print("| CPU per device prepared (µs) | median of the repeats | repeats |")
    print("| --- | ---: | --- |")
    for i, tree in enumerate(trees):
        who = f"`{tree}`: " if len(trees) > 1 else ""
        for what, values in (("median batch", medians[i]), ("fastest batch", minima[i])):
            runs = ", ".join(f"{v:.0f}" for v in values)
            print(f"| {who}{what} | {statistics.median(values):.0f} | {runs} |")
    if len(trees) > 1:
        ratios = [a / b for a, b in zip(medians[len(trees) - 1], medians[0], strict=True)]
        runs = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"| `{trees[-1]}` / `{trees[0]}`, median batch, same repeat "
            f"| **{statistics.median(ratios):.2f}x** | {runs} |"
        )


if __name__ == "__main__":
    main()
