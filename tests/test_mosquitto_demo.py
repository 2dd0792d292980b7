"""`scripts/mosquitto-demo`: its own usage on --help, and a clear refusal when
its port is taken, both before it sets anything up or starts anything.

The script runs from a copy in an empty folder: had it gone past its checks it
would have tried scripts/setup there and left files behind, which the tests see."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "mosquitto-demo"


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(DEMO, tmp_path / "scripts" / "mosquitto-demo")
    return subprocess.run(
        [str(tmp_path / "scripts" / "mosquitto-demo"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_help_prints_the_demo_usage_and_starts_nothing(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: scripts/mosquitto-demo")
    assert "--port PORT" in result.stdout and "loadgen run" in result.stdout
    assert result.stderr == ""
    assert _files(tmp_path) == ["scripts", "scripts/mosquitto-demo"]


def test_a_taken_port_is_one_line_and_a_failure_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _demo(tmp_path, "--port", str(port), "--count", "10")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"mosquitto-demo: 127.0.0.1:{port} is in use by another program; stop it or pick --port"
    ]
    assert result.stdout == ""
    assert _files(tmp_path) == ["scripts", "scripts/mosquitto-demo"]


def test_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--port", "99999")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["mosquitto-demo: --port 99999: a port is 1 to 65535"]
