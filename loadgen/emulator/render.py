"""Readable templates (YAML or JSON) to the registration config AWS takes:
``templateBody`` as an escaped JSON string, and ``roleArn``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from loadgen.emulator import template as tpl
from loadgen.emulator.errors import TemplateError
from loadgen.errors import ConfigError


def load_template(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a template: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and "templateBody" in data:
        raise ConfigError(f"{path}: already a registration config (it has templateBody)")
    try:
        return tpl.parse(data)
    except TemplateError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def registration_config(template: dict[str, Any], role_arn: str) -> dict[str, Any]:
    return {"templateBody": json.dumps(template, indent=2), "roleArn": role_arn}
