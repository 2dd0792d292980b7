"""The terminal or pipe a command writes to may go away while it runs: a closed
terminal (writes fail with EIO once it hangs up), a ``| tee`` that the same
Ctrl-C killed, a ``| head`` that read enough (EPIPE). What a run measured must
still reach its files, so a write to a stream that has gone is dropped and the
command goes on to its end, and its exit status."""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import TextIO, cast

# What a stream's reader going away looks like to its writer.
_GONE = frozenset({errno.EPIPE, errno.EIO, errno.ECONNRESET})


class Forgiving(io.TextIOBase):
    """``stream``, whose writes after its reader went away are dropped."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        if exc.errno not in _GONE:
            raise exc
        self.gone = True
        # The interpreter flushes the stream once more as it exits, with what it
        # still holds: to nowhere now, not to a traceback.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    # What click and rich ask of a text stream.
    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return not self.gone and self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._stream.errors


def forgive_lost_outputs() -> None:
    """Standard output and error from here on drop writes once their reader is gone."""
    if not isinstance(sys.stdout, Forgiving) and sys.stdout is not None:
        sys.stdout = cast(TextIO, Forgiving(sys.stdout))
    if not isinstance(sys.stderr, Forgiving) and sys.stderr is not None:
        sys.stderr = cast(TextIO, Forgiving(sys.stderr))
