"""Task manager tables: tasks, per-origin scheduling state, the dispatch counter, workers, late completions."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

from grace.storage import UTCDateTime, metadata

__all__ = [
    "IS_QUEUED",
    "IS_RUNNING",
    "IS_WAITING",
    "htm_late_completions",
    "htm_origins",
    "htm_scheduler",
    "htm_tasks",
    "htm_workers",
]

Seq = BigInteger().with_variant(Integer, "sqlite")

htm_tasks = Table(
    "htm_tasks",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("task_id", String(40), nullable=False, unique=True),
    Column("task_type", String(100), nullable=False),
    Column("priority", String(16), nullable=False),
    Column("priority_rank", SmallInteger, nullable=False),
    Column("origin", String(32), nullable=False),
    Column("origin_rule", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("data_size_bytes", BigInteger, nullable=False),
    Column("created_by", String(40), nullable=True),
    Column("created_by_name", String(140), nullable=False),
    Column("intent_id", String(100), nullable=True, index=True),
    Column("sla_ms", BigInteger, nullable=True),
    Column("deadline", UTCDateTime, nullable=True),
    Column("status", String(16), nullable=False),
    Column("route", String(16), nullable=False),
    Column("route_reason", String(400), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_seconds", Float, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # When routing let it in (accepted: created_at; delayed or deferred: later). Burst windows count these.
    Column("admitted_at", UTCDateTime, nullable=False),
    # When it may next be claimed (equals admitted_at until a retry moves it).
    Column("queued_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("worker_id", String(120), nullable=True),
    Column("dispatch_seq", BigInteger, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Index(
        "ix_htm_tasks_claim",
        "origin",
        "priority_rank",
        "seq",
        postgresql_where=text("status = 'queued'"),
        sqlite_where=text("status = 'queued'"),
    ),
    Index(
        "ix_htm_tasks_waiting",
        "queued_at",
        postgresql_where=text("status IN ('delayed', 'deferred')"),
        sqlite_where=text("status IN ('delayed', 'deferred')"),
    ),
    Index(
        "ix_htm_tasks_running",
        "origin",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index("ix_htm_tasks_admitted", "origin", "admitted_at"),
    Index("ix_htm_tasks_created_by", "created_by", "seq"),
    Index("ix_htm_tasks_finished_at", "finished_at"),
)

htm_origins = Table(
    "htm_origins",
    metadata,
    Column("origin", String(32), primary_key=True),
    Column("position", SmallInteger, nullable=False),
    Column("weight", Integer, nullable=False),
    Column("credit", BigInteger, nullable=False),
    Column("since", BigInteger, nullable=False),
    Column("dispatched", BigInteger, nullable=False),
)

htm_scheduler = Table(
    "htm_scheduler",
    metadata,
    Column("id", Integer, primary_key=True),
    # The global dispatch counter; claims lock this row, so they are taken one at a time.
    Column("dispatched", BigInteger, nullable=False),
)

htm_workers = Table(
    "htm_workers",
    metadata,
    Column("worker_id", String(120), primary_key=True),
    Column("host", String(100), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("task_types", JSON, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopping", Boolean, nullable=False),
)

htm_late_completions = Table(
    "htm_late_completions",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("task_id", String(40), nullable=False, index=True),
    Column("worker_id", String(120), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

# The partial indexes' predicates, written as literals: SQLite (and PostgreSQL's generic plans) use a
# partial index only when the query's condition visibly matches it, which a bound parameter does not.
IS_QUEUED = text("htm_tasks.status = 'queued'")
IS_RUNNING = text("htm_tasks.status = 'running'")
IS_WAITING = text("htm_tasks.status IN ('delayed', 'deferred')")
