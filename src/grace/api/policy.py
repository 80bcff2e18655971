"""Who may call each route: the one policy every route declares in its decorator.

A route names its policy in ``dependencies=[policy.X]``, so it is on the route object
(:func:`policy_of`) and a test built from the app's route table finds any route without one. A
policy admits a principal that holds its scope (sessions hold every scope) and has its role; an
agent only where the policy is an agent's (asking: tasks, secrets). Refusals are 403 with
``details.policy`` naming the policy. The capabilities check again what is theirs to check (the
task manager who may submit what, accounts who may issue tokens, the vault who may answer).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from grace import errors
from grace.api.deps import ServicesDep, get_principal
from grace.auth import Principal, Role, Scope

__all__ = [
    "ASK_SECRETS",
    "AUDIT",
    "AUDIT_ADMIN",
    "CONSENTS",
    "KEYS",
    "METRICS",
    "PLAYBOOKS",
    "PLAYBOOKS_RUN",
    "PUBLIC",
    "SECRETS",
    "SIGNED_IN",
    "TASKS",
    "TOKENS",
    "USERS",
    "VOICE",
    "Policy",
    "Public",
    "Scrape",
    "api_routes",
    "policy_of",
]


@dataclass(frozen=True)
class Public:
    """A route anyone may call, with no principal (health, readiness, sign-in)."""

    name: str = "public"
    agents: bool = True

    async def __call__(self) -> None:
        return None


@dataclass(frozen=True)
class Policy:
    """A route for holders of ``scope`` (None: any principal) with at least ``role``; agents only if ``agents``."""

    name: str
    doing: str
    scope: Scope | None = None
    role: Role = Role.MEMBER
    agents: bool = False

    def __post_init__(self) -> None:
        if self.agents and self.scope is not None and not self.scope.for_agents:
            raise ValueError(f"policy {self.name}: an agent can never hold {self.scope.value}")

    def check(self, principal: Principal) -> None:
        """Raise PermissionDenied (with ``details.policy``) unless ``principal`` may call the route."""
        details = {"policy": self.name}
        if principal.is_agent and not self.agents:
            raise errors.PermissionDenied(
                f"an agent ({principal.agent}) cannot {self.doing}: that is for its human"
                " (use the user's own token or sign in)",
                details=details,
            )
        if self.scope is not None and not principal.can(self.scope):
            raise errors.PermissionDenied(
                f"this token cannot {self.doing}: it lacks the {self.scope.value!r} scope", details=details
            )
        if not principal.has_role(self.role):
            raise errors.PermissionDenied(
                f"this needs the {self.role.value} role; you are {principal.role.value}", details=details
            )

    async def __call__(self, request: Request) -> Principal:
        principal = await get_principal(request)
        self.check(principal)
        return principal


@dataclass(frozen=True)
class Scrape(Policy):
    """Prometheus' scrape: ``Authorization: Bearer`` with the scrape token (``GRACE_METRICS_TOKEN``), or a
    principal the policy admits (an admin, not an agent). Without either, 401; the wrong role, 403."""

    async def __call__(self, request: Request, services: ServicesDep) -> Principal | None:  # type: ignore[override]
        expected = services.settings.metrics_token
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if expected is not None and scheme.lower() == "bearer":
            given = credentials.strip().encode()
            if hmac.compare_digest(given, expected.get_secret_value().encode()):
                return None
        principal = await get_principal(request)
        self.check(principal)
        return principal


PUBLIC = Depends(Public())
SIGNED_IN = Depends(Policy("signed_in", "do this", agents=True))
TASKS = Depends(Policy("tasks", "use the task manager", Scope.TASKS, agents=True))
ASK_SECRETS = Depends(Policy("ask_secrets", "ask for secrets", Scope.SECRETS_ASK, agents=True))
SECRETS = Depends(Policy("secrets", "manage or read secrets", Scope.SECRETS))
CONSENTS = Depends(Policy("consents", "see, answer or revoke consent requests", Scope.CONSENTS))
AUDIT = Depends(Policy("audit", "read the audit log", Scope.AUDIT))
AUDIT_ADMIN = Depends(Policy("audit_admin", "verify or export the audit log", Scope.AUDIT, Role.ADMIN))
KEYS = Depends(Policy("keys", "manage the vault's keys", Scope.KEYS, Role.ADMIN))
TOKENS = Depends(Policy("tokens", "issue, list or revoke tokens", Scope.TOKENS))
USERS = Depends(Policy("users", "manage users", Scope.USERS, Role.ADMIN))
METRICS = Depends(Scrape("metrics", "read the metrics (or use the scrape token)", role=Role.ADMIN))
# Playbooks run operations (key rotation, alerts, remediation): operators and admins, never an agent,
# which must not set off what answers for its human.
PLAYBOOKS = Depends(Policy("playbooks", "see playbooks and their runs", role=Role.OPERATOR))
PLAYBOOKS_RUN = Depends(Policy("playbooks_run", "run playbooks", role=Role.OPERATOR))
# A person's own voice notes: never an agent's to read, search or delete (consenting is CONSENTS).
VOICE = Depends(Policy("voice", "use voice notes"))


def policy_of(route: APIRoute) -> Policy | Public | None:
    """Return the policy ``route`` declares, or None if it declares none (or more than one)."""
    found = [d.dependency for d in route.dependencies if isinstance(d.dependency, Policy | Public)]
    return found[0] if len(found) == 1 else None


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Return every API route of ``app``, including those of the routers it includes."""
    return list(_walk(app.router.routes))


def _walk(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # FastAPI keeps an included router as one entry that holds the original router.
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _walk(included.routes)
