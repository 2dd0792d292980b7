"""Checkouts compared inside one benchmark run (``--tree``, given more than
once): each repeat runs each checkout's ``loadgen`` in turn, the order rotating
from repeat to repeat (the machine drifts within a repeat), each started from
its own folder, so that ``python -m`` imports that checkout's ``loadgen`` and
nothing else, with the checkout's own ``.venv`` interpreter where it has one (the
same code under two Pythons: a worktree whose ``.venv`` another Python made)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a checkout whose loadgen to run (repeatable: each runs in turn in every repeat)",
    )


def chosen(args: argparse.Namespace) -> list[Path | None]:
    """The checkouts given, or [None]: the current one."""
    return [t.resolve() for t in args.tree] if args.tree else [None]


def turns(count: int, repeat: int) -> list[int]:
    """The order of ``count`` checkouts in repeat ``repeat``."""
    order = list(range(count))
    return order[repeat % count :] + order[: repeat % count]


def started_in(tree: Path | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a command from ``tree``'s checkout."""
    if tree is None:
        return {}
    return {"cwd": tree, "env": {**os.environ, "PYTHONPATH": str(tree)}}


def python(tree: Path | None) -> str:
    """The interpreter that runs ``tree``'s ``loadgen``: its own ``.venv``'s, or this one."""
    if tree is not None and (own := tree / ".venv" / "bin" / "python").exists():
        return str(own)
    return sys.executable
