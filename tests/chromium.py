"""Headless Chromium driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: the browser reads commands from fd 3 and writes
replies and events to fd 4, each message JSON ended by a NUL), so tests need no
extra Python package.

``Browser.visit`` opens a page in a fresh tab and returns what a test asserts
on: the value of a script, a screenshot, and everything that went wrong
(exceptions, console errors and warnings, log errors, network requests).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# Deadlines sized for a 2-core machine that other jobs keep busy: a renderer can
# take tens of seconds to start there. They bound a wait on a condition (a reply,
# a loaded document), so an idle machine still goes as fast as the browser does.
START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
LOAD_TIMEOUT = 60.0
SCREENSHOT_TIMEOUT = 60.0
# A navigation that never completes is tried again once, in case the browser lost
# it while starting the tab's renderer; a second failure is the page's fault.
NAVIGATIONS = 2
# Loaded: the tab left about:blank and its document (and every subresource) is
# complete. Asked of the page itself, so no load event can be missed or be the
# blank page's.
LOADED = 'location.href !== "about:blank" && document.readyState === "complete"'
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class ChromiumError(RuntimeError):
    pass


@dataclass
class Visit:
    value: Any
    screenshot: bytes
    problems: list[str]
    requests: list[str]


@dataclass
class Browser:
    proc: subprocess.Popen[bytes]
    to_browser: int
    from_browser: int
    log: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""
    _next_id: int = 0

    @classmethod
    def start(cls, profile: Path) -> Browser:
        profile.mkdir(parents=True, exist_ok=True)
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()
        # The child needs the pipes at fd 3 and 4 exactly; pass_fds keeps their
        # numbers, so bash moves them into place before exec'ing Chromium. Above
        # 9 first, so neither end already sits at 3 or 4.
        child_r, child_w = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_r, replies_w)
        )
        os.close(commands_r)
        os.close(replies_w)
        shell = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        log = profile / "chromium.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", shell, str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(child_r, child_w),
                # Its own process group: stop() ends the browser's helpers with it.
                start_new_session=True,
            )
        os.close(child_r)
        os.close(child_w)
        browser = cls(proc, commands_w, replies_r, log)
        browser.call("Browser.getVersion", timeout=START_TIMEOUT)
        return browser

    def stop(self) -> None:
        with contextlib.suppress(ChromiumError, OSError):
            self.call("Browser.close", timeout=3)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        os.close(self.to_browser)
        os.close(self.from_browser)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> dict[str, Any]:
        """Send a command and wait for its reply, keeping events that arrive meanwhile."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._receive(deadline, method):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise ChromiumError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
                self.events.append(reply)

    def _receive(self, deadline: float, waiting_for: str) -> list[dict[str, Any]]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChromiumError(f"no answer to {waiting_for}; see {self.log}")
        ready, _, _ = select.select([self.from_browser], [], [], remaining)
        if not ready:
            raise ChromiumError(f"no answer to {waiting_for}; see {self.log}")
        chunk = os.read(self.from_browser, 1 << 20)
        if not chunk:
            raise ChromiumError(f"Chromium closed the pipe; see {self.log}")
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in complete]

    def visit(self, url: str, script: str, *, width: int = 1280, height: int = 900) -> Visit:
        """Load ``url`` in a new tab, run ``script`` (an expression), take a
        full-page screenshot, and report what went wrong on the way."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=session)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            self._load(url, session)
            value = self.call(
                "Runtime.evaluate",
                {"expression": script, "returnByValue": True, "awaitPromise": True},
                session=session,
            )
            shot = self.call(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True, "fromSurface": True},
                session=session,
                timeout=SCREENSHOT_TIMEOUT,
            )
            # A last round trip so events sent before it (late console output) are in.
            self.call("Runtime.evaluate", {"expression": "1"}, session=session)
            mine = [e for e in self.events if e.get("sessionId") == session]
            return Visit(
                value=_value(value),
                screenshot=base64.b64decode(shot["data"]),
                problems=_problems(mine),
                requests=[
                    e["params"]["request"]["url"]
                    for e in mine
                    if e.get("method") == "Network.requestWillBeSent"
                    and e["params"]["request"]["url"] != url
                ],
            )
        finally:
            self.call("Target.closeTarget", {"targetId": target})
            self.events = [e for e in self.events if e.get("sessionId") != session]

    def _load(self, url: str, session: str) -> None:
        for _ in range(NAVIGATIONS):
            navigated = self.call("Page.navigate", {"url": url}, session=session)
            if "errorText" in navigated:
                raise ChromiumError(f"cannot open {url}: {navigated['errorText']}")
            if self._loaded(session, time.monotonic() + LOAD_TIMEOUT):
                return
        raise ChromiumError(
            f"{url} did not load in {NAVIGATIONS} tries of {LOAD_TIMEOUT:.0f} s; see {self.log}"
        )

    def _loaded(self, session: str, deadline: float) -> bool:
        """Whether the tab's document completes before ``deadline``."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                reply = self.call(
                    "Runtime.evaluate",
                    {"expression": LOADED, "returnByValue": True},
                    session=session,
                    timeout=remaining,
                )
            except ChromiumError:
                if self.proc.poll() is not None:
                    raise
                # The old document's context went away mid-navigation, or the
                # renderer was too busy to answer in time: ask again while time is left.
                continue
            if reply.get("result", {}).get("value") is True:
                return True
            time.sleep(0.05)
        return False


def _value(reply: dict[str, Any]) -> Any:
    if "exceptionDetails" in reply:
        raise ChromiumError(f"the script threw: {reply['exceptionDetails']}")
    return reply["result"].get("value")


def _problems(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text")
            out.append(f"exception: {thrown} ({details.get('url')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in (
            "error",
            "warning",
            "assert",
        ):
            args = [a.get("value", a.get("description")) for a in params.get("args", [])]
            out.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(f"log: {params['entry'].get('text')} ({params['entry'].get('url')})")
    return out


# -- PNG, enough to say a screenshot is a real picture ---------------------------


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    # Distinct colours among the pixels sampled.
    colors: int


def read_png(data: bytes, sample_rows: int = 60) -> Png:
    """Parse and inflate a PNG (8-bit RGB or RGBA, not interlaced) and count
    the distinct colours in evenly spaced rows. Every row is unfiltered, since
    filters refer to the row above, but only the sampled ones are counted."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    chunks = _chunks(data[8:])
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks["IHDR"][0])
    if depth != 8 or color_type not in (2, 6) or interlace:
        raise ValueError(f"unexpected PNG layout: depth {depth}, colour type {color_type}")
    bpp = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks["IDAT"]))
    stride = width * bpp
    if len(raw) != height * (stride + 1):
        raise ValueError("PNG data does not match its size")
    every = max(1, height // sample_rows)
    colors: set[bytes] = set()
    previous = bytearray(stride)
    for y in range(height):
        row = _unfilter(
            raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)], previous, bpp
        )
        if y % every == 0:
            colors.update(bytes(row[x : x + bpp]) for x in range(0, stride, bpp * 4))
        previous = row
    return Png(width, height, len(colors))


def _chunks(data: bytes) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    at = 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8].decode("ascii")
        out.setdefault(kind, []).append(data[at + 8 : at + 8 + length])
        at += 12 + length
    return out


def _unfilter(kind: int, line: bytes, above: bytearray, bpp: int) -> bytearray:
    row = bytearray(line)
    n = len(row)
    if kind == 1:
        for i in range(bpp, n):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:
        row = bytearray((a + b) & 0xFF for a, b in zip(row, above, strict=True))
    elif kind == 3:
        for i in range(n):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + above[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(n):
            a = row[i - bpp] if i >= bpp else 0
            b = above[i]
            c = above[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            row[i] = (row[i] + pred) & 0xFF
    elif kind != 0:
        raise ValueError(f"unknown PNG filter {kind}")
    return row
