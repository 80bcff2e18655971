"""Voice notes: record in the browser or upload a file, consent, follow the stages live, read and search.

The page asks the voice service (``Services.voice``) as the API does, so a member sees and finds only
their own notes (another's answers 404, as if it did not exist). Progress is a server-sent event
stream (``/voice/{id}/progress``) driven by the bus's ``voice.note.*`` events; the note's row is
read again at each event, and at each keepalive in case an event was missed, so what the page shows
is the row, never the event's claim. The recording and the subtitles are the API's own routes
(``/api/voice-notes/{id}/audio`` and ``/transcript?format=srt|vtt``), read with the session cookie.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import File, Form, Query, Request, UploadFile
from starlette.responses import RedirectResponse, Response, StreamingResponse

from grace import errors
from grace.api import CONSENTS, VOICE, CurrentPrincipal, ServicesDep
from grace.auth import Principal
from grace.services import Services
from grace.web.rendering import environment, render
from grace.web.routing import page_router

__all__ = ["STAGE_WORDS", "router"]

router = page_router()
_ENV = environment()

KEEPALIVE_SECONDS = 5.0
LIST_LIMIT = 50
SEARCH_TOP_K = 10
SCOPES = (
    ("recording", "Keep the recording", "Grace stores the audio, encrypted, so you can play it back."),
    ("transcription", "Transcribe it", "Grace turns the speech into text on this machine; nothing leaves it."),
    ("learning", "Learn from it", "Grace may use what you said to learn about you (optional)."),
)
# What each stage does, in the words the progress list shows (grace.voice.pipeline.STAGES).
STAGE_WORDS = (
    ("decode", "Reading the audio"),
    ("transcribe", "Transcribing"),
    ("chunk", "Splitting into passages"),
    ("embed", "Understanding the meaning"),
    ("index", "Indexing the words"),
    ("ingest", "Adding to your knowledge"),
    ("learn", "Learning"),
)
STATUS_WORDS = {
    "created": "waiting for the recording",
    "awaiting_consent": "waiting for your consent",
    "processing": "processing",
    "completed": "ready",
    "failed": "failed",
}


def _stages(note: dict[str, Any]) -> list[dict[str, str]]:
    """Each stage with its state: done, running, failed or waiting."""
    done = round(float(note["progress"]) * len(STAGE_WORDS))
    shown = []
    for i, (stage, words) in enumerate(STAGE_WORDS):
        if i < done or note["status"] == "completed":
            state = "done"
        elif note["status"] == "failed" and note.get("failed_stage") == stage:
            state = "failed"
        elif note["status"] == "processing" and note.get("stage") == stage:
            state = "running"
        else:
            state = "waiting"
        shown.append({"stage": stage, "words": words, "state": state})
    return shown


def _progress_context(note: dict[str, Any]) -> dict[str, Any]:
    return {"note": note, "stages": _stages(note), "percent": round(float(note["progress"]) * 100)}


async def _list_page(
    request: Request, principal: Principal, services: Services, q: str = "", **context: Any
) -> Response:
    listed = await services.voice.list_notes(principal, limit=LIST_LIMIT)
    values: dict[str, Any] = {
        "principal": principal,
        "page": "voice",
        "notes": listed["notes"],
        "total": listed["total"],
        "status_words": STATUS_WORDS,
        "q": q,
        "hits": None,
        "search_error": "",
    }
    if q.strip():
        try:
            values["hits"] = [h.as_dict() for h in await services.voice.search(principal, q, top_k=SEARCH_TOP_K)]
        except errors.InvalidInput as exc:
            values["search_error"] = exc.message
    values.update(context)
    status = int(values.pop("status", 200))
    return render(request, "voice.html", values, status=status)


@router.get("/voice", dependencies=[VOICE])
async def voice_page(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    q: Annotated[str, Query(max_length=1000)] = "",
) -> Response:
    """Your voice notes: record or upload one, search them (``q``), and the list."""
    return await _list_page(request, principal, services, q)


@router.post("/voice", dependencies=[VOICE])
async def add_note(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    title: Annotated[str, Form(min_length=1, max_length=200)],
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """A new note from a recording made in the page or a file: stored encrypted, then the consent step."""
    voice = services.voice
    data = await file.read(voice.max_upload_bytes + 1)
    if len(data) > voice.max_upload_bytes:
        message = f"The recording is larger than {voice.max_upload_bytes // (1024 * 1024)} MiB."
        return await _list_page(request, principal, services, error=message, status=413)
    started = await voice.start(principal, title=title, purpose=purpose)
    note_id = started["session_id"]
    try:
        await voice.upload(principal, note_id, data)
    except (errors.InvalidInput, errors.PayloadTooLarge) as exc:
        await voice.delete(principal, note_id)  # no empty note is left behind by a refused file
        return await _list_page(request, principal, services, error=exc.message, status=422)
    return RedirectResponse(f"/voice/{note_id}", status_code=303)


@router.get("/voice/{note_id}", dependencies=[VOICE])
async def note_page(
    note_id: str,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    t: Annotated[float | None, Query(ge=0, le=86_400)] = None,
) -> Response:
    """One note: the consent step, its progress, or its transcript with the recording (``t`` seeks it)."""
    note = await services.voice.status(principal, note_id[:60])
    segments: list[dict[str, Any]] = []
    if note["status"] == "completed":
        _, segments, _ = await services.voice.segments(principal, note["id"])
    context = {"principal": principal, "page": "voice", "segments": segments, "scopes": SCOPES, "seek": t}
    context["status_words"] = STATUS_WORDS
    context.update(_progress_context(note))
    return render(request, "voice_note.html", context)


@router.post("/voice/{note_id}/consent", dependencies=[CONSENTS])
async def consent(
    note_id: str,
    principal: CurrentPrincipal,
    services: ServicesDep,
    scopes: Annotated[list[str] | None, Form(max_length=3)] = None,
) -> Response:
    """Consent to what Grace may do with the recording (recording and transcription start processing)."""
    if not scopes:
        raise errors.InvalidInput("choose what Grace may do: keep the recording and transcribe it, at least")
    await services.voice.consent(principal, note_id[:60], [s[:32] for s in scopes])
    return RedirectResponse(f"/voice/{note_id[:60]}", status_code=303)


@router.post("/voice/{note_id}/reprocess", dependencies=[VOICE])
async def reprocess(note_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Run a failed note again from the stage that failed."""
    await services.voice.reprocess(principal, note_id[:60])
    return RedirectResponse(f"/voice/{note_id[:60]}", status_code=303)


@router.post("/voice/{note_id}/delete", dependencies=[VOICE])
async def delete(note_id: str, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Delete the note and every trace of it."""
    await services.voice.delete(principal, note_id[:60])
    return RedirectResponse("/voice?deleted=1", status_code=303)


def _sse(event: str, html: str = "") -> str:
    lines = html.splitlines() or [""]
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


@router.get("/voice/{note_id}/progress", dependencies=[VOICE])
async def progress(
    note_id: str,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    timeout_seconds: Annotated[float | None, Query(gt=0, le=86_400)] = None,
) -> StreamingResponse:
    """The note's stages as they run, as HTML for the note page (server-sent events).

    ``progress`` redraws the stage list; ``done`` says the note is completed or failed (the page then
    reloads to show the transcript or the reason). ``timeout_seconds`` ends the stream early.
    """
    note_id = note_id[:60]
    await services.voice.status(principal, note_id)  # 404 before the stream opens for anyone else's note
    subscription = services.bus.subscribe("voice.note.#")
    await subscription.open()
    template = _ENV.get_template("_voice_progress.html")

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds if timeout_seconds else None
        drawn = ""
        try:
            yield ": voice note progress\nretry: 3000\n\n"
            while True:
                try:
                    note = await services.voice.status(principal, note_id)
                except errors.NotFound:
                    yield _sse("done", "deleted")
                    return
                html = template.render(_progress_context(note))
                if html != drawn:
                    yield _sse("progress", html)
                    drawn = html
                if note["status"] in ("completed", "failed"):
                    yield _sse("done", note["status"])
                    return
                wait = KEEPALIVE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        return
                event = await subscription.get(timeout=wait)
                while event is not None and event.payload.get("note_id") != note_id:
                    event = await subscription.get(timeout=wait)
                if event is None:
                    if await request.is_disconnected():
                        return
                    yield ": keepalive\n\n"
        finally:
            await subscription.close()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
