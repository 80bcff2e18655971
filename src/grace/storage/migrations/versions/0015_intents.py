"""Intents and the learning loop: ``intent_records`` and ``learning_outcomes``.

Revision ID: 0015_intents
Revises: 0014_voice_sentences

``intent_records.htm_task_id`` links an intent to its task; the other link, ``htm_tasks.intent_id``,
is there since ``0002_htm``. Neither is a foreign key (see ``grace/intents/tables.py``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_intents"
down_revision = "0014_voice_sentences"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OPEN = "status IN ('pending', 'queued', 'running')"


def upgrade() -> None:
    op.create_table(
        "intent_records",
        sa.Column("intent_id", sa.String(100), primary_key=True),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner_name", sa.String(140), nullable=False),
        sa.Column("agent", sa.String(100), nullable=True),
        sa.Column("handler", sa.String(100), nullable=False),
        sa.Column("task_type", sa.String(100), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("expected_outcome", sa.String(500), nullable=True),
        sa.Column("sla_ms", sa.BigInteger(), nullable=True),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("domain", sa.String(40), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("htm_task_id", sa.String(40), nullable=True),
        sa.Column("recoveries", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("sla_met", sa.Boolean(), nullable=True),
        sa.Column("execution_ms", sa.Float(), nullable=True),
        sa.Column("learned", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_intent_records_owner_created", "intent_records", ["owner_id", "created_at"])
    op.create_index("ix_intent_records_htm_task_id", "intent_records", ["htm_task_id"])
    op.create_index(
        "ix_intent_records_open",
        "intent_records",
        ["status", "created_at"],
        postgresql_where=sa.text(OPEN),
        sqlite_where=sa.text(OPEN),
    )
    op.create_table(
        "learning_outcomes",
        sa.Column("outcome_id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
        sa.Column("recorded_by", sa.String(140), nullable=False),
        sa.Column("action_type", sa.String(100), nullable=False),
        sa.Column("domain", sa.String(40), nullable=True),
        sa.Column("task_type", sa.String(100), nullable=True),
        sa.Column("intent_id", sa.String(100), nullable=True, unique=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("confidence_score", sa.Float(), nullable=True),
        sa.Column("execution_time", sa.Float(), nullable=False),
        sa.Column("sla_ms", sa.BigInteger(), nullable=True),
        sa.Column("sla_met", sa.Boolean(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("recorded_at", TS, nullable=False),
    )
    op.create_index("ix_learning_outcomes_recorded", "learning_outcomes", ["recorded_at"])
    op.create_index("ix_learning_outcomes_owner_recorded", "learning_outcomes", ["owner_id", "recorded_at"])


def downgrade() -> None:
    op.drop_table("learning_outcomes")
    op.drop_table("intent_records")
