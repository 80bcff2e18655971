"""The consent inbox, Grace's home page: pending requests live, answers, and the history below.

The list arrives over server-sent events (``/consents/stream``) as HTML for htmx's SSE extension:
``reset`` (the whole list, when the stream opens, so nothing that arrived since the page was drawn
is missed), ``consent`` (a new request, put on top), ``update`` (cards to redraw or remove, as
out-of-band swaps by id) and ``changed`` (the history below should reload). Each list is the vault's
own answer for the caller (``Vault.pending``), so a page shows exactly what the API would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Form, Query, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from grace.api import CONSENTS, CurrentPrincipal, ServicesDep
from grace.auth import Principal, Role
from grace.services import Services
from grace.vault import ConsentRecord
from grace.web import session, views
from grace.web.rendering import environment, render
from grace.web.routing import is_htmx, page_router

__all__ = ["router"]

router = page_router()

KEEPALIVE_SECONDS = 15.0
HISTORY_LIMIT = 200
_ENV = environment()


async def _cards(services: Services, principal: Principal) -> list[views.ConsentCard]:
    now = services.clock.now()
    pending = await services.vault.pending(principal)
    return [views.card(r, principal, now) for r in reversed(pending)]  # newest first


async def _history(
    services: Services, principal: Principal, status: str, risk: str, service: str, agent: str
) -> list[ConsentRecord]:
    records = await services.vault.history(principal, limit=HISTORY_LIMIT)
    return views.filter_history(records, status=status, risk=risk, service=service, agent=agent)


Filter = Annotated[str, Query(max_length=64)]


@router.get("/", dependencies=[CONSENTS])
async def inbox(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    status: Filter = "",
    risk: Filter = "",
    service: Filter = "",
    agent: Filter = "",
) -> Response:
    """The consent inbox: requests waiting for you, then your consent history."""
    filters = {"status": status, "risk": risk, "service": service, "agent": agent}
    return render(
        request,
        "inbox.html",
        {
            "principal": principal,
            "cards": await _cards(services, principal),
            "history": await _history(services, principal, **filters),
            "filters": filters,
            "statuses": views.HISTORY_STATUSES,
            "risks": views.RISK_LEVELS,
        },
    )


@router.get("/consents/history", dependencies=[CONSENTS])
async def history(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    status: Filter = "",
    risk: Filter = "",
    service: Filter = "",
    agent: Filter = "",
) -> Response:
    """Your consent history, filtered (a fragment of the inbox)."""
    records = await _history(services, principal, status, risk, service, agent)
    return render(request, "_history.html", {"principal": principal, "history": records})


@router.post("/consents/{consent_id}/answer", dependencies=[CONSENTS])
async def answer(
    consent_id: str,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    decision: Annotated[str, Form(pattern="^(approve|deny)$")],
    reason: Annotated[str, Form(max_length=512)] = "",
) -> Response:
    """Approve or deny a request (as its owner, an admin, or the second approver)."""
    approved = decision == "approve"
    record = await services.vault.respond(principal, consent_id[:128], approved, reason=reason.strip() or None)
    if not is_htmx(request):
        return RedirectResponse("/", status_code=303)
    message = views.answered_message(record)
    return render(request, "_flash.html", {"message": message, "kind": "ok" if approved else "info"})


def _sse(event: str, html: str = "") -> str:
    lines = html.splitlines() or [""]
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


@router.get("/consents/stream", dependencies=[CONSENTS])
async def stream(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    timeout_seconds: Annotated[float | None, Query(gt=0, le=86_400)] = None,
) -> StreamingResponse:
    """Your pending requests as they change, as HTML for the inbox (server-sent events).

    ``timeout_seconds`` ends the stream early (the browser then reconnects).
    """
    subscription = services.bus.subscribe("secrets.consent.#")
    await subscription.open()
    can_second = principal.has_role(Role.OPERATOR) and principal.agent is None
    card_template = _ENV.get_template("_consent_card.html")
    csrf = request.cookies.get(session.CSRF_COOKIE, "")

    def draw(c: views.ConsentCard, *, oob: bool = False) -> str:
        return card_template.render(card=c, csrf_token=csrf, oob=oob)

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds if timeout_seconds else None
        try:
            cards = await _cards(services, principal)
            shown = {c.id: c.version for c in cards}
            yield ": consent inbox\nretry: 3000\n\n"
            yield _sse("reset", "".join(draw(c) for c in cards))
            while True:
                wait = KEEPALIVE_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        return
                event = await subscription.get(timeout=wait)
                if event is not None:
                    payload = event.payload
                    relevant = (
                        payload.get("user_id") == principal.user_id
                        or payload.get("consent_id") in shown
                        or (bool(payload.get("awaiting_second_approval")) and can_second)
                    )
                    if not relevant:
                        continue
                elif await request.is_disconnected():
                    return
                cards = await _cards(services, principal)
                current = {c.id: c for c in cards}
                new = [c for c in cards if c.id not in shown]
                for c in reversed(new):
                    yield _sse("consent", draw(c))
                changed = [draw(c, oob=True) for c in cards if c.id in shown and shown[c.id] != c.version]
                gone = [f'<article id="consent-{i}" hx-swap-oob="delete"></article>' for i in shown if i not in current]
                if changed or gone:
                    yield _sse("update", "".join(changed + gone))
                if new or changed or gone:
                    yield _sse("changed")
                elif event is None:
                    yield ": keepalive\n\n"
                shown = {c.id: c.version for c in cards}
        finally:
            await subscription.close()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
