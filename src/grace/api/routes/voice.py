"""Voice notes: the seed's start, upload, consent, status, transcript and search, plus audio, list, delete."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from grace import errors
from grace.api import contract, policy, userrefs
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.errors import error_response
from grace.api.idempotency import IdempotencyDep, Record
from grace.api.schemas.voice import (
    DeletedNote,
    NoteList,
    NoteStatus,
    SearchResults,
    StartedNote,
    TranscriptOut,
    UploadedNote,
)
from grace.config import Settings

__all__ = ["larger_bodies", "router"]

router = APIRouter(prefix="/api/voice-notes", tags=["voice"])

UPLOAD_PATH = re.compile(r"^/api/voice-notes/[^/]+/upload$")
WEB_UPLOAD_PATH = re.compile(r"^/voice$")  # the web UI's new-note form (grace.web.voice)
MULTIPART_OVERHEAD = 64 * 1024
MEDIA_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "webm": "audio/webm",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def larger_bodies(settings: Settings) -> tuple[tuple[re.Pattern[str], int], ...]:
    """The upload routes (the API's and the web form's) take bodies up to the voice upload limit, plus framing."""
    limit = settings.voice_max_upload_bytes + MULTIPART_OVERHEAD
    return ((UPLOAD_PATH, limit), (WEB_UPLOAD_PATH, limit))


class StartNote(BaseModel):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    purpose: Annotated[str, Field(max_length=200)] = ""
    user_id: Annotated[str | None, Field(max_length=140)] = None


class Consent(BaseModel):
    scopes: Annotated[list[str] | None, Field(max_length=3)] = None
    session_id: Annotated[str | None, Field(max_length=60)] = None
    user_id: Annotated[str | None, Field(max_length=140)] = None


class Search(BaseModel):
    query: Annotated[str, Field(max_length=1000)]
    top_k: Annotated[int, Field(ge=1, le=50)] = 10
    user_id: Annotated[str | None, Field(max_length=140)] = None


@router.post("/start", status_code=201, dependencies=[policy.VOICE], response_model=StartedNote)
async def start(body: StartNote, principal: CurrentPrincipal, services: ServicesDep, idem: IdempotencyDep) -> Any:
    """Open a recording session: {session_id}."""

    async def work(_: Record | None) -> dict[str, Any]:
        return await services.voice.start(
            principal,
            title=body.title,
            purpose=body.purpose,
            user_id=await userrefs.user_id_for(services, principal, body.user_id),
        )

    return await idem.answer(work, StartedNote, status_code=201)


@router.post("/search", dependencies=[policy.VOICE], response_model=SearchResults)
async def search(body: Search, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Search the caller's notes by meaning and words: each hit's best sentence with its start and end seconds."""
    hits = await services.voice.search(
        principal, body.query, top_k=body.top_k, user_id=await userrefs.user_id_for(services, principal, body.user_id)
    )
    return {"query": body.query, "results": [h.as_dict() for h in hits]}


@router.get("", dependencies=[policy.VOICE], response_model=NoteList)
async def list_notes(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """The caller's notes, newest first, a page at a time."""
    return await services.voice.list_notes(principal, user_id=user_id, limit=limit, offset=offset)


@router.post(
    "/{note_id}/upload",
    dependencies=[policy.VOICE],
    response_model=UploadedNote,
    responses=contract.errors(
        **{
            "409": "The note already has its audio (code conflict).",
            "413": "The recording is larger than GRACE_VOICE_MAX_UPLOAD_BYTES (code payload_too_large).",
        }
    ),
)
async def upload(
    note_id: str,
    principal: CurrentPrincipal,
    services: ServicesDep,
    idem: IdempotencyDep,
    file: Annotated[UploadFile, File(description="The recording: WAV, MP3, M4A, WebM, Ogg or FLAC.")],
    user_id: Annotated[str | None, Form(max_length=140)] = None,
) -> Any:
    """Upload the recording (multipart); it is stored encrypted and the three consents are requested."""
    limit = services.voice.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise errors.PayloadTooLarge(f"the recording is larger than {limit} bytes")

    async def work(_: Record | None) -> dict[str, Any]:
        owner = await userrefs.user_id_for(services, principal, user_id)
        return await services.voice.upload(principal, note_id, data, user_id=owner)

    # The multipart body is identified by what it carries: the recording and the user it names.
    content = hashlib.sha256(data).hexdigest().encode() + b"\n" + (user_id or "").encode()
    return await idem.answer(work, UploadedNote, content=content)


@router.post(
    "/{note_id}/consent",
    dependencies=[policy.CONSENTS],
    response_model=NoteStatus,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "The recording has not been uploaded yet."}),
)
async def consent(
    note_id: str, principal: CurrentPrincipal, services: ServicesDep, body: Consent | None = None
) -> dict[str, Any]:
    """The owner consents (scopes: recording, transcription, learning; all three when none are named)."""
    body = body or Consent()
    if body.session_id is not None and body.session_id != note_id:
        raise errors.InvalidInput("session_id must be the note in the path")
    return await services.voice.consent(
        principal, note_id, body.scopes, user_id=await userrefs.user_id_for(services, principal, body.user_id)
    )


@router.post(
    "/{note_id}/reprocess",
    dependencies=[policy.VOICE],
    response_model=NoteStatus,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "Only a failed note can be reprocessed."}),
)
async def reprocess(note_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Resume a failed note from the stage that failed."""
    return await services.voice.reprocess(principal, note_id)


@router.get(
    "/{note_id}/status", dependencies=[policy.VOICE], response_model=NoteStatus, response_model_exclude_unset=True
)
async def status(note_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """status, steps_completed, progress, error and searchable."""
    return await services.voice.status(principal, note_id)


@router.get(
    "/{note_id}/transcript",
    dependencies=[policy.VOICE],
    response_model=TranscriptOut,
    responses={
        200: {"content": {"application/x-subrip": {}, "text/vtt": {}}, "description": "JSON, or SRT/VTT with ?format"},
        **contract.errors(**{"409": "The note has no transcript yet."}),
    },
)
async def transcript(
    note_id: str,
    principal: CurrentPrincipal,
    services: ServicesDep,
    format: Annotated[str, Query(max_length=8)] = "json",
) -> dict[str, Any] | PlainTextResponse:
    """{transcript, length} with timed segments and word timings; ?format=srt or vtt for subtitles."""
    result = await services.voice.transcript(principal, note_id, format)
    if isinstance(result, str):
        media = "text/vtt" if format == "vtt" else "application/x-subrip"
        return PlainTextResponse(result, media_type=media)
    return result


@router.get(
    "/{note_id}/audio",
    dependencies=[policy.VOICE],
    response_class=Response,
    responses={
        200: {"content": {"audio/*": {}}, "description": "The recording, decrypted."},
        206: {"content": {"audio/*": {}}, "description": "The requested byte range of the recording."},
        **contract.errors(**{"416": "The range lies outside the recording (code range_not_satisfiable)."}),
    },
)
async def audio(note_id: str, request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """The recording, decrypted; honours a single HTTP byte range so a player can seek."""
    data, kind = await services.voice.audio(principal, note_id)
    media = MEDIA_TYPES.get(kind, "application/octet-stream")
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store"}
    wanted = request.headers.get("range")
    if wanted is None:
        return Response(data, media_type=media, headers=headers)
    match = _RANGE.match(wanted.strip())
    size = len(data)
    first = last = -1
    if match and (match.group(1) or match.group(2)):
        if match.group(1):
            first = int(match.group(1))
            last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:
            first = max(0, size - int(match.group(2)))
            last = size - 1
    if first < 0 or first > last or first >= size:
        return error_response(
            416,
            "range_not_satisfiable",
            f"the range {wanted[:60]!r} is not within the recording's {size} bytes",
            {"size": size},
            {"Content-Range": f"bytes */{size}"},
        )
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return Response(data[first : last + 1], status_code=206, media_type=media, headers=headers)


@router.delete("/{note_id}", dependencies=[policy.VOICE], response_model=DeletedNote)
async def delete(note_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Delete the note and every trace of it (audio and its key, transcript, chunks, vectors, index rows)."""
    return await services.voice.delete(principal, note_id)
