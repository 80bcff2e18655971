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
    "DATETIME_COLUMNS",
    "IS_QUEUED",
    "IS_RUNNING",
    "IS_WAITING",
    "JSON_COLUMNS",
    "ROLLUP_COLUMNS",
    "SLA_COLUMNS",
    "SLA_OPEN",
    "SLA_OUTCOME",
    "SUMMARY_COLUMNS",
    "htm_hourly",
    "htm_late_completions",
    "htm_origins",
    "htm_outbox",
    "htm_rollup",
    "htm_scheduler",
    "htm_sla_counters",
    "htm_tasks",
    "htm_totals",
    "htm_workers",
]

Seq = BigInteger().with_variant(Integer, "sqlite")

# Status sets of the SLA indexes' predicates (see the literal predicates at the end of the module).
_UNFINISHED = "status IN ('queued', 'delayed', 'deferred', 'running')"
_OUTCOME = "status IN ('completed', 'failed', 'timed_out')"

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
    # SLA enforcement (migration 0004_htm_sla). Appended last: the PostgreSQL claim reads rows by
    # position. The level reached (0 none, 1 warning, 2 violated, 3 critical) and when the next one
    # falls due; see grace/htm/sla.py.
    Column("sla_level", SmallInteger, nullable=False, server_default=text("0")),
    Column("sla_due_at", UTCDateTime, nullable=True),
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
    # Task lists by status, newest first (migration 0013_edge). Not (origin, seq): see that migration.
    Index("ix_htm_tasks_status_seq", "status", "seq"),
    # Partial (migration 0006): tasks without a creator, or not yet finished, add no entry.
    Index(
        "ix_htm_tasks_created_by",
        "created_by",
        "seq",
        postgresql_where=text("created_by IS NOT NULL"),
        sqlite_where=text("created_by IS NOT NULL"),
    ),
    Index(
        "ix_htm_tasks_finished_at",
        "finished_at",
        postgresql_where=text("finished_at IS NOT NULL"),
        sqlite_where=text("finished_at IS NOT NULL"),
    ),
    # The SLA enforcer's work list and the active violations: unfinished tasks with a deadline only,
    # so tasks without an SLA never enter it.
    Index(
        "ix_htm_tasks_sla_open",
        "sla_level",
        "sla_due_at",
        postgresql_where=text(f"deadline IS NOT NULL AND {_UNFINISHED}"),
        sqlite_where=text(f"deadline IS NOT NULL AND {_UNFINISHED}"),
    ),
    # The compliance window: tasks with a deadline that ran to an outcome (cancelled ones do not count).
    Index(
        "ix_htm_tasks_sla_finished",
        "finished_at",
        "deadline",
        postgresql_where=text(f"deadline IS NOT NULL AND {_OUTCOME}"),
        sqlite_where=text(f"deadline IS NOT NULL AND {_OUTCOME}"),
    ),
)

# The claims' order within an origin (migration 0016_htm_deadline_order; grace/htm/sql/schema.sql):
# priority, then deadline (tasks with one first, earliest first), then age.
Index(
    "ix_htm_tasks_claim",
    htm_tasks.c.origin,
    htm_tasks.c.priority_rank,
    htm_tasks.c.deadline.is_(None),
    htm_tasks.c.deadline,
    htm_tasks.c.seq,
    postgresql_where=text("status = 'queued'"),
    sqlite_where=text("status = 'queued'"),
)

# How each backend's driver needs htm_tasks values written: times (UTCDateTime) and JSON documents.
DATETIME_COLUMNS = frozenset(c.name for c in htm_tasks.c if isinstance(c.type, UTCDateTime))
JSON_COLUMNS = frozenset(c.name for c in htm_tasks.c if isinstance(c.type, JSON))
# The columns handed back after a state change (outcomes, lease expiry, cancel), for events and callers.
SUMMARY_COLUMNS = (
    "task_id",
    "task_type",
    "origin",
    "priority",
    "intent_id",
    "status",
    "attempts",
    "max_attempts",
    "created_at",
    "started_at",
    "finished_at",
    "queued_at",
    "deadline",
    "data_size_bytes",
    "error",
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

htm_sla_counters = Table(
    "htm_sla_counters",
    metadata,
    # All-time counts of what the SLA enforcer did, written in the transaction that did it.
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

htm_outbox = Table(
    "htm_outbox",
    metadata,
    # Task events written in the transaction of the change they describe (PostgreSQL), until the
    # relay moves them into the bus's ``events`` table in id order (grace/htm/outbox.py).
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False),
    Column("payload", Text, nullable=False),  # JSON text
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

# The dashboard's roll-ups (migration 0012_htm_dashboard; grace/htm/rollups.py). Each row holds what
# the tasks of one origin and one owner ('' for Grace itself) did: per hour in htm_hourly, all-time
# in htm_totals. Tasks count in the hour they were created (created) or finished (the rest).
ROLLUP_COLUMNS = (
    "created",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "ran",  # tasks that ran to an outcome (completed, failed, timed out): the durations' count
    "sla_finished",  # of those, with a deadline
    "sla_met",  # of those, finished by it
    "warned",  # finished tasks whose SLA level reached warning (1), violated (2), critical (3)
    "violated",
    "critical",
    "bytes_completed",
)


def _rollup_columns() -> list[Column[object]]:
    return [
        *(Column(name, BigInteger, nullable=False, server_default=text("0")) for name in ROLLUP_COLUMNS),
        Column("duration_ms_sum", Float, nullable=False, server_default=text("0")),
        # {bucket: count} of execution times, buckets of grace/htm/histogram.py.
        Column("durations", JSON, nullable=False),
    ]


htm_hourly = Table(
    "htm_hourly",
    metadata,
    Column("hour", UTCDateTime, primary_key=True),
    Column("origin", String(32), primary_key=True),
    Column("owner", String(40), primary_key=True),
    *_rollup_columns(),
)

htm_totals = Table(
    "htm_totals",
    metadata,
    Column("origin", String(32), primary_key=True),
    Column("owner", String(40), primary_key=True),
    *_rollup_columns(),
)

htm_rollup = Table(
    "htm_rollup",
    metadata,
    Column("id", Integer, primary_key=True),
    # Tasks finished before rolled_until, and tasks with seq <= rolled_seq (for their creation), are
    # in the roll-ups; the rest are read from htm_tasks.
    Column("rolled_until", UTCDateTime, nullable=True),
    Column("rolled_seq", BigInteger, nullable=False),
)

# The partial indexes' predicates, written as literals: SQLite (and PostgreSQL's generic plans) use a
# partial index only when the query's condition visibly matches it, which a bound parameter does not.
IS_QUEUED = text("htm_tasks.status = 'queued'")
IS_RUNNING = text("htm_tasks.status = 'running'")
IS_WAITING = text("htm_tasks.status IN ('delayed', 'deferred')")
SLA_OPEN = text("htm_tasks.deadline IS NOT NULL AND htm_tasks." + _UNFINISHED)
SLA_OUTCOME = text("htm_tasks.deadline IS NOT NULL AND htm_tasks." + _OUTCOME)

# What the SLA enforcer reads of a due task, and its reporting of a violation.
SLA_COLUMNS = (
    htm_tasks.c.seq,
    htm_tasks.c.task_id,
    htm_tasks.c.task_type,
    htm_tasks.c.origin,
    htm_tasks.c.priority,
    htm_tasks.c.priority_rank,
    htm_tasks.c.status,
    htm_tasks.c.intent_id,
    htm_tasks.c.worker_id,
    htm_tasks.c.created_at,
    htm_tasks.c.sla_ms,
    htm_tasks.c.deadline,
    htm_tasks.c.sla_level,
)
