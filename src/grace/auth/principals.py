"""Who is asking: a user, or an agent acting through a user's token."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from grace import errors
from grace.auth.scopes import AGENT_SCOPES, ALL_SCOPES, Scope

__all__ = ["Principal", "Role"]


class Role(enum.StrEnum):
    """A user's role; each includes the powers of the ones below it."""

    MEMBER = "member"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"member": 0, "operator": 1, "admin": 2}[self.value]

    @property
    def scopes(self) -> frozenset[Scope]:
        """Return every scope that means something for this role (admins' scopes only for admins)."""
        return frozenset(s for s in Scope if self is Role.ADMIN or not s.admins_only)

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(r.value for r in cls)
            raise errors.InvalidInput(f"unknown role {value!r}; valid roles: {valid}") from None


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request or command.

    ``scopes`` are what its token was given (sessions and the CLI: every scope);
    an agent's are capped at the agent scopes whatever it was given. ``origins``
    and ``max_priority`` narrow what the task manager lets it claim (None: what
    the user's role allows).
    """

    user_id: str
    username: str
    role: Role
    agent: str | None = None
    token_id: str | None = None
    session_id: str | None = None
    scopes: frozenset[Scope] = ALL_SCOPES
    origins: frozenset[str] | None = None
    max_priority: str | None = None

    def __post_init__(self) -> None:
        if self.agent is not None and not self.scopes <= AGENT_SCOPES:
            # The cap is applied here, so no way of building a principal can hand an agent more.
            object.__setattr__(self, "scopes", self.scopes & AGENT_SCOPES)

    @property
    def name(self) -> str:
        """Return how this caller is shown in audit trails: ``agent@user`` or ``user``."""
        return f"{self.agent}@{self.username}" if self.agent else self.username

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def is_agent(self) -> bool:
        """Return whether this caller is an agent: its token names one."""
        return self.agent is not None

    def has_role(self, role: Role) -> bool:
        return self.role.rank >= role.rank

    def can(self, scope: Scope) -> bool:
        """Return whether this caller holds ``scope``."""
        return scope in self.scopes

    def require(self, role: Role) -> None:
        """Raise PermissionDenied unless this principal has at least ``role``."""
        if not self.has_role(role):
            raise errors.PermissionDenied(f"this needs the {role.value} role; you are {self.role.value}")

    def require_scope(self, scope: Scope, doing: str) -> None:
        """Raise PermissionDenied unless this caller holds ``scope``; an agent hears it cannot answer for its human."""
        if self.can(scope):
            return
        if self.is_agent and not scope.for_agents:
            raise errors.PermissionDenied(
                f"an agent ({self.agent}) cannot {doing}: that answers for its human;"
                " use the user's own token or sign in"
            )
        raise errors.PermissionDenied(f"this token cannot {doing}: it lacks the {scope.value!r} scope")

    def require_self_or_admin(self, user_id: str) -> None:
        """Raise PermissionDenied unless ``user_id`` is the caller's own, or the caller is an admin."""
        if user_id != self.user_id and not self.is_admin:
            raise errors.PermissionDenied("user_id must be your own unless you are an admin")
