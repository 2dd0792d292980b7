"""YAML configuration files validated by pydantic, with errors that name the file,
the line and the field.

PyYAML's plain loader forgets where a value came from, so the document is composed
into nodes first and every mapping key and value remembers its line.

Scalars are read by the YAML 1.2 core schema, not PyYAML's YAML 1.1 one: only
true/false are booleans (``NO`` is Norway, ``on`` is a word), no sexagesimal
``1:30`` numbers, no ``0777`` octal, no dates. A key given twice is an error,
not the last one silently winning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from loadgen.errors import ConfigError, FieldError, Loc, field_name
from loadgen.files import read_text
from loadgen.nesting import MAX_DEPTH

M = TypeVar("M", bound=BaseModel)

_AT_FIELD = "at_field"


def field_error(at: Loc, message: str) -> PydanticCustomError:
    """Raise from a model validator to point at a field inside the model (``at``,
    relative to it) rather than at the model: the error then names that field's
    line. ``message`` is shown as written."""
    return PydanticCustomError(_AT_FIELD, "{message}", {"at": at, "message": message})


_TAG = "tag:yaml.org,2002:"
# The YAML 1.2 core schema (yaml.org/spec/1.2.2, 10.3.2), as (tag, pattern, the
# first characters a match can start with).
_CORE = (
    ("null", r"~|null|Null|NULL|", "~nN"),
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
        r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
        "-+.0123456789",
    ),
)


class _Yaml12Loader(yaml.SafeLoader):
    """Composes nodes tagged by the YAML 1.2 core schema, no deeper than
    ``MAX_DEPTH``: PyYAML composes by recursion, and a few thousand ``[`` in a
    file ended in a RecursionError traceback."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML reads it per class)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: set[str] = set()  # the anchors of the nodes being composed

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        anchor: str | None = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._open:
                # PyYAML makes a node that holds itself: reading it never ends.
                raise ConfigError(f"{line}: the alias *{anchor} is inside the value it names")
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise ConfigError(f"{line}: nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor or "")


for _name, _pattern, _first in _CORE:
    _Yaml12Loader.add_implicit_resolver(
        _TAG + _name,
        re.compile(f"^(?:{_pattern})$"),
        list(_first) + ([""] if _name == "null" else []),
    )


# Values in one file, aliases expanded: scenarios and profiles hold hundreds.
MAX_VALUES = 100_000


class _Document:
    """Plain Python data plus the line (1-based) of every path in it."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.values = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        # An alias is its anchor's value again: nested, they multiply (a
        # "billion laughs" file of a few lines took 1.3 GB and then some).
        self.values += 1
        if self.values > MAX_VALUES:
            raise ConfigError(
                f"{node.start_mark.line + 1}: more than {MAX_VALUES:,} values once its "
                "aliases are expanded; a file this tool reads holds far fewer"
            )
        if len(loc) > MAX_DEPTH:
            # An alias of a deep value, inside another deep value: each file's
            # nesting was within the limit, the expanded one is not.
            raise ConfigError(
                f"{node.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels "
                "once its aliases are expanded"
            )
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                if key in out:
                    first = self.lines[(*loc, key)]
                    raise ConfigError(
                        f"{key_node.start_mark.line + 1}: {field_name((*loc, key))}: "
                        f"duplicate key (first given on line {first})"
                    )
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
    value: str = node.value
    tag = node.tag.removeprefix(_TAG)
    try:
        if tag == "str":
            return value
        if tag == "null":
            return None
        if tag == "bool":
            return {"true": True, "false": False}[value.lower()]
        if tag == "int":
            if value.startswith("0o"):
                return int(value[2:], 8)
            return int(value, 16) if value.startswith("0x") else int(value)
        if tag == "float":
            lowered = value.lower()
            if lowered.endswith(".inf"):
                return -math.inf if lowered.startswith("-") else math.inf
            return math.nan if lowered == ".nan" else float(value)
    except (KeyError, ValueError):
        raise ConfigError(f"{node.start_mark.line + 1}: {value!r} is not a {tag}") from None
    raise ConfigError(f"{node.start_mark.line + 1}: the tag {node.tag} is not supported here")


def _compose(text: str, path: Path) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Yaml12Loader)
    except ConfigError as exc:
        raise ConfigError(f"{path}:{exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        # PyYAML says where by position, on a second line: here, by line.
        row = text.count("\n", 0, exc.position) + 1
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        raise ConfigError(
            f"{path}:{row}: YAML syntax error: {character} is a control character, "
            "not allowed in YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """A validated file, and where each of its fields was written."""

    model: M
    path: Path
    doc: _Document

    def where(self, loc: Loc) -> str:
        """``FILE:LINE: field`` for a message about the field at ``loc``."""
        line = self.doc.line_of(loc)
        at = f"{self.path}:{line}" if line is not None else f"{self.path}"
        return f"{at}: {field_name(loc)}"

    def located(self, error: FieldError) -> ConfigError:
        return ConfigError(f"{self.where(error.loc)}: {error.message}")


def load_model(path: Path, model: type[M], *, what: str) -> M:
    """Read ``path`` as YAML and validate it as ``model``; any problem is a one-line
    ``ConfigError`` naming the file, the line and the field."""
    return read_model(path, model, what=what).model


def read_model(path: Path, model: type[M], *, what: str) -> Loaded[M]:
    """``load_model``, keeping the lines for later messages about the fields."""
    data, doc = read_yaml(path, what=what)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:{doc.line_of(())}: the {what} must be a mapping of fields")
    return Loaded(validate(data, model, path=path, doc=doc), path, doc)


def read_yaml(path: Path, *, what: str) -> tuple[Any, _Document]:
    """A YAML file's plain data, read the strict way every file here is read
    (YAML 1.2 core schema, no duplicate keys), and the line of each path in it."""
    text = read_text(path, what=what)
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
    return data, doc


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
    # key the user left out. At the same depth, what a member says of a key beats
    # another member not knowing it. Errors at a prefix of another's path are the
    # same problem seen from further out.
    locs = {f.loc for f in found}
    real = sorted(
        (f for f in found if not any(o != f.loc and o[: len(f.loc)] == f.loc for o in locs)),
        key=lambda f: (not f.in_document, -len(f.loc), f.unknown, f.line or 0),
    )
    # At each union, the member the user meant is the one whose error ranks
    # first; what the other members say there is only that they do not fit.
    meant: dict[tuple[str | int, ...], str | int | None] = {}
    for f in real:
        if f.fork is not None:
            meant.setdefault(f.fork, f.member)
    problems = [f for f in real if f.fork is None or meant[f.fork] == f.member]
    best = problems[0]
    where = f"{path}:{best.line}" if best.line is not None else f"{path}"
    others = {f.loc for f in problems[1:] if f.loc != best.loc}
    more = f" (and {len(others)} more)" if others else ""
    return f"{where}: {field_name(best.loc)}: {best.message}{more}"


@dataclass(frozen=True)
class _Found:
    loc: Loc
    line: int | None
    message: str
    in_document: bool
    unknown: bool = False  # the field is not one this model (or union member) has
    # Where pydantic's location first named a union member, and which: errors of
    # other members at the same place are the same problem, seen by another.
    fork: tuple[str | int, ...] | None = None
    member: str | int | None = None


def _locate(err: Any, doc: _Document | None) -> _Found:
    """Translate pydantic's error location into a path of the user's document.

    Pydantic inserts union member and validator names into ``loc``; only the parts
    that are keys in the document, or the name of a missing field, are kept."""
    raw: tuple[str | int, ...] = err["loc"]
    if err["type"] == _AT_FIELD:
        raw = (*raw, *err["ctx"]["at"])
    loc: Loc = ()
    in_document = True
    fork: tuple[str | int, ...] | None = None
    member: str | int | None = None
    for i, part in enumerate(raw):
        if doc is None or (*loc, part) in doc.lines:
            loc = (*loc, part)
        elif i == len(raw) - 1 and err["type"] == "missing":
            loc = (*loc, part)
            in_document = False
        elif fork is None:
            fork, member = raw[:i], part
    msg: str = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "bool_type":
        msg = "a boolean: true or false (YAML 1.2 reads yes, no, on and off as text)"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    line = doc.line_of(loc) if doc is not None else None
    return _Found(loc, line, msg, in_document, err["type"] == "extra_forbidden", fork, member)
