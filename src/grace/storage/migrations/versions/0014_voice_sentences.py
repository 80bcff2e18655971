"""Voice search: a vector per sentence beside each chunk's, and a per-owner index version.

Revision ID: 0014_voice_sentences
Revises: 0013_edge

``voice_sentences`` holds every sentence of a note's transcript with its own start and end and its
own vector, attached to the chunk that holds most of it (search scores a chunk by its best sentence:
measured in bench/bench_voice.py, chunk vectors alone found a paraphrased fact in the top five 0.67
of the time). ``voice_index_versions`` counts changes to an owner's searchable notes, so a process
may keep that owner's vectors in memory and know when they are stale. Notes processed before this
migration have no sentences until ``grace voice reindex --from chunk``; until then search scores their
chunks by the chunk's own vector.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_voice_sentences"
down_revision = "0013_edge"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "voice_sentences",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("chunk_id", ROW_ID, sa.ForeignKey("voice_chunks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("note_id", sa.String(40), sa.ForeignKey("voice_notes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner_id", sa.String(40), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("note_id", "idx", name="uq_voice_sentences_note_idx"),
    )
    op.create_index("ix_voice_sentences_chunk_id", "voice_sentences", ["chunk_id"])
    op.create_table(
        "voice_index_versions",
        sa.Column("owner_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("voice_index_versions")
    op.drop_index("ix_voice_sentences_chunk_id", table_name="voice_sentences")
    op.drop_table("voice_sentences")
