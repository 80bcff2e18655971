"""Secret types and risk levels (seed 000 playbook B, 002 §4).

A secret's risk starts at its type's level and may be raised, never lowered.
What each level demands of a consent:

- low: read-only actions approve themselves (audited); others need the owner.
- medium: the owner's consent.
- high: the owner's consent and the governance policy.
- critical: single-use consent, the governance policy, and a second approver
  who is an operator or admin and not the requester.
"""

from __future__ import annotations

import enum

from grace import choices, errors

__all__ = [
    "READ_ONLY_ACTIONS",
    "RiskLevel",
    "SecretType",
    "default_rotation_days",
    "effective_risk",
    "is_read_only",
]


class RiskLevel(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return ("low", "medium", "high", "critical").index(self.value)

    @classmethod
    def parse(cls, value: str) -> RiskLevel:
        return choices.parse(cls, value, noun="risk level", plural="levels")

    @property
    def needs_governance(self) -> bool:
        return self.rank >= RiskLevel.HIGH.rank


class SecretType(enum.StrEnum):
    API_KEY = "api_key"
    PASSWORD = "password"
    OAUTH_TOKEN = "oauth_token"
    SSH_KEY = "ssh_key"
    CERTIFICATE = "certificate"
    OTHER = "other"

    @classmethod
    def parse(cls, value: str) -> SecretType:
        return choices.parse(cls, value, noun="secret type", plural="types")

    @property
    def base_risk(self) -> RiskLevel:
        return _BASE_RISK[self]


_BASE_RISK = {
    SecretType.API_KEY: RiskLevel.MEDIUM,
    SecretType.PASSWORD: RiskLevel.HIGH,
    SecretType.OAUTH_TOKEN: RiskLevel.HIGH,
    SecretType.SSH_KEY: RiskLevel.CRITICAL,
    SecretType.CERTIFICATE: RiskLevel.CRITICAL,
    SecretType.OTHER: RiskLevel.LOW,
}

# An action is read-only when it is one of these words or starts with one and "_" (read_repo, list_issues).
READ_ONLY_ACTIONS = frozenset({"read", "get", "list", "view", "describe", "fetch", "query", "search"})


def is_read_only(action: str) -> bool:
    head = action.split("_", 1)[0]
    return action in READ_ONLY_ACTIONS or head in READ_ONLY_ACTIONS


def effective_risk(secret_type: SecretType, requested: str | None) -> RiskLevel:
    """Return the type's risk, or ``requested`` if it is higher; refuse one that is lower."""
    base = secret_type.base_risk
    if requested is None or requested == "":
        return base
    level = RiskLevel.parse(requested)
    if level.rank < base.rank:
        raise errors.InvalidInput(
            f"a {secret_type.value} is at least {base.value} risk; it may be raised, never lowered to {level.value}"
        )
    return level


def default_rotation_days(secret_type: SecretType) -> int | None:
    """API keys rotate weekly by default (seed playbook B); other types only on request."""
    return 7 if secret_type is SecretType.API_KEY else None
