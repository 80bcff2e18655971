"""FastAPI dependencies: the running services and the caller's principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from grace import errors
from grace.auth import Principal, Role
from grace.services import Services

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "CurrentPrincipal",
    "ServicesDep",
    "get_principal",
    "require_role",
]

SESSION_COOKIE = "grace_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_PRINCIPAL = "grace.principal"  # the request scope's key for the principal resolved once


async def get_services(request: Request) -> Services:
    """Return the app's running services; ServiceNotRunning before the lifespan built them or once it closed them.

    ``async`` though it awaits nothing: FastAPI runs a plain function dependency in a thread pool, a
    hand-off to another thread and back on every request.
    """
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise errors.ServiceNotRunning()
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(request: Request) -> Principal:
    """Resolve the caller from ``Authorization: Bearer`` or the session cookie; 401 if neither.

    Resolved once per request and kept in its scope: the route's policy resolves it first, and the
    route's own ``principal`` parameter (and the idempotency key's owner) take it from there. No
    dependency of its own (the services are read here): each level of FastAPI's resolver costs a
    walk of its parameters on every request, and a level under a shared dependency is walked again
    wherever it is used (a submission walked ten).
    """
    found: Principal | None = request.scope.get(_PRINCIPAL)
    if found is not None:
        return found
    principal = await _resolve(request, await get_services(request))
    request.scope[_PRINCIPAL] = principal
    return principal


async def _resolve(request: Request, services: Services) -> Principal:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise errors.Unauthenticated("use 'Authorization: Bearer <token>'")
        return await services.accounts.resolve_token(credentials.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = await services.sign_in.resolve_session(cookie)
        if request.method not in SAFE_METHODS:
            supplied = request.headers.get(CSRF_HEADER)
            if supplied is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                form = await request.form()
                value = form.get(CSRF_FIELD)
                supplied = value if isinstance(value, str) else None
            session.check_csrf(supplied)
        return session.principal
    raise errors.Unauthenticated()


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """Return a dependency that admits principals with at least ``role`` (403 otherwise)."""

    async def _require(principal: CurrentPrincipal) -> Principal:
        principal.require(role)
        return principal

    return _require
