"""The vault over HTTP: store and list secrets, ask for one, answer and revoke consents, read the audit.

``POST /api/secrets/{key}/access`` does not hold the connection by default: when
a human answer is needed it returns ``202`` with a ``consent_id`` at once. The
agent then polls the same route with ``{"consent_id": ...}`` (optionally with
``wait_seconds`` up to 60 to long-poll) until it gets ``200`` with the value,
or ``403`` when denied, expired or revoked. ``wait_seconds`` on the first call
waits that long before returning the pending id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from grace import errors
from grace.api import contract, policy, userrefs
from grace.api.bounds import INT64_MAX
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.idempotency import IdempotencyDep, Record
from grace.api.schemas import ErrorBody
from grace.api.schemas.secrets import (
    AccessAnswer,
    AuditEntries,
    AuditExportAnswer,
    AuditVerifyAnswer,
    ConsentAnswer,
    ConsentList,
    ConsentStatsAnswer,
    KeysAnswer,
    PendingConsents,
    RotationDue,
    RotationStarted,
    SecretAnswer,
    SecretDetail,
    SecretList,
)
from grace.auth import Role
from grace.vault import AccessResult

router = APIRouter(prefix="/api/secrets", tags=["secrets"])

MAX_HTTP_WAIT_SECONDS = 60
STREAM_KEEPALIVE_SECONDS = 15.0


class EventStream(StreamingResponse):
    """A stream of server-sent events (declared as text/event-stream in the schema)."""

    media_type = "text/event-stream"


class StoreBody(BaseModel):
    secret_key: Annotated[str, Field(min_length=1, max_length=128)]
    # No max_length here: an oversized value gets the vault's own 413, not a shape error.
    secret_value: str
    secret_type: Annotated[str, Field(min_length=1, max_length=32)] = "api_key"
    service: Annotated[str, Field(min_length=1, max_length=128)]
    risk_level: Annotated[str | None, Field(max_length=16)] = None
    description: Annotated[str, Field(max_length=512)] = ""
    rotation_days: Annotated[int | None, Field(ge=1, le=3650)] = None
    user_id: Annotated[str | None, Field(min_length=1, max_length=64, description=userrefs.DESCRIBED)] = None

    def __repr__(self) -> str:
        return f"StoreBody(secret_key={self.secret_key!r}, secret_value=<hidden>)"

    __str__ = __repr__


class AccessBody(BaseModel):
    requested_action: Annotated[str | None, Field(max_length=128)] = None
    requested_for: Annotated[str, Field(max_length=256)] = ""
    service: Annotated[str | None, Field(max_length=128)] = None
    secret_type: Annotated[str | None, Field(max_length=32)] = None
    risk_level: Annotated[str | None, Field(max_length=16)] = None
    context: dict[str, Any] | None = None
    timeout_seconds: Annotated[int | None, Field(ge=1, le=3600)] = None
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_HTTP_WAIT_SECONDS)] = 0
    consent_id: Annotated[str | None, Field(max_length=128)] = None
    user_id: Annotated[str | None, Field(min_length=1, max_length=64, description=userrefs.DESCRIBED)] = None


class RespondBody(BaseModel):
    consent_id: Annotated[str, Field(min_length=1, max_length=128)]
    approved: bool
    user_id: Annotated[str | None, Field(min_length=1, max_length=64, description=userrefs.DESCRIBED)] = None
    denial_reason: Annotated[str | None, Field(max_length=512)] = None
    persistent: bool = False
    valid_for_seconds: Annotated[int | None, Field(ge=60, le=30 * 86400)] = None
    idle_timeout_seconds: Annotated[int | None, Field(ge=60, le=30 * 86400)] = None


class RevokeConsentBody(BaseModel):
    consent_id: Annotated[str, Field(min_length=1, max_length=128)]
    reason: Annotated[str, Field(max_length=256)] = ""
    user_id: Annotated[str | None, Field(min_length=1, max_length=64, description=userrefs.DESCRIBED)] = None


class RevokeSecretBody(BaseModel):
    reason: Annotated[str, Field(max_length=256)] = ""
    user_id: Annotated[str | None, Field(min_length=1, max_length=64, description=userrefs.DESCRIBED)] = None


def _access_answer(result: AccessResult, response: Response, key: str) -> dict[str, Any]:
    body = result.public_dict()
    body["secret_key"] = key
    if result.approved and result.value is not None:
        body["secret_value"] = result.value.reveal()  # the one authorised retrieval
        response.headers["Cache-Control"] = "no-store"
        return body
    if result.status == "pending":
        response.status_code = 202
        body["poll"] = f"POST /api/secrets/{key}/access with consent_id"
        return body
    response.status_code = 403
    return body


@router.post(
    "/store",
    status_code=201,
    dependencies=[policy.SECRETS],
    response_model=SecretAnswer,
    responses=contract.errors(**{"409": "A secret of that name was revoked; store it under a new name."}),
)
async def store_secret(
    body: StoreBody, principal: CurrentPrincipal, services: ServicesDep, idem: IdempotencyDep
) -> Any:
    """Store a secret (or a new version of one); the answer shows it masked, never the value."""

    async def work(_: Record | None) -> dict[str, Any]:
        info = await services.vault.store(
            principal,
            body.secret_key,
            body.secret_value,
            secret_type=body.secret_type,
            service=body.service,
            user_id=await userrefs.user_id_for(services, principal, body.user_id),
            risk_level=body.risk_level,
            description=body.description,
            rotation_days=body.rotation_days,
        )
        return {"secret": info.as_dict()}

    return await idem.answer(work, SecretAnswer, status_code=201)


@router.get("", dependencies=[policy.SECRETS], response_model=SecretList)
async def list_secrets(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
) -> dict[str, Any]:
    """List your secrets, masked (at most the last 4 characters), with usage counts and rotation dates."""
    secrets = await services.vault.list_secrets(principal, user_id)
    return {"secrets": [s.as_dict() for s in secrets]}


@router.get("/rotation/due", dependencies=[policy.SECRETS], response_model=RotationDue)
async def rotation_due(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
) -> dict[str, Any]:
    """List your secrets whose rotation is due (API keys weekly by default)."""
    due = await services.vault.rotation_due(principal, user_id)
    return {"due": [s.as_dict() for s in due]}


@router.get(
    "/consent/history", dependencies=[policy.CONSENTS], response_model=ConsentList, response_model_exclude_unset=True
)
async def consent_history(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
    secret_key: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """List your consent requests and what became of them, newest first."""
    vault = services.vault
    records = await vault.history(principal, user_id, secret_key=secret_key, limit=limit)
    return {"consents": [r.as_dict() for r in records]}


@router.get(
    "/consent/pending",
    dependencies=[policy.CONSENTS],
    response_model=PendingConsents,
    response_model_exclude_unset=True,
)
async def consent_pending(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
) -> dict[str, Any]:
    """List consent requests waiting for your answer (operators and admins also see second approvals)."""
    vault = services.vault
    now = services.clock.now()
    return {"pending": [r.as_dict(now) for r in await vault.pending(principal, user_id)]}


@router.get("/consent/stats", dependencies=[policy.CONSENTS], response_model=ConsentStatsAnswer)
async def consent_stats(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
) -> dict[str, Any]:
    """Aggregate your consents: counts by status and risk, approval rate, response time."""
    return {"stats": await services.vault.stats(principal, user_id)}


@router.get(
    "/consent/stream",
    dependencies=[policy.CONSENTS],
    response_class=EventStream,
    responses={200: {"description": "Server-sent events: consent.request and consent.response, as JSON data."}},
)
async def consent_stream(
    principal: CurrentPrincipal,
    services: ServicesDep,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    timeout_seconds: Annotated[float | None, Query(gt=0, le=86_400)] = None,
) -> EventStream:
    """Stream your pending consent requests as server-sent events: the current ones first, then new ones live.

    Each event is ``consent.request`` (a pending request) or ``consent.response``
    (one was answered). Operators and admins also get requests waiting for a
    second approval. ``limit`` and ``timeout_seconds`` end the stream early.
    """
    vault = services.vault
    subscription = services.bus.subscribe("secrets.consent.#")
    await subscription.open()
    current = await vault.pending(principal)
    now = services.clock.now()
    can_second = principal.has_role(Role.OPERATOR) and principal.agent is None

    async def events() -> AsyncIterator[str]:
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds if timeout_seconds else None
        try:
            # Open the stream at once (headers and a comment), so clients and proxies see it is alive.
            yield ": consent stream\nretry: 3000\n\n"
            for record in current:
                yield _sse("consent.request", record.as_dict(now), record.consent_id)
                sent += 1
                if limit is not None and sent >= limit:
                    return
            while True:
                wait = STREAM_KEEPALIVE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        return
                event = await subscription.get(timeout=wait)
                if event is None:
                    yield ": keepalive\n\n"
                    continue
                mine = event.payload.get("user_id") == principal.user_id
                seconding = bool(event.payload.get("awaiting_second_approval")) and can_second
                if not (mine or seconding):
                    continue
                name = "consent.request" if event.topic.endswith(".request") else "consent.response"
                yield _sse(name, event.payload, str(event.id))
                sent += 1
                if limit is not None and sent >= limit:
                    return
        finally:
            await subscription.close()

    return EventStream(
        events(), media_type=EventStream.media_type, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )


def _sse(event: str, data: dict[str, Any], event_id: str) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"


@router.get(
    "/consent/{consent_id}",
    dependencies=[policy.CONSENTS],
    response_model=ConsentAnswer,
    response_model_exclude_unset=True,
)
async def consent_detail(consent_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Show one consent request (yours, or one you are asked to second)."""
    record = await services.vault.consent_for(principal, consent_id)
    return {"consent": record.as_dict(services.clock.now())}


@router.post(
    "/consent/respond",
    dependencies=[policy.CONSENTS],
    response_model=ConsentAnswer,
    response_model_exclude_unset=True,
    responses=contract.errors(
        404,
        **{"409": "The request was already answered, or expired (code consent_already_answered); nothing changed."},
    ),
)
async def consent_respond(body: RespondBody, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Approve or deny a pending request (the owner or an admin; critical risk also needs a second approver)."""
    await userrefs.user_id_for(services, principal, body.user_id)  # yours, or an admin's to name
    record = await services.vault.respond(
        principal,
        body.consent_id,
        body.approved,
        reason=body.denial_reason,
        persistent=body.persistent,
        valid_for_seconds=body.valid_for_seconds,
        idle_timeout_seconds=body.idle_timeout_seconds,
    )
    return {"consent": record.as_dict(services.clock.now())}


@router.post(
    "/consent/revoke",
    dependencies=[policy.CONSENTS],
    response_model=ConsentAnswer,
    response_model_exclude_unset=True,
    responses=contract.errors(404, **{"409": "Only pending or approved consents can be revoked."}),
)
async def consent_revoke(body: RevokeConsentBody, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Revoke a consent; the next use of it is refused."""
    await userrefs.user_id_for(services, principal, body.user_id)  # yours, or an admin's to name
    record = await services.vault.revoke_consent(principal, body.consent_id, body.reason)
    return {"consent": record.as_dict()}


@router.get("/audit", dependencies=[policy.AUDIT], response_model=AuditEntries)
async def audit_log(
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUserOrAll,
    before: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Read the audit entries about your secrets, newest first (admins: user_id=* for everything)."""
    entries = await services.vault.audit_entries(principal, user_id, before=before, limit=limit)
    return {"entries": [e.as_dict() for e in entries]}


@router.get("/keys/status", dependencies=[policy.KEYS], response_model=KeysAnswer, response_model_exclude_unset=True)
async def keys_status(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Describe the keyring (admin only): active key, expiry with the 7-day warning, next rotation."""
    principal.require(Role.ADMIN)
    return {"keys": await services.vault.keys_status()}


@router.post(
    "/keys/rotate",
    status_code=202,
    dependencies=[policy.KEYS],
    response_model=RotationStarted,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "Another key rotation is already running."}),
)
async def keys_rotate(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Start (or resume) a key rotation as a background task (admin only); follow it on keys/status."""
    principal.require(Role.ADMIN)
    vault = services.vault
    started = await vault.request_rotation(by=principal.name, reason="admin request")
    return {**started, "keys": await vault.keys_status()}


@router.get("/audit/verify", dependencies=[policy.AUDIT_ADMIN], response_model=AuditVerifyAnswer)
async def audit_verify(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Check the whole audit chain and its signed checkpoints (admin only); lists any tampering found."""
    principal.require(Role.ADMIN)
    return {"report": (await services.vault.verify_audit()).as_dict()}


@router.post("/audit/export", dependencies=[policy.AUDIT_ADMIN], response_model=AuditExportAnswer)
async def audit_export(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Sign the current head and return every signed checkpoint of the log (admin only), to keep elsewhere.

    Keep the answer off this machine; `grace audit verify --against FILE` checks the log against it.
    """
    principal.require(Role.ADMIN)
    return {"export": await services.vault.export_audit()}


@router.post(
    "/{key}/access",
    dependencies=[policy.ASK_SECRETS],
    response_model=AccessAnswer,
    response_model_exclude_unset=True,
    responses={
        202: {"model": AccessAnswer, "description": "Pending: poll this route with the consent_id."},
        403: {
            "model": ErrorBody | AccessAnswer,
            "description": "Refused by policy (the error shape), or the consent was denied, expired or revoked"
            " (the answer shape, status saying which).",
        },
    },
)
async def access_secret(
    key: str, body: AccessBody, response: Response, principal: CurrentPrincipal, services: ServicesDep
) -> dict[str, Any]:
    """Ask for a secret's value: 200 with it once consented and audited, 202 with a consent id to poll, 403 denied."""
    vault = services.vault
    user_id = await userrefs.user_id_for(services, principal, body.user_id)
    if body.consent_id:
        result = await vault.redeem(principal, body.consent_id, wait_seconds=body.wait_seconds)
        return _access_answer(result, response, key)
    if not body.requested_action:
        raise errors.InvalidInput("send requested_action (e.g. git_push), or a consent_id to collect")
    result = await vault.access(
        principal,
        key,
        action=body.requested_action,
        purpose=body.requested_for,
        user_id=user_id,
        service=body.service,
        secret_type=body.secret_type,
        risk_level=body.risk_level,
        context=body.context,
        timeout_seconds=body.timeout_seconds,
        wait_seconds=body.wait_seconds,
    )
    return _access_answer(result, response, key)


@router.post(
    "/{key}/revoke",
    dependencies=[policy.SECRETS],
    response_model=SecretAnswer,
    responses=contract.errors(**{"409": "The secret is already revoked."}),
)
async def revoke_secret(
    key: str, body: RevokeSecretBody, principal: CurrentPrincipal, services: ServicesDep
) -> dict[str, Any]:
    """Revoke a secret (soft and audited): no more releases; its history stays."""
    info = await services.vault.revoke_secret(
        principal, key, user_id=await userrefs.user_id_for(services, principal, body.user_id), reason=body.reason
    )
    return {"secret": info.as_dict()}


@router.get("/{key}", dependencies=[policy.SECRETS], response_model=SecretDetail)
async def secret_detail(
    key: str,
    principal: CurrentPrincipal,
    services: ServicesDep,
    user_id: userrefs.QueryUser,
) -> dict[str, Any]:
    """Describe one secret, masked, with its version history (never a value)."""
    vault = services.vault
    info = await vault.secret(principal, key, user_id)
    return {"secret": info.as_dict(), "versions": await vault.secrets.versions(info.id)}
