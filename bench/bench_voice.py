"""Voice-notes benchmark: real-time factor per stage, search latency, and retrieval quality.

Run with ``python -m bench voice`` (writes ``bench/results/voice.json``). SQLite always; PostgreSQL
too when ``GRACE_TEST_DATABASE_URL`` names a server (a throwaway database is made and dropped there).

- ``pipeline``: espeak-ng speech of ``BENCH_VOICE_MINUTES`` minutes (default ``1,10``; add 60 for the
  hour) through the whole pipeline on the task manager (start, upload, consent, workers); each
  stage's time is its task's own (``started_at`` to ``finished_at``), RTF = stage seconds / audio
  seconds, and ``end_to_end`` from consent to searchable.
- ``search``: one user with ``BENCH_VOICE_CHUNKS`` chunks (default ``10000,100000``; random unit
  vectors, template text) and ``search`` p50/p95 over 100 queries, query embedding included.
- ``recall``: 100 notes made from 25 fact templates (four people each) among 10,000 distractor chunks
  of other sentences; each note is asked for by a keyword query and a paraphrase; recall@1, recall@5
  and MRR for each fusion (``vector``, ``bonus``, ``rrf``). Text only: this measures retrieval, the
  transcription's own errors are the pipeline's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import tempfile
import time
import wave
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url

from grace.auth import Principal, Role
from grace.config import load_settings
from grace.htm.tables import htm_tasks
from grace.services import Services, build
from grace.voice import chunk_words, fusion, index
from grace.voice.chunking import Word
from grace.voice.tables import voice_chunks, voice_notes, voice_segments

MINUTES = [float(m) for m in os.environ.get("BENCH_VOICE_MINUTES", "1,10").split(",") if m.strip()]
CHUNK_COUNTS = [int(n) for n in os.environ.get("BENCH_VOICE_CHUNKS", "10000,100000").split(",") if n.strip()]
SEARCHES = 100
DISTRACTORS = int(os.environ.get("BENCH_VOICE_DISTRACTORS", "10000"))

PEOPLE = ["Maria", "Tomas", "Priya", "Kenji"]
# (what was said, a keyword query, a paraphrase of the question) — {p} is a person.
FACTS = [
    (
        "{p} moved the quarterly budget review to Thursday afternoon.",
        "budget review Thursday {p}",
        "when is {p}'s meeting about the finances",
    ),
    (
        "{p} will send the revised spreadsheet before noon tomorrow.",
        "revised spreadsheet noon {p}",
        "by what time does {p} share the updated numbers",
    ),
    (
        "The roses in {p}'s garden need water every morning during the heat wave.",
        "roses water morning {p}",
        "how often should {p}'s flowers be watered",
    ),
    (
        "{p} booked a flight to Lisbon that leaves on Friday evening.",
        "flight Lisbon Friday {p}",
        "when does {p} travel to Portugal",
    ),
    (
        "{p} asked for the database migration to run over the weekend.",
        "database migration weekend {p}",
        "when should {p}'s schema upgrade happen",
    ),
    (
        "The dentist appointment for {p} is at nine on Monday.",
        "dentist appointment Monday {p}",
        "when does {p} see the doctor for teeth",
    ),
    (
        "{p} thinks the new logo should use darker blue.",
        "logo darker blue {p}",
        "what colour did {p} want for the brand mark",
    ),
    (
        "{p} found a memory leak in the upload service.",
        "memory leak upload service {p}",
        "what bug did {p} discover in the file sending code",
    ),
    (
        "The rent for {p}'s flat goes up by fifty euros in March.",
        "rent flat March {p}",
        "how much more will {p} pay for housing in spring",
    ),
    (
        "{p} is training for a half marathon in October.",
        "half marathon October {p}",
        "what running race is {p} preparing for",
    ),
    (
        "{p} wants the onboarding guide rewritten for new hires.",
        "onboarding guide new hires {p}",
        "which document for new employees does {p} want redone",
    ),
    (
        "The car of {p} needs new tyres before winter.",
        "car tyres winter {p}",
        "what does {p}'s vehicle need before it gets cold",
    ),
    (
        "{p} promised to review the pull request by Wednesday.",
        "review pull request Wednesday {p}",
        "when will {p} look at the code change",
    ),
    (
        "{p} is allergic to peanuts, so order the curry without them.",
        "allergic peanuts curry {p}",
        "what food must {p} avoid",
    ),
    (
        "The server room air conditioning broke again, {p} called the technician.",
        "server room air conditioning {p}",
        "who contacted the repair person about the cooling",
    ),
    (
        "{p} suggested we hire two more support engineers.",
        "hire support engineers {p}",
        "how many people did {p} want to add to the help desk",
    ),
    (
        "{p}'s daughter starts school in September.",
        "daughter school September {p}",
        "when does {p}'s child begin classes",
    ),
    (
        "The contract with the cleaning company ends in June, says {p}.",
        "contract cleaning company June {p}",
        "when does the janitorial agreement expire according to {p}",
    ),
    ("{p} recommended a book about negotiation.", "book negotiation {p}", "what reading did {p} suggest on bargaining"),
    (
        "{p} will present the sales forecast at the board meeting.",
        "sales forecast board meeting {p}",
        "who is showing revenue projections to the directors",
    ),
    (
        "The printer on the third floor is out of toner, {p} noticed.",
        "printer third floor toner {p}",
        "what did {p} say about the copier running out of ink",
    ),
    (
        "{p} prefers the standup at half past nine.",
        "standup half past nine {p}",
        "what time does {p} like the daily team check-in",
    ),
    (
        "{p} cancelled the subscription to the analytics tool.",
        "cancelled subscription analytics {p}",
        "which paid service did {p} stop",
    ),
    (
        "{p} needs a new passport before the trip to Japan.",
        "passport trip Japan {p}",
        "what travel document must {p} renew",
    ),
    (
        "{p} planted tomatoes and basil in the back garden.",
        "tomatoes basil garden {p}",
        "what vegetables and herbs did {p} grow",
    ),
]
DISTRACTOR_SENTENCES = [
    "We talked about the weather and the long drive home.",
    "The team discussed priorities for the next sprint.",
    "Someone left an umbrella in the meeting room.",
    "The coffee machine makes a strange noise in the morning.",
    "Lunch was pasta with a green salad.",
    "The presentation slides need more pictures.",
    "Traffic on the ring road was slow again.",
    "The project timeline looks realistic for now.",
    "A customer asked about delivery options.",
    "The library closes early on public holidays.",
    "We should archive old tickets in the tracker.",
    "The kids played football in the park after dinner.",
    "The new chairs in the office are comfortable.",
    "The quarterly newsletter went out yesterday.",
    "Music from the neighbours kept everyone awake.",
    "The bakery on the corner sells good bread.",
    "Please remember to lock the back door.",
    "The monitor flickers when the laptop is docked.",
    "The hiking trail was muddy after the rain.",
    "The training session covered security basics.",
]
NAMES = ["Alex", "Sam", "Jordan", "Chris", "Robin", "Lee", "Morgan", "Taylor", "Jamie", "Casey"]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5) * 1000, 2), "p95_ms": round(pick(0.95) * 1000, 2), "n": len(ordered)}


def _speech(minutes: float, workdir: Path) -> bytes:
    """espeak-ng reading varied sentences for ``minutes``, 16 kHz mono WAV."""
    rng = random.Random(7)
    sentences = [f.format(p=rng.choice(PEOPLE)) for f, _, _ in FACTS] + DISTRACTOR_SENTENCES
    words_needed = int(minutes * 150)  # espeak-ng at 150 words a minute
    script: list[str] = []
    count = 0
    while count < words_needed:
        sentence = rng.choice(sentences)
        script.append(sentence)
        count += len(sentence.split())
    raw, out = workdir / "speech.raw.wav", workdir / "speech.wav"
    (workdir / "script.txt").write_text(" ".join(script))
    subprocess.run(["espeak-ng", "-s", "150", "-f", str(workdir / "script.txt"), "-w", str(raw)], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out.read_bytes()


def _seconds_of(wav: bytes) -> float:
    import io

    with wave.open(io.BytesIO(wav)) as w:
        return w.getnframes() / w.getframerate()


@contextlib.asynccontextmanager
async def _services(backend: str, workdir: Path) -> AsyncIterator[Services]:
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'grace.db'}"
        admin = None
        name = ""
    else:
        admin = os.environ["GRACE_TEST_DATABASE_URL"]
        name = f"grace_bench_voice_{secrets.token_hex(3)}"
        conn = await asyncpg.connect(make_url(admin).set(drivername="postgresql").render_as_string(False))
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    settings = load_settings(data_dir=workdir / "data", database_url=url, voice_max_upload_bytes=1 << 30)
    services = await build(settings)
    try:
        yield services
    finally:
        await services.close()
        if admin is not None:
            conn = await asyncpg.connect(make_url(admin).set(drivername="postgresql").render_as_string(False))
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


async def _user(services: Services, name: str) -> Principal:
    user, _ = await services.accounts.create_user(name, "member")
    return Principal(user.id, user.username, Role.MEMBER)


async def _pipeline(services: Services, minutes: float, workdir: Path) -> dict[str, Any]:
    wav = _speech(minutes, workdir)
    seconds = _seconds_of(wav)
    me = await _user(services, f"speaker{int(minutes * 10)}")
    voice = services.voice
    note_id = (await voice.start(me, title=f"{minutes} minutes"))["session_id"]
    began = time.perf_counter()
    await voice.upload(me, note_id, wav)
    upload_seconds = time.perf_counter() - began
    began = time.perf_counter()
    status = await voice.consent(me, note_id)
    while status["status"] == "processing":
        await asyncio.sleep(0.2)
        status = await voice.status(me, note_id)
    end_to_end = time.perf_counter() - began
    async with services.db.read() as conn:
        rows = (
            await conn.execute(
                select(htm_tasks.c.task_type, htm_tasks.c.started_at, htm_tasks.c.finished_at).where(
                    htm_tasks.c.task_type.like("voice.%"), text("payload LIKE :p").bindparams(p=f"%{note_id}%")
                )
            )
        ).all()
    stages = {
        r[0].removeprefix("voice."): {
            "seconds": round((r[2] - r[1]).total_seconds(), 3),
            "rtf": round((r[2] - r[1]).total_seconds() / seconds, 4),
        }
        for r in rows
        if r[1] and r[2]
    }
    return {
        "audio_seconds": round(seconds, 1),
        "status": status["status"],
        "upload_seconds": round(upload_seconds, 3),
        "stages": stages,
        "end_to_end_seconds": round(end_to_end, 2),
        "end_to_end_rtf": round(end_to_end / seconds, 4),
    }


async def _bulk_chunks(services: Services, owner: str, texts: list[str], vectors: np.ndarray, per_note: int) -> None:
    """Write chunks (with one segment each, so hits find their sentence) straight into the index."""
    now = datetime.now(UTC)
    db = services.db
    for start in range(0, len(texts), 2000):
        batch = range(start, min(start + 2000, len(texts)))
        notes, segments, chunks = [], [], []
        for i in batch:
            note = f"vn_bench_{owner[-6:]}_{i // per_note}"
            if i % per_note == 0:
                notes.append(
                    {
                        "id": note,
                        "owner_id": owner,
                        "title": f"note {i // per_note}",
                        "purpose": "",
                        "status": "completed",
                        "steps": "decoded,transcribed,chunked,embedded,indexed,ingested,learned",
                        "created_at": now + timedelta(microseconds=i),
                        "updated_at": now,
                    }
                )
            words = [Word(w, float(j), float(j) + 0.5) for j, w in enumerate(texts[i].split())]
            segments.append(
                {
                    "note_id": note,
                    "idx": i % per_note,
                    "start_s": 0.0,
                    "end_s": float(len(words)),
                    "text": texts[i],
                    "words": json.dumps([[w.text, w.start, w.end] for w in words]),
                }
            )
            chunks.append(
                {
                    "note_id": note,
                    "owner_id": owner,
                    "idx": i % per_note,
                    "text": texts[i],
                    "start_s": 0.0,
                    "end_s": float(len(words)),
                    "first_word": 0,
                    "last_word": len(words) - 1,
                    "embedding": vectors[i].astype("<f4").tobytes(),
                    "embed_model": "bench",
                }
            )
        async with db.write() as conn:
            if notes:
                await conn.execute(insert(voice_notes), notes)
            # One segment per chunk: the word offsets below are per segment, so re-number within a note.
            await conn.execute(insert(voice_segments), segments)
            await conn.execute(insert(voice_chunks), chunks)
            ids = (
                await conn.execute(
                    select(voice_chunks.c.id, voice_chunks.c.text)
                    .where(voice_chunks.c.owner_id == owner)
                    .order_by(voice_chunks.c.id.desc())
                    .limit(len(chunks))
                )
            ).all()
            await index.add_full_text(conn, [(int(r[0]), owner, str(r[1])) for r in ids])


def _distractor_texts(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        words: list[str] = []
        while len(" ".join(words)) < 420:
            words.extend(rng.choice(DISTRACTOR_SENTENCES).replace("Someone", rng.choice(NAMES)).split())
        out.append(" ".join(chunk_words([Word(w, 0, 0) for w in words])[0].text.split()))
    return out


async def _search_latency(services: Services, chunks: int) -> dict[str, Any]:
    me = await _user(services, f"reader{chunks}")
    rng = random.Random(chunks)
    texts = _distractor_texts(min(chunks, 2000), rng)
    texts = [texts[i % len(texts)] for i in range(chunks)]
    vectors = np.random.default_rng(chunks).standard_normal((chunks, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await _bulk_chunks(services, me.user_id, texts, vectors, per_note=1)
    queries = [q.format(p=rng.choice(PEOPLE)) for _, _, q in FACTS] * 4
    await services.voice.search(me, "warm up", top_k=10)
    samples = []
    for query in queries[:SEARCHES]:
        began = time.perf_counter()
        await services.voice.search(me, query, top_k=10)
        samples.append(time.perf_counter() - began)
    return {"chunks": chunks, **_percentiles(samples)}


async def _recall(services: Services) -> dict[str, Any]:
    me = await _user(services, "recaller")
    rng = random.Random(11)
    targets: list[tuple[str, str, str]] = []
    for fact, keyword, paraphrase in FACTS:
        for person in PEOPLE:
            targets.append((fact.format(p=person), keyword.format(p=person), paraphrase.format(p=person)))
    # Each target note is one chunk: its fact among two ordinary sentences.
    target_texts = [
        " ".join([rng.choice(DISTRACTOR_SENTENCES), fact, rng.choice(DISTRACTOR_SENTENCES)]) for fact, _, _ in targets
    ]
    texts = target_texts + _distractor_texts(DISTRACTORS, rng)
    vectors = await services.voice.engines.embed(texts)
    await _bulk_chunks(services, me.user_id, texts, vectors, per_note=1)
    results: dict[str, Any] = {"notes": len(targets), "distractor_chunks": DISTRACTORS}
    note_of = {i: f"vn_bench_{me.user_id[-6:]}_{i}" for i in range(len(targets))}
    for method in fusion.FUSIONS:
        services.voice.fusion = method
        for kind, column in (("keyword", 1), ("paraphrase", 2)):
            ranks = []
            for i, target in enumerate(targets):
                hits = await services.voice.search(me, target[column], top_k=10)
                found = [h.note_id for h in hits]
                ranks.append(found.index(note_of[i]) + 1 if note_of[i] in found else None)
            results[f"{method}_{kind}"] = {
                "recall_at_1": round(sum(1 for r in ranks if r == 1) / len(ranks), 3),
                "recall_at_5": round(sum(1 for r in ranks if r and r <= 5) / len(ranks), 3),
                "mrr": round(statistics.fmean(1 / r if r else 0.0 for r in ranks), 3),
            }
    services.voice.fusion = "bonus"
    return results


async def run() -> dict[str, Any]:
    backends = ["sqlite"] + (["postgresql"] if os.environ.get("GRACE_TEST_DATABASE_URL") else [])
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "at": datetime.now(UTC).isoformat(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with _services("sqlite", workdir / "pipeline") as services:
            await services.htm.start_workers()
            result["pipeline"] = {f"{m:g}_minutes": await _pipeline(services, m, workdir) for m in MINUTES}
        for backend in backends:
            async with _services(backend, workdir / f"search-{backend}") as services:
                result[f"search_{backend}"] = [await _search_latency(services, n) for n in CHUNK_COUNTS]
        async with _services("sqlite", workdir / "recall") as services:
            result["recall"] = await _recall(services)
    result["summary"] = {
        "rtf": {k: v["stages"].get("transcribe", {}).get("rtf") for k, v in result["pipeline"].items()},
        "end_to_end_rtf": {k: v["end_to_end_rtf"] for k, v in result["pipeline"].items()},
        "search_p95_ms": {b: [s["p95_ms"] for s in result[f"search_{b}"]] for b in backends},
        "recall": {k: v for k, v in result["recall"].items() if isinstance(v, dict)},
    }
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2, default=str))
