"""Signing in and out, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from grace import errors
from grace.api import contract, policy
from grace.api.deps import SESSION_COOKIE, CurrentPrincipal, ServicesDep
from grace.api.forwarded import client_address
from grace.api.schemas.common import json_answer
from grace.api.schemas.platform import Credentials, Identity, SignedIn, SignedOut

router = APIRouter(prefix="/api/auth", tags=["auth"])


async def _credentials(request: Request) -> Credentials:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        data = {k: v for k, v in form.items() if isinstance(v, str)}
    else:
        try:
            data = await request.json()
        except ValueError:
            raise errors.InvalidInput("the body is not valid JSON") from None
    try:
        return Credentials.model_validate(data)
    except ValueError:
        raise errors.InvalidInput("send 'username' and 'password'") from None


@router.post(
    "/login",
    dependencies=[policy.PUBLIC],
    response_model=SignedIn,
    responses=contract.errors(
        **{
            "401": "Wrong username or password, or the user is disabled (code unauthenticated).",
            "429": "Too many failed sign-ins for this user from this client: try again after Retry-After seconds.",
        },
    ),
    openapi_extra=contract.component(Credentials, "application/json", "application/x-www-form-urlencoded"),
)
async def login(request: Request, response: Response, services: ServicesDep) -> dict[str, object]:
    """Sign in with a username and password (JSON or form); sets the session cookie and returns the CSRF token."""
    creds = await _credentials(request)
    client = client_address(request, services.settings.trusted_proxies)
    principal = await services.sign_in.verify_password(creds.username, creds.password, client=client)
    grant = await services.sign_in.start_session(principal)
    response.set_cookie(
        SESSION_COOKIE,
        grant.session_token,
        max_age=services.settings.session_ttl_seconds,
        httponly=True,
        samesite="strict",
        secure=services.settings.cookie_secure,
        path="/",
    )
    return {
        "user": {"id": principal.user_id, "username": principal.username, "role": principal.role.value},
        "csrf_token": grant.csrf_token,
        "expires_at": grant.expires_at.isoformat(),
    }


@router.post("/logout", dependencies=[policy.SIGNED_IN], response_model=SignedOut)
async def logout(response: Response, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, bool]:
    """End the current browser session."""
    if principal.session_id:
        await services.sign_in.end_session(principal.session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return {"signed_out": True}


@router.get("/me", dependencies=[policy.SIGNED_IN], response_model=Identity)
async def me(principal: CurrentPrincipal) -> Response:
    """Describe the caller: user, role, and the agent name when a token names one."""
    return json_answer(
        Identity,
        {
            "user_id": principal.user_id,
            "username": principal.username,
            "role": principal.role.value,
            "agent": principal.agent,
            "via": "token" if principal.token_id else "session",
        },
    )
