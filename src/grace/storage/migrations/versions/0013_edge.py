"""Idempotency keys, and task lists served by indexes whatever the history.

Revision ID: 0013_edge
Revises: 0012_htm_dashboard

- ``idempotency_keys`` (grace.idempotency): per principal and key, the first request's fingerprint
  and, once it succeeded, its answer; expired rows are found through ``expires_at``.
- ``htm_tasks (status, seq)``: ``GET /api/htm/tasks?status=...``, newest first, reads the newest
  matching entries instead of walking every task ever run newest first until enough match (a rare
  status among 300,000 finished tasks read them all). No ``(origin, seq)``: SQLite, which keeps no
  statistics, chose it over the claim index for "is anything of this origin queued", reading every
  finished task of the origin (0.9 s with 300,000).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from grace.storage import UTCDateTime

revision = "0013_edge"
down_revision = "0012_htm_dashboard"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("body", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("principal", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    op.create_index("ix_htm_tasks_status_seq", "htm_tasks", ["status", "seq"])


def downgrade() -> None:
    op.drop_index("ix_htm_tasks_status_seq", table_name="htm_tasks")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
