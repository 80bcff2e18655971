"""One JSON error shape for every 4xx and 5xx: ``{"error": {"code", "message", "details"}}``.

Domain errors become HTTP statuses here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from grace import errors, storage

__all__ = ["error_response", "install", "status_for", "storage_unavailable", "unexpected"]

log = logging.getLogger("grace.api")

STATUS: dict[type[errors.GraceError], int] = {
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ConsentAlreadyAnswered: 409,
    errors.PayloadTooLarge: 413,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.RateLimited: 429,
    errors.StorageUnavailable: 503,
    errors.AuditChainBroken: 503,
    errors.DatabaseUnreachable: 503,
    errors.DiskFull: 503,
    errors.ServiceNotRunning: 503,
    # The server's own stored state cannot be trusted: not the client's fault (no 4xx), and not
    # transient (no 503, which invites a retry that cannot help until an operator restores the row).
    errors.RowTampered: 500,
    errors.ConfigurationError: 500,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def status_for(exc: errors.GraceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Report where and why, never the submitted value: it may be a secret.
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def _naming(details: list[dict[str, Any]]) -> str:
    """Return the message for a request that does not match its shape, naming where (never the value)."""
    where = [f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:3]]
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return "the request does not match the expected shape: " + "; ".join(where) + more


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one error shape."""

    @app.exception_handler(errors.GraceError)
    async def _grace_error(request: Request, exc: errors.GraceError) -> JSONResponse:
        status = status_for(exc)
        headers: dict[str, str] = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, errors.Unauthenticated):
            headers["WWW-Authenticate"] = "Bearer"
        log.info("http.error", extra={"status": status, "code": exc.code, "reason": exc.message})
        return error_response(status, exc.code, exc.message, exc.details, headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        malformed = any(d["type"] == "json_invalid" for d in details)
        code, message = (
            ("malformed_json", "the body is not valid JSON") if malformed else ("invalid_input", _naming(details))
        )
        log.info("http.error", extra={"status": 422, "code": code, "reason": message})
        return error_response(422, code, message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        log.info("http.error", extra={"status": exc.status_code, "code": code, "reason": message})
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
        # The net under the edge's bounds (api/bounds.py): a value the database cannot hold is the client's error.
        if storage.refused_value(exc):
            message = (
                "a value in the request cannot be stored (a number out of range, or a character the database refuses)"
            )
            log.info("http.error", extra={"status": 422, "code": "invalid_input", "reason": type(exc).__name__})
            return error_response(422, "invalid_input", message)
        down = storage.outage(exc)
        if down is not None:
            return storage_unavailable(down, exc)
        return unexpected(exc)

    for exc_class in {*storage.VALUE_ERRORS, *storage.OUTAGE_ERRORS}:
        app.add_exception_handler(exc_class, _storage_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected(exc)


def storage_unavailable(down: errors.StorageUnavailable, exc: BaseException) -> JSONResponse:
    """Answer a database outage: 503, its own code, ``Retry-After``; log the driver's message (no SQL, no values)."""
    status = status_for(down)
    log.warning(
        "http.storage_unavailable",
        extra={"status": status, "code": down.code, "reason": storage.driver_message(exc)},
    )
    headers = {"Retry-After": str(down.retry_after)} if down.retry_after is not None else None
    return error_response(status, down.code, down.message, down.details, headers)


def unexpected(exc: BaseException) -> JSONResponse:
    """Answer a failure nothing else explains: 500, the class name in the log, nothing of its text to the client."""
    log.error("http.unhandled", extra={"exc_type": type(exc).__name__})
    return error_response(500, "internal_error", "an unexpected error occurred; see the server log")
