"""Request bodies, paths and query strings at the edge, before any route reads them.

- **Content type.** A body without ``Content-Type`` is read as JSON (the header is added). So is a
  JSON object or array sent as ``application/x-www-form-urlencoded``, which is what ``curl -d '{...}'``
  sends without ``-H`` (a form field never starts with a raw brace or bracket: browsers encode them).
  JSON (``application/json``, ``application/*+json``), forms and multipart pass; any other type
  answers 415 ``unsupported_media_type`` naming the header to send.
- **Depth.** JSON nested deeper than :data:`grace.api.bounds.MAX_DEPTH` answers 400
  ``nesting_too_deep`` (300,000 ``[`` would otherwise exhaust the parser's recursion: a 500).
- **Values.** A NUL character in the path, the query or any string of a JSON or form body, an integer
  outside signed 64 bits, or NaN or infinity answers 422 ``invalid_input`` with ``details`` saying where,
  as a validation error does, never echoing the value. Multipart bodies (recordings) pass untouched;
  their text fields are checked where they are used.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grace.api import bounds
from grace.api.errors import error_response

__all__ = ["EdgeBounds"]

log = logging.getLogger("grace.api")

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)


def media_type(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Return the request's media type, lowercased without parameters; None when it sends no Content-Type."""
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return None


def is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class EdgeBounds:
    """Refuse, before routing, what no route can read or storage hold (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            bounds.check_text(scope["path"], ("path",))
            query = scope.get("query_string", b"")
            if query:  # most requests have none: parse_qsl of nothing still costs six calls
                for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                    bounds.check_text(key, ("query",))
                    bounds.check_text(value, ("query", key))
        except bounds.OutOfBounds as exc:
            await self._refuse(scope, receive, send, 422, "invalid_input", exc.msg, [exc.detail()])
            return
        media = media_type(scope.get("headers") or [])
        if scope["method"] not in BODY_METHODS or media == MULTIPART:
            await self.app(scope, receive, send)
            return
        body, more = await _read(receive)
        if more is not None:  # the client went away while sending
            return
        replay = _replay(body, receive)
        if media == FORM and body.lstrip()[:1] in (b"{", b"["):  # curl -d '{...}': JSON under a form's type
            media = None
            scope = {**scope, "headers": [h for h in scope.get("headers", []) if h[0].lower() != b"content-type"]}
        if body:
            refusal = self._check(body, media)
            if refusal is not None:
                await self._refuse(scope, replay, send, *refusal)
                return
            if media is None:
                scope = {**scope, "headers": [*scope.get("headers", []), (b"content-type", b"application/json")]}
        await self.app(scope, replay, send)

    @staticmethod
    def _check(body: bytes, media: str | None) -> tuple[int, str, str, Any] | None:
        """Return (status, code, message, details) refusing ``body``, or None to let it through."""
        try:
            if media is None or is_json(media):
                try:
                    value = json.loads(body, parse_constant=_refuse_constant)
                except _NotFinite:
                    raise bounds.OutOfBounds(("body",), bounds.FINITE, "float_not_finite") from None
                except RecursionError:
                    raise bounds.TooDeep from None
                except ValueError:
                    return None  # not JSON: the route answers malformed_json
                bounds.check_json(value)
            elif media == FORM:
                for key, text in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
                    bounds.check_text(key, ("body",))
                    bounds.check_text(text, ("body", key))
            else:
                return (
                    415,
                    "unsupported_media_type",
                    f"send the body as JSON with the header 'Content-Type: application/json' (or no Content-Type"
                    f" at all); '{media}' is not read here",
                    {"content_type": media},
                )
        except bounds.TooDeep:
            return (
                400,
                "nesting_too_deep",
                f"the JSON body is nested more than {bounds.MAX_DEPTH} levels deep",
                {"max_depth": bounds.MAX_DEPTH},
            )
        except bounds.OutOfBounds as exc:
            return 422, "invalid_input", exc.msg, [exc.detail()]
        return None

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str, details: Any
    ) -> None:
        log.info("http.error", extra={"status": status, "code": code, "reason": message})
        await error_response(status, code, message, details)(scope, receive, send)


async def _read(receive: Receive) -> tuple[bytes, Message | None]:
    """Return the whole body; and the disconnect message if the client left before sending it all."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes, receive: Receive) -> Receive:
    """Return a receive that hands the app ``body`` at once, then whatever the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
