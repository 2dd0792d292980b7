"""What each ``report`` command reads of a report file, checked as the file is
read: a file that lacks a field a command needs, or holds it in another shape, is
one line naming the file and the field, before anything is printed or written.

A field is a dotted path. ``*`` stands for every key of an object, ``#`` for
every key of an object that counts by a whole number (``attempts.per_device``:
``{"1": 90, "2": 10}``), ``#bucket`` for every key of one that counts by
latency bucket (its index, within ``MAX_BUCKET``), ``[]`` for every item of a
list (``[]?``: every item that is not null), and a part ending in ``?`` may be
absent or null (the rest of the path is then not looked for):
``jitp?.provisioning`` is needed only when the report has a ``jitp`` section.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from loadgen.errors import UserError
from loadgen.metrics.stats import BREAKDOWN, PHASES


class Kind(Enum):
    OBJECT = "an object"
    LIST = "a list"
    STRING = "a string"
    NUMBER = "a number"
    NUMBER_OR_NULL = "a number or null"
    TIME = "an ISO 8601 time with a zone"
    BOOLEAN = "true or false"

    def holds(self, value: Any) -> bool:
        if self is Kind.BOOLEAN:
            # "no" is text, and text is true: a partial run would read as whole.
            return isinstance(value, bool)
        if self is Kind.OBJECT:
            return isinstance(value, dict)
        if self is Kind.LIST:
            return isinstance(value, list)
        if self is Kind.STRING:
            return isinstance(value, str)
        if self is Kind.NUMBER_OR_NULL and value is None:
            return True
        if self in (Kind.NUMBER, Kind.NUMBER_OR_NULL):
            # JSON's NaN and Infinity (Python reads them) are no counts or times,
            # nor is a number past any count or time (10**400 is no float).
            return _is_number(value) and abs(value) <= MAX_NUMBER
        if not isinstance(value, str):
            return False
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return False
        # Reports are written in UTC; a time without a zone cannot be put
        # beside theirs (a merge orders its reports' times).
        return when.tzinfo is not None


# Past any count, time or rate a report holds (epoch milliseconds are 2e12).
MAX_NUMBER = 10**18
# Latency buckets grow by 1% (loadgen/metrics/intervals.py): bucket 2,600 is
# over a day, and 1.01**100000 is no float.
MAX_BUCKET = 10_000


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Needs:
    """The fields one command reads."""

    command: str
    fields: tuple[tuple[str, Kind], ...]


# A key ``int()`` reads, as the merge sorts and adds counts by them; nothing
# looser (" 3", "3_0", another script's digits) that a report never holds, and
# no more digits than MAX_NUMBER has (int() refuses 4,301).
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")


def check(report: dict[str, Any], path: Path | str, needs: Needs) -> None:
    for field, kind in needs.fields:
        _walk(report, field.split("."), "", kind, path, needs.command)


def _walk(
    node: Any, parts: list[str], where: str, kind: Kind, path: Path | str, command: str
) -> None:
    if not parts:
        if (
            _is_number(node)
            and abs(node) > MAX_NUMBER
            and kind in (Kind.NUMBER, Kind.NUMBER_OR_NULL)
        ):
            raise UserError(
                f"{path}: field {where} is beyond ±{MAX_NUMBER:.0e}: no count or time is"
            )
        if not kind.holds(node):
            raise UserError(f"{path}: field {where} is {_shape(node)}, not {kind.value}")
        return
    part, rest = parts[0], parts[1:]
    if part in ("*", "#", "#bucket", "[]", "[]?"):
        expected = Kind.LIST if part.startswith("[]") else Kind.OBJECT
        if not expected.holds(node):
            raise UserError(f"{path}: field {where} is {_shape(node)}, not {expected.value}")
        items = enumerate(node) if isinstance(node, list) else node.items()
        for key, value in items:
            if value is None and part == "[]?":
                continue  # an item that may be null: nothing in it to check
            if part.startswith("#"):
                _check_key(str(key), part, where, path)
            inner = f"{where}[{key}]" if part.startswith("[]") else f"{where}.{key}"
            _walk(value, rest, inner, kind, path, command)
        return
    optional = part.endswith("?")
    key = part.removesuffix("?")
    name = f"{where}.{key}" if where else key
    if not isinstance(node, dict):
        raise UserError(f"{path}: field {where} is {_shape(node)}, not {Kind.OBJECT.value}")
    if key not in node or (optional and node[key] is None):
        if optional:
            return
        raise UserError(f"{path}: field {name} is missing (report {command} needs it)")
    _walk(node[key], rest, name, kind, path, command)


def _check_key(key: str, part: str, where: str, path: Path | str) -> None:
    """A key of ``#`` (a whole number) or ``#bucket`` (a latency bucket's index)."""
    if not _WHOLE_NUMBER.fullmatch(key):
        shown = repr(key) if len(key) <= 40 else f"of {len(key):,} characters"
        raise UserError(
            f"{path}: field {where} has the key {shown}, not a whole number (up to 18 digits)"
        )
    if part == "#bucket" and abs(int(key)) > MAX_BUCKET:
        raise UserError(
            f"{path}: field {where} has the key {key}, not a latency bucket "
            f"(-{MAX_BUCKET:,} to {MAX_BUCKET:,})"
        )


def _shape(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON's NaN or Infinity
    for kind in (Kind.OBJECT, Kind.LIST, Kind.STRING, Kind.NUMBER):
        if kind.holds(value):
            return str(kind.value)
    return type(value).__name__


_SUMMARY = ("count", "p50", "p90", "p99", "p99_9", "max")
OBJ, LIST, STR, NUM, NUM_OR_NULL, TIME = (
    Kind.OBJECT,
    Kind.LIST,
    Kind.STRING,
    Kind.NUMBER,
    Kind.NUMBER_OR_NULL,
    Kind.TIME,
)

# The run's counts, which every command but html reads.
_COUNTS = (
    ("devices", NUM),
    ("outcomes", OBJ),
    ("outcomes.*", NUM),
)

# Where the planned devices went, which show and html print and merge adds up.
_ACCOUNTING = (
    ("accounting?", OBJ),
    ("accounting?.planned", NUM),
    ("accounting?.started", NUM),
    ("accounting?.not_started?", NUM),
    ("accounting?.unexpected?", NUM),
    ("accounting?.expected?.*", NUM),
    ("accounting?.notes?.*", NUM),
    ("accounting?.workers_lost?.*", STR),
)

# The emulator's side of the ``jitp`` section, which show, html and merge read.
_JITP = (
    ("jitp?", OBJ),
    ("jitp?.provisioning?.*", NUM),
    ("jitp?.provisioning_failures?.*", NUM),
    ("jitp?.emulator_closes?.*", NUM),
    ("jitp?.emulator_missing?", LIST),
    ("jitp?.emulator_missing?.[].index", NUM),
    ("jitp?.emulator_missing?.[].pid", NUM),
    ("jitp?.emulator_missing?.[].why", STR),
    ("jitp?.emulator_stopped?", STR),
)

# The shards a merge of part of a sharded run lacks, which show and html say.
_SHARDS_MISSING = (
    ("shards?.count", NUM),
    ("shards?.missing?.[]", NUM),
    ("shards?.missing_devices?", NUM),
)

SHOW = Needs(
    "show",
    (
        ("scenario", STR),
        ("endpoint", STR),
        ("duration_s", NUM),
        ("partial?", Kind.BOOLEAN),
        *_COUNTS,
        ("attempts.total", NUM),
        ("attempts.throttled?", NUM_OR_NULL),
        ("rate.target_per_s", NUM_OR_NULL),
        ("rate.achieved_per_s", NUM_OR_NULL),
        ("schedule_lag_ms.p99", NUM_OR_NULL),
        *((f"latency_ms.{p}.{k}", NUM_OR_NULL) for p in PHASES for k in _SUMMARY),
        ("reasons.*.*", NUM),
        ("reason_devices?.*.*.[]", NUM),
        ("generator?", OBJ),
        ("generator?.cpu_ms_per_device?", NUM),
        ("generator?.coordinator_cpu_s?", NUM),
        *_ACCOUNTING,
        *_JITP,
        *_SHARDS_MISSING,
        ("jitp?.first_connect_rejected", NUM),
        ("capacity?.verdict", STR),
        *(
            (f"capacity?.steps.[].{field}", kind)
            for field, kind in (
                ("step", NUM),
                ("rate_per_s", NUM),
                ("achieved_per_s", NUM_OR_NULL),
                ("latency_ms.provision.p50", NUM_OR_NULL),
                ("latency_ms.provision.p99", NUM_OR_NULL),
                ("failed_ratio", NUM_OR_NULL),
                ("throttled", NUM),
                ("passed", Kind.BOOLEAN),
            )
        ),
    ),
)

MERGE = Needs(
    "merge",
    (
        ("run_id?", STR),
        ("run_ids?.[]", STR),
        ("partial?", Kind.BOOLEAN),
        ("shard?.index", NUM),
        ("shard?.count", NUM),
        ("shard?.of?.scenario", STR),
        ("shard?.of?.fleet", NUM),
        ("shard?.of?.digest", STR),
        *_SHARDS_MISSING,
        ("shards?.indices.[]", NUM),
        ("shards?.of?.scenario", STR),
        ("shards?.of?.fleet", NUM),
        ("shards?.of?.digest", STR),
        ("start?.at", NUM),
        ("start?.late_s", NUM),
        ("scenario", STR),
        ("endpoint", STR),
        ("started_at", TIME),
        ("ended_at", TIME),
        *_COUNTS,
        *_ACCOUNTING,
        *_JITP,
        ("jitp?.emulator_processes?", NUM),
        ("attempts.total", NUM),
        ("attempts.per_device.#", NUM),
        ("attempts.provisioning_triggered", NUM),
        ("attempts.throttled?", NUM_OR_NULL),
        ("rate.target_per_s", NUM_OR_NULL),
        ("rate.achieved_per_s", NUM_OR_NULL),
        ("rate.arrivals?.count", NUM),
        ("rate.arrivals?.first_at", NUM_OR_NULL),
        ("rate.arrivals?.last_at", NUM_OR_NULL),
        ("rate.planned?.count", NUM),
        ("rate.planned?.first_s", NUM_OR_NULL),
        ("rate.planned?.last_s", NUM_OR_NULL),
        ("rate.from_shards?.*.sum", NUM),
        ("rate.from_shards?.*.shards", NUM),
        ("reasons.*.*", NUM),
        ("reason_devices?.*.*.[]", NUM),
        ("provision_breakdown_ms?.devices", NUM),
        *((f"provision_breakdown_ms?.{part}", NUM_OR_NULL) for part in BREAKDOWN),
        *((f"histograms.{name}", STR) for name in (*PHASES, "schedule_lag")),
        ("series.started_per_s.[]", NUM),
        ("series.target_per_s?.[]", NUM),
        ("series.outcomes_per_s.*.[]", NUM),
        ("series.latency_buckets?.*.[].#bucket", NUM),
        ("generator?.cpu_s", NUM),
        ("generator?.ahead_cpu_s?", NUM),
        ("generator?.coordinator_cpu_s?", NUM),
        ("load.executor", STR),
        ("load.count", NUM),
        ("load.max_in_flight", NUM),
        ("load.workers", NUM),
        ("load.mqtt_version", STR),
        ("environment", OBJ),
    ),
)

COMPARE = Needs(
    "compare",
    (
        *_COUNTS,
        # What says whether a report measured anything at all (gates.nothing_measured).
        ("devices?", NUM),
        *_ACCOUNTING,
        ("latency_ms.provision.count?", NUM),
        *((f"latency_ms.{p}.{k}", NUM_OR_NULL) for p in PHASES for k in ("p50", "p90", "p99")),
    ),
)

# The HTML page reads every field it can and draws what it finds; the sections
# must have their shape, and the numbers it draws must be numbers.
HTML = Needs(
    "html",
    (
        *(
            (f"{section}?", kind)
            for section, kind in (
                ("outcomes", OBJ),
                ("attempts", OBJ),
                ("latency_ms", OBJ),
                ("rate", OBJ),
                ("reasons", OBJ),
                ("series", OBJ),
                ("load", OBJ),
                ("environment", OBJ),
                ("jitp", OBJ),
                ("capacity", OBJ),
                ("gates", LIST),
            )
        ),
        # Shown in UTC: a time without a zone would be taken as this machine's.
        ("started_at?", TIME),
        ("ended_at?", TIME),
        ("partial?", Kind.BOOLEAN),
        ("devices?", NUM),
        ("duration_s?", NUM),
        ("load?.count?", NUM_OR_NULL),
        ("outcomes?.*", NUM),
        ("attempts?.total?", NUM),
        ("attempts?.provisioning_triggered?", NUM),
        ("attempts?.throttled?", NUM_OR_NULL),
        # Drawn in the order of the attempt counts, which int() reads.
        ("attempts?.per_device?.#", NUM),
        ("latency_ms?.*", OBJ),
        ("latency_ms?.*.*", NUM_OR_NULL),
        ("schedule_lag_ms?.*", NUM_OR_NULL),
        ("rate?.target_per_s?", NUM_OR_NULL),
        ("rate?.achieved_per_s?", NUM_OR_NULL),
        ("reasons?.*", OBJ),
        ("reasons?.*.*", NUM),
        ("reason_devices?.*.*.[]", NUM),
        ("provision_breakdown_ms?.*", NUM_OR_NULL),
        ("series?.started_per_s?.[]", NUM),
        ("series?.target_per_s?.[]", NUM),
        ("series?.outcomes_per_s?.*", LIST),
        ("series?.outcomes_per_s?.*.[]", NUM),
        ("series?.interval_s?", NUM_OR_NULL),
        ("series?.latency_ms?.*", LIST),
        ("series?.latency_ms?.*.[]?", OBJ),
        ("series?.latency_ms?.*.[]?.*", NUM_OR_NULL),
        *_ACCOUNTING,
        *_JITP,
        *_SHARDS_MISSING,
        ("jitp?.first_connect_rejected?", NUM),
        ("gates?.[]", OBJ),
        ("gates?.[].measured?", NUM_OR_NULL),
        ("gates?.[].threshold?", NUM_OR_NULL),
        ("gates?.[].unit?", STR),
        ("capacity?.highest_sustainable_per_s?", NUM_OR_NULL),
        ("capacity?.first_broken_per_s?", NUM_OR_NULL),
        ("capacity?.slos?", LIST),
        ("capacity?.steps?.[]", OBJ),
        *(
            (f"capacity?.steps?.[].{field}?", NUM_OR_NULL)
            for field in (
                "step",
                "rate_per_s",
                "achieved_per_s",
                "devices",
                "latency_ms?.provision?.p50",
                "latency_ms?.provision?.p99",
                "failed_ratio",
                "throttled",
            )
        ),
        ("capacity?.steps?.[].broken?.[]", STR),
    ),
)
