"""Who may submit what: each task type's submitters, and the origins and priorities a principal may claim.

Checked on every submission that has a creator (a user or an agent), inside the task manager, so no
edge can skip it; Grace itself (no creator: the SLA enforcer, the vault's upkeep, the local CLI
without ``--user``) may submit anything.

- A task type declares its submitters when its handler is registered: anyone (members and their
  agents), admins (people, never an agent), or Grace itself only. An undeclared type under a
  capability's own prefix (``htm.``, ``vault.``) is Grace's own; other undeclared types are anyone's.
- Origins are the fair shares' accounts: a member claims only the origins of a person's own work
  (``user_request``, ``intent``, ``external_api``); operators and admins every origin but
  ``internal``, which is Grace's own. A token may narrow this further (its ``origins``).
- Priorities: members (and their agents) up to ``high``; operators and admins up to ``critical``.
  A token may narrow this further (its ``max_priority``).
"""

from __future__ import annotations

from dataclasses import dataclass

from grace import errors
from grace.auth import Principal, Role, Scope, TaskLimits
from grace.htm.origins import ORDER, Origin
from grace.htm.tasks import Priority

__all__ = [
    "ADMINS",
    "ANYONE",
    "INTERNAL",
    "RESERVED_PREFIXES",
    "Submitters",
    "admit",
    "max_priority_for",
    "origins_for",
    "task_limits",
]


@dataclass(frozen=True)
class Submitters:
    """Who may submit a task type: the least role (None: Grace itself only), and whether agents may."""

    role: Role | None
    agents: bool

    def describe(self) -> str:
        if self.role is None:
            return "Grace itself only"
        people = "anyone" if self.role is Role.MEMBER else f"{self.role.value}s"
        return people + (" and their agents" if self.agents else " (people, not agents)")


ANYONE = Submitters(Role.MEMBER, agents=True)
ADMINS = Submitters(Role.ADMIN, agents=False)
INTERNAL = Submitters(None, agents=False)

RESERVED_PREFIXES: tuple[str, ...] = ("htm.", "vault.")

_PERSONAL = frozenset({Origin.USER_REQUEST, Origin.INTENT, Origin.EXTERNAL_API})
_ALL_BUT_INTERNAL = frozenset(o for o in ORDER if o is not Origin.INTERNAL)
ROLE_ORIGINS: dict[Role, frozenset[Origin]] = {
    Role.MEMBER: _PERSONAL,
    Role.OPERATOR: _ALL_BUT_INTERNAL,
    Role.ADMIN: _ALL_BUT_INTERNAL,
}
ROLE_MAX_PRIORITY: dict[Role, Priority] = {
    Role.MEMBER: Priority.HIGH,
    Role.OPERATOR: Priority.CRITICAL,
    Role.ADMIN: Priority.CRITICAL,
}


def default_submitters(task_type: str) -> Submitters:
    """Return who may submit an undeclared task type."""
    return INTERNAL if task_type.startswith(RESERVED_PREFIXES) else ANYONE


def origins_for(principal: Principal) -> frozenset[Origin]:
    """Return the origins ``principal`` may claim: its role's, narrowed by its token."""
    allowed = ROLE_ORIGINS[principal.role]
    if principal.origins is not None:
        allowed = frozenset(o for o in allowed if o.value in principal.origins)
    return allowed


def max_priority_for(principal: Principal) -> Priority:
    """Return the most urgent priority ``principal`` may use: its role's, narrowed by its token."""
    ceiling = ROLE_MAX_PRIORITY[principal.role]
    if principal.max_priority is not None:
        try:
            narrowed = Priority(principal.max_priority)
        except ValueError:
            narrowed = Priority.LOW  # a value this version does not know grants the least
        ceiling = max(ceiling, narrowed, key=lambda p: p.rank)
    return ceiling


def admit(
    creator: Principal | None, task_type: str, origin: Origin, priority: Priority, submitters: Submitters
) -> None:
    """Raise PermissionDenied (403, naming what is allowed) unless ``creator`` may submit this task."""
    if creator is None:
        return
    creator.require_scope(Scope.TASKS, "submit tasks")
    if submitters.role is None:
        raise errors.PermissionDenied(f"task type {task_type} is submitted by Grace itself only, never by a request")
    if creator.is_agent and not submitters.agents:
        raise errors.PermissionDenied(
            f"an agent ({creator.agent}) cannot submit {task_type}: only {submitters.describe()} may"
        )
    if not creator.has_role(submitters.role):
        raise errors.PermissionDenied(f"task type {task_type} may be submitted by {submitters.describe()}")
    allowed = origins_for(creator)
    if origin not in allowed:
        names = ", ".join(o.value for o in ORDER if o in allowed) or "none"
        raise errors.PermissionDenied(
            f"you may not submit to origin {origin.value}; your origins: {names}",
            details={"allowed_origins": [o.value for o in ORDER if o in allowed]},
        )
    ceiling = max_priority_for(creator)
    if priority.rank < ceiling.rank:
        raise errors.PermissionDenied(
            f"you may not submit at priority {priority.value}; at most {ceiling.value}",
            details={"max_priority": ceiling.value},
        )


def task_limits() -> TaskLimits:
    """Return the origins and priorities per role, for capping what a token may be given."""
    return TaskLimits(
        origins=tuple(o.value for o in ORDER),
        priorities=tuple(p.value for p in Priority),
        role_origins={role: frozenset(o.value for o in allowed) for role, allowed in ROLE_ORIGINS.items()},
        role_max_priority={role: p.value for role, p in ROLE_MAX_PRIORITY.items()},
    )
