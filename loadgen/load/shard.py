"""Shards: one generator's part of a fleet run by N generators side by side (the
pods of a Kubernetes Indexed Job, or machines).

Shard I of N takes the fleet's devices whose index ≡ I (mod N), as a worker takes
its part of a run: every stage of any schedule is spread over the shards alike,
so each runs 1/N of every rate, and a fleet grown by ``--count`` keeps every
device in the shard it was in (contiguous blocks would move them all). The
devices keep the indices, client ids and subjects they have in the whole fleet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadgen.errors import FieldError, Loc, UserError

_SLICE = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


def part_of(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` shared out as evenly as whole numbers go: the
    parts add up to ``total`` (the first ``total % parts`` take one more)."""
    return total // parts + (1 if index < total % parts else 0)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def size(self, fleet: int) -> int:
        """This shard's devices of a ``fleet`` of that many."""
        return len(range(self.index, fleet, self.count))

    def indices(self, fleet: int) -> range:
        return range(self.index, fleet, self.count)

    @property
    def phase(self) -> float:
        """Where this shard's first device falls in its own schedule, in devices:
        device I + jN of the whole fleet is the shard's (j + I/N)-th arrival at
        1/N of the rate, so the shards' schedules interleave into the fleet's."""
        return self.index / self.count

    def check_size(self, fleet: int) -> None:
        """Refuse a shard that a fleet this small leaves no device."""
        if self.size(fleet) == 0:
            raise UserError(
                f"--shard {self}: a fleet of {fleet} leaves this shard no device "
                f"(shards {fleet} and up of {self.count} are empty)"
            )

    def share(self, total: int, field: Loc) -> int:
        """This shard's part of a bound the whole run shares (the scenario's
        ``field``, max_in_flight): the shards' parts add up to ``total``, never
        more, so each shard needs one at least."""
        part = part_of(total, self.count, self.index)
        if part == 0:
            raise FieldError(
                field,
                f"{total} shared by {self.count} shards leaves --shard {self} "
                f"none; give at least {self.count}",
            )
        return part

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class WholeRun:
    """The run a shard is a part of, as its report records it (``shard.of``):
    the scenario's name, the whole fleet's devices, and a digest of the settings
    that make the whole run's schedule and each device's work. Reports of shards
    that differ in it are parts of different runs: merged, they would be a
    partition of no fleet."""

    scenario: str
    fleet: int
    digest: str

    def to_json(self) -> dict[str, str | int]:
        return {"scenario": self.scenario, "fleet": self.fleet, "digest": self.digest}


@dataclass(frozen=True)
class ShardName:
    """What ``--shard`` says: a label on metrics and the Pushgateway group, and
    for ``I/N`` the slice of the fleet this generator runs (a name without a
    slash is a shard split by hand: a label only)."""

    label: str
    slice: Shard | None = None


def parse_shard(value: str, option: str = "--shard") -> ShardName:
    if "/" not in value:
        if not value.strip():
            raise UserError(f"{option}: empty; give I/N (shard I of N) or a name")
        return ShardName(value)
    match = _SLICE.match(value)
    if match is None:
        raise UserError(f"{option} {value}: not I/N with whole numbers, e.g. 0/4 (shard 0 of 4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise UserError(f"{option} {value}: N must be 1 or more")
    if not 0 <= index < count:
        raise UserError(f"{option} {value}: I must be from 0 to {count - 1} (shard I of N)")
    return ShardName(str(index), Shard(index, count))
