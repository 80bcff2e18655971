"""Topic patterns: dot-separated segments, ``*`` for one segment, ``#`` for any number.

``htm.sla.*`` matches ``htm.sla.warning`` but not ``htm.sla`` or ``htm.sla.a.b``;
``htm.#`` matches ``htm`` and everything below it.
"""

from __future__ import annotations

import functools
import re

from grace import errors

__all__ = ["literal_prefix", "matches", "validate_pattern", "validate_topic"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")


@functools.lru_cache(maxsize=1024)  # a few topics, published thousands of times a second
def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a concrete topic name, else raise InvalidInput."""
    if not topic or len(topic) > 200 or not all(_SEGMENT.match(s) for s in topic.split(".")):
        raise errors.InvalidInput(f"invalid topic {topic[:80]!r}: use dot-separated words such as 'htm.task.created'")
    return topic


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise InvalidInput."""
    segments = pattern.split(".") if pattern else []
    if not segments or len(pattern) > 200 or not all(s in {"*", "#"} or _SEGMENT.match(s) for s in segments):
        raise errors.InvalidInput(f"invalid topic pattern {pattern[:80]!r}: use words, '*' or '#' between dots")
    return pattern


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for i, segment in enumerate(pattern.split(".")):
        sep = r"\." if i else ""
        if segment == "#":
            parts.append(r"(?:\.[^.]+)*" if i else r"(?:[^.]+(?:\.[^.]+)*)?")
        elif segment == "*":
            parts.append(sep + r"[^.]+")
        else:
            parts.append(sep + re.escape(segment))
    return re.compile("^" + "".join(parts) + "$")


def matches(pattern: str, topic: str) -> bool:
    """Return whether ``topic`` falls under ``pattern``."""
    return _compile(pattern).match(topic) is not None


def literal_prefix(pattern: str) -> str:
    """Return the part of ``pattern`` before its first wildcard (for indexed filtering)."""
    out: list[str] = []
    for segment in pattern.split("."):
        if segment in {"*", "#"}:
            return ".".join(out) + ("." if out else "")
        out.append(segment)
    return pattern
