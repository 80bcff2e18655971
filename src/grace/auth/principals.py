"""Who is asking: a user, or an agent acting through a user's token."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from grace import errors

__all__ = ["Principal", "Role"]


class Role(enum.StrEnum):
    """A user's role; each includes the powers of the ones below it."""

    MEMBER = "member"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"member": 0, "operator": 1, "admin": 2}[self.value]

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(r.value for r in cls)
            raise errors.InvalidInput(f"unknown role {value!r}; valid roles: {valid}") from None


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request or command."""

    user_id: str
    username: str
    role: Role
    agent: str | None = None
    token_id: str | None = None
    session_id: str | None = None

    @property
    def name(self) -> str:
        """Return how this caller is shown in audit trails: ``agent@user`` or ``user``."""
        return f"{self.agent}@{self.username}" if self.agent else self.username

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def has_role(self, role: Role) -> bool:
        return self.role.rank >= role.rank

    def require(self, role: Role) -> None:
        """Raise PermissionDenied unless this principal has at least ``role``."""
        if not self.has_role(role):
            raise errors.PermissionDenied(f"this needs the {role.value} role; you are {self.role.value}")

    def require_self_or_admin(self, user_id: str) -> None:
        """Raise PermissionDenied unless ``user_id`` is the caller's own, or the caller is an admin."""
        if user_id != self.user_id and not self.is_admin:
            raise errors.PermissionDenied("user_id must be your own unless you are an admin")
