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

__all__ = ["UTCDateTime", "new_id", "new_ids"]


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
        if value is None:
            return None
        parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


def new_id(prefix: str) -> str:
    """Return a new identifier: ``prefix_`` then a time-ordered, random hex string."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def new_ids(prefix: str, n: int) -> list[str]:
    """Return ``n`` new identifiers like :func:`new_id`, with one read of the system's randomness."""
    stamp = f"{prefix}_{time.time_ns() // 1_000_000:012x}"
    noise = secrets.token_hex(8 * n)
    return [stamp + noise[16 * i : 16 * i + 16] for i in range(n)]
