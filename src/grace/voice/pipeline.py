"""Processing a note: one task-manager task per stage, each handing over to the next.

decode -> transcribe -> chunk -> embed -> index -> ingest -> learn. The consent that starts
processing submits the first stage (origin ``user_request``, submitted by Grace on the owner's
behalf: no request may submit a stage itself). Each stage, once done, records itself on the note and
enqueues the next stage in the same transaction. A stage that raises is retried by the task manager;
on its last attempt (or at once for input no retry can fix, such as a silent recording) the note is
marked failed with the stage and the reason, and reprocessing submits that stage again, so work
already done is kept. A stage task that finds its note deleted, or no longer at its stage (a
duplicate), does nothing.

The decoded samples are not stored between stages (a one-hour note is 230 MB of them): decode
checks the recording and measures it, transcribe decodes it again, which costs about 1% of
transcribing it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.bus import Bus
from grace.clock import Clock
from grace.htm import HTM, INTERNAL, TaskContext
from grace.storage import Database
from grace.vault import SealedData, Vault
from grace.voice import audio, chunking, index
from grace.voice.engines import Engines
from grace.voice.tables import (
    voice_audio,
    voice_chunks,
    voice_notes,
    voice_segments,
    voice_sentences,
    voice_transcripts,
)

__all__ = ["STAGES", "STEP_NAMES", "Pipeline", "task_type"]

log = logging.getLogger("grace.voice")

STAGES = ("decode", "transcribe", "chunk", "embed", "index", "ingest", "learn")
# A stage's record on the note once it is done; the seed's names where the seed has one.
DONE = {
    "decode": "decoded",
    "transcribe": "transcribed",
    "chunk": "chunked",
    "embed": "embedded",
    "index": "indexed",
    "ingest": "ingested",
    "learn": "learned",
}
STEP_NAMES = ("consent_granted", "transcribed", "embedded", "ingested", "learned")
STAGE_TIMEOUT_SECONDS = 3600.0
STAGE_ATTEMPTS = 3
LEARNING_LOOP_ABSENT = "recorded locally: this Grace has no learning loop yet; the note is kept for it"
LEARNING_NOT_CONSENTED = "not fed to the learning loop: the owner did not consent to learning"


def task_type(stage: str) -> str:
    return f"voice.{stage}"


def audio_subject(note_id: str) -> str:
    return f"voice:{note_id}"


def steps_of(row: Any) -> list[str]:
    return [s for s in str(row["steps"] or "").split(",") if s]


class Pipeline:
    """The stage handlers and the submission of stages."""

    def __init__(self, db: Database, clock: Clock, bus: Bus, vault: Vault, htm: HTM, engines: Engines) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.vault = vault
        self.htm = htm
        self.engines = engines
        # The learning loop's feed (grace.intents.LearningLoop.record_outcome), set by the composition root.
        self.learning_feed: Callable[..., Awaitable[dict[str, Any]]] | None = None
        self._stages: dict[str, Callable[[Any], Awaitable[str | None]]] = {
            "decode": self._decode,
            "transcribe": self._transcribe,
            "chunk": self._chunk,
            "embed": self._embed,
            "index": self._index,
            "ingest": self._ingest,
            "learn": self._learn,
        }

    def register(self) -> None:
        """Register one handler per stage with the task manager; only Grace submits them."""
        for stage in STAGES:
            self.htm.handlers.register(task_type(stage), self._handler(stage), submitters=INTERNAL, replace=True)

    async def submit_in(self, conn: AsyncConnection, note_id: str, stage: str) -> Any:
        """Enqueue ``stage`` for ``note_id`` inside the caller's write transaction; announce after commit."""
        request = self.htm.request(
            task_type(stage),
            payload={"note_id": note_id},
            origin="user_request",
            max_attempts=STAGE_ATTEMPTS,
            timeout_seconds=STAGE_TIMEOUT_SECONDS,
        )
        return await self.htm.enqueue_in(conn, [request], creator=None)

    async def publish(self, event: str, row: Any, **extra: Any) -> None:
        payload = {"note_id": row["id"], "user_id": row["owner_id"], **extra}
        try:
            await self.bus.publish(f"voice.note.{event}", payload)
        except Exception as exc:  # progress events are best effort; the note's row is the truth
            log.warning("voice.event_failed", extra={"event": event, "reason": type(exc).__name__})

    def _handler(self, stage: str) -> Callable[[TaskContext], Coroutine[Any, Any, dict[str, Any]]]:
        async def handle(ctx: TaskContext) -> dict[str, Any]:
            return await self.run_stage(stage, str(ctx.payload.get("note_id", "")), ctx.attempt, ctx.task.max_attempts)

        return handle

    async def _row(self, note_id: str) -> Any:
        async with self.db.read() as conn:
            return (await conn.execute(select(voice_notes).where(voice_notes.c.id == note_id))).mappings().first()

    async def run_stage(self, stage: str, note_id: str, attempt: int = 1, max_attempts: int = 1) -> dict[str, Any]:
        """Run one stage of ``note_id``, record it and enqueue the next; mark the note failed on the last attempt."""
        row = await self._row(note_id)
        if row is None or row["status"] != "processing" or row["stage"] != stage:
            return {"note_id": note_id, "stage": stage, "skipped": "the note is gone or not at this stage"}
        try:
            outcome = await self._stages[stage](row)
        except Exception as exc:
            permanent = isinstance(exc, errors.InvalidInput)
            if permanent or attempt >= max_attempts:
                reason = exc.message if isinstance(exc, errors.GraceError) else f"{type(exc).__name__}: {exc}"[:500]
                await self._fail(row, stage, reason)
            raise
        await self._advance(row, stage, outcome)
        return {"note_id": note_id, "stage": stage, "done": DONE[stage]}

    async def _fail(self, row: Any, stage: str, reason: str) -> None:
        now = self.clock.now()
        async with self.db.write() as conn:
            await conn.execute(
                update(voice_notes)
                .where(voice_notes.c.id == row["id"], voice_notes.c.stage == stage)
                .values(status="failed", failed_stage=stage, error=f"{stage}: {reason}", updated_at=now)
            )
        log.info("voice.note_failed", extra={"note_id": row["id"], "stage": stage})
        await self.publish("failed", row, stage=stage, error=f"{stage}: {reason}")

    async def _advance(self, row: Any, stage: str, outcome: str | None) -> None:
        now = self.clock.now()
        steps = steps_of(row)
        if DONE[stage] not in steps:
            steps.append(DONE[stage])
        position = STAGES.index(stage)
        following = STAGES[position + 1] if position + 1 < len(STAGES) else None
        values: dict[str, Any] = {"steps": ",".join(steps), "stage": following, "updated_at": now}
        if outcome is not None:
            values["learning_outcome"] = outcome
        if following is None:
            values.update(status="completed", completed_at=now)
        enqueued = None
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(voice_notes)
                .where(
                    voice_notes.c.id == row["id"], voice_notes.c.stage == stage, voice_notes.c.status == "processing"
                )
                .values(**values)
            )
            if changed.rowcount and stage == "index":
                await index.bump_version(conn, row["owner_id"], row["id"])  # the note is searchable from this commit
            if changed.rowcount and following is not None:
                enqueued = await self.submit_in(conn, row["id"], following)
        if enqueued is not None:
            await self.htm.announce_created(enqueued)
        progress = round(len([s for s in STAGES if DONE[s] in steps]) / len(STAGES), 3)
        await self.publish("completed" if following is None else "progress", row, stage=stage, progress=progress)

    # -- the stages ------------------------------------------------------------------

    async def load_audio(self, note_id: str) -> bytes:
        async with self.db.read() as conn:
            found = (await conn.execute(select(voice_audio).where(voice_audio.c.note_id == note_id))).mappings().first()
        if found is None:
            raise errors.NotFound("this voice note has no audio")
        sealed = SealedData(found["key_id"], found["dek_id"], bytes(found["wrapped_dek"]), bytes(found["ciphertext"]))
        return await self.vault.open_data(audio_subject(note_id), sealed)

    async def _decoded(self, note_id: str) -> audio.Decoded:
        data = await self.load_audio(note_id)
        return await _in_thread(audio.decode, data)

    async def _decode(self, row: Any) -> None:
        decoded = await self._decoded(row["id"])
        if decoded.peak < audio.SILENCE_PEAK:
            raise errors.InvalidInput("the recording is silent: there is no speech to transcribe")
        async with self.db.write() as conn:
            await conn.execute(
                update(voice_notes).where(voice_notes.c.id == row["id"]).values(duration_seconds=decoded.seconds)
            )
        return None

    async def _transcribe(self, row: Any) -> None:
        decoded = await self._decoded(row["id"])
        transcript = await self.engines.transcribe(decoded.samples)
        if not transcript.words:
            raise errors.InvalidInput("no speech was found in the recording")
        async with self.db.write() as conn:
            await conn.execute(delete(voice_segments).where(voice_segments.c.note_id == row["id"]))
            await conn.execute(delete(voice_transcripts).where(voice_transcripts.c.note_id == row["id"]))
            await conn.execute(
                insert(voice_transcripts).values(
                    note_id=row["id"],
                    text=transcript.text,
                    language=transcript.language,
                    engine=transcript.engine,
                    model=transcript.model,
                    model_version=transcript.version,
                    created_at=self.clock.now(),
                )
            )
            await conn.execute(
                insert(voice_segments),
                [
                    {
                        "note_id": row["id"],
                        "idx": i,
                        "start_s": s.start,
                        "end_s": s.end,
                        "text": s.text,
                        "words": json.dumps([[w.text, w.start, w.end] for w in s.words]),
                    }
                    for i, s in enumerate(transcript.segments)
                ],
            )
        return None

    async def words(self, note_id: str, conn: AsyncConnection | None = None) -> list[chunking.Word]:
        """Return the note's timed words, in order."""
        if conn is None:
            async with self.db.read() as own:
                return await self.words(note_id, own)
        rows = await conn.execute(
            select(voice_segments.c.words).where(voice_segments.c.note_id == note_id).order_by(voice_segments.c.idx)
        )
        return [chunking.Word(str(w), float(s), float(e)) for (text,) in rows for w, s, e in json.loads(text)]

    async def _chunk(self, row: Any) -> None:
        words = await self.words(row["id"])
        chunks = chunking.chunk_words(words)
        sentences = chunking.search_sentences(words)
        async with self.db.write() as conn:
            old = (await conn.execute(select(voice_chunks.c.id).where(voice_chunks.c.note_id == row["id"]))).scalars()
            await index.drop_full_text(conn, list(old))
            await conn.execute(delete(voice_sentences).where(voice_sentences.c.note_id == row["id"]))
            await conn.execute(delete(voice_chunks).where(voice_chunks.c.note_id == row["id"]))
            await conn.execute(
                insert(voice_chunks),
                [
                    {
                        "note_id": row["id"],
                        "owner_id": row["owner_id"],
                        "idx": c.index,
                        "text": c.text,
                        "start_s": c.start,
                        "end_s": c.end,
                        "first_word": c.first_word,
                        "last_word": c.last_word,
                    }
                    for c in chunks
                ],
            )
            ids = dict(
                (
                    await conn.execute(
                        select(voice_chunks.c.idx, voice_chunks.c.id).where(voice_chunks.c.note_id == row["id"])
                    )
                ).all()
            )
            if sentences:
                await conn.execute(
                    insert(voice_sentences),
                    [
                        {
                            "chunk_id": ids[chunking.chunk_of(sentence, chunks)],
                            "note_id": row["id"],
                            "owner_id": row["owner_id"],
                            "idx": i,
                            "text": sentence.text,
                            "start_s": sentence.start,
                            "end_s": sentence.end,
                        }
                        for i, sentence in enumerate(sentences)
                    ],
                )
        return None

    async def _embed(self, row: Any) -> None:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(voice_chunks.c.id, voice_chunks.c.text)
                    .where(voice_chunks.c.note_id == row["id"])
                    .order_by(voice_chunks.c.idx)
                )
            ).all()
            sentences = (
                await conn.execute(
                    select(voice_sentences.c.id, voice_sentences.c.text)
                    .where(voice_sentences.c.note_id == row["id"])
                    .order_by(voice_sentences.c.idx)
                )
            ).all()
        vectors = await self.engines.embed([str(r[1]) for r in rows])
        sentence_vectors = await self.engines.embed([str(r[1]) for r in sentences])
        name = f"{self.engines.embedder.model} ({self.engines.embedder.version})"
        async with self.db.write() as conn:
            for (chunk_id, _), vector in zip(rows, vectors, strict=True):
                await conn.execute(
                    update(voice_chunks)
                    .where(voice_chunks.c.id == chunk_id)
                    .values(embedding=np.asarray(vector, dtype="<f4").tobytes(), embed_model=name)
                )
            for (sentence_id, _), vector in zip(sentences, sentence_vectors, strict=True):
                await conn.execute(
                    update(voice_sentences)
                    .where(voice_sentences.c.id == sentence_id)
                    .values(embedding=np.asarray(vector, dtype="<f4").tobytes())
                )
        return None

    async def _index(self, row: Any) -> None:
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    select(voice_chunks.c.id, voice_chunks.c.text).where(voice_chunks.c.note_id == row["id"])
                )
            ).all()
            await index.drop_full_text(conn, [int(r[0]) for r in rows])
            await index.add_full_text(conn, [(int(r[0]), row["owner_id"], str(r[1])) for r in rows])
        return None

    async def _ingest(self, row: Any) -> None:
        # The knowledge base is this note's transcript, chunks and index rows: nothing more to copy.
        return None

    async def _learn(self, row: Any) -> str:
        if not row["consent_learning"]:
            return LEARNING_NOT_CONSENTED
        if self.learning_feed is None:
            return LEARNING_LOOP_ABSENT
        # What the loop learns is how processing a note went: no transcript, no title.
        outcome = await self.learning_feed(
            action_type="voice_note",
            success=True,
            execution_time=max(0.0, (self.clock.now() - row["created_at"]).total_seconds()),
            context={"note_id": row["id"], "duration_seconds": row["duration_seconds"]},
            owner_id=row["owner_id"],
            recorded_by="grace",
            domain="voice",
        )
        return f"fed to the learning loop (outcome {outcome['outcome_id']})"


async def _in_thread(fn: Callable[[bytes], audio.Decoded], data: bytes) -> audio.Decoded:
    import asyncio

    return await asyncio.to_thread(fn, data)
