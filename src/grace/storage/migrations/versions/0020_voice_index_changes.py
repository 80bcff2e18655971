"""Voice search: which note each change to an owner's searchable notes was about.

Revision ID: 0020_voice_index_changes
Revises: 0019_htm_submit

``voice_index_changes`` has one row per move of an owner's ``voice_index_versions`` row, written in
the same transaction: the version it moved to and the note it was about. A process holding the
owner's vectors at an older version reads the rows after it and reloads only those notes' vectors
(a note made searchable or reindexed: its rows replaced; deleted or no longer searchable: dropped)
instead of the owner's whole matrix. A version with no row here (a move from before this migration,
or one pruned: the last ``grace.voice.index.CHANGES_KEPT`` are kept per owner) makes the process
load everything, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_voice_index_changes"
down_revision = "0019_htm_submit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voice_index_changes",
        sa.Column("owner_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.BigInteger(), primary_key=True),
        sa.Column("note_id", sa.String(40), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("voice_index_changes")
