"""The dashboard's roll-ups: what each origin's and owner's tasks did per hour (htm_hourly) and all-time
(htm_totals), and how far they reach (htm_rollup).

Revision ID: 0012_htm_dashboard
Revises: 0011_playbooks
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012_htm_dashboard"
down_revision = "0011_playbooks"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
COUNTS = (
    "created",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "ran",
    "sla_finished",
    "sla_met",
    "warned",
    "violated",
    "critical",
    "bytes_completed",
)


def _figures() -> list[sa.Column[Any]]:
    return [
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in COUNTS),
        sa.Column("duration_ms_sum", sa.Float(), nullable=False, server_default="0"),
        sa.Column("durations", sa.JSON(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "htm_hourly",
        sa.Column("hour", TS, primary_key=True),
        sa.Column("origin", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(40), primary_key=True),
        *_figures(),
    )
    op.create_table(
        "htm_totals",
        sa.Column("origin", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(40), primary_key=True),
        *_figures(),
    )
    op.create_table(
        "htm_rollup",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rolled_until", TS, nullable=True),
        sa.Column("rolled_seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("htm_rollup")
    op.drop_table("htm_totals")
    op.drop_table("htm_hourly")
