"""Page routes: the API's policies and principal rules, with failures answered as pages.

Every page and fragment is an ``APIRoute`` that declares its policy from ``grace.api`` in its
decorator, exactly as the API's routes do, so the route-policy test finds and calls it. What
differs is the answer to a failure: someone not signed in is sent to the sign-in page (htmx
requests get ``HX-Redirect``), and a refusal or a bad form is an HTML page in the same words the
API uses, naming the policy that refused (``data-policy``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from grace import errors
from grace.api import status_for
from grace.web.rendering import render, secure

__all__ = ["PageRoute", "is_htmx", "page_router", "safe_next"]

log = logging.getLogger("grace.web")

TITLES = {
    401: "Please sign in",
    403: "You can't do that here",
    404: "Not found",
    409: "Already answered",
    413: "Too large",
    422: "Please check the form",
    429: "Slow down",
    503: "Grace is not running",
}


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def safe_next(target: str | None) -> str:
    """Return ``target`` if it is a path on this site, else ``/`` (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _to_sign_in(request: Request) -> Response:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    target = "/signin" if request.method != "GET" or path == "/" else f"/signin?next={quote(path, safe='')}"
    if is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def error_page(request: Request, status: int, message: str, policy: str | None = None) -> Response:
    log.info("web.error", extra={"status": status, "path": request.url.path})
    template = "_error.html" if is_htmx(request) else "error.html"
    context = {"status": status, "title": TITLES.get(status, "Something went wrong"), "message": message}
    context["policy"] = policy
    response = render(request, template, context, status=status)
    if is_htmx(request):
        # A fragment's error goes to the page's message area, not where the fragment would have gone.
        response.headers["HX-Retarget"] = "#flash"
        response.headers["HX-Reswap"] = "innerHTML"
    return response


class PageRoute(APIRoute):
    """An API route whose failures are pages, and whose answers carry the page headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except errors.Unauthenticated:
                response = _to_sign_in(request)
            except errors.GraceError as exc:
                details = exc.details if isinstance(exc.details, dict) else {}
                response = error_page(request, status_for(exc), exc.message, details.get("policy"))
                if isinstance(exc, errors.RateLimited):
                    response.headers["Retry-After"] = str(exc.retry_after)
            except RequestValidationError:
                response = error_page(request, 422, "The form is missing something or has a value that is too long.")
            except HTTPException as exc:
                response = error_page(request, exc.status_code, str(exc.detail))
            return secure(response)

        return page_handler


def page_router() -> APIRouter:
    """Return a router for pages: page routes, left out of the API's published contract."""
    return APIRouter(route_class=PageRoute, include_in_schema=False)
