"""Signing in and out in the browser: the sign-in page, its form, and signing out."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated

from fastapi import Form, Query, Request
from starlette.responses import RedirectResponse, Response

from grace import errors
from grace.api import PUBLIC, SIGNED_IN, CurrentPrincipal, ServicesDep, client_address
from grace.web import session
from grace.web.rendering import render, utc
from grace.web.routing import page_router, safe_next

__all__ = ["paused_message", "router"]

router = page_router()


def paused_message(retry_after: int, *, until: str) -> str:
    """Say, as a person would want to read it, that sign-in is paused and for how long."""
    if retry_after < 60:
        wait = f"{retry_after} seconds"
    else:
        minutes = math.ceil(retry_after / 60)
        wait = "a minute" if minutes == 1 else f"{minutes} minutes"
    return (
        "Too many wrong passwords for this account from this device, so Grace has paused signing in here"
        f" to keep the account safe. Try again in {wait} (after {until}). Other devices are not affected."
    )


def _form(
    request: Request,
    services: ServicesDep,
    *,
    status: int = 200,
    username: str = "",
    next_page: str = "/",
    **context: str,
) -> Response:
    token = session.signin_token(request)
    values: dict[str, object] = {"form_token": token, "username": username, "next": safe_next(next_page)}
    values.update(context)
    response = render(request, "signin.html", values, status=status)
    session.keep_signin_token(response, token, services.settings)
    return response


@router.get("/signin", dependencies=[PUBLIC])
async def sign_in_page(
    request: Request,
    services: ServicesDep,
    next_page: Annotated[str, Query(alias="next", max_length=512)] = "/",
    signed_out: Annotated[bool, Query()] = False,
) -> Response:
    """Show the sign-in form."""
    notice = "You are signed out." if signed_out else ""
    return _form(request, services, next_page=next_page, notice=notice)


@router.post("/signin", dependencies=[PUBLIC])
async def sign_in(
    request: Request,
    services: ServicesDep,
    username: Annotated[str, Form(max_length=128)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    form_token: Annotated[str, Form(max_length=64)] = "",
    next_page: Annotated[str, Form(alias="next", max_length=512)] = "/",
) -> Response:
    """Check the username and password, start a session, and go where the person was going."""
    if not session.matches(request, form_token):
        message = "This sign-in form had expired. Please enter your password again."
        return _form(request, services, status=403, username=username, next_page=next_page, error=message)
    if not username.strip() or not password:
        message = "Enter your username and your password."
        return _form(request, services, status=422, username=username, next_page=next_page, error=message)
    client = client_address(request, services.settings.trusted_proxies)
    try:
        principal = await services.sign_in.verify_password(username, password, client=client)
    except errors.RateLimited as exc:
        until = utc(services.clock.now() + timedelta(seconds=exc.retry_after))
        response = _form(
            request,
            services,
            status=429,
            username=username,
            next_page=next_page,
            error=paused_message(exc.retry_after, until=until),
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except errors.Unauthenticated:
        message = "That username and password don't match. Check them (passwords are case-sensitive) and try again."
        return _form(request, services, status=401, username=username, next_page=next_page, error=message)
    grant = await services.sign_in.start_session(principal)
    response = RedirectResponse(safe_next(next_page), status_code=303)
    session.start(response, grant, services.settings)
    return response


@router.post("/signout", dependencies=[SIGNED_IN])
async def sign_out(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """End this browser's session and forget its cookies."""
    if principal.session_id:
        await services.sign_in.end_session(principal.session_id)
    response = RedirectResponse("/signin?signed_out=true", status_code=303)
    session.end(response)
    return response
