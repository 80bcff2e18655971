"""Playbooks: run history (runs and skipped firings, each step's attempts) and schedules' last firing.

Revision ID: 0011_playbooks
Revises: 0010_row_seals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_playbooks"
down_revision = "0010_row_seals"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "playbook_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("playbook", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(16), nullable=False, server_default=""),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("trigger_key", sa.String(200), nullable=True),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("task_id", sa.String(40), nullable=True),
        sa.Column("steps", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.UniqueConstraint("playbook", "trigger_key", name="uq_playbook_runs_trigger_key"),
    )
    op.create_index("ix_playbook_runs_playbook_created", "playbook_runs", ["playbook", "created_at"])
    op.create_index("ix_playbook_runs_status", "playbook_runs", ["status"])
    op.create_table(
        "playbook_schedules",
        sa.Column("playbook", sa.String(64), primary_key=True),
        sa.Column("last_fire_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("playbook_schedules")
    op.drop_index("ix_playbook_runs_status", "playbook_runs")
    op.drop_index("ix_playbook_runs_playbook_created", "playbook_runs")
    op.drop_table("playbook_runs")
