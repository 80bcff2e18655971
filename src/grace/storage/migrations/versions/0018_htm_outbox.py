"""Task events written with the change they describe: the ``htm_outbox`` table.

Revision ID: 0018_htm_outbox
Revises: 0017_approvals

On PostgreSQL the task manager writes its task events (``htm.task.created``, ``.update``,
``.completed``, ``.failed``) into ``htm_outbox`` in the same transaction (for claims and outcomes,
the same statement) as the change they describe, and a relay moves them into the bus's ``events``
table in id order under the bus's append lock. A process killed right after a commit leaves its
events here for the next relay, in any process, instead of losing them. SQLite deployments leave
the table empty: the bus is in memory there and dies with the process anyway.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_htm_outbox"
down_revision = "0017_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "htm_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("htm_outbox")
