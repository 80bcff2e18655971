"""Voice notes: recordings become searchable knowledge, offline and private.

A note is started, its audio uploaded (sniffed, decoded with PyAV, stored encrypted with a data key
of its own), consented to (recording, transcription, learning), then processed as task-manager
tasks: decode, transcribe (faster-whisper, tiny.en int8), chunk, embed (all-MiniLM-L6-v2), index
(full text and vectors), knowledge base, learning loop. :class:`VoiceNotes` is the facade; see
docs/voice.md.
"""

from __future__ import annotations

from grace.voice.chunking import CHUNK_OVERLAP, CHUNK_SIZE, Chunk, Sentence, Word, chunk_words, sentences
from grace.voice.engines import Embedder, Engines, Transcriber, Transcript, TranscriptSegment, engines
from grace.voice.notes import CONSENT_SCOPES, SearchHit, VoiceNotes
from grace.voice.pipeline import STAGES, STEP_NAMES, task_type

__all__ = [
    "CHUNK_OVERLAP",
    "CHUNK_SIZE",
    "CONSENT_SCOPES",
    "STAGES",
    "STEP_NAMES",
    "Chunk",
    "Embedder",
    "Engines",
    "SearchHit",
    "Sentence",
    "Transcriber",
    "Transcript",
    "TranscriptSegment",
    "VoiceNotes",
    "Word",
    "chunk_words",
    "engines",
    "sentences",
    "task_type",
]
