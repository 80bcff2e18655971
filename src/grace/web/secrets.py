"""Your secrets: add one (its risk shown as it will be classified), the masked list, one secret, revoke.

No page ever holds a value: the list and the detail show the vault's masked form, and the add form
sends the value once, in a password field, never echoed back (not even when the form is refused).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request
from starlette.responses import RedirectResponse, Response

from grace import errors
from grace.api import SECRETS, CurrentPrincipal, ServicesDep
from grace.auth import Scope
from grace.vault import RiskLevel, SecretType
from grace.web import views
from grace.web.rendering import render
from grace.web.routing import page_router

__all__ = ["classify", "router"]

router = page_router()
TYPES = [t.value for t in SecretType]
DEFAULT_TYPE = SecretType.API_KEY.value


def classify(secret_type: str, risk_level: str = "") -> tuple[str, str]:
    """Return the risk a ``secret_type`` secret will have (``risk_level`` if higher), and what it demands."""
    try:
        level = SecretType.parse(secret_type or DEFAULT_TYPE).base_risk
        if risk_level:
            asked = RiskLevel.parse(risk_level)
            level = asked if asked.rank > level.rank else level
    except errors.InvalidInput:
        return "", "choose a type"
    return level.value, views.RISK_DEMANDS[level.value]


async def _list_page(
    request: Request, principal: CurrentPrincipal, services: ServicesDep, **context: object
) -> Response:
    vault = services.vault
    secrets = await vault.list_secrets(principal)
    due = {s.id for s in await vault.rotation_due(principal)}
    values: dict[str, object] = {"principal": principal, "page": "secrets", "secrets": secrets, "due": due}
    values.update({"types": TYPES, "risks": views.RISK_LEVELS, "classified": classify(DEFAULT_TYPE)})
    values.update(context)
    status = int(str(values.pop("status", 200)))
    return render(request, "secrets.html", values, status=status)


@router.get("/secrets", dependencies=[SECRETS])
async def secrets_page(request: Request, principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """Your secrets, masked, with usage and rotation; and the form to add one."""
    return await _list_page(request, principal, services)


@router.get("/secrets/risk", dependencies=[SECRETS])
async def risk_fragment(
    request: Request,
    secret_type: Annotated[str, Query(max_length=32)] = "",
    risk_level: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    """The risk a new secret will be classified at (a fragment of the add form)."""
    return render(request, "_risk.html", {"classified": classify(secret_type, risk_level)})


@router.post("/secrets", dependencies=[SECRETS])
async def add_secret(
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    secret_key: Annotated[str, Form(min_length=1, max_length=128)],
    secret_value: Annotated[str, Form(min_length=1)],
    service: Annotated[str, Form(min_length=1, max_length=128)],
    secret_type: Annotated[str, Form(max_length=32)] = "",
    risk_level: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Store a secret (or a new version of one); the value is never shown again."""
    try:
        info = await services.vault.store(
            principal,
            secret_key,
            secret_value,
            secret_type=secret_type or DEFAULT_TYPE,
            service=service,
            risk_level=risk_level or None,
        )
    except (errors.InvalidInput, errors.Conflict, errors.PayloadTooLarge) as exc:
        return await _list_page(request, principal, services, error=exc.message, status=422)
    return RedirectResponse(f"/secrets/{info.key}?stored=true", status_code=303)


@router.get("/secrets/{key}", dependencies=[SECRETS])
async def secret_page(
    key: str,
    request: Request,
    principal: CurrentPrincipal,
    services: ServicesDep,
    stored: Annotated[bool, Query()] = False,
) -> Response:
    """One secret: masked, its versions, rotation, and its audit trail."""
    vault = services.vault
    info = await vault.secret(principal, key[:128])
    versions = await vault.secrets.versions(info.id)
    entries = []
    if principal.can(Scope.AUDIT):  # a narrowed token may manage secrets without reading the audit
        entries = [e for e in await vault.audit_entries(principal, limit=1000) if e.secret_id == info.id]
    due = info.id in {s.id for s in await vault.rotation_due(principal)}
    context = {"principal": principal, "page": "secrets", "secret": info, "versions": versions, "entries": entries}
    context.update({"due": due, "stored": stored})
    return render(request, "secret.html", context)


@router.post("/secrets/{key}/revoke", dependencies=[SECRETS])
async def revoke(
    key: str,
    principal: CurrentPrincipal,
    services: ServicesDep,
    reason: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Revoke a secret: it is never released again; its history stays."""
    await services.vault.revoke_secret(principal, key[:128], reason=reason.strip())
    return RedirectResponse(f"/secrets/{key[:128]}", status_code=303)
