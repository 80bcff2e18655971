"""SLA enforcement: the level each task reached and when its next level falls due, two partial indexes,
and the enforcer's all-time counters.

Revision ID: 0004_htm_sla
Revises: 0003_vault
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_htm_sla"
down_revision = "0003_vault"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
UNFINISHED = "status IN ('queued', 'delayed', 'deferred', 'running')"
OUTCOME = "status IN ('completed', 'failed', 'timed_out')"


def upgrade() -> None:
    # Added at the end of the row: the PostgreSQL claim function returns htm_tasks rows, read by position.
    op.add_column("htm_tasks", sa.Column("sla_level", sa.SmallInteger(), nullable=False, server_default="0"))
    op.add_column("htm_tasks", sa.Column("sla_due_at", TS, nullable=True))
    # Unfinished tasks that already had an SLA are due for a look at once; the enforcer works out
    # which level each has really reached and moves the due time on without firing what is not due.
    op.execute(
        "UPDATE htm_tasks SET sla_due_at = created_at "
        "WHERE deadline IS NOT NULL AND status IN ('queued', 'delayed', 'deferred', 'running')"
    )
    open_ = sa.text(f"deadline IS NOT NULL AND {UNFINISHED}")
    finished = sa.text(f"deadline IS NOT NULL AND {OUTCOME}")
    op.create_index(
        "ix_htm_tasks_sla_open",
        "htm_tasks",
        ["sla_level", "sla_due_at"],
        postgresql_where=open_,
        sqlite_where=open_,
    )
    op.create_index(
        "ix_htm_tasks_sla_finished",
        "htm_tasks",
        ["finished_at", "deadline"],
        postgresql_where=finished,
        sqlite_where=finished,
    )
    op.create_table(
        "htm_sla_counters",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("htm_sla_counters")
    op.drop_index("ix_htm_tasks_sla_finished", table_name="htm_tasks")
    op.drop_index("ix_htm_tasks_sla_open", table_name="htm_tasks")
    # Plain ALTER TABLE on both backends (SQLite 3.35+ drops an unindexed column in place): a batch
    # rebuild of the queue's table on SQLite would have to recreate its partial indexes by reflection.
    op.execute("ALTER TABLE htm_tasks DROP COLUMN sla_due_at")
    op.execute("ALTER TABLE htm_tasks DROP COLUMN sla_level")
