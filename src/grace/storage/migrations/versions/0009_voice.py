"""Voice notes: notes, encrypted audio, transcripts and timed segments, chunks with vectors, consents.

Revision ID: 0009_voice
Revises: 0008_token_scopes

The full-text index differs per backend: SQLite keeps an FTS5 table (``voice_chunks_fts``, its rowid
the chunk's id); PostgreSQL a generated ``tsvector`` column on ``voice_chunks`` with a GIN index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_voice"
down_revision = "0008_token_scopes"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
CHUNK_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "voice_notes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("purpose", sa.String(200), nullable=False, server_default=""),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("stage", sa.String(20), nullable=True),
        sa.Column("failed_stage", sa.String(20), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("steps", sa.String(200), nullable=False, server_default=""),
        sa.Column("consent_recording", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("consent_transcription", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("consent_learning", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("audio_format", sa.String(8), nullable=True),
        sa.Column("audio_bytes", sa.Integer(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("learning_outcome", sa.String(300), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
    )
    op.create_index("ix_voice_notes_owner_created", "voice_notes", ["owner_id", "created_at"])
    op.create_table(
        "voice_audio",
        sa.Column("note_id", sa.String(40), sa.ForeignKey("voice_notes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("dek_id", sa.String(40), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "voice_transcripts",
        sa.Column("note_id", sa.String(40), sa.ForeignKey("voice_notes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("engine", sa.String(60), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(80), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "voice_segments",
        sa.Column("note_id", sa.String(40), sa.ForeignKey("voice_notes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer(), primary_key=True),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("words", sa.Text(), nullable=False),
    )
    op.create_table(
        "voice_chunks",
        sa.Column("id", CHUNK_ID, primary_key=True, autoincrement=True),
        sa.Column("note_id", sa.String(40), sa.ForeignKey("voice_notes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("owner_id", sa.String(40), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("first_word", sa.Integer(), nullable=False),
        sa.Column("last_word", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embed_model", sa.String(200), nullable=True),
        sa.UniqueConstraint("note_id", "idx", name="uq_voice_chunks_note_idx"),
    )
    op.create_index("ix_voice_chunks_owner_id", "voice_chunks", ["owner_id"])
    op.create_table(
        "voice_consents",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("note_id", sa.String(40), sa.ForeignKey("voice_notes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("granted_by", sa.String(140), nullable=False),
        sa.Column("granted_at", TS, nullable=False),
        sa.UniqueConstraint("note_id", "scope", name="uq_voice_consents_note_scope"),
    )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE voice_chunks_fts USING fts5(text, owner_id UNINDEXED, tokenize='porter unicode61')"
        )
    else:
        op.execute(
            "ALTER TABLE voice_chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
        )
        op.execute("CREATE INDEX ix_voice_chunks_tsv ON voice_chunks USING gin (tsv)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE voice_chunks_fts")
    for table in ("voice_consents", "voice_chunks", "voice_segments", "voice_transcripts", "voice_audio"):
        op.drop_table(table)
    op.drop_index("ix_voice_notes_owner_created", table_name="voice_notes")
    op.drop_table("voice_notes")
