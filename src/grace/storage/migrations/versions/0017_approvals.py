"""Approvals: a consent kind not tied to a secret, and playbook runs that wait for one.

Revision ID: 0017_approvals
Revises: 0016_htm_deadline_order

``secret_consent_records.kind`` is ``secret`` (every record so far) or ``approval`` (a playbook
step asking the run's owner; its ``secret_id`` is NULL, so no release can ever match it).
``playbook_runs.approval_id`` is the consent a waiting run asked, and ``parked`` what it needs to
resume (its values, completed steps and the step it waits at).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_approvals"
down_revision = "0016_htm_deadline_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("secret_consent_records") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="secret"))
        batch.alter_column("secret_id", existing_type=sa.String(40), nullable=True)
    op.add_column("playbook_runs", sa.Column("approval_id", sa.String(128), nullable=True))
    op.add_column("playbook_runs", sa.Column("parked", sa.Text(), nullable=True))
    op.create_index("ix_playbook_runs_approval_id", "playbook_runs", ["approval_id"])


def downgrade() -> None:
    op.drop_index("ix_playbook_runs_approval_id", table_name="playbook_runs")
    op.drop_column("playbook_runs", "parked")
    op.drop_column("playbook_runs", "approval_id")
    op.execute("DELETE FROM secret_consent_records WHERE kind = 'approval'")
    with op.batch_alter_table("secret_consent_records") as batch:
        batch.alter_column("secret_id", existing_type=sa.String(40), nullable=False)
        batch.drop_column("kind")
