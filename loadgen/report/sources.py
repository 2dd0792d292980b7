"""The reports ``report merge`` reads: files, folders (every ``*.json`` under
them), S3 objects and prefixes (every ``*.json`` under them); ``--expect N``
shards in them, each once; and ``--wait``, so that a merge Job started beside
its shards can wait until the last one has written its report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from loadgen.errors import IncompleteError, UserError
from loadgen.report import fields, s3
from loadgen.report.merge import load_report, parse_report, run_ids, shards_of
from loadgen.report.s3 import S3, S3Unavailable, S3Url
from loadgen.report.store import OTHER_SCHEME, Destination, Location
from loadgen.words import ranges

Named = list[tuple[str, dict[str, Any]]]
# How often sources are looked at again while waiting: a LIST request or a
# folder walk each, cheap beside the minutes a merge Job waits.
POLL_S = 2.0
_ARGUMENT = "REPORT"


def source(text: str) -> Location:
    if s3.is_url(text):
        return s3.parse(text, _ARGUMENT)
    if OTHER_SCHEME.match(text):
        raise UserError(f"{_ARGUMENT} {text}: a file, a folder or an s3://BUCKET/KEY URL")
    return Path(text)


class SourceType(click.ParamType[Location, Any]):
    """A report, a folder of reports, ``s3://BUCKET/KEY`` or ``s3://BUCKET/PREFIX/``."""

    name = "report|folder|s3://bucket/key|s3://bucket/prefix/"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Location:
        return value if isinstance(value, Path | S3Url) else source(str(value))


SOURCE = SourceType()


def check_outputs(sources: list[Location], outputs: list[Destination]) -> None:
    """Refuse, before anything is read, an output that is a report given to
    read (to merge, or to draw): writing it would replace that report."""
    for output in outputs:
        for location in sources:
            # A folder or prefix: what the merge finds there is checked as read.
            listed = location.is_prefix if isinstance(location, S3Url) else location.is_dir()
            if not listed and output.names(location):
                raise UserError(
                    f"{output.option} {output}: the same file as {_ARGUMENT} {location}"
                )


@dataclass
class Reader:
    """Reads the sources' reports, again on each ``read`` what changed since
    (a file's mtime and size, an object's ETag): waiting re-reads nothing.

    A report is kept without its ``series`` (a long run's per-second series are
    most of it: about 0.4 MB a minute once parsed), and ``series`` reads it
    again when the merge folds it in: a merge of hundreds of shards holds one
    report's series at a time, not all of them."""

    sources: list[Location]
    # The merge's outputs: one found in a folder or prefix is the merge's own
    # earlier output (merging into the folder again), or a run's report that
    # the merge would overwrite.
    outputs: list[Destination] = field(default_factory=list)
    _cache: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    _where: dict[str, Location] = field(default_factory=dict)
    _s3: S3 = field(default_factory=lambda: S3(_ARGUMENT))

    def read(self, *, missing_ok: bool = False) -> Named:
        """Every report (without its series), named as it was found; a file or
        object given by name that is not there yet is an error, or with
        ``missing_ok`` left out."""
        named = []
        for location, version in self._found(missing_ok):
            name = str(location)
            cached = self._cache.get(name)
            if cached is None or cached[0] != version:
                report = self._load(location)
                del report["series"]
                cached = (version, report)
                self._cache[name] = cached
                self._where[name] = location
            if not self._earlier_output(location, cached[1]):
                named.append((name, cached[1]))
        return named

    def _earlier_output(self, location: Location, report: dict[str, Any]) -> bool:
        """Whether a report found where the merge writes is a merge (its own
        earlier output, which this one replaces, left out); a run's report
        there is refused: the merge would overwrite what it merges."""
        output = next((d for d in self.outputs if d.names(location)), None)
        if output is None:
            return False
        if "run_ids" in report:
            return True
        raise UserError(
            f"{output.option} {output}: the same file as {location}, a run's report the merge reads"
        )

    def series(self, name: str) -> dict[str, Any]:
        """The ``series`` of the report ``read`` named ``name``, read again."""
        kept = self._cache[name][1]
        report = self._load(self._where[name])
        if run_ids(report) != run_ids(kept):
            raise UserError(f"{name}: changed while it was being merged (another run's report)")
        series: dict[str, Any] = report["series"]
        return series

    def _found(self, missing_ok: bool) -> list[tuple[Location, str]]:
        found: list[tuple[Location, str]] = []
        for location in self.sources:
            if isinstance(location, S3Url):
                found += self._objects(location, missing_ok)
            elif location.is_dir():
                found += [(p, _version(p)) for p in _reports_under(location)]
            elif location.exists() or not missing_ok:
                found.append((location, _version(location)))
        return found

    def _objects(self, url: S3Url, missing_ok: bool) -> list[tuple[Location, str]]:
        if url.is_prefix:
            return [
                (item, etag)
                for item, etag in self._s3.listing(url)
                if _is_report_name(item.key.removeprefix(url.key))
            ]
        etag = self._s3.etag(url)
        if etag is None and not missing_ok:
            raise UserError(f"{url}: no such report (a prefix ends with /)")
        return [] if etag is None else [(url, etag)]

    def _load(self, location: Location) -> dict[str, Any]:
        if isinstance(location, S3Url):
            return parse_report(self._s3.get(location), str(location), fields.MERGE)
        return load_report(location, fields.MERGE)


def _reports_under(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*.json")
        if path.is_file() and _is_report_name(str(path.relative_to(folder)))
    )


def _is_report_name(relative: str) -> bool:
    """A ``*.json`` name, none of whose parts is hidden (a temporary file, a
    tool's own folder)."""
    parts = relative.split("/")
    return relative.endswith(".json") and not any(part.startswith(".") for part in parts)


def _version(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return ""  # load_report says what is wrong with it
    return f"{stat.st_mtime_ns}:{stat.st_size}"


@dataclass(frozen=True)
class Shards:
    """Which of the ``expect`` shards the reports hold, and where."""

    expect: int
    found: dict[int, list[str]]

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.expect) if i not in self.found]

    @property
    def twice(self) -> dict[int, list[str]]:
        return {i: names for i, names in sorted(self.found.items()) if len(names) > 1}


def held(report: dict[str, Any], name: str, expect: int) -> list[int]:
    """The shard indices a report holds (a run's ``shard``, a merge's
    ``shards``; their form was checked when the report was read), checked
    against ``--expect``: a report that is no shard of ``expect`` is a one-line
    ``UserError`` naming it."""
    found = shards_of(report)
    if not found:
        raise UserError(
            f"{name}: not a shard's report (no shard field: a run with --shard I/{expect} "
            f"writes one), but --expect {expect}"
        )
    for index, count in found:
        if count != expect:
            raise UserError(f"{name}: shard {index}/{count}, but --expect {expect}")
        if not 0 <= index < count:
            raise UserError(f"{name}: field shard is {index}/{count}: not a shard of {count}")
    return [index for index, _ in found]


def shards(named: Named, expect: int) -> Shards:
    found: dict[int, list[str]] = {}
    for name, report in named:
        for index in held(report, name, expect):
            found.setdefault(index, []).append(name)
    return Shards(expect, found)


def gather(
    reader: Reader,
    expect: int | None,
    wait_s: float,
    say: Callable[[str], None],
    *,
    poll_s: float = POLL_S,
) -> Named:
    """The sources' reports; with ``expect``, once shards 0 to expect-1 are each
    there once, looking again every ``poll_s`` for up to ``wait_s`` seconds.
    Missing shards at the end, or a shard in two reports, is an
    ``IncompleteError`` naming them."""
    where = ", ".join(map(str, reader.sources))
    deadline = time.monotonic() + wait_s
    told: frozenset[int] | None = None
    unavailable = ""  # what was said of S3 not answering, said once
    while True:
        try:
            named = reader.read(missing_ok=wait_s > 0)
        except S3Unavailable as exc:
            # A pod's store not up yet, or a blip: waiting is for that too.
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if str(exc) != unavailable:
                unavailable = str(exc)
                say(f"{exc}; trying again for up to {left:.0f} s")
            time.sleep(min(poll_s, left))
            continue
        if expect is None:
            if not named:
                raise UserError(f"no reports in {where}")
            return named
        found = shards(named, expect)
        if found.twice:
            index, names = next(iter(found.twice.items()))
            raise IncompleteError(
                f"--expect {expect}: shard {index} is in {len(names)} reports: {', '.join(names)}"
            )
        if not found.missing:
            return named
        left = deadline - time.monotonic()
        summary = f"{len(found.found)} of {expect} shards found in {where}"
        if left <= 0:
            waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
            hint = "" if wait_s > 0 else "; --wait DURATION waits for them"
            raise IncompleteError(
                f"--expect {expect}: missing shard {ranges(found.missing)}{waited} "
                f"({summary}{hint})"
            )
        if told != frozenset(found.found):
            told = frozenset(found.found)
            say(f"{summary}; waiting up to {left:.0f} s for shard {ranges(found.missing)}")
        time.sleep(min(poll_s, left))
