"""YAML configuration files validated by pydantic, with errors that name the file,
the line and the field.

PyYAML's plain loader forgets where a value came from, so the document is composed
into nodes first and every mapping key and value remembers its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from loadgen.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class _Document:
    """Plain Python data plus the line (1-based) of every path in it."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                out[key] = self.build(value_node, (*loc, key))
                # The line of a key is where a user looks for an unknown or bad field.
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    @staticmethod
    def _scalar(node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(f"{node.start_mark.line + 1}: a key must be a plain value")
        return _construct(node)

    def line_of(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None


def _construct(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _compose(text: str, path: Path) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None


def _field_name(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "(document)"


def load_model(path: Path, model: type[M], *, what: str) -> M:
    """Read ``path`` as YAML and validate it as ``model``; any problem is a one-line
    ``ConfigError`` naming the file, the line and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    node = _compose(text, path)
    if node is None:
        raise ConfigError(f"{path}: the {what} is empty")
    doc = _Document()
    try:
        data = doc.build(node, ())
    except ConfigError as exc:
        raise ConfigError(f"{path}:{exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:{doc.line_of(())}: the {what} must be a mapping of fields")
    return validate(data, model, path=path, doc=doc)


def validate(
    data: dict[str, Any], model: type[M], *, path: Path, doc: _Document | None = None
) -> M:
    """Validate already-loaded data (``doc`` gives lines when it came from YAML)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, doc)) from None


def _describe(exc: ValidationError, path: Path, doc: _Document | None) -> str:
    found = [_locate(err, doc) for err in exc.errors(include_url=False)]
    # A union reports one error per member; the member that got furthest into the
    # user's document is the one the user meant, and a key the user wrote beats a
    # key the user left out. Errors at a prefix of another's path are the same
    # problem seen from further out.
    locs = {f.loc for f in found}
    real = [f for f in found if not any(o != f.loc and o[: len(f.loc)] == f.loc for o in locs)]
    best = min(real, key=lambda f: (not f.in_document, -len(f.loc), f.line or 0))
    where = f"{path}:{best.line}" if best.line is not None else f"{path}"
    # Other problems elsewhere, not other members of the same union.
    others = {f.loc for f in real if f.loc[: len(best.loc) - 1] != best.loc[:-1]}
    more = f" (and {len(others)} more)" if others else ""
    return f"{where}: {_field_name(best.loc)}: {best.message}{more}"


@dataclass(frozen=True)
class _Found:
    loc: Loc
    line: int | None
    message: str
    in_document: bool


def _locate(err: Any, doc: _Document | None) -> _Found:
    """Translate pydantic's error location into a path of the user's document.

    Pydantic inserts union member and validator names into ``loc``; only the parts
    that are keys in the document, or the name of a missing field, are kept."""
    raw: tuple[str | int, ...] = err["loc"]
    loc: Loc = ()
    in_document = True
    for i, part in enumerate(raw):
        if doc is None or (*loc, part) in doc.lines:
            loc = (*loc, part)
        elif i == len(raw) - 1 and err["type"] == "missing":
            loc = (*loc, part)
            in_document = False
    msg: str = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif isinstance(err.get("input"), bool):
        msg += " (YAML reads yes/no/on/off as true/false: quote the value)"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    line = doc.line_of(loc) if doc is not None else None
    return _Found(loc, line, msg, in_document)
