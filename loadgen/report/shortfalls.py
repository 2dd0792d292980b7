"""What keeps a merge from judging the whole run, whatever its gates say: a
shard missing (a merge without --expect), a shard stopped before its end, one
that lost a worker, one whose embedded emulator stopped. ``loadgen run`` exits
non-zero for each but the first in the shard's own pod, where a pipeline that
waits for the merge never looks."""

from __future__ import annotations

from typing import Any

from loadgen.report.merge import shards_of
from loadgen.report.show import emulator_stopped_line, missing_shards_line


def shortfalls(named: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> list[str]:
    """One line for each kind of shortfall of the reports merged (each with the
    name it was read from) into ``merged``; none when they are the whole run
    and ran whole."""
    lines: list[str] = []
    if (missing := missing_shards_line(merged)) is not None:
        lines.append(missing)
    stopped = [_who(name, report) for name, report in named if report.get("partial")]
    if stopped:
        lines.append(
            f"partial: {', '.join(stopped)} stopped before the end of the run; the merge "
            "holds what ran"
        )
    for name, report in named:
        for worker, why in ((report.get("accounting") or {}).get("workers_lost") or {}).items():
            lines.append(
                f"{_who(name, report)}: worker {worker} {why}; its unfinished devices are errors"
            )
        if stopped_why := (report.get("jitp") or {}).get("emulator_stopped"):
            lines.append(f"{_who(name, report)}: {emulator_stopped_line(stopped_why)}")
    return lines


def _who(name: str, report: dict[str, Any]) -> str:
    """A report as a line names it: by its shard, when it is one, and its name."""
    held = shards_of(report)
    if len(held) == 1:
        index, count = held[0]
        return f"shard {index}/{count} ({name})"
    return name
