"""MQTT topic filters (section 4.7): ``+`` one level, ``#`` the rest."""

from __future__ import annotations


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter``. Topics starting with ``$`` are
    not matched by a filter starting with a wildcard."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return i == len(parts) - 1
        if i >= len(levels):
            return False
        if part != "+" and part != levels[i]:
            return False
    return len(parts) == len(levels)


def valid_filter(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a topic filter at all (MQTT 4.7.1): not empty,
    ``+`` alone in its level, ``#`` alone in the last."""
    if not topic_filter:
        return False
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if ("+" in part and part != "+") or ("#" in part and (part != "#" or i < len(parts) - 1)):
            return False
    return True
