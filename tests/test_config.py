"""The loader every scenario and profile goes through: YAML 1.2's core schema,
duplicate keys refused, and errors that name the file, the line and the field."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from pydantic import BaseModel

from loadgen.config import load_model
from loadgen.errors import ConfigError


class _Any(BaseModel):
    value: Any


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NO", "NO"),
        ("yes", "yes"),
        ("on", "on"),
        ("Off", "Off"),
        ("y", "y"),
        ("true", True),
        ("True", True),
        ("FALSE", False),
        ("~", None),
        ("null", None),
        ("", None),
        ("017", 17),  # not octal
        ("0o17", 15),
        ("0x1F", 31),
        ("1:30", "1:30"),  # not sexagesimal 90
        ("2026-12-01", "2026-12-01"),  # not a date
        ("1_000", "1_000"),
        ("1e3", 1000.0),
        ("-.inf", -math.inf),
        ("'true'", "true"),
    ],
)
def test_scalars_are_read_by_the_yaml_1_2_core_schema(tmp_path, text, expected):
    path = tmp_path / "f.yaml"
    path.write_text(f"value: {text}\n")
    assert load_model(path, _Any, what="file").value == expected


def test_a_tag_outside_the_core_schema_is_refused_with_its_line(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("\nvalue: !!timestamp 2026-12-01\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:2: the tag .*timestamp is not supported"):
        load_model(path, _Any, what="file")


def test_aliases_that_multiply_past_any_real_file_are_refused(tmp_path):
    levels = "abcdefg"
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for before, name in itertools.pairwise(levels):
        lines.append(f"{name}: &{name} [{', '.join([f'*{before}'] * 9)}]")
    path = tmp_path / "f.yaml"
    path.write_text("\n".join(lines) + "\nvalue: *g\n")  # 9**7 values
    with pytest.raises(ConfigError, match=r"more than 100,000 values once its aliases"):
        load_model(path, _Any, what="file")


class _Base(BaseModel):
    base: Any
    value: Any


def test_an_alias_used_as_it_is_meant_is_read(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("base: &step {topic: t, qos: 1}\nvalue: [*step, *step]\n")
    data = load_model(path, _Base, what="file")
    assert data.value == [{"topic": "t", "qos": 1}] * 2


def _scenario_error(tmp_path, text: str) -> str:
    from loadgen.scenario.schema import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: m\nendpoint: embedded\nfleet: {ca: ca, store: st, count: 3}\n"
        "load: {executor: burst}\n" + text
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return str(info.value)


def test_one_mistake_in_a_step_is_one_problem_not_one_per_kind_of_step(tmp_path):
    """A step is a publish, a subscribe or a hold: the other kinds not fitting
    it are not more problems."""
    message = _scenario_error(tmp_path, 'after_connect:\n  - publish: {topic: ""}\n')
    assert message.endswith("after_connect[0].publish.topic: a topic cannot be empty")


def test_mistakes_in_two_places_say_there_is_one_more(tmp_path):
    message = _scenario_error(
        tmp_path, 'after_connect:\n  - publish: {topic: ""}\nretry: {initial: soon}\n'
    )
    assert message.endswith("(and 1 more)")


def test_mistakes_in_two_steps_are_two_problems_whatever_kinds_of_step_there_are(tmp_path):
    message = _scenario_error(
        tmp_path,
        'after_connect:\n  - publish: {topic: "a", qos: 7}\n  - publish: {topic: "b", qos: 9}\n',
    )
    assert message.endswith("after_connect[0].publish.qos: Input should be 0 or 1 (and 1 more)")


def test_two_mistakes_in_one_step_are_two_problems(tmp_path):
    message = _scenario_error(
        tmp_path, 'after_connect:\n  - publish: {topic: "a", qos: 7, count: -3}\n'
    )
    assert message.endswith("(and 1 more)")


def test_an_alias_inside_the_value_it_names_is_refused_with_its_line(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("base: 1\nvalue: &x [1, *x]\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:2: the alias \*x is inside the value it names"):
        load_model(path, _Any, what="file")


def test_a_file_nested_deeper_than_any_real_one_is_refused_with_its_line(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("base: 1\nvalue: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"f\.yaml:2: nested deeper than 100 levels$"):
        load_model(path, _Any, what="file")


def test_aliases_that_nest_past_the_limit_once_expanded_are_refused(tmp_path):
    path = tmp_path / "f.yaml"
    deep = "[" * 60 + "]" * 60
    path.write_text(f"base: &deep {deep}\nvalue: {'[' * 60}*deep{']' * 60}\n")
    with pytest.raises(ConfigError, match=r"nested deeper than 100 levels once its aliases"):
        load_model(path, _Any, what="file")


def test_a_control_character_is_one_line_naming_its_line(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("base: 1\nvalue: 2\n# a comment \x01\n")
    with pytest.raises(ConfigError) as info:
        load_model(path, _Any, what="file")
    assert str(info.value) == (
        f"{path}:3: YAML syntax error: #x0001 is a control character, not allowed in YAML"
    )


@pytest.mark.parametrize("name", ["''", ".example.com", "a..example.com", "a" * 64])
def test_a_server_name_tls_cannot_send_is_refused_with_its_line(tmp_path, name):
    # Accepted, it failed every device while preparing its connection.
    from loadgen.scenario.schema import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: m\nendpoint: 127.0.0.1:8883\nfleet: {ca: ca, store: st, count: 3}\n"
        f"load: {{executor: burst}}\ntls:\n  server_name: {name}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert f"{path}:6: tls.server_name: " in str(info.value)
    assert "no host name TLS can send" in str(info.value)
