"""Readable templates (YAML or JSON) to the registration config AWS takes:
``templateBody`` as an escaped JSON string, and ``roleArn``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadgen.config import read_yaml
from loadgen.emulator.structure import config_problems, template_problems
from loadgen.errors import ConfigError
from loadgen.files import read_text
from loadgen.nesting import parse_json


def read_template(path: Path, *, configs: bool = False) -> Any:
    """A readable template file's data, not yet checked; with ``configs``, the
    template a registration config holds too (as `template check` reads it),
    checked but for its ``roleArn``, which a render replaces."""
    if path.suffix in (".yaml", ".yml"):
        # Read as scenarios and profiles are: YAML 1.2 (a country NO stays "NO"),
        # and a key given twice is an error, not the last one silently winning.
        data, _ = read_yaml(path, what="template")
    else:
        text = read_text(path, what="template")
        try:
            # strict=False, as a registration config is read: AWS's readable
            # layout has raw line breaks inside strings.
            data = parse_json(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a template: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and "templateBody" in data:
        if not configs:
            raise ConfigError(f"{path}: already a registration config (it has templateBody)")
        template, problems = config_problems(data)
        problems = [p for p in problems if p.where != "roleArn"]
        if problems:
            raise ConfigError(f"{path}: {problems[0]}")
        return template
    return data


def load_template(path: Path, *, configs: bool = False) -> dict[str, Any]:
    """A readable template AWS would accept (with ``configs``, also the one a
    registration config holds), or a ``ConfigError`` naming the file and the
    location of its first problem."""
    data = read_template(path, configs=configs)
    problems = template_problems(data)
    if problems:
        raise ConfigError(f"{path}: {problems[0]}")
    assert isinstance(data, dict)
    return data


def registration_config(template: dict[str, Any], role_arn: str) -> dict[str, Any]:
    return {"templateBody": json.dumps(template, indent=2), "roleArn": role_arn}


def render_registration(
    path: Path, role_arn: str, role_option: str, *, configs: bool = False
) -> dict[str, Any]:
    """The registration config for the readable template at ``path`` (with
    ``configs``, also for a registration config's template, with ``role_arn``),
    checked as the emulator checks a config; a bad role ARN is named by the
    option or field ``role_option`` that gave it."""
    config = registration_config(load_template(path, configs=configs), role_arn)
    _, problems = config_problems(config)
    if problems:
        first = problems[0]
        where = role_option if first.where == "roleArn" else f"{path}: {first.where}"
        raise ConfigError(f"{where}: {first.message}")
    return config
