"""Column types shared by every capability's tables."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from grace.clock import ensure_utc

__all__ = ["UTCDateTime", "new_id", "new_ids", "utc_from_text", "utc_read", "utc_text"]


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that accepts only aware datetimes and always reads back aware UTC.

    PostgreSQL stores ``timestamptz``; SQLite stores ISO text without an offset,
    so values are normalised to UTC on the way in and tagged UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        aware = ensure_utc(value)
        if dialect.name == "sqlite":
            return aware.replace(tzinfo=None)
        return aware

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return utc_read(value)


def utc_read(value: Any) -> datetime | None:
    """Return a time as either database hands it back, as an aware UTC datetime; None stays None.

    SQLite gives naive ISO text (UTC, as :func:`utc_text` wrote it) to queries that bypass the
    column type; PostgreSQL gives aware datetimes.
    """
    if value is None:
        return None
    if type(value) is datetime and value.tzinfo is UTC:  # as asyncpg hands them back
        return value
    if isinstance(value, str):
        return utc_from_text(value)
    when: datetime = value
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


# Times repeat: a batch of tasks shares its creation time, a claim its start and lease, so each
# conversion is remembered (a few thousand at most; the table is emptied when full). Formatting and
# replacing a datetime's zone cost microseconds each, more than the rest of a row's conversion.
_CACHE_LIMIT = 4096
_stamps: dict[datetime, str] = {}
_times: dict[str, datetime] = {}


def utc_text(when: datetime | None) -> str | None:
    """Return ``when`` as :class:`UTCDateTime` stores it on SQLite: naive UTC text with microseconds."""
    if when is None:
        return None
    text = _stamps.get(when)
    if text is None:
        utc = when if when.tzinfo is UTC else when.astimezone(UTC)
        text = utc.replace(tzinfo=None).isoformat(" ", "microseconds")
        if len(_stamps) >= _CACHE_LIMIT:
            _stamps.clear()
        _stamps[when] = text
    return text


def utc_from_text(text: str) -> datetime:
    """Return the aware UTC datetime that :func:`utc_text` (or SQLAlchemy) wrote as ``text``."""
    when = _times.get(text)
    if when is None:
        parsed = datetime.fromisoformat(text)
        # SQLite's text has no offset (it is UTC): parsing it again with the offset named is cheaper
        # than replacing the parsed value's zone.
        when = datetime.fromisoformat(text + "+00:00") if parsed.tzinfo is None else parsed.astimezone(UTC)
        if len(_times) >= _CACHE_LIMIT:
            _times.clear()
        _times[text] = when
    return when


def new_id(prefix: str) -> str:
    """Return a new identifier: ``prefix_`` then a time-ordered, random hex string."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def new_ids(prefix: str, n: int) -> list[str]:
    """Return ``n`` new identifiers like :func:`new_id`, with one read of the system's randomness."""
    stamp = f"{prefix}_{time.time_ns() // 1_000_000:012x}"
    noise = secrets.token_hex(8 * n)
    return [stamp + noise[16 * i : 16 * i + 16] for i in range(n)]
