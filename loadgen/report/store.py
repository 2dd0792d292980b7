"""Where a report file goes: a local path or an ``s3://BUCKET/KEY`` URL, given to
an option (``--report``, ``--html``, ``-o``), checked before any work and written
at the end. A local file is written atomically as before; an S3 object is one
PUT, which readers never see half done either."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from loadgen.errors import UserError
from loadgen.files import check_writable, write_output
from loadgen.report import s3
from loadgen.report.s3 import S3, S3Url

Location = Path | S3Url
JSON = "application/json"
HTML = "text/html; charset=utf-8"
XML = "application/xml"
MARKDOWN = "text/markdown; charset=utf-8"
# Another scheme (https://, gs://) would otherwise become a local path of that name.
OTHER_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Destination:
    """A file a command writes, with the option that named it (for its errors)."""

    location: Location
    option: str

    def __str__(self) -> str:
        return str(self.location)

    def check(self, warn: Callable[[str], None] | None = None) -> None:
        """Refuse, before any work, a place the file could not be written: a
        local path as ``check_writable`` does; in S3, a bucket that does not
        exist or cannot be reached, or missing credentials."""
        if isinstance(self.location, S3Url):
            S3(self.option, check=True).check_bucket(self.location, warn)
        else:
            check_writable(self.location, self.option)

    def write(self, data: bytes, content_type: str) -> None:
        if isinstance(self.location, S3Url):
            S3(self.option).put(self.location, data, content_type)
        else:
            write_output(self.location, data)

    def names(self, location: Location) -> bool:
        """Whether this destination is ``location`` (a merge does not read its
        own output back from the folder or prefix it lists)."""
        if isinstance(self.location, S3Url) or isinstance(location, S3Url):
            return self.location == location
        return self.location.resolve() == location.resolve()


def destination(text: str, option: str) -> Destination:
    if s3.is_url(text):
        return Destination(s3.parse_object(text, option), option)
    if OTHER_SCHEME.match(text):
        raise UserError(f"{option} {text}: a local path or an s3://BUCKET/KEY URL")
    return Destination(Path(text), option)


class DestinationType(click.ParamType[Destination, Any]):
    """An option's file: a local path or ``s3://BUCKET/KEY``. A malformed URL is
    the option's one-line error."""

    name = "path|s3://bucket/key"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "FILE|s3://BUCKET/KEY"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Destination:
        if isinstance(value, Destination):
            return value
        option = param.opts[-1] if param is not None and param.opts else "output"
        return destination(str(value), option)


DESTINATION = DestinationType()
