"""JSON text for the hot paths: orjson where it can, the standard library where it cannot.

Every task costs several small encodings (its payload, its events, its result) and a decoding or
two; orjson does each several times faster than :mod:`json`. What orjson refuses (an integer
wider than 64 bits, a lone surrogate) goes to :mod:`json`, so nothing :mod:`json` accepts is
refused, and what neither can encode (a datetime, a set) raises ``TypeError`` as :mod:`json` does.
Differences from :func:`json.dumps`: the text is compact and not ASCII-escaped; NaN and infinity
become ``null`` (JSON has neither; PostgreSQL refuses the ``NaN`` :mod:`json` writes); and UUIDs
and enum members, which :mod:`json` refuses, are written as their text and their value.

Records that are hashed (the vault's audit chain) keep :mod:`json` and its exact text.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["Encoded", "dumps", "loads"]

# Keys that are not strings become strings, as json.dumps makes them; datetimes and dataclasses are
# refused (TypeError), as json.dumps refuses them, instead of being written in a form of orjson's.
_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class Encoded(str):
    """JSON text already encoded (and checked): written as it is where a value would be encoded."""

    __slots__ = ()


def dumps(value: Any) -> str:
    """Return ``value`` as JSON text; raise TypeError or ValueError for what is not JSON."""
    if type(value) is Encoded:
        return str(value)
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def loads(text: str | bytes) -> Any:
    """Return the value of JSON ``text`` (also the ``NaN`` and ``Infinity`` :mod:`json` writes)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
