"""ASGI middleware: request ids, the request-size limit and the access log."""

from __future__ import annotations

import json
import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grace import __version__, logs, storage
from grace.api import errors as api_errors
from grace.api.schemas.platform import Health

__all__ = ["RequestContext"]

log = logging.getLogger("grace.http")

_INCOMING_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")


def _new_id() -> str:
    """A request id: 16 hex digits from Python's generator, not the system's (a request id is not a secret,
    and ``secrets.token_hex`` made a system call on every request: 2% of a submission's time on the loop)."""
    return f"{random.getrandbits(64):016x}"


class _BodyTooLarge(Exception):
    pass


# The liveness answer, made once: what the /health route answers (grace.api.routes.health), byte for byte.
_HEALTH_BODY = Health(status="ok", version=__version__).model_dump_json().encode()
_HEALTH_HEADERS = [(b"content-length", str(len(_HEALTH_BODY)).encode()), (b"content-type", b"application/json")]


class RequestContext:
    """Give each request an id, refuse bodies over the limit with 413, and log one line per request.

    The limit is checked against Content-Length up front and counted while the
    body streams in, so a chunked upload cannot slip past it.

    An exception no handler took is answered here (a 503 for a database outage, else a 500), not
    by Starlette's outermost handler: that one re-raises after answering, and uvicorn then closes
    the client's keep-alive connection, so every 5xx would cost the client a new connection.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, larger_bodies: tuple[tuple[re.Pattern[str], int], ...] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Paths that take larger bodies (a voice note's upload), each with its own limit.
        self.larger_bodies = larger_bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _INCOMING_ID.match(incoming) else _new_id()
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        limit = next((n for pattern, n in self.larger_bodies if pattern.match(scope["path"])), self.max_body_bytes)
        state = {"status": 500, "started": False, "overflow": False, "received": 0}

        async def send_raw(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        async def send_from_app(message: Message) -> None:
            if state["overflow"]:
                # The app saw the body break off and answered something else; the answer is 413.
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    await self._too_large(send_raw, limit)
                return
            await send_raw(message)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["overflow"] = True
                    raise _BodyTooLarge
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                await self._too_large(send_raw, limit)
                return
            if scope["method"] == "GET" and scope["path"] == "/health":
                # Liveness is answered here, before the framework: a probe needs only the event loop to
                # turn, and at 200 connections routing it through FastAPI's layers cost its p99 the 50 ms
                # a liveness probe allows (docs/architecture.md, "The HTTP edge"). The route stays for
                # the API's description and answers the same bytes.
                await send_raw({"type": "http.response.start", "status": 200, "headers": list(_HEALTH_HEADERS)})
                await send_raw({"type": "http.response.body", "body": _HEALTH_BODY})
                return
            try:
                await self.app(scope, counting_receive, send_from_app)
            except _BodyTooLarge:
                if not state["started"]:
                    await self._too_large(send_raw, limit)
            except Exception as exc:
                if state["started"]:
                    raise  # half an answer is out: only closing the connection can end it
                down = storage.outage(exc)
                answer = api_errors.storage_unavailable(down, exc) if down else api_errors.unexpected(exc)
                await answer(scope, receive, send_raw)
        finally:
            log.info(
                "http.request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": state["status"],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            logs.request_id.reset(token)

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "payload_too_large",
                    "message": f"the request body is larger than the {limit}-byte limit",
                    "details": {"limit_bytes": limit},
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
