"""Where work comes from: the eight origins, their shares of capacity, and automatic tagging.

Each task carries an origin and the rule that set it. Shares are stored as
integer weights (basis points of capacity), so the fair pick does the same
integer arithmetic in Python and in PostgreSQL.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from grace import choices, errors

__all__ = [
    "DEFAULT_SHARES",
    "Origin",
    "max_concurrent",
    "parse_origin",
    "tag_origin",
    "weights_from_shares",
]


class Origin(enum.StrEnum):
    """An origin of work; the value is what the API, events and stats use."""

    USER_REQUEST = "user_request"
    INTENT = "intent"
    HUNTER_ALERT = "hunter_alert"
    EXTERNAL_API = "external_api"
    SCHEDULER = "scheduler"
    FILESYSTEM_TRIGGER = "filesystem"
    REMEDIATION = "remediation"
    INTERNAL = "internal"

    @property
    def position(self) -> int:
        """Return the origin's fixed position (breaks ties in the fair pick)."""
        return ORDER.index(self)


ORDER: tuple[Origin, ...] = tuple(Origin)

DEFAULT_SHARES: dict[Origin, float] = {
    Origin.USER_REQUEST: 0.30,
    Origin.INTENT: 0.25,
    Origin.HUNTER_ALERT: 0.15,
    Origin.EXTERNAL_API: 0.10,
    Origin.SCHEDULER: 0.10,
    Origin.FILESYSTEM_TRIGGER: 0.05,
    Origin.REMEDIATION: 0.03,
    Origin.INTERNAL: 0.02,
}

# Payload flags that tag a task, checked in this order (security alerts first).
PAYLOAD_FLAGS: tuple[tuple[str, Origin], ...] = (
    ("from_hunter_alert", Origin.HUNTER_ALERT),
    ("from_remediation", Origin.REMEDIATION),
    ("from_filesystem_trigger", Origin.FILESYSTEM_TRIGGER),
    ("from_scheduler", Origin.SCHEDULER),
    ("from_webhook", Origin.EXTERNAL_API),
)

# Agent names that identify a system component acting through a token.
AGENT_ORIGINS: dict[str, Origin] = {
    "scheduler": Origin.SCHEDULER,
    "file_watcher": Origin.FILESYSTEM_TRIGGER,
    "filesystem": Origin.FILESYSTEM_TRIGGER,
    "hunter": Origin.HUNTER_ALERT,
    "remediation": Origin.REMEDIATION,
    "webhook": Origin.EXTERNAL_API,
}

WEIGHT_SCALE = 10_000


def parse_origin(value: str) -> Origin:
    """Return the origin named ``value``; 422 naming the valid values otherwise."""
    return choices.parse(Origin, value, noun="origin", plural="origins")


def tag_origin(
    *,
    explicit: str | None,
    payload: Mapping[str, Any],
    intent_id: str | None,
    creator_agent: str | None,
    creator_is_user: bool,
) -> tuple[Origin, str]:
    """Return the task's origin and the rule that chose it.

    Order: an explicit origin; then payload flags; then an intent id; then the
    creator (a known system agent, any other agent token, a person, or Grace itself).
    """
    if explicit:
        return parse_origin(explicit), "explicit"
    for flag, origin in PAYLOAD_FLAGS:
        if payload.get(flag) is True:
            return origin, f"payload.{flag}"
    if intent_id:
        return Origin.INTENT, "intent_id"
    if creator_agent:
        known = AGENT_ORIGINS.get(creator_agent)
        if known is not None:
            return known, f"creator.agent:{creator_agent}"
        return Origin.EXTERNAL_API, "creator.agent"
    if creator_is_user:
        return Origin.USER_REQUEST, "creator.user"
    return Origin.INTERNAL, "creator.system"


def weights_from_shares(shares: Mapping[Origin, float]) -> dict[Origin, int]:
    """Turn shares (fractions; need not sum to 1) into integer weights, each at least 1."""
    total = sum(shares.get(o, 0.0) for o in ORDER)
    if total <= 0:
        raise errors.ConfigurationError("GRACE_HTM_SHARES must give at least one origin a positive share")
    return {o: max(1, round(shares.get(o, 0.0) / total * WEIGHT_SCALE)) for o in ORDER}


def max_concurrent(weight: int, total_weight: int, capacity: int) -> int:
    """Return an origin's guaranteed concurrent slots: its share of capacity rounded up, at least 1.

    Rounding up keeps the cap at or above the origin's average need, so a cap never holds an
    origin below its share of dispatches (15% of 16 slots is 2.4: a cap of 2 would hold it to 12.5%).
    """
    return max(1, (weight * capacity + total_weight - 1) // total_weight)
