"""Tables for the durable event log and named subscribers' cursors."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Integer, String, Table

from grace.storage import UTCDateTime, metadata

__all__ = ["bus_cursors", "events"]

EventId = BigInteger().with_variant(Integer, "sqlite")

events = Table(
    "events",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False, index=True),
    Column("payload", JSON, nullable=False),
    Column("published_at", UTCDateTime, nullable=False, index=True),
    Column("source", String(64), nullable=False),
)

bus_cursors = Table(
    "bus_cursors",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("last_event_id", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
