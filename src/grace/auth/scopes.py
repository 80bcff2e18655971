"""What a principal may do: scopes, the agent's ceiling, and the task limits a token may narrow.

A principal is an **agent** when it authenticates with a token that names an
agent (``api_tokens.agent``). Whatever a token row says, an agent's scopes are
capped at :data:`AGENT_SCOPES`: it may ask (submit tasks, ask for secrets and
collect what its human approved) but never answer for its human (consents,
tokens, users, keys, audit). A token without an agent name is its user's own
(a script or a CLI acting as that person) and may hold every scope the user's
role allows. Sessions hold every scope; the user's role still applies.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grace import errors

if TYPE_CHECKING:
    from grace.auth.principals import Principal, Role

__all__ = [
    "AGENT_SCOPES",
    "ALL_SCOPES",
    "Grant",
    "Scope",
    "TaskLimits",
    "format_names",
    "grant_for",
    "parse_names",
    "parse_scopes",
]


class Scope(enum.StrEnum):
    """A power a token may hold; routes and capabilities ask for one."""

    TASKS = "tasks"
    SECRETS_ASK = "secrets:ask"
    SECRETS = "secrets"
    CONSENTS = "consents"
    AUDIT = "audit"
    TOKENS = "tokens"
    USERS = "users"
    KEYS = "keys"

    @property
    def admins_only(self) -> bool:
        """Return whether only an admin's token may hold this scope (anyone else's could never use it)."""
        return self in (Scope.USERS, Scope.KEYS)

    @property
    def for_agents(self) -> bool:
        """Return whether an agent may hold this scope (asking, never answering)."""
        return self in AGENT_SCOPES

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[Scope, str] = {
    Scope.TASKS: "submit, read and cancel the user's tasks; the task manager's figures",
    Scope.SECRETS_ASK: "ask for a secret and collect a value its owner approved",
    Scope.SECRETS: "store, list, describe and revoke secrets",
    Scope.CONSENTS: "see, answer and revoke consent requests",
    Scope.AUDIT: "read (admins: verify) the audit log",
    Scope.TOKENS: "issue, list and revoke API tokens",
    Scope.USERS: "create, list and disable users (admins)",
    Scope.KEYS: "the vault's keyring: status and rotation (admins)",
}

AGENT_SCOPES: frozenset[Scope] = frozenset({Scope.TASKS, Scope.SECRETS_ASK})
ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """Return the scopes named; 422 naming the valid ones for an unknown name."""
    found: set[Scope] = set()
    for name in names:
        try:
            found.add(Scope(name.strip().lower()))
        except ValueError:
            valid = ", ".join(s.value for s in Scope)
            raise errors.InvalidInput(
                f"unknown scope {name[:40]!r}; valid scopes: {valid}", details={"valid": [s.value for s in Scope]}
            ) from None
    return frozenset(found)


def format_names(names: Iterable[str]) -> str:
    """Return names as stored: sorted, space-separated."""
    return " ".join(sorted(set(names)))


def parse_names(stored: str | None) -> frozenset[str]:
    """Return the names a stored column holds (empty for NULL or '')."""
    return frozenset(stored.split()) if stored else frozenset()


@dataclass(frozen=True)
class TaskLimits:
    """Which origins and priorities each role may claim, as the task manager defines them.

    Accounts uses it to refuse a token more than its creator has; the task manager
    enforces the same limits on every submission.
    """

    origins: tuple[str, ...]
    priorities: tuple[str, ...]  # most urgent first
    role_origins: Mapping[Role, frozenset[str]]
    role_max_priority: Mapping[Role, str]

    def parse_origins(self, names: Iterable[str]) -> frozenset[str]:
        found: set[str] = set()
        for name in names:
            value = name.strip().lower()
            if value not in self.origins:
                raise errors.InvalidInput(
                    f"unknown origin {name[:40]!r}; valid origins: {', '.join(self.origins)}",
                    details={"valid": list(self.origins)},
                )
            found.add(value)
        return frozenset(found)

    def parse_priority(self, name: str) -> str:
        value = name.strip().lower()
        if value not in self.priorities:
            raise errors.InvalidInput(
                f"unknown priority {name[:40]!r}; valid priorities: {', '.join(self.priorities)}",
                details={"valid": list(self.priorities)},
            )
        return value

    def rank(self, priority: str) -> int:
        """Return 0 for the most urgent priority; higher is less urgent."""
        return self.priorities.index(priority)


@dataclass(frozen=True)
class Grant:
    """What a new token will hold: its scopes, and how it narrows the task manager's limits (None: no narrowing)."""

    scopes: frozenset[Scope]
    origins: frozenset[str] | None
    max_priority: str | None


def grant_for(
    owner_role: Role,
    *,
    agent: bool,
    issuer: Principal | None,
    limits: TaskLimits | None,
    scopes: Iterable[str] | None = None,
    origins: Iterable[str] | None = None,
    max_priority: str | None = None,
) -> Grant:
    """Decide what a new token holds; never more than ``issuer`` has (None: the local CLI, which has everything).

    Without ``scopes`` the token gets everything it may hold: the owner's role's scopes, capped by the
    issuer's and, for an agent, by the agent scopes. Without ``origins`` or ``max_priority`` it inherits
    the issuer's narrowing.
    """
    ceiling = owner_role.scopes & (issuer.scopes if issuer is not None else ALL_SCOPES)
    if agent:
        ceiling &= AGENT_SCOPES
    if scopes is None:
        chosen = ceiling
    else:
        chosen = parse_scopes(scopes)
        human = chosen - AGENT_SCOPES
        if agent and human:
            raise errors.InvalidInput(
                f"an agent's token cannot hold {format_names(human)}: agents ask, never answer for their human"
                f" (agent scopes: {format_names(AGENT_SCOPES)})"
            )
        beyond_role = chosen - owner_role.scopes
        if beyond_role:
            raise errors.InvalidInput(
                f"a {owner_role.value}'s token cannot hold {format_names(beyond_role)}: only an admin's can"
            )
        if issuer is not None and chosen - issuer.scopes:
            raise errors.PermissionDenied(
                f"you cannot give a token {format_names(chosen - issuer.scopes)}: your own credentials lack it"
            )
    issuer_origins = issuer.origins if issuer is not None else None
    issuer_priority = issuer.max_priority if issuer is not None else None
    chosen_origins = issuer_origins
    if origins is not None:
        known = _need(limits, "origins")
        wanted = known.parse_origins(origins)
        allowed = known.role_origins[owner_role]
        if issuer_origins is not None:
            allowed &= issuer_origins
        if wanted - allowed:
            raise errors.PermissionDenied(
                f"this token cannot be given origin {format_names(wanted - allowed)}:"
                f" allowed here: {format_names(allowed) or 'none'}"
            )
        chosen_origins = wanted
    elif chosen_origins is not None and limits is not None:
        chosen_origins &= limits.role_origins[owner_role]
    chosen_priority = issuer_priority
    if max_priority is not None:
        known = _need(limits, "max_priority")
        wanted_priority = known.parse_priority(max_priority)
        ceiling_rank = known.rank(known.role_max_priority[owner_role])
        if issuer_priority is not None:
            ceiling_rank = max(ceiling_rank, known.rank(issuer_priority))
        if known.rank(wanted_priority) < ceiling_rank:
            raise errors.PermissionDenied(
                f"this token cannot be given priority {wanted_priority}: at most {known.priorities[ceiling_rank]} here"
            )
        chosen_priority = wanted_priority
    return Grant(chosen, chosen_origins, chosen_priority)


def _need(limits: TaskLimits | None, what: str) -> TaskLimits:
    if limits is None:
        raise errors.InvalidInput(f"{what} needs the task manager, which this process does not run")
    return limits
