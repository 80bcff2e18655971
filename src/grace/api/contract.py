"""The published contract beyond each route's answer: the errors it can give, and who may call it.

FastAPI writes each route's answer model into ``/openapi.json``; this module adds, for every API route,
what the route itself does not say and yet decides:

- the errors, each with the one error shape (``schemas.ErrorBody``), derived from the route: 401, 403
  and 500 (``row_tampered``: the sealed row that names the principal was changed outside Grace) from a
  policy that needs a principal (``api/policy.py``); 400 (JSON nested too deep), 413, 415 (a
  content type it does not read) and 422 for a route that takes a body; 422 for one with parameters;
  404 for one with a path parameter or a ``user_id``; 503 for one that uses the services; 409 for one
  that takes the ``Idempotency-Key`` header (``api/idempotency.py``). A route adds
  what only it can give (409, 429, ...) in its decorator with :func:`errors`;
- the security schemes (a bearer token, or the session cookie with its CSRF header on unsafe
  methods) and, from its policy, each operation's security and ``x-policy``;
- the models a route reads by hand (the sign-in body), registered with :func:`component`.

``tests/acceptance/test_openapi_contract.py`` walks the route table, so a later route cannot leave any
of it out.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from grace.api import deps, idempotency
from grace.api.policy import Policy, Public, api_routes, policy_of
from grace.api.schemas import ErrorBody

__all__ = [
    "BEARER",
    "CSRF",
    "SESSION",
    "component",
    "declared_errors",
    "errors",
    "install",
    "ref",
]

BEARER = "bearer"
SESSION = "session"
CSRF = "csrf"

USER_ID = "user_id"  # an input naming a user, who may not exist (404)
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# A route that takes the Idempotency-Key header (api/idempotency.py) can refuse a key.
IDEMPOTENT_409 = (
    "The Idempotency-Key was used for another request in the last 24 hours (code idempotency_key_reused),"
    " or its first request is still running (code idempotency_key_in_use)."
)

# What each error status means on any route; a route's own description (``errors(...)``) wins.
MEANING: dict[int, str] = {
    400: "The body cannot be read: not text in the declared encoding, or JSON nested too deep.",
    401: "No principal: send 'Authorization: Bearer <token>' or the session cookie (code unauthenticated).",
    403: "Refused: the policy (details.policy), the token's scopes, the role, or a missing CSRF header.",
    404: "Nothing of that name or id that the caller may see (an item of the path, or the user a user_id names).",
    409: "The request conflicts with the current state.",
    413: "The body is larger than GRACE_MAX_REQUEST_BYTES (code payload_too_large).",
    415: "The body's Content-Type is not one the route reads.",
    422: "The request does not match the expected shape (details lists where and why).",
    429: "Too many attempts: try again after Retry-After seconds.",
    500: "A sealed row this request depends on (the caller's user, token or session; a secret or consent it"
    " reads) was changed outside Grace (code row_tampered): it is refused, logged and audited; an operator"
    " should run 'grace audit verify'.",
    503: "Grace or its database is not available right now: try again shortly.",
}

SECURITY_SCHEMES: dict[str, Any] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (grace tokens create, or POST /api/tokens): 'Authorization: Bearer <token>'.",
    },
    SESSION: {
        "type": "apiKey",
        "in": "cookie",
        "name": deps.SESSION_COOKIE,
        "description": "The browser session set by POST /api/auth/login.",
    },
    CSRF: {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": "The csrf_token that POST /api/auth/login returned:"
        " required with the session cookie on unsafe methods.",
    },
}

_COMPONENTS: dict[str, type[BaseModel]] = {}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """Return a JSON reference to ``model``'s schema, which ``/openapi.json`` then carries."""
    _COMPONENTS[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def component(model: type[BaseModel], *media_types: str) -> dict[str, Any]:
    """Return ``openapi_extra`` declaring ``model`` as the request body, in each of ``media_types``."""
    return {"requestBody": {"required": True, "content": {m: {"schema": ref(model)} for m in media_types}}}


def errors(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """Return a decorator's ``responses`` for the errors only this route can give, each in the one error shape.

    ``errors(409)`` uses the usual meaning; ``errors(**{"409": "already revoked"})`` says the route's own.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": MEANING[status]}
    for code, description in described.items():
        out[int(code)] = {"model": ErrorBody, "description": description}
    return out


def declared_errors(route: APIRoute, operation: dict[str, Any]) -> dict[int, str]:
    """Return the error statuses ``route`` can give whatever it does, with their meaning."""
    found: set[int] = set()
    declared = policy_of(route)
    if isinstance(declared, Policy):
        found |= {401, 403, 500}  # 500: row_tampered, from the seal checked when the principal is read
    if "requestBody" in operation:
        found |= {400, 413, 415, 422}  # 400 and 415 from api/bodies.py: JSON too deep, a content type not read
    if operation.get("parameters"):
        found.add(422)
    if any(p.get("in") == "path" for p in operation.get("parameters", [])) or USER_ID in _inputs(route):
        found.add(404)
    # A policy resolves its principal through the services (deps.get_principal).
    if isinstance(declared, Policy) or _uses(route.dependant, deps.get_services):
        found.add(503)
    meanings = {status: MEANING[status] for status in found}
    if _uses(route.dependant, idempotency.get_idempotency):
        meanings[409] = IDEMPOTENT_409
    return dict(sorted(meanings.items()))


def _inputs(route: APIRoute) -> set[str]:
    """Return the names of the route's query parameters and of its body's fields."""
    names = {p.name for p in _query_params(route.dependant)}
    for body in route.dependant.body_params:
        model = body.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names |= set(model.model_fields)
    return names


def _query_params(dependant: Dependant) -> list[Any]:
    found = list(dependant.query_params)
    for inner in dependant.dependencies:
        found += _query_params(inner)
    return found


def _uses(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def _security(route: APIRoute, method: str) -> list[dict[str, list[str]]] | None:
    declared = policy_of(route)
    if not isinstance(declared, Policy):
        return None
    session: dict[str, list[str]] = {SESSION: [], CSRF: []} if method in UNSAFE else {SESSION: []}
    return [{BEARER: []}, session]


def _operations(app: FastAPI, schema: dict[str, Any]) -> Iterator[tuple[APIRoute, str, dict[str, Any]]]:
    for route in api_routes(app):
        item = schema["paths"].get(route.path, {})
        for method in sorted(route.methods or ()):
            operation = item.get(method.lower())
            if operation is not None:
                yield route, method, operation


def _amend(app: FastAPI, schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    error_ref = ref(ErrorBody)
    for route, method, operation in _operations(app, schema):
        responses = operation.setdefault("responses", {})
        for status, meaning in declared_errors(route, operation).items():
            entry = responses.setdefault(str(status), {"description": meaning})
            if entry.get("description") == "Validation Error" or "content" not in entry:
                entry["description"] = meaning
                entry["content"] = {"application/json": {"schema": error_ref}}
            elif meaning == IDEMPOTENT_409 and IDEMPOTENT_409 not in entry["description"]:
                entry["description"] = f"{entry['description']} Or: {IDEMPOTENT_409}"
        declared = policy_of(route)
        if isinstance(declared, Policy | Public):
            operation["x-policy"] = declared.name
        operation["responses"] = dict(sorted(responses.items()))
        security = _security(route, method)
        if security is not None:
            operation["security"] = security
    for name, model in list(_COMPONENTS.items()):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for inner, definition in body.pop("$defs", {}).items():
            models.setdefault(inner, definition)
        models.setdefault(name, body)
    # FastAPI's own validation-error shape is never sent: every 422 is the one error shape.
    for name in ("HTTPValidationError", "ValidationError"):
        models.pop(name, None)
    components.setdefault("securitySchemes", {}).update(copy.deepcopy(SECURITY_SCHEMES))


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` publish the amended contract (built once, then cached like FastAPI's own)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _amend(app, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
