"""Names a user or agent gives for one of a fixed set of values (an enum's members)."""

from __future__ import annotations

import enum
from typing import TypeVar

from grace import errors

__all__ = ["parse"]

E = TypeVar("E", bound=enum.StrEnum)


def parse(kind: type[E], value: str, *, noun: str, plural: str) -> E:
    """Return the member of ``kind`` named ``value`` (case and surrounding spaces aside).

    Anything else is InvalidInput (422) naming the valid values, in the message and as
    ``details.valid``: "unknown {noun} 'x'; valid {plural}: a, b".
    """
    try:
        return kind(value.strip().lower())
    except ValueError:
        valid = [m.value for m in kind]
        raise errors.InvalidInput(
            f"unknown {noun} {value[:40]!r}; valid {plural}: {', '.join(valid)}", details={"valid": valid}
        ) from None
