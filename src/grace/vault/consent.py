"""Consent records (the seed's ``secret_consent_records``) and the rules of their life.

Status moves ``pending -> approved | denied | expired``, ``approved ->
consumed`` (single use) or ``revoked``; every move is one conditional UPDATE,
so answering twice, using twice, or using after a revocation loses the race
cleanly instead of doing the thing twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import RowMapping

from grace import errors

__all__ = [
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentRecord",
    "record_from_row",
    "validate_action",
    "validate_agent",
    "validate_context",
]

MAX_CONTEXT_BYTES = 4096
_ACTION = re.compile(r"^[a-z0-9][a-z0-9_.:\-]{0,127}$")
_AGENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}$")


@dataclass(frozen=True)
class ConsentPolicy:
    """Timeouts: the seed's 5-minute answer window, and how long an approval lasts."""

    default_timeout: timedelta = timedelta(minutes=5)
    max_timeout: timedelta = timedelta(hours=1)
    single_use_window: timedelta = timedelta(minutes=15)
    persistent_valid_for: timedelta = timedelta(hours=24)
    max_valid_for: timedelta = timedelta(days=30)
    idle_timeout: timedelta = timedelta(minutes=30)


def validate_action(action: str) -> str:
    action = action.strip()
    if not _ACTION.match(action):
        raise errors.InvalidInput(
            "requested_action is 1 to 128 lowercase letters, digits, '_', '.', ':' or '-' (e.g. git_push)"
        )
    return action


def validate_agent(agent: str) -> str:
    agent = agent.strip()
    if not _AGENT.match(agent):
        raise errors.InvalidInput("requested_by names the agent: 1 to 128 letters, digits, '_', '.', '@' or '-'")
    return agent


def validate_context(context: dict[str, Any] | None) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise errors.InvalidInput("context must be an object")
    try:
        encoded = json.dumps(context, default=str)
    except (TypeError, ValueError):
        raise errors.InvalidInput("context must be JSON") from None
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise errors.PayloadTooLarge(f"context is at most {MAX_CONTEXT_BYTES} bytes of JSON")
    result: dict[str, Any] = json.loads(encoded)
    return result


@dataclass(frozen=True)
class ConsentRecord:
    """One consent request and what became of it."""

    consent_id: str
    secret_key: str
    secret_id: str
    secret_type: str
    service: str
    requested_by: str
    requested_for: str
    requested_action: str
    user_id: str
    requester_user_id: str | None
    status: str
    risk_level: str
    single_use: bool
    used_count: int
    governance_approval_required: bool
    governance_decision: str | None
    second_approval_required: bool
    approved_by: str | None
    second_approved_by: str | None
    denial_reason: str | None
    auto_approved: bool
    anomalies: list[str]
    context: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    responded_at: datetime | None
    valid_until: datetime | None
    idle_timeout_seconds: int | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def awaiting_second_approval(self) -> bool:
        return self.status == "pending" and self.second_approval_required and self.approved_by is not None

    def idle_expired(self, now: datetime) -> bool:
        if self.idle_timeout_seconds is None:
            return False
        since = self.last_used_at or self.responded_at or self.created_at
        return now - since >= timedelta(seconds=self.idle_timeout_seconds)

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        out: dict[str, Any] = {
            "consent_id": self.consent_id,
            "secret_key": self.secret_key,
            "secret_type": self.secret_type,
            "service": self.service,
            "requested_by": self.requested_by,
            "requested_for": self.requested_for,
            "requested_action": self.requested_action,
            "user_id": self.user_id,
            "consent_status": self.status,
            "risk_level": self.risk_level,
            "single_use": self.single_use,
            "used_count": self.used_count,
            "governance_approval_required": self.governance_approval_required,
            "governance_decision": self.governance_decision,
            "second_approval_required": self.second_approval_required,
            "awaiting_second_approval": self.awaiting_second_approval,
            "approved_by": self.approved_by,
            "second_approved_by": self.second_approved_by,
            "denial_reason": self.denial_reason,
            "auto_approved": self.auto_approved,
            "anomalies": self.anomalies,
            "context": self.context,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "responded_at": iso(self.responded_at),
            "valid_until": iso(self.valid_until),
            "idle_timeout_seconds": self.idle_timeout_seconds,
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
        }
        if now is not None and self.status == "pending":
            out["expires_in_seconds"] = max(0, int((self.expires_at - now).total_seconds()))
        return out


def record_from_row(row: RowMapping) -> ConsentRecord:
    return ConsentRecord(
        consent_id=row["consent_id"],
        secret_key=row["secret_key"],
        secret_id=row["secret_id"],
        secret_type=row["secret_type"],
        service=row["service"],
        requested_by=row["requested_by"],
        requested_for=row["requested_for"],
        requested_action=row["requested_action"],
        user_id=row["user_id"],
        requester_user_id=row["requester_user_id"],
        status=row["consent_status"],
        risk_level=row["risk_level"],
        single_use=bool(row["single_use"]),
        used_count=int(row["used_count"]),
        governance_approval_required=bool(row["governance_approval_required"]),
        governance_decision=row["governance_decision"],
        second_approval_required=bool(row["second_approval_required"]),
        approved_by=row["approved_by"],
        second_approved_by=row["second_approved_by"],
        denial_reason=row["denial_reason"],
        auto_approved=bool(row["auto_approved"]),
        anomalies=list(row["anomalies"] or []),
        context=dict(row["context"] or {}),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        responded_at=row["responded_at"],
        valid_until=row["valid_until"],
        idle_timeout_seconds=row["idle_timeout_seconds"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


@dataclass(frozen=True)
class ConsentDecision:
    """The answer to a consent request; truthy only when approved."""

    status: str
    consent_id: str | None
    reason: str = ""
    anomalies: tuple[str, ...] = ()
    record: ConsentRecord | None = field(default=None, repr=False, compare=False)

    @property
    def approved(self) -> bool:
        return self.status == "approved"

    def __bool__(self) -> bool:
        return self.approved

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "approved": self.approved,
            "consent_id": self.consent_id,
            "reason": self.reason,
            "anomalies": list(self.anomalies),
        }
