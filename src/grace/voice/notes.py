"""The voice-notes facade: sessions, upload, consent, reading back, search and delete, for one owner at a time.

Every call names its caller (a :class:`~grace.auth.Principal`); a note is found only for its owner
(or an admin), and anyone else is told it does not exist. See docs/voice.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import clock, errors
from grace.auth import Principal
from grace.bus import Bus
from grace.clock import Clock
from grace.htm import HTM
from grace.storage import Database, new_id
from grace.vault import Vault
from grace.voice import audio, formats, fusion, index
from grace.voice.engines import Engines
from grace.voice.pipeline import STAGES, STEP_NAMES, Pipeline, audio_subject, steps_of
from grace.voice.tables import (
    voice_audio,
    voice_chunks,
    voice_consents,
    voice_notes,
    voice_segments,
    voice_sentences,
    voice_transcripts,
)

__all__ = ["CONSENT_SCOPES", "SearchHit", "VoiceNotes"]

log = logging.getLogger("grace.voice")

CONSENT_SCOPES = ("recording", "transcription", "learning")
REQUIRED_SCOPES = frozenset({"recording", "transcription"})
MAX_TITLE = 200
MAX_PURPOSE = 200
MAX_QUERY = 1000
MAX_TOP_K = 50
# How a search combines vectors and full text (grace.voice.fusion; chosen by bench/bench_voice.py).
FUSION = "vector"
# How many chunks each of the two rankings (vectors, words) hands to the fusion, at least.
CANDIDATES = 40
# How many recent queries' vectors a process keeps (a query its owner asks again is not embedded again).
QUERY_VECTORS = 512
# How many times a search ranks again when the owner's notes changed while it ran (then it answers
# with what it found, less any hit deleted meanwhile).
_SEARCH_ATTEMPTS = 3


@dataclass(frozen=True)
class SearchHit:
    note_id: str
    title: str
    chunk_index: int
    start: float
    end: float
    score: float
    snippet: str
    chunk_start: float
    chunk_end: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "note_id": self.note_id,
            "title": self.title,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 4),
            "snippet": self.snippet,
            "chunk_index": self.chunk_index,
            "chunk_start": self.chunk_start,
            "chunk_end": self.chunk_end,
        }


def _owner(by: Principal, user_id: str | None) -> str:
    """Whose notes a call acts on: the caller's (by id or username), or, for an admin, the user it names."""
    if user_id is None or user_id in (by.user_id, by.username):
        return by.user_id
    by.require_self_or_admin(user_id)
    return user_id


def describe(row: Any) -> dict[str, Any]:
    """A note's status, in the seed's shape plus what the note is at."""
    steps = steps_of(row)
    consented = bool(row["consent_recording"] and row["consent_transcription"])
    shown = (["consent_granted"] if consented else []) + [s for s in STEP_NAMES[1:] if s in steps]
    done = [s for s in STAGES if _done_name(s) in steps]
    return {
        "id": row["id"],
        "session_id": row["id"],
        "user_id": row["owner_id"],
        "title": row["title"],
        "purpose": row["purpose"],
        "status": row["status"],
        "stage": row["stage"],
        "steps_completed": shown,
        "progress": round(len(done) / len(STAGES), 3),
        "error": row["error"],
        "failed_stage": row["failed_stage"],
        "searchable": "indexed" in steps,
        "consents": {
            "recording": bool(row["consent_recording"]),
            "transcription": bool(row["consent_transcription"]),
            "learning": bool(row["consent_learning"]),
        },
        "audio_format": row["audio_format"],
        "audio_bytes": row["audio_bytes"],
        "duration_seconds": row["duration_seconds"],
        "learning": row["learning_outcome"],
        "created_at": clock.iso(row["created_at"]),
        "updated_at": clock.iso(row["updated_at"]),
        "completed_at": clock.iso(row["completed_at"]),
    }


def _done_name(stage: str) -> str:
    from grace.voice.pipeline import DONE

    return DONE[stage]


class VoiceNotes:
    """Voice notes over one database, processed by the task manager."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        bus: Bus,
        vault: Vault,
        htm: HTM,
        engines: Engines,
        *,
        max_upload_bytes: int,
    ) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.vault = vault
        self.engines = engines
        self.max_upload_bytes = max_upload_bytes
        self.fusion = FUSION
        self.sentences = True  # score chunks by their best sentence (False: by the chunk's vector; bench only)
        self.exact = False  # score every sentence vector even past index.EXACT_UP_TO (bench only)
        self.vectors = index.VectorCache()
        # Recent queries' vectors, per owner (one user's searches never make another's faster).
        self._query_vectors: OrderedDict[tuple[str, str], npt.NDArray[np.float32]] = OrderedDict()
        self.pipeline = Pipeline(db, clock, bus, vault, htm, engines)
        self.pipeline.register()
        # Key rotation re-wraps the recordings' data keys with the rest.
        vault.register_sealed_data(voice_audio, "note_id", audio_subject)

    def __repr__(self) -> str:
        return f"VoiceNotes(backend={self.db.backend!r})"

    async def _query_vector(self, owner: str, query: str) -> npt.NDArray[np.float32]:
        """The query's vector: embedded by the model, or kept from the owner's same query asked recently."""
        key = (owner, query)
        found = self._query_vectors.get(key)
        if found is not None:
            self._query_vectors.move_to_end(key)
            return found
        vector: npt.NDArray[np.float32] = (await self.engines.embed_query([query]))[0]
        self._query_vectors[key] = vector
        while len(self._query_vectors) > QUERY_VECTORS:
            self._query_vectors.popitem(last=False)
        return vector

    def forget_queries(self) -> None:
        """Drop the kept query vectors (the bench measures searches that embed their query)."""
        self._query_vectors.clear()

    def use_learning_loop(self, feed: Callable[..., Awaitable[dict[str, Any]]]) -> None:
        """Feed the learn stage's outcome to ``feed`` (``grace.intents.LearningLoop.record_outcome``)."""
        self.pipeline.learning_feed = feed

    # -- reading a note ---------------------------------------------------------------

    async def _row(self, by: Principal, note_id: str, conn: AsyncConnection | None = None) -> Any:
        query = select(voice_notes).where(voice_notes.c.id == note_id)
        if conn is None:
            async with self.db.read() as own:
                row = (await own.execute(query)).mappings().first()
        else:
            row = (await conn.execute(query)).mappings().first()
        if row is None or (row["owner_id"] != by.user_id and not by.is_admin):
            raise errors.NotFound(f"no voice note {note_id[:60]!r}")
        return row

    async def status(self, by: Principal, note_id: str) -> dict[str, Any]:
        return describe(await self._row(by, note_id))

    async def list_notes(
        self, by: Principal, *, user_id: str | None = None, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """The owner's notes, newest first, a page at a time."""
        owner = _owner(by, user_id)
        limit = max(1, min(limit, 200))
        offset = max(0, offset)
        async with self.db.read() as conn:
            total = (
                await conn.execute(select(func.count()).select_from(voice_notes).where(voice_notes.c.owner_id == owner))
            ).scalar_one()
            rows = (
                (
                    await conn.execute(
                        select(voice_notes)
                        .where(voice_notes.c.owner_id == owner)
                        .order_by(voice_notes.c.created_at.desc(), voice_notes.c.id.desc())
                        .limit(limit)
                        .offset(offset)
                    )
                )
                .mappings()
                .all()
            )
        return {"notes": [describe(r) for r in rows], "total": int(total), "limit": limit, "offset": offset}

    # -- the session: start, upload, consent ----------------------------------------------

    async def start(
        self, by: Principal, *, title: str, purpose: str = "", user_id: str | None = None
    ) -> dict[str, Any]:
        """Open a recording session (a note with no audio yet)."""
        owner = _owner(by, user_id)
        title = (title or "").strip()
        if not title or len(title) > MAX_TITLE:
            raise errors.InvalidInput(f"title must be 1 to {MAX_TITLE} characters")
        if len(purpose) > MAX_PURPOSE:
            raise errors.InvalidInput(f"purpose must be at most {MAX_PURPOSE} characters")
        now = self.clock.now()
        note_id = new_id("vn")
        row = {
            "id": note_id,
            "owner_id": owner,
            "title": title,
            "purpose": purpose.strip(),
            "status": "created",
            "steps": "",
            "created_at": now,
            "updated_at": now,
        }
        async with self.db.write() as conn:
            await conn.execute(insert(voice_notes).values(**row))
        await self.pipeline.publish("created", row, title=title)
        return {"session_id": note_id, "status": "created"}

    async def upload(self, by: Principal, note_id: str, data: bytes, *, user_id: str | None = None) -> dict[str, Any]:
        """Store the recording encrypted; ask for the three consents. The content decides the format."""
        if user_id is not None:
            _owner(by, user_id)
        row = await self._row(by, note_id)
        if row["status"] != "created":
            raise errors.Conflict("this voice note already has its audio; start a new note for another recording")
        if len(data) > self.max_upload_bytes:
            raise errors.PayloadTooLarge(f"the recording is larger than {self.max_upload_bytes} bytes")
        kind = audio.sniff(data)
        decoded = await asyncio.to_thread(audio.decode, data)
        if decoded.peak < audio.SILENCE_PEAK:
            raise errors.InvalidInput("the recording is silent: there is no speech to transcribe")
        sealed = await self.vault.seal_data(audio_subject(note_id), data)
        now = self.clock.now()
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(voice_notes)
                .where(voice_notes.c.id == note_id, voice_notes.c.status == "created")
                .values(
                    status="awaiting_consent",
                    audio_format=kind,
                    audio_bytes=len(data),
                    duration_seconds=decoded.seconds,
                    updated_at=now,
                )
            )
            if not changed.rowcount:
                raise errors.Conflict("this voice note already has its audio")
            await conn.execute(
                insert(voice_audio).values(
                    note_id=note_id,
                    key_id=sealed.key_id,
                    dek_id=sealed.dek_id,
                    wrapped_dek=sealed.wrapped_dek,
                    ciphertext=sealed.ciphertext,
                )
            )
        await self.pipeline.publish("uploaded", row, audio_format=kind, duration_seconds=decoded.seconds)
        return {
            "session_id": note_id,
            "consent_id": f"consent_{note_id}",
            "consents_requested": list(CONSENT_SCOPES),
            "next_step": "approve_consent",
            "audio_format": kind,
            "duration_seconds": round(decoded.seconds, 3),
        }

    async def consent(
        self, by: Principal, note_id: str, scopes: list[str] | None = None, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """Record the owner's consents (default: all three); with recording and transcription, processing starts."""
        if user_id is not None:
            _owner(by, user_id)
        if by.is_agent:
            raise errors.PermissionDenied("an agent cannot consent for its human")
        chosen = list(CONSENT_SCOPES) if scopes is None else [s.strip().lower() for s in scopes]
        unknown = sorted(set(chosen) - set(CONSENT_SCOPES))
        if unknown or not chosen:
            raise errors.InvalidInput(
                f"scopes must be some of {', '.join(CONSENT_SCOPES)}", details={"unknown": unknown}
            )
        row = await self._row(by, note_id)
        if row["owner_id"] != by.user_id:
            raise errors.PermissionDenied("only the note's owner can consent to its processing")
        if row["status"] == "created":
            raise errors.Conflict("upload the recording before consenting to its processing")
        now = self.clock.now()
        enqueued = None
        async with self.db.write() as conn:
            current = await self._row(by, note_id, conn)
            granted = {s for s in CONSENT_SCOPES if current[f"consent_{s}"]} | set(chosen)
            for scope in sorted(set(chosen)):
                if current[f"consent_{scope}"]:
                    continue
                await conn.execute(
                    insert(voice_consents).values(
                        id=new_id("vcon"), note_id=note_id, scope=scope, granted_by=by.name, granted_at=now
                    )
                )
                await self.vault.audit.append(
                    conn,
                    "voice.consent_granted",
                    actor=by.name,
                    user_id=current["owner_id"],
                    details={"note_id": note_id, "scope": scope},
                )
            values: dict[str, Any] = {f"consent_{s}": True for s in granted}
            values["updated_at"] = now
            starts = current["status"] == "awaiting_consent" and granted >= REQUIRED_SCOPES
            if starts:
                values.update(status="processing", stage=STAGES[0])
            await conn.execute(update(voice_notes).where(voice_notes.c.id == note_id).values(**values))
            if starts:
                enqueued = await self.pipeline.submit_in(conn, note_id, STAGES[0])
        if enqueued is not None:
            await self.pipeline.htm.announce_created(enqueued)
        await self.pipeline.publish("consented", row, scopes=sorted(granted), processing=enqueued is not None)
        result = await self.status(by, note_id)
        if not granted >= REQUIRED_SCOPES:
            result["next_step"] = "consent to recording and transcription to start processing"
        return result

    async def reprocess(self, by: Principal, note_id: str) -> dict[str, Any]:
        """Resume a failed note from the stage that failed."""
        row = await self._row(by, note_id)
        if row["status"] != "failed" or row["failed_stage"] is None:
            raise errors.Conflict("only a failed voice note can be reprocessed")
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(voice_notes)
                .where(voice_notes.c.id == note_id, voice_notes.c.status == "failed")
                .values(status="processing", stage=row["failed_stage"], error=None, updated_at=self.clock.now())
            )
            enqueued = await self.pipeline.submit_in(conn, note_id, row["failed_stage"]) if changed.rowcount else None
        if enqueued is not None:
            await self.pipeline.htm.announce_created(enqueued)
        await self.pipeline.publish("reprocessing", row, stage=row["failed_stage"])
        return await self.status(by, note_id)

    async def reindex(self, *, from_stage: str = "embed") -> list[str]:
        """Run every processed note again from ``from_stage`` (after a model change); return their ids.

        Grace's own maintenance (the ``grace voice reindex`` command), not a request's: it acts on every
        owner's notes. What the earlier stages made is kept; the note is not searchable until it is done.
        """
        if from_stage not in ("transcribe", "chunk", "embed"):
            raise errors.InvalidInput("reindex starts from transcribe, chunk or embed")
        keep = [_done_name(s) for s in STAGES[: STAGES.index(from_stage)]]
        async with self.db.read() as conn:
            rows = (
                (
                    await conn.execute(
                        select(voice_notes).where(voice_notes.c.status.in_(("processing", "completed", "failed")))
                    )
                )
                .mappings()
                .all()
            )
        started: list[str] = []
        for row in rows:
            async with self.db.write() as conn:
                changed = await conn.execute(
                    update(voice_notes)
                    .where(voice_notes.c.id == row["id"], voice_notes.c.updated_at == row["updated_at"])
                    .values(
                        status="processing",
                        stage=from_stage,
                        failed_stage=None,
                        error=None,
                        steps=",".join(s for s in steps_of(row) if s in keep),
                        completed_at=None,
                        updated_at=self.clock.now(),
                    )
                )
                enqueued = await self.pipeline.submit_in(conn, row["id"], from_stage) if changed.rowcount else None
                if changed.rowcount:
                    await index.bump_version(conn, row["owner_id"], row["id"])  # not searchable until indexed again
            if enqueued is not None:
                await self.pipeline.htm.announce_created(enqueued)
                started.append(row["id"])
        return started

    async def processing_count(self, note_ids: list[str]) -> int:
        """How many of ``note_ids`` are still processing."""
        async with self.db.read() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(voice_notes)
                        .where(voice_notes.c.id.in_(note_ids), voice_notes.c.status == "processing")
                    )
                ).scalar_one()
            )

    # -- reading back ----------------------------------------------------------------------

    async def segments(self, by: Principal, note_id: str) -> tuple[Any, list[dict[str, Any]], Any]:
        row = await self._row(by, note_id)
        async with self.db.read() as conn:
            transcript = (
                (await conn.execute(select(voice_transcripts).where(voice_transcripts.c.note_id == note_id)))
                .mappings()
                .first()
            )
            rows = (
                (
                    await conn.execute(
                        select(voice_segments).where(voice_segments.c.note_id == note_id).order_by(voice_segments.c.idx)
                    )
                )
                .mappings()
                .all()
            )
        if transcript is None:
            raise errors.Conflict(f"this voice note has no transcript yet (status {row['status']})")
        segments = [
            {
                "start": r["start_s"],
                "end": r["end_s"],
                "text": r["text"],
                "words": [{"word": w, "start": s, "end": e} for w, s, e in json.loads(r["words"])],
            }
            for r in rows
        ]
        return row, segments, transcript

    async def transcript(self, by: Principal, note_id: str, fmt: str = "json") -> dict[str, Any] | str:
        """The transcript (the seed's {transcript, length} plus timed segments), or subtitles (srt, vtt)."""
        if fmt not in formats.FORMATS:
            raise errors.InvalidInput(f"format must be one of {', '.join(formats.FORMATS)}")
        row, segments, transcript = await self.segments(by, note_id)
        if fmt != "json":
            return formats.render(segments, fmt)
        return {
            "note_id": note_id,
            "title": row["title"],
            "transcript": transcript["text"],
            "length": len(transcript["text"]),
            "language": transcript["language"],
            "engine": transcript["engine"],
            "model": transcript["model"],
            "model_version": transcript["model_version"],
            "segments": segments,
        }

    async def audio(self, by: Principal, note_id: str) -> tuple[bytes, str]:
        """The recording, decrypted, and its format."""
        row = await self._row(by, note_id)
        if row["audio_format"] is None:
            raise errors.NotFound("this voice note has no audio yet")
        return await self.pipeline.load_audio(note_id), str(row["audio_format"])

    # -- delete ----------------------------------------------------------------------------

    async def delete(self, by: Principal, note_id: str) -> dict[str, Any]:
        """Remove the note and every trace of it: audio and its key, transcript, chunks, vectors, index rows."""
        async with self.db.write() as conn:
            row = await self._row(by, note_id, conn)
            chunk_ids = (
                await conn.execute(select(voice_chunks.c.id).where(voice_chunks.c.note_id == note_id))
            ).scalars()
            await index.drop_full_text(conn, [int(i) for i in chunk_ids])
            for table in (
                voice_sentences,
                voice_chunks,
                voice_segments,
                voice_transcripts,
                voice_audio,
                voice_consents,
            ):
                await conn.execute(delete(table).where(table.c.note_id == note_id))
            await conn.execute(delete(voice_notes).where(voice_notes.c.id == note_id))
            await index.bump_version(conn, row["owner_id"], row["id"])
            await self.vault.audit.append(
                conn, "voice.note_deleted", actor=by.name, user_id=row["owner_id"], details={"note_id": note_id}
            )
        await self.pipeline.publish("deleted", row)
        return {"deleted": note_id}

    # -- search ----------------------------------------------------------------------------

    def _one_statement(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for one read statement: on PostgreSQL an autocommit one (no BEGIN or COMMIT)."""
        return self.db.read() if self.db.is_sqlite else self.db.autocommit()

    async def _ranked(
        self, owner: str, query: str, vector: npt.NDArray[np.float32], top_k: int, entry: Any
    ) -> tuple[list[tuple[int, float]], dict[int, int]]:
        """The ``top_k`` chunks by the fusion, and the best sentence of each that has one."""
        pool = max(top_k * 4, CANDIDATES)
        by_sentence = await self.vectors.rank(entry, vector, pool, exact=self.exact)
        best_of = {chunk: sentence for chunk, _, sentence in by_sentence if sentence}
        if self.sentences and not fusion.uses_words(self.fusion):  # the default: no query here
            scored = fusion.fuse([(chunk, score) for chunk, score, _ in by_sentence], [], self.fusion, top_k)
            return scored, {c: best_of[c] for c, _ in scored if c in best_of}
        async with self.db.read() as conn:
            by_words = await index.keyword_search(conn, owner, query, pool) if fusion.uses_words(self.fusion) else []
            if self.sentences:
                by_vector = [(chunk, score) for chunk, score, _ in by_sentence]
            else:  # the chunks' own vectors (bench only: measured against sentences)
                by_vector = await index.chunk_vector_search(conn, owner, vector, pool)
            scored = fusion.fuse(by_vector, by_words, self.fusion, top_k)
            # Each hit points at its chunk's best sentence (one found by words alone: scored here).
            missing = [c for c, _ in scored if c not in best_of]
            if missing:
                best_of.update(await index.best_sentences(conn, owner, missing, vector))
        return scored, {c: best_of[c] for c, _ in scored if c in best_of}

    async def search(
        self, by: Principal, query: str, *, top_k: int = 10, user_id: str | None = None
    ) -> list[SearchHit]:
        """Hybrid search of the owner's notes; each hit names its best-matching sentence with its own times."""
        owner = _owner(by, user_id)
        query = (query or "").strip()
        if not query:
            raise errors.InvalidInput("the query is empty")
        if len(query) > MAX_QUERY:
            raise errors.InvalidInput(f"the query is longer than {MAX_QUERY} characters")
        if not 1 <= top_k <= MAX_TOP_K:
            raise errors.InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}")
        vector = await self._query_vector(owner, query)
        # The owner's vectors as held are ranked first, and the hits' rows are read with the owner's
        # index version in the same statement: one round trip when nothing changed. A version that
        # moved (a note made searchable, reindexed or deleted, by this process or another) loads the
        # owner's vectors again and ranks again, so a search never misses a note that was searchable
        # when its rows were read, nor returns one deleted before.
        entry = self.vectors.cached(owner)
        for _ in range(_SEARCH_ATTEMPTS):
            if entry is None:
                async with self.db.read() as conn:
                    entry = await self.vectors.entry(conn, owner)
            scored, best_of = await self._ranked(owner, query, vector, top_k, entry)
            async with self._one_statement() as conn:
                version, rows = await index.hit_rows(conn, owner, [c for c, _ in scored], list(best_of.values()))
            if version == entry.version:
                break
            entry = None
        hits = []
        for chunk_id, score in scored:
            row = rows.get(chunk_id)
            if row is None:  # deleted since it was ranked, when the owner's notes kept changing
                continue
            sentence = (
                (row["sentence_text"], row["sentence_start"], row["sentence_end"])
                if row["sentence_text"] is not None
                else None
            )
            hits.append(
                SearchHit(
                    note_id=row["note_id"],
                    title=row["title"],
                    chunk_index=row["idx"],
                    start=sentence[1] if sentence else row["start_s"],
                    end=sentence[2] if sentence else row["end_s"],
                    score=score,
                    snippet=sentence[0] if sentence else row["text"],
                    chunk_start=row["start_s"],
                    chunk_end=row["end_s"],
                )
            )
        return hits
