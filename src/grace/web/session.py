"""The browser's cookies besides the session: the CSRF token pages put in their forms, and the sign-in form's.

The session cookie (``grace_session``, the API's) is the person. Its CSRF token is shown once, when
the session starts; the web keeps it in an HttpOnly cookie of its own so that every page can put it
in its forms and htmx requests (the check is the API's: the token must match the session's stored
hash). A page on another site can neither read it nor, with SameSite=Strict, send either cookie.
The sign-in form is protected the same way before there is a session: a random value in a cookie and
in the form, which must match.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from grace.api import SESSION_COOKIE
from grace.auth import SessionGrant
from grace.config import Settings

__all__ = [
    "CSRF_COOKIE",
    "SIGNIN_COOKIE",
    "end",
    "keep_signin_token",
    "matches",
    "signin_token",
    "start",
]

CSRF_COOKIE = "grace_csrf"
SIGNIN_COOKIE = "grace_signin"
SIGNIN_TTL_SECONDS = 3600


def start(response: Response, grant: SessionGrant, settings: Settings) -> None:
    """Set the session cookie and its CSRF token's cookie on ``response``."""
    for name, value in ((SESSION_COOKIE, grant.session_token), (CSRF_COOKIE, grant.csrf_token)):
        response.set_cookie(
            name,
            value,
            max_age=settings.session_ttl_seconds,
            httponly=True,
            samesite="strict",
            secure=settings.cookie_secure,
            path="/",
        )
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")


def end(response: Response) -> None:
    """Forget the session's cookies."""
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")


def signin_token(request: Request) -> str:
    """Return the sign-in form's token: the one its cookie holds, or a new one."""
    held = request.cookies.get(SIGNIN_COOKIE, "")
    return held if 16 <= len(held) <= 64 else secrets.token_urlsafe(24)


def keep_signin_token(response: Response, token: str, settings: Settings) -> None:
    """Set the sign-in form's token in its cookie."""
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=SIGNIN_TTL_SECONDS,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        path="/signin",
    )


def matches(request: Request, submitted: str) -> bool:
    """Return whether the sign-in form's token is the one its cookie holds."""
    held = request.cookies.get(SIGNIN_COOKIE, "")
    return bool(held) and secrets.compare_digest(held.encode(), submitted.encode())
