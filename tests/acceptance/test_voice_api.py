"""Voice notes end to end: real speech (espeak-ng) through the real models, over HTTP, on both databases.

Start, upload, consent, the task manager's stages, status, transcript with timings (±1 s of where
each sentence was placed), SRT/VTT, audio with ranges, search by paraphrase landing on the right
sentence, nobody else's notes in anyone's results, and nothing left after delete. Then the bad inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import func, select, text

from grace.bus import Subscription
from grace.config import Settings, load_settings
from grace.services import Services
from grace.voice import Embedder, Engines, Transcriber, Transcript, tables
from grace.voice.fusion import KEYWORD_BONUS
from grace.voice.notes import FUSION
from tests.vaultkit import Cast
from tests.voicekit import Notes, Spoken

UPLOAD_LIMIT = 2_000_000


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data", database_url=database_url, log_json=True, voice_max_upload_bytes=UPLOAD_LIMIT
    )


@pytest.fixture
async def workers(cast: Cast) -> Services:
    """The cast's services with a worker pool running (the cast's close() stops it)."""
    await cast.services.htm.start_workers(concurrency=2)
    return cast.services


async def add_note(http: httpx.AsyncClient, who: dict[str, str], note: Spoken, name: str = "note.wav") -> str:
    started = await http.post("/api/voice-notes/start", json={"title": note.title, "purpose": "learning"}, headers=who)
    assert started.status_code == 201, started.text
    note_id = str(started.json()["session_id"])
    uploaded = await http.post(
        f"/api/voice-notes/{note_id}/upload", files={"file": (name, note.wav, "audio/wav")}, headers=who
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["next_step"] == "approve_consent"
    return note_id


async def process(services: Services, http: httpx.AsyncClient, who: dict[str, str], note_id: str) -> dict[str, Any]:
    """Consent, then wait for the note's completed or failed event; return its status."""
    events = services.bus.subscribe("voice.note.#")
    consented = await http.post(f"/api/voice-notes/{note_id}/consent", json={}, headers=who)
    assert consented.status_code == 200, consented.text
    while True:
        event = await events.get(timeout=600)
        assert event is not None, "no voice.note event for ten minutes"
        if event.payload.get("note_id") == note_id and event.topic in ("voice.note.completed", "voice.note.failed"):
            break
    status = await http.get(f"/api/voice-notes/{note_id}/status", headers=who)
    return dict(status.json())


async def test_a_spoken_note_becomes_searchable_by_its_owner_only(
    http: httpx.AsyncClient, cast: Cast, workers: Services, spoken: Notes
) -> None:
    owner, other = cast.headers("owner"), cast.headers("other")
    budget = await add_note(http, owner, spoken.budget)
    garden = await add_note(http, owner, spoken.garden)
    travel = await add_note(http, other, spoken.travel)
    for note_id, who in ((budget, owner), (garden, owner), (travel, other)):
        status = await process(workers, http, who, note_id)
        assert status["status"] == "completed", status
        assert status["steps_completed"] == ["consent_granted", "transcribed", "embedded", "ingested", "learned"]
        assert status["searchable"] is True and status["progress"] == 1.0 and status["error"] is None

    # The learn step fed the learning loop: one outcome per note, its owner's, without the transcript.
    learned = (await http.get("/api/learning/outcomes", params={"domain": "voice"}, headers=owner)).json()
    assert sorted(o["context"]["note_id"] for o in learned["outcomes"]) == sorted([budget, garden])
    assert all(o["action_type"] == "voice_note" and o["success"] for o in learned["outcomes"])
    assert "review" not in str(learned).lower()

    # The words that were said, each sentence where it was placed (±1 s).
    transcript = (await http.get(f"/api/voice-notes/{budget}/transcript", headers=owner)).json()
    said = transcript["transcript"].lower()
    # The recording is the same in every process (tests/voicekit.py), but tiny.en is a small model: the
    # words checked are those it hears the same way whatever slight change the audio had seen (it once
    # heard "quarterly budget review" as "quarter-limajat renew" and "spreadsheet" as "rent sheet").
    for word in ("moves", "thursday", "afternoon", "revised", "sheet", "maria", "noon"):
        assert word in said, said
    assert transcript["length"] == len(transcript["transcript"])
    assert transcript["engine"] == "faster-whisper" and transcript["model"] == "tiny.en"
    words = [w for s in transcript["segments"] for w in s["words"]]
    for offset, sentence in spoken.budget.sentences:
        first = sentence.split()[0].lower()
        spoken_at = [w["start"] for w in words if w["word"].lower().strip(".,") == first]
        assert any(abs(t - offset) <= 1.0 for t in spoken_at), (sentence, spoken_at)
    srt = await http.get(f"/api/voice-notes/{budget}/transcript?format=srt", headers=owner)
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:0") and " --> " in srt.text
    vtt = await http.get(f"/api/voice-notes/{budget}/transcript?format=vtt", headers=owner)
    assert vtt.text.startswith("WEBVTT\n\n00:00:0")

    # A paraphrase finds the right note, pointing at the right sentence.
    found = await http.post(
        "/api/voice-notes/search", json={"query": "watering the flowers", "top_k": 3}, headers=owner
    )
    assert found.status_code == 200, found.text
    top = found.json()["results"][0]
    assert top["note_id"] == garden and top["title"] == "Garden"
    assert "roses" in top["snippet"].lower() and abs(top["start"] - 6.5) <= 1.0 and top["end"] > top["start"]
    found = await http.post(
        "/api/voice-notes/search", json={"query": "when did the financial review get rescheduled"}, headers=owner
    )
    top = found.json()["results"][0]
    assert top["note_id"] == budget and "thursday" in top["snippet"].lower(), top
    assert abs(top["start"] - 0.5) <= 1.0

    # Another user's note is never found, even by its own words; its owner finds it.
    mine = await http.post("/api/voice-notes/search", json={"query": "flight to Lisbon on Friday"}, headers=owner)
    assert travel not in {h["note_id"] for h in mine.json()["results"]}
    theirs = await http.post("/api/voice-notes/search", json={"query": "flight to Lisbon on Friday"}, headers=other)
    assert theirs.json()["results"][0]["note_id"] == travel
    assert (await http.get(f"/api/voice-notes/{travel}/transcript", headers=owner)).status_code == 404
    assert (await http.get(f"/api/voice-notes/{travel}/audio", headers=owner)).status_code == 404
    assert (await http.delete(f"/api/voice-notes/{travel}", headers=owner)).status_code == 404

    # The default fusion skips the full-text query; a fusion that reads full text still gets it. By
    # words alone a word said in one note finds that note only, a word said in none finds nothing;
    # with the bonus, the note matching the words scores its vector similarity plus the bonus.
    search = "/api/voice-notes/search"
    by_vector = (await http.post(search, json={"query": "revised Maria"}, headers=owner)).json()["results"]
    assert {h["note_id"] for h in by_vector} == {budget, garden}
    assert (await http.post(search, json={"query": "zebra"}, headers=owner)).json()["results"]
    try:
        workers.voice.fusion = "words"
        by_words = (await http.post(search, json={"query": "revised Maria"}, headers=owner)).json()["results"]
        assert [h["note_id"] for h in by_words] == [budget]
        assert (await http.post(search, json={"query": "zebra"}, headers=owner)).json()["results"] == []
        workers.voice.fusion = "bonus"
        bonus = (await http.post(search, json={"query": "revised Maria"}, headers=owner)).json()["results"]
    finally:
        workers.voice.fusion = FUSION
    plain = {h["note_id"]: h["score"] for h in by_vector}
    lifted = {h["note_id"]: h["score"] for h in bonus}
    assert lifted[budget] == pytest.approx(plain[budget] + KEYWORD_BONUS, abs=2e-4)
    assert lifted[garden] == pytest.approx(plain[garden], abs=2e-4)

    # The list is the caller's, paged.
    listed = (await http.get("/api/voice-notes?limit=1", headers=owner)).json()
    assert listed["total"] == 2 and [n["id"] for n in listed["notes"]] == [garden]
    listed = (await http.get("/api/voice-notes?limit=1&offset=1", headers=owner)).json()
    assert [n["id"] for n in listed["notes"]] == [budget]

    # The audio comes back as uploaded (it is stored encrypted), and seeks with a range.
    whole = await http.get(f"/api/voice-notes/{budget}/audio", headers=owner)
    assert whole.status_code == 200 and whole.content == spoken.budget.wav
    assert whole.headers["content-type"] == "audio/wav"
    part = await http.get(f"/api/voice-notes/{budget}/audio", headers={**owner, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == spoken.budget.wav[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(spoken.budget.wav)}"
    tail = await http.get(f"/api/voice-notes/{budget}/audio", headers={**owner, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == spoken.budget.wav[-10:]
    beyond = await http.get(f"/api/voice-notes/{budget}/audio", headers={**owner, "Range": "bytes=99999999-"})
    assert beyond.status_code == 416 and beyond.json()["error"]["code"] == "range_not_satisfiable"
    async with workers.db.read() as conn:
        stored = (await conn.execute(select(tables.voice_audio.c.ciphertext))).scalars().all()
    assert stored and all(spoken.budget.wav[44:2000] not in bytes(c) for c in stored)

    # Delete leaves nothing: no row in any voice table, no full-text row, and search no longer finds it.
    assert (await http.delete(f"/api/voice-notes/{garden}", headers=owner)).status_code == 200
    async with workers.db.read() as conn:
        for table in (
            tables.voice_notes,
            tables.voice_audio,
            tables.voice_transcripts,
            tables.voice_segments,
            tables.voice_chunks,
            tables.voice_sentences,
            tables.voice_consents,
        ):
            column = table.c.id if table is tables.voice_notes else table.c.note_id
            left = (await conn.execute(select(func.count()).select_from(table).where(column == garden))).scalar_one()
            assert left == 0, table.name
        if workers.db.is_sqlite:
            fts = await conn.execute(text("SELECT text FROM voice_chunks_fts"))
            assert all("roses" not in str(r[0]).lower() for r in fts)
    after = await http.post("/api/voice-notes/search", json={"query": "watering the flowers"}, headers=owner)
    assert garden not in {h["note_id"] for h in after.json()["results"]}
    assert (await http.get(f"/api/voice-notes/{garden}/status", headers=owner)).status_code == 404


async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    http: httpx.AsyncClient, cast: Cast, spoken: Notes
) -> None:
    owner = cast.headers("owner")

    async def start() -> str:
        r = await http.post("/api/voice-notes/start", json={"title": "t"}, headers=owner)
        return str(r.json()["session_id"])

    async def upload(note_id: str, data: bytes, name: str = "x.wav") -> httpx.Response:
        return await http.post(
            f"/api/voice-notes/{note_id}/upload", files={"file": (name, data, "audio/wav")}, headers=owner
        )

    note_id = await start()
    cases = {
        "0 bytes": (b"", 422, "invalid_input"),
        "empty wav (a header, no samples)": (spoken.empty, 422, "invalid_input"),
        "text named .wav": (b"hello, this is not audio at all\n" * 10, 422, "unsupported_audio"),
        "corrupt mp3": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8, 422, "invalid_input"),
        "truncated wav": (spoken.budget.wav[:30], 422, "invalid_input"),
        "silence only": (spoken.silence, 422, "invalid_input"),
    }
    for case, (data, status, code) in cases.items():
        r = await upload(note_id, data)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (case, r.text)
    too_big = await upload(note_id, b"RIFF" + b"\x00" * (UPLOAD_LIMIT + 10))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    # Nothing was stored by any of them: the note still waits for its audio.
    status = (await http.get(f"/api/voice-notes/{note_id}/status", headers=owner)).json()
    assert status["status"] == "created" and status["audio_bytes"] is None

    # Consent before upload, upload before start, upload twice.
    early = await http.post(f"/api/voice-notes/{note_id}/consent", json={}, headers=owner)
    assert early.status_code == 409
    missing = await upload("vn_never_started", spoken.budget.wav)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await upload(note_id, spoken.budget.wav)).status_code == 200
    twice = await upload(note_id, spoken.budget.wav)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "conflict"

    # Consent by another user, or by the owner's agent; unknown scopes; a mismatched session id.
    assert (
        await http.post(f"/api/voice-notes/{note_id}/consent", json={}, headers=cast.headers("other"))
    ).status_code == 404
    by_agent = await http.post(f"/api/voice-notes/{note_id}/consent", json={}, headers=cast.headers("agent"))
    assert by_agent.status_code == 403
    odd = await http.post(f"/api/voice-notes/{note_id}/consent", json={"scopes": ["everything"]}, headers=owner)
    assert odd.status_code == 422
    wrong = await http.post(f"/api/voice-notes/{note_id}/consent", json={"session_id": "vn_other"}, headers=owner)
    assert wrong.status_code == 422
    status = (await http.get(f"/api/voice-notes/{note_id}/status", headers=owner)).json()
    assert status["status"] == "awaiting_consent" and status["consents"] == {
        "recording": False,
        "transcription": False,
        "learning": False,
    }
    # Only recording: consented, recorded, not processed yet.
    part = await http.post(f"/api/voice-notes/{note_id}/consent", json={"scopes": ["recording"]}, headers=owner)
    assert part.status_code == 200 and part.json()["status"] == "awaiting_consent"

    # Search: empty query, top_k out of range; a user_id naming someone else.
    assert (await http.post("/api/voice-notes/search", json={"query": "  "}, headers=owner)).status_code == 422
    assert (
        await http.post("/api/voice-notes/search", json={"query": "x", "top_k": 0}, headers=owner)
    ).status_code == 422
    someone = await http.post(
        "/api/voice-notes/search", json={"query": "x", "user_id": cast.other.user_id}, headers=owner
    )
    assert someone.status_code == 403
    assert (await http.get(f"/api/voice-notes/{note_id}/transcript?format=doc", headers=owner)).status_code == 422
    assert (await http.get(f"/api/voice-notes/{note_id}/transcript", headers=owner)).status_code == 409
    assert (await http.post("/api/voice-notes/start", json={"title": ""}, headers=owner)).status_code == 422


class CrashingEmbedder:
    """A named fake: the real embedder, except that its first ``failures`` calls crash."""

    def __init__(self, real: Embedder, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.calls = 0
        self.engine, self.model, self.version = real.engine, real.model, real.version

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("the embedding engine crashed")
        return self.real.embed(texts)


class CountingTranscriber:
    """The real transcriber, counting its calls."""

    def __init__(self, real: Transcriber) -> None:
        self.real = real
        self.calls = 0
        self.engine, self.model, self.version = real.engine, real.model, real.version

    def transcribe(self, samples: npt.NDArray[np.float32]) -> Transcript:
        self.calls += 1
        return self.real.transcribe(samples)


async def wait_for(cast: Cast, events: Subscription, note_id: str, topic: str, crashing: CrashingEmbedder) -> None:
    """Wait for ``topic`` about ``note_id``; while the stage keeps crashing, move the injected clock on past
    each retry's backoff (no other task is running then, so no lease is outlived)."""
    while True:
        event = await events.get(timeout=0.3)
        if event is None:
            if 0 < crashing.calls < crashing.failures:
                cast.clock.advance(10)
            continue
        if event.payload.get("note_id") == note_id and event.topic == topic:
            return


async def test_a_crashing_stage_retries_then_fails_and_reprocessing_resumes_there(
    http: httpx.AsyncClient, cast: Cast, workers: Services, spoken: Notes
) -> None:
    owner = cast.headers("owner")
    shared = workers.voice.pipeline.engines
    embedder = CrashingEmbedder(shared.embedder, failures=3)
    transcriber = CountingTranscriber(shared.transcriber)
    workers.voice.pipeline.engines = Engines(transcriber, embedder)
    note_id = await add_note(http, owner, spoken.budget)
    events = workers.bus.subscribe("voice.note.#")
    assert (await http.post(f"/api/voice-notes/{note_id}/consent", json={}, headers=owner)).status_code == 200
    await wait_for(cast, events, note_id, "voice.note.failed", embedder)

    status = (await http.get(f"/api/voice-notes/{note_id}/status", headers=owner)).json()
    assert status["status"] == "failed" and status["failed_stage"] == "embed" and status["searchable"] is False
    assert status["error"] == "embed: RuntimeError: the embedding engine crashed"
    assert status["steps_completed"] == ["consent_granted", "transcribed"]
    assert embedder.calls == 3  # the task manager's three attempts
    before = (await http.get(f"/api/voice-notes/{note_id}/transcript", headers=owner)).json()
    assert (await http.post(f"/api/voice-notes/{note_id}/reprocess", headers=owner)).status_code == 200
    await wait_for(cast, events, note_id, "voice.note.completed", embedder)

    status = (await http.get(f"/api/voice-notes/{note_id}/status", headers=owner)).json()
    assert status["status"] == "completed" and status["error"] is None and status["searchable"] is True
    assert transcriber.calls == 1  # resumed at the failed stage: nothing before it ran again
    assert (await http.get(f"/api/voice-notes/{note_id}/transcript", headers=owner)).json() == before
    again = await http.post(f"/api/voice-notes/{note_id}/reprocess", headers=owner)
    assert again.status_code == 409
    found = await http.post("/api/voice-notes/search", json={"query": "revised spreadsheet for Maria"}, headers=owner)
    assert found.json()["results"][0]["note_id"] == note_id


async def test_key_rotation_rewraps_the_recordings_data_keys_and_retires_the_old_key(
    http: httpx.AsyncClient, cast: Cast, spoken: Notes
) -> None:
    owner = cast.headers("owner")
    note_id = await add_note(http, owner, spoken.travel)
    vault = cast.services.vault
    async with cast.services.db.read() as conn:
        before = (await conn.execute(select(tables.voice_audio))).mappings().one()

    report = await vault.rotate_keys(by="test")

    assert report.from_key_id == before["key_id"] and report.rewrapped >= 1
    assert before["key_id"] in report.archived  # nothing names the old key any more
    async with cast.services.db.read() as conn:
        after = (await conn.execute(select(tables.voice_audio))).mappings().one()
    assert after["key_id"] == report.to_key_id and bytes(after["wrapped_dek"]) != bytes(before["wrapped_dek"])
    assert bytes(after["ciphertext"]) == bytes(before["ciphertext"])  # the audio itself is not re-encrypted
    statuses = {k.id: k.status for k in await vault.keyring.keys()}
    assert statuses[before["key_id"]] == "archived" and statuses[report.to_key_id] == "active"
    audio = await http.get(f"/api/voice-notes/{note_id}/audio", headers=owner)
    assert audio.status_code == 200 and audio.content == spoken.travel.wav
