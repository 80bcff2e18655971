"""What a request's values may be so that storage holds them: the bounds every input meets at the edge.

Integers are signed 64-bit (what both databases' BIGINT hold); strings hold no NUL character
(PostgreSQL's text and JSON refuse it; SQLite would keep it and hand back a truncated string to C
code); numbers are finite (JSON has no NaN or infinity); JSON nests at most :data:`MAX_DEPTH` deep.
:func:`check_json` walks a parsed body without recursion; :class:`Int64` bounds a declared field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from grace import errors

__all__ = [
    "FINITE",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "Int64",
    "NonNegativeInt64",
    "OutOfBounds",
    "TooDeep",
    "check_json",
    "check_text",
    "check_text_or_refuse",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_DEPTH = 64

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]


@dataclass
class OutOfBounds(Exception):
    """A value storage cannot hold: where it is (as a validation error's loc) and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def detail(self) -> dict[str, Any]:
        return {"loc": [str(p) for p in self.loc], "msg": self.msg, "type": self.type}


class TooDeep(Exception):
    """JSON nested deeper than :data:`MAX_DEPTH` (or too deep for the parser to read)."""


NUL = "a string must not contain the NUL character (\\u0000)"
RANGE = f"an integer must be between {INT64_MIN} and {INT64_MAX} (signed 64-bit)"
FINITE = "a number must be finite"


def check_text(value: str, loc: tuple[str | int, ...]) -> None:
    """Raise OutOfBounds if ``value`` holds a NUL character."""
    if "\x00" in value:
        raise OutOfBounds(loc, NUL, "string_nul")


def check_text_or_refuse(value: str, field: str) -> None:
    """Raise InvalidInput (422) if ``value``, the field named ``field``, holds a NUL character."""
    if "\x00" in value:
        raise errors.InvalidInput(f"{field}: {NUL}", details=[{"loc": [field], "msg": NUL, "type": "string_nul"}])


def check_json(value: Any, loc: tuple[str | int, ...] = ("body",)) -> None:
    """Raise TooDeep or OutOfBounds for the first value in ``value`` (parsed JSON) storage cannot hold."""
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, loc, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, where)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise OutOfBounds(where, RANGE, "int_out_of_range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise OutOfBounds(where, FINITE, "float_not_finite")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise TooDeep
            if isinstance(item, dict):
                for key, inner in item.items():
                    check_text(key, (*where, key))
                    stack.append((inner, (*where, key), depth + 1))
            else:
                stack.extend((inner, (*where, i), depth + 1) for i, inner in enumerate(item))
