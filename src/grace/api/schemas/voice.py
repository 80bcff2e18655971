"""Voice notes: sessions, status, transcripts, the list, search hits."""

from __future__ import annotations

from typing import Literal

from grace.api.schemas.common import Answer, Timestamp

__all__ = [
    "Consents",
    "DeletedNote",
    "NoteList",
    "NoteStatus",
    "SearchHitOut",
    "SearchResults",
    "StartedNote",
    "TimedSegment",
    "TimedWord",
    "TranscriptOut",
    "UploadedNote",
]

NoteState = Literal["created", "awaiting_consent", "processing", "completed", "failed"]


class StartedNote(Answer):
    session_id: str
    status: NoteState


class UploadedNote(Answer):
    session_id: str
    consent_id: str
    consents_requested: list[str]
    next_step: str
    audio_format: str
    duration_seconds: float


class Consents(Answer):
    recording: bool
    transcription: bool
    learning: bool


class NoteStatus(Answer):
    """A note: the seed's status fields (status, steps_completed, searchable) and what it is at."""

    id: str
    session_id: str
    user_id: str
    title: str
    purpose: str
    status: NoteState
    stage: str | None
    steps_completed: list[str]
    progress: float
    error: str | None
    failed_stage: str | None
    searchable: bool
    consents: Consents
    audio_format: str | None
    audio_bytes: int | None
    duration_seconds: float | None
    learning: str | None
    created_at: Timestamp
    updated_at: Timestamp
    completed_at: Timestamp | None
    next_step: str | None = None


class NoteList(Answer):
    notes: list[NoteStatus]
    total: int
    limit: int
    offset: int


class TimedWord(Answer):
    word: str
    start: float
    end: float


class TimedSegment(Answer):
    start: float
    end: float
    text: str
    words: list[TimedWord]


class TranscriptOut(Answer):
    """The seed's {transcript, length}, the engine that made it, and the timed segments."""

    note_id: str
    title: str
    transcript: str
    length: int
    language: str
    engine: str
    model: str
    model_version: str
    segments: list[TimedSegment]


class SearchHitOut(Answer):
    note_id: str
    title: str
    start: float
    end: float
    score: float
    snippet: str
    chunk_index: int
    chunk_start: float
    chunk_end: float


class SearchResults(Answer):
    query: str
    results: list[SearchHitOut]


class DeletedNote(Answer):
    deleted: str
