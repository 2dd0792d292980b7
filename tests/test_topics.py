"""Topic filters match topics as MQTT says."""

from __future__ import annotations

import pytest

from loadgen.mqtt.topics import matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "$SYS", False),
        ("#", "$aws/things", False),
        ("$aws/#", "$aws/things", True),
        ("a/b", "a/c", False),
        ("a/+/c", "a//c", True),
    ],
)
def test_filters_match_as_the_specification_says(topic_filter, topic, expected):
    assert matches(topic_filter, topic) is expected
