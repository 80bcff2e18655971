"""Topic patterns."""

from __future__ import annotations

import pytest

from grace import errors
from grace.bus import matches
from grace.bus.topics import literal_prefix, validate_pattern, validate_topic


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("htm.sla.*", "htm.sla.warning", True),
        ("htm.sla.*", "htm.sla", False),
        ("htm.sla.*", "htm.sla.a.b", False),
        ("htm.sla.*", "htm.slash.warning", False),
        ("htm.#", "htm", True),
        ("htm.#", "htm.task.created", True),
        ("htm.#", "htmx.task", False),
        ("#", "anything.at.all", True),
        ("*.task.*", "htm.task.created", True),
        ("htm.task.created", "htm.task.created", True),
        ("htm.task.created", "htm.task.create", False),
    ],
)
def test_wildcards(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


def test_literal_prefix_stops_at_first_wildcard() -> None:
    assert literal_prefix("htm.sla.*") == "htm.sla."
    assert literal_prefix("#") == ""
    assert literal_prefix("secrets.consent.request") == "secrets.consent.request"


@pytest.mark.parametrize("bad", ["", "a..b", "has space", "a.*", "x" * 201])
def test_bad_topics_are_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidInput):
        validate_topic(bad)


@pytest.mark.parametrize("bad", ["", "a..b", "a.**", "a.b c"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidInput):
        validate_pattern(bad)
