"""Intent tables: the agent's intents (``intent_records``) and the learning loop's outcomes (``learning_outcomes``).

``intent_records.htm_task_id`` names the task serving the intent; ``htm_tasks.intent_id`` (there since
``0002_htm``) names the intent a task serves. Neither is a foreign key: the task manager's retention may
delete a finished task's row while the intent stays, and a task whose intent is gone is an orphan the
sweep cancels (``recovery.py``). Migration ``0015_intents`` creates both tables.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, String, Table, Text, text

from grace.storage import UTCDateTime, metadata

__all__ = ["intent_records", "learning_outcomes"]

# ``status``: pending (recorded, no task yet) -> queued -> running -> completed | failed | timed_out |
# cancelled. ``recoveries`` counts resubmissions by the sweep (at most one).
intent_records = Table(
    "intent_records",
    metadata,
    Column("intent_id", String(100), primary_key=True),
    Column("owner_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("owner_name", String(140), nullable=False),
    Column("agent", String(100), nullable=True),
    Column("handler", String(100), nullable=False),
    Column("task_type", String(100), nullable=False),
    Column("goal", Text, nullable=False),
    Column("expected_outcome", String(500), nullable=True),
    Column("sla_ms", BigInteger, nullable=True),
    Column("priority", String(16), nullable=False),
    Column("domain", String(40), nullable=False),
    Column("context", JSON, nullable=False),
    Column("confidence", Float, nullable=True),
    Column("status", String(16), nullable=False),
    Column("htm_task_id", String(40), nullable=True),
    Column("recoveries", Integer, nullable=False, server_default=text("0")),
    Column("reason", Text, nullable=True),
    Column("result", JSON, nullable=True),
    Column("sla_met", Boolean, nullable=True),
    Column("execution_ms", Float, nullable=True),
    Column("learned", Boolean, nullable=False, server_default=text("false")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Index("ix_intent_records_owner_created", "owner_id", "created_at"),
    Index("ix_intent_records_htm_task_id", "htm_task_id"),
    # The sweep's work list: unfinished intents only.
    Index(
        "ix_intent_records_open",
        "status",
        "created_at",
        postgresql_where=text("status IN ('pending', 'queued', 'running')"),
        sqlite_where=text("status IN ('pending', 'queued', 'running')"),
    ),
)

learning_outcomes = Table(
    "learning_outcomes",
    metadata,
    Column("outcome_id", String(40), primary_key=True),
    Column("owner_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("recorded_by", String(140), nullable=False),
    Column("action_type", String(100), nullable=False),
    Column("domain", String(40), nullable=True),
    Column("task_type", String(100), nullable=True),
    # One outcome per intent, whichever process settles it.
    Column("intent_id", String(100), nullable=True, unique=True),
    Column("success", Boolean, nullable=False),
    Column("confidence_score", Float, nullable=True),
    Column("execution_time", Float, nullable=False),
    Column("sla_ms", BigInteger, nullable=True),
    Column("sla_met", Boolean, nullable=True),
    Column("context", JSON, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Index("ix_learning_outcomes_recorded", "recorded_at"),
    Index("ix_learning_outcomes_owner_recorded", "owner_id", "recorded_at"),
)
