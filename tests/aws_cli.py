"""The aws CLI (pip awscli, with its own copy of botocore): a client of the
emulator's control plane that nobody here wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AWS = Path(sys.executable).parent / "aws"


def aws_cli(url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The aws CLI (its own botocore, not ours) against the emulator, with
    made-up credentials and no configuration of the user's."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "AKIDEMULATOR",
        "AWS_SECRET_ACCESS_KEY": "emulator-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return subprocess.run(
        [str(AWS), "--endpoint-url", url, "--output", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def aws_iot(url: str, home: Path, *args: str) -> dict:
    """`aws iot ARGS` that must succeed; its JSON answer ({} when it prints none)."""
    proc = aws_cli(url, home, "iot", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else {}
