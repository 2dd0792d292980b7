"""Typed errors. Everything a user can cause is a ``UserError``: the CLI prints its
message on one line and exits 2, never a traceback."""

from __future__ import annotations


class LoadgenError(Exception):
    """Base class of the errors this package raises on purpose."""


class UserError(LoadgenError):
    """Bad input: configuration, arguments, files. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file (profile, scenario) is malformed or invalid."""


# Where a field is in a file's data: keys and list indices, outermost first.
Loc = tuple[str | int, ...]


def field_name(loc: Loc) -> str:
    """``after_connect[0].publish.topic``: as the docs and the other messages spell it."""
    name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return name.removeprefix(".") or "(document)"


class FieldError(ConfigError):
    """A field's value refused after its file loaded, by a check that needs more
    than the file (the machine's limits, the fleet, the other options): the
    command that read the file puts its name and the field's line in front
    (``loadgen.config.Loaded.located``)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(f"{field_name(loc)}: {message}")
        self.loc = loc
        self.message = message


class CAError(UserError):
    """A CA directory is missing, unreadable or inconsistent."""


class FleetError(UserError):
    """A fleet store is inconsistent with what was asked of it."""


class OutputError(LoadgenError):
    """A result file (report, HTML, JUnit, summary) could not be written at the
    end of a run: the disk filled, say. Exit code 1, one line."""


class WriteError(LoadgenError):
    """A file a command makes as it works (a fleet's devices, its manifest)
    could not be written: a full disk, say. Exit code 1, one line; what was
    finished before is kept."""


class IncompleteError(LoadgenError):
    """The results a command gathers are not all there: a shard's report missing
    (after ``--wait``) or there twice. Exit code 1, one line: the shards ran, and
    what they left is wrong, as a failed gate is."""
