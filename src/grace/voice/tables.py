"""Voice-note tables: notes, their encrypted audio, transcripts with timed segments, chunks with vectors, consents.

The migration ``0009_voice`` creates the same tables, plus the full-text index each backend keeps
beside ``voice_chunks`` (SQLite: the FTS5 table ``voice_chunks_fts``, whose rowid is the chunk's id;
PostgreSQL: a generated ``tsv`` column with a GIN index), which these definitions leave out.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from grace.storage import UTCDateTime, metadata

__all__ = [
    "voice_audio",
    "voice_chunks",
    "voice_consents",
    "voice_index_changes",
    "voice_index_versions",
    "voice_notes",
    "voice_segments",
    "voice_sentences",
    "voice_transcripts",
]

ChunkId = BigInteger().with_variant(Integer, "sqlite")

# ``status``: created -> awaiting_consent -> processing -> completed, or failed (reprocess resumes).
# ``stage`` is the stage to run next (or running); ``failed_stage`` the one that failed.
voice_notes = Table(
    "voice_notes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner_id", String(40), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("purpose", String(200), nullable=False, server_default=""),
    Column("status", String(20), nullable=False),
    Column("stage", String(20), nullable=True),
    Column("failed_stage", String(20), nullable=True),
    Column("error", Text, nullable=True),
    Column("steps", String(200), nullable=False, server_default=""),
    Column("consent_recording", Boolean, nullable=False, server_default="0"),
    Column("consent_transcription", Boolean, nullable=False, server_default="0"),
    Column("consent_learning", Boolean, nullable=False, server_default="0"),
    Column("audio_format", String(8), nullable=True),
    Column("audio_bytes", Integer, nullable=True),
    Column("duration_seconds", Float, nullable=True),
    Column("learning_outcome", String(300), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
    Index("ix_voice_notes_owner_created", "owner_id", "created_at"),
)

# The recording, sealed with a data key of its own (the vault's envelope encryption).
voice_audio = Table(
    "voice_audio",
    metadata,
    Column("note_id", String(40), ForeignKey("voice_notes.id", ondelete="CASCADE"), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("dek_id", String(40), nullable=False),
    Column("wrapped_dek", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
)

voice_transcripts = Table(
    "voice_transcripts",
    metadata,
    Column("note_id", String(40), ForeignKey("voice_notes.id", ondelete="CASCADE"), primary_key=True),
    Column("text", Text, nullable=False),
    Column("language", String(16), nullable=False),
    Column("engine", String(60), nullable=False),
    Column("model", String(200), nullable=False),
    Column("model_version", String(80), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# ``words``: JSON text, [[word, start, end], ...].
voice_segments = Table(
    "voice_segments",
    metadata,
    Column("note_id", String(40), ForeignKey("voice_notes.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("start_s", Float, nullable=False),
    Column("end_s", Float, nullable=False),
    Column("text", Text, nullable=False),
    Column("words", Text, nullable=False),
)

# ``embedding``: float32 little-endian, unit length; null until the embed stage ran.
voice_chunks = Table(
    "voice_chunks",
    metadata,
    Column("id", ChunkId, primary_key=True, autoincrement=True),
    Column("note_id", String(40), ForeignKey("voice_notes.id", ondelete="CASCADE"), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("start_s", Float, nullable=False),
    Column("end_s", Float, nullable=False),
    Column("first_word", Integer, nullable=False),
    Column("last_word", Integer, nullable=False),
    Column("embedding", LargeBinary, nullable=True),
    Column("embed_model", String(200), nullable=True),
    UniqueConstraint("note_id", "idx", name="uq_voice_chunks_note_idx"),
    Index("ix_voice_chunks_owner_id", "owner_id"),
)

# Every sentence of a transcript (a long one cut at 300 characters), with its own times and vector,
# attached to the chunk that holds most of its words. ``embedding`` as for chunks.
voice_sentences = Table(
    "voice_sentences",
    metadata,
    Column("id", ChunkId, primary_key=True, autoincrement=True),
    Column("chunk_id", ChunkId, ForeignKey("voice_chunks.id", ondelete="CASCADE"), nullable=False),
    Column("note_id", String(40), ForeignKey("voice_notes.id", ondelete="CASCADE"), nullable=False),
    Column("owner_id", String(40), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("start_s", Float, nullable=False),
    Column("end_s", Float, nullable=False),
    Column("embedding", LargeBinary, nullable=True),
    UniqueConstraint("note_id", "idx", name="uq_voice_sentences_note_idx"),
    Index("ix_voice_sentences_chunk_id", "chunk_id"),
)

# How many times an owner's searchable notes changed (a note became searchable, stopped being so, or
# was deleted): a process holding that owner's vectors in memory reloads them when it moves.
voice_index_versions = Table(
    "voice_index_versions",
    metadata,
    Column("owner_id", String(40), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# One row per move of an owner's version: the version it moved to and the note it was about (written
# in the same transaction), so a process holding that owner's vectors at an older version reloads
# only the notes named after it. Only the last ``grace.voice.index.CHANGES_KEPT`` are kept per owner.
voice_index_changes = Table(
    "voice_index_changes",
    metadata,
    Column("owner_id", String(40), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("note_id", String(40), nullable=False),
)

voice_consents = Table(
    "voice_consents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("note_id", String(40), ForeignKey("voice_notes.id", ondelete="CASCADE"), nullable=False),
    Column("scope", String(20), nullable=False),
    Column("granted_by", String(140), nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
    UniqueConstraint("note_id", "scope", name="uq_voice_consents_note_scope"),
)
