"""Consent records (the seed's ``secret_consent_records``) and their store.

Status moves ``pending -> approved | denied | expired``, ``approved ->
consumed`` (single use) or ``revoked``; every move is one conditional UPDATE
in :class:`ConsentStore`, so answering twice, using twice, or using after a
revocation loses the race cleanly instead of doing the thing twice. Which move
to make, and when, is decided by the consent workflow (``workflow.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Label, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import clock, errors
from grace.auth import Principal
from grace.integrity import RowSeal
from grace.storage import Database, new_id
from grace.vault.audit import AuditLog, Fields
from grace.vault.tables import CONSENTS, secret_consent_records

if TYPE_CHECKING:
    from grace.vault.store import SecretInfo

__all__ = [
    "ConsentDecision",
    "ConsentPolicy",
    "ConsentRecord",
    "ConsentStore",
    "record_from_row",
    "requester_name",
    "standing_columns",
    "standing_conditions",
    "summarise",
    "validate_action",
    "validate_agent",
    "validate_context",
]

MAX_CONTEXT_BYTES = 4096
_table = secret_consent_records
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


def requester_name(principal: Principal) -> str:
    """Return the name a consent is asked under: the agent's, else the user's."""
    return principal.agent or principal.username


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
    secret_id: str | None  # None for an approval: tied to no secret
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
    kind: str = "secret"  # ``secret``, or ``approval`` (a playbook step asking the owner)
    # The sealed columns as read, with the seal: a change is sealed from them (ConsentStore).
    sealed: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_approval(self) -> bool:
        """An approval request (a playbook step asking the owner), never a use of a secret.

        ``kind`` says so and ``secret_id`` (sealed) is empty: no release can match such a record.
        """
        return self.kind == "approval" and self.secret_id is None

    @property
    def awaiting_second_approval(self) -> bool:
        return self.status == "pending" and self.second_approval_required and self.approved_by is not None

    def given_to(self, principal: Principal) -> bool:
        """Return whether ``principal`` is the one this consent was asked for: same agent name, same user's token."""
        if self.requested_by != requester_name(principal):
            return False
        return self.requester_user_id is None or self.requester_user_id == principal.user_id

    def idle_expired(self, now: datetime) -> bool:
        if self.idle_timeout_seconds is None:
            return False
        since = self.last_used_at or self.responded_at or self.created_at
        return now - since >= timedelta(seconds=self.idle_timeout_seconds)

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "consent_id": self.consent_id,
            "kind": self.kind,
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
            "created_at": clock.iso(self.created_at),
            "expires_at": clock.iso(self.expires_at),
            "responded_at": clock.iso(self.responded_at),
            "valid_until": clock.iso(self.valid_until),
            "idle_timeout_seconds": self.idle_timeout_seconds,
            "last_used_at": clock.iso(self.last_used_at),
            "revoked_at": clock.iso(self.revoked_at),
        }
        if now is not None and self.status == "pending":
            out["expires_in_seconds"] = max(0, int((self.expires_at - now).total_seconds()))
        return out


def record_from_row(row: Mapping[Any, Any], prefix: str = "") -> ConsentRecord:
    """The record a row holds; ``prefix`` when its columns are labelled so in a join (``standing_columns``)."""
    if prefix:
        row = {column.name: row[prefix + column.name] for column in _table.c}
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
        kind=str(row["kind"] or "secret"),
        sealed={name: row[name] for name in (CONSENTS.key, *CONSENTS.columns, "seal")},
    )


@dataclass(frozen=True)
class ConsentDecision:
    """The answer to a consent request; truthy only when approved."""

    status: str
    consent_id: str | None
    reason: str = ""
    anomalies: tuple[str, ...] = ()
    record: ConsentRecord | None = field(default=None, repr=False, compare=False)
    # A standing consent's secret, as the request read it (seal checked), and its current version's sealed
    # row, read in the same transaction, for the release that follows.
    secret: SecretInfo | None = field(default=None, repr=False, compare=False)
    version: Mapping[Any, Any] | None = field(default=None, repr=False, compare=False)

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


def summarise(records: list[ConsentRecord]) -> dict[str, Any]:
    """Aggregate consents: by status and risk, approval rate, response time."""
    by_status: dict[str, int] = {}
    by_risk: dict[str, int] = {}
    waits: list[float] = []
    for record in records:
        by_status[record.status] = by_status.get(record.status, 0) + 1
        by_risk[record.risk_level] = by_risk.get(record.risk_level, 0) + 1
        if record.responded_at and not record.auto_approved:
            waits.append((record.responded_at - record.created_at).total_seconds())
    granted = sum(by_status.get(s, 0) for s in ("approved", "consumed"))
    decided = granted + by_status.get("denied", 0) + by_status.get("expired", 0)
    return {
        "total": len(records),
        "by_status": by_status,
        "by_risk": by_risk,
        "approval_rate": round(granted / decided, 4) if decided else None,
        "auto_approved": sum(1 for r in records if r.auto_approved),
        "with_anomalies": sum(1 for r in records if r.anomalies),
        "pending": by_status.get("pending", 0),
        "average_response_seconds": round(sum(waits) / len(waits), 3) if waits else None,
    }


def standing_conditions(secret_id: ColumnElement[str], *, of_nobody: bool) -> list[ColumnElement[bool]]:
    """Which records are approved persistent consents still in force for (secret, agent, action).

    The agent, the action and ``now`` are bound by name; ``requester_user_id`` too unless ``of_nobody``
    (the same agent name under another user's token is another agent).
    """
    return [
        _table.c.secret_id == secret_id,
        _table.c.requested_by == bindparam("agent"),
        _table.c.requested_action == bindparam("action"),
        _table.c.consent_status == "approved",
        _table.c.single_use.is_(False),
        _table.c.valid_until > bindparam("now", type_=_table.c.valid_until.type),
        _table.c.requester_user_id.is_(None)
        if of_nobody
        else _table.c.requester_user_id == bindparam("requester_user_id"),
    ]


def standing_columns(prefix: str) -> list[Label[Any]]:
    """Every column of a record, labelled ``prefix + name``, for a join (read back by ``record_from_row``)."""
    return [column.label(prefix + column.name) for column in _table.c]


class ConsentStore:
    """Read and write consent records; each change of status is one conditional UPDATE with its audit entry.

    Every write to ``secret_consent_records`` goes through here. Writes that
    stand alone open their own transaction; those that belong to a larger
    change (a release, a secret's revocation) take the caller's connection.

    Records are sealed (``tables.CONSENTS``): a record that decides anything is read with its seal
    checked (:meth:`get`, :meth:`standing`), and a change is sealed from the record it was decided on
    and made only if the row still carries that record's seal (so it is the row that was checked).
    """

    def __init__(self, db: Database, audit: AuditLog, seal: RowSeal) -> None:
        self.db = db
        self.audit = audit
        self.seal = seal

    def __repr__(self) -> str:
        return "ConsentStore()"

    async def get(self, consent_id: str) -> ConsentRecord:
        """Return a consent record, its seal checked."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(_table).where(_table.c.consent_id == consent_id))).mappings().first()
        if row is None:
            raise errors.NotFound(f"no consent request {consent_id[:128]!r}")
        await self.seal.check(CONSENTS, row)
        return record_from_row(row)

    def _resealed(self, record: ConsentRecord, values: Mapping[str, Any]) -> tuple[ColumnElement[bool], str]:
        """Return the condition that the row is still the record read, and the seal of it changed by ``values``."""
        return _table.c.seal == record.sealed["seal"], self.seal.seal(CONSENTS, {**record.sealed, **values})

    async def _select(self, query: Any) -> list[ConsentRecord]:
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [record_from_row(r) for r in rows]

    async def insert(self, row: dict[str, Any], event: str, *, actor: str, also: Sequence[Fields] = ()) -> str:
        """Insert a new consent record and its audit entry in one transaction; return its id.

        ``also``: entries to audit just before it, in the same transaction (the anomalies that forced it).
        """
        consent_id = new_id("cns")
        sealed = self.seal.seal(CONSENTS, {"consent_id": consent_id, **row})
        async with self.db.write() as conn:
            await conn.execute(insert(_table).values(consent_id=consent_id, **row, seal=sealed))
            entry = Fields(
                event,
                actor=actor,
                user_id=row["user_id"],
                secret_id=row["secret_id"],
                consent_id=consent_id,
                outcome="denied" if row["consent_status"] == "denied" else "ok",
                details={
                    "secret_key": row["secret_key"],
                    "requested_by": row["requested_by"],
                    "requested_action": row["requested_action"],
                    "risk_level": row["risk_level"],
                    "reason": row["denial_reason"],
                    "anomalies": row["anomalies"],
                },
            )
            await self.audit.append_many(conn, [*also, entry])
        return consent_id

    def first_standing(self, rows: Sequence[Mapping[Any, Any]], now: datetime, prefix: str) -> ConsentRecord | None:
        """The first of ``rows`` (standing consents, newest first, labelled by ``standing_columns``) still in force.

        Each candidate's seal is checked (RowTampered, not yet reported: the caller wraps its read in
        ``seal.reporting()``): a row flipped to approved outside Grace is refused, never used.
        """
        for row in rows:
            self.seal.require(CONSENTS, row, prefix)
            record = record_from_row(row, prefix)
            if not record.idle_expired(now):
                return record
        return None

    async def answer(self, record: ConsentRecord, values: dict[str, Any], event: str, *, actor: str) -> bool:
        """Record an answer to a pending request; False if it was answered (or half-answered) meanwhile."""
        condition = [_table.c.consent_id == record.consent_id, _table.c.consent_status == "pending"]
        if record.second_approval_required:
            # The first approval and the second must each happen once.
            condition.append(
                _table.c.approved_by.is_(None)
                if record.approved_by is None
                else _table.c.approved_by == record.approved_by
            )
        details = {
            "requested_by": record.requested_by,
            "requested_action": record.requested_action,
            "reason": values.get("denial_reason"),
            "single_use": values.get("single_use"),
        }
        outcome = "denied" if values.get("consent_status") == "denied" else "ok"
        return await self._change(record, condition, values, event, actor=actor, outcome=outcome, details=details)

    async def expire(self, record: ConsentRecord) -> bool:
        """Expire a pending request (no answer means deny); False if it was answered first."""
        return await self._change(
            record,
            [_table.c.consent_id == record.consent_id, _table.c.consent_status == "pending"],
            {"consent_status": "expired", "denial_reason": "no answer before the timeout"},
            "consent.expired",
            actor="vault",
            outcome="denied",
            details={"requested_by": record.requested_by, "requested_action": record.requested_action},
        )

    async def revoke(self, record: ConsentRecord, *, actor: str, reason: str, now: datetime) -> bool:
        """Revoke a pending or approved consent; False if it is neither any more."""
        return await self._change(
            record,
            [_table.c.consent_id == record.consent_id, _table.c.consent_status.in_(("pending", "approved"))],
            {"consent_status": "revoked", "revoked_at": now, "revoked_by": actor},
            "consent.revoked",
            actor=actor,
            details={"reason": reason[:256], "was": record.status},
        )

    async def _change(
        self,
        record: ConsentRecord,
        condition: list[ColumnElement[bool]],
        values: dict[str, Any],
        event: str,
        *,
        actor: str,
        details: dict[str, Any],
        outcome: str = "ok",
    ) -> bool:
        same, sealed = self._resealed(record, values)
        async with self.db.write() as conn:
            result = await conn.execute(update(_table).where(*condition, same).values(**values, seal=sealed))
            if result.rowcount != 1:
                return False
            await self.audit.append(
                conn,
                event,
                actor=actor,
                user_id=record.user_id,
                secret_id=record.secret_id,
                consent_id=record.consent_id,
                outcome=outcome,
                details=details,
            )
            return True

    async def revoke_for_secret(self, conn: AsyncConnection, secret_id: str, *, actor: str, now: datetime) -> None:
        """Revoke every pending or approved consent for a secret, inside the caller's transaction."""
        await self.seal.update_each(
            conn,
            CONSENTS,
            (_table.c.secret_id == secret_id) & _table.c.consent_status.in_(("pending", "approved")),
            {"consent_status": "revoked", "revoked_at": now, "revoked_by": actor},
        )

    def use(self, conn: Connection, record: ConsentRecord, now: datetime) -> bool:
        """Count one use inside the caller's (synchronous) release transaction; False if it may not be used any more."""
        if record.single_use:
            same, sealed = self._resealed(record, {"consent_status": "consumed"})
            statement = (
                update(_table)
                .where(
                    _table.c.consent_id == record.consent_id,
                    _table.c.consent_status == "approved",
                    _table.c.used_count == 0,
                    same,
                )
                .values(consent_status="consumed", used_count=1, last_used_at=now, seal=sealed)
            )
        else:
            # Counting a use changes no sealed column: the hot path writes no seal.
            statement = (
                update(_table)
                .where(
                    _table.c.consent_id == record.consent_id,
                    _table.c.consent_status == "approved",
                    _table.c.valid_until > now,
                )
                .values(used_count=_table.c.used_count + 1, last_used_at=now)
            )
        return conn.execute(statement).rowcount == 1

    @staticmethod
    def use_standing(conn: Connection, consent_id: str, uses: int, now: datetime) -> bool:
        """Count ``uses`` uses of a persistent consent at once (a group of releases); False if it may not be used.

        Like :meth:`use` for a record that is not single use: changes no sealed column.
        """
        statement = (
            update(_table)
            .where(
                _table.c.consent_id == consent_id,
                _table.c.consent_status == "approved",
                _table.c.single_use.is_(False),
                _table.c.valid_until > now,
            )
            .values(used_count=_table.c.used_count + uses, last_used_at=now)
        )
        return conn.execute(statement).rowcount == 1

    async def past_expiry(self, now: datetime) -> list[ConsentRecord]:
        """Return the pending requests whose answer window has passed (a row whose seal fails is left alone:
        expiring it would seal what was tampered; ``grace audit verify`` reports it)."""
        async with self.db.read() as conn:
            rows = (
                (
                    await conn.execute(
                        select(_table).where(_table.c.consent_status == "pending", _table.c.expires_at <= now)
                    )
                )
                .mappings()
                .all()
            )
        return [record_from_row(r) for r in rows if self.seal.matches(CONSENTS, r)]

    async def history(self, owner_id: str, *, secret_key: str | None = None, limit: int = 100) -> list[ConsentRecord]:
        """Return the owner's consent records, newest first."""
        query = (
            select(_table)
            .where(_table.c.user_id == owner_id)
            .order_by(_table.c.created_at.desc())
            .limit(max(1, min(limit, 1000)))
        )
        if secret_key:
            query = query.where(_table.c.secret_key == secret_key)
        return await self._select(query)

    async def pending(self, owner_id: str, now: datetime, *, second_approvals: bool) -> list[ConsentRecord]:
        """Return the owner's open requests, oldest first; with ``second_approvals``, anyone's awaiting a second."""
        condition: ColumnElement[bool] = _table.c.user_id == owner_id
        if second_approvals:
            condition = condition | (_table.c.second_approval_required.is_(True) & _table.c.approved_by.is_not(None))
        return await self._select(
            select(_table)
            .where(condition, _table.c.consent_status == "pending", _table.c.expires_at > now)
            .order_by(_table.c.created_at)
        )

    async def count(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(_table))).scalar_one())

    async def count_by_status(self) -> dict[str, int]:
        """Return how many consent records are in each status (everyone's)."""
        status = _table.c.consent_status
        async with self.db.read() as conn:
            rows = await conn.execute(select(status, func.count()).group_by(status))
            return {str(s): int(n) for s, n in rows}
