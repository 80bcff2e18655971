"""The vault's facade: what the API, the CLI and other capabilities call.

Consent flow (seed 002 §4): the agent asks -> a standing consent for exactly
(agent, secret, action) is reused, or a low-risk read-only action approves
itself, or a pending request is published on ``secrets.consent.request`` and
awaited -> the owner approves or denies -> high and critical risk also pass the
governance policy, and critical needs a second approver -> the release is
audited -> only then is the value handed over. Usage anomalies skip the first
two shortcuts and force a fresh consent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.auth import Principal, Role
from grace.bus import Bus
from grace.clock import Clock
from grace.config import Settings
from grace.storage import Database, new_id
from grace.vault import anomaly, consent, crypto, governance, masterkey, risk
from grace.vault.audit import AuditEntry, AuditLog, VerifyReport
from grace.vault.consent import ConsentDecision, ConsentPolicy, ConsentRecord
from grace.vault.keyring import Keyring, RotationReport, StepHook
from grace.vault.store import SecretInfo, SecretStore, SecretValue
from grace.vault.tables import secret_consent_records, vault_meta, vault_secrets, vault_usage

__all__ = ["AccessResult", "AuditUnavailable", "Vault"]

log = logging.getLogger("grace.vault")

T = TypeVar("T")

TOPIC_REQUEST = "secrets.consent.request"
TOPIC_RESPONSE = "secrets.consent.response"
TOPIC_ANOMALY = "secrets.anomaly"
TOPIC_ROTATION_DUE = "secrets.rotation.due"
TOPIC_KEY_EXPIRING = "secrets.key.expiring"
TOPIC_KEY_ROTATED = "secrets.key.rotated"
WAIT_POLL_SECONDS = 0.2
ROTATION_TASK = "vault.rotate_keys"

RotationSubmitter = Callable[[dict[str, Any]], Awaitable[str]]


class AuditUnavailable(errors.StorageUnavailable):
    """The audit log could not be written, so nothing was released or changed."""

    code = "audit_unavailable"


class _LostRace(Exception):
    pass


@dataclass(frozen=True)
class AccessResult:
    """The outcome of asking for a secret: the value only when approved."""

    status: str
    consent_id: str | None
    reason: str = ""
    value: SecretValue | None = None
    version: int | None = None
    anomalies: tuple[str, ...] = ()

    @property
    def approved(self) -> bool:
        return self.status == "approved" and self.value is not None

    def __repr__(self) -> str:
        return f"AccessResult(status={self.status!r}, consent_id={self.consent_id!r}, value=<hidden>)"

    def public_dict(self) -> dict[str, Any]:
        """Everything but the value."""
        return {
            "status": self.status,
            "approved": self.approved,
            "consent_id": self.consent_id,
            "reason": self.reason,
            "version": self.version,
            "anomalies": list(self.anomalies),
        }


def _requester_name(principal: Principal) -> str:
    return principal.agent or principal.username


def _same_requester(principal: Principal, record: ConsentRecord) -> bool:
    """Return whether ``principal`` is the one the consent was asked for: same agent name, same user's token."""
    if record.requested_by != _requester_name(principal):
        return False
    return record.requester_user_id is None or record.requester_user_id == principal.user_id


class Vault:
    """Secrets, consent, governance, audit and keys, over one database."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        bus: Bus,
        master: masterkey.MasterKey,
        *,
        policy: governance.Policy | None = None,
        key_lifetime: timedelta = timedelta(days=30),
        anchor_path: Path | None = None,
        consent_policy: ConsentPolicy | None = None,
        anomaly_policy: anomaly.AnomalyPolicy | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.master = master
        self.policy = policy or governance.Policy()
        self.consent_policy = consent_policy or ConsentPolicy()
        self.anomaly_policy = anomaly_policy or anomaly.AnomalyPolicy()
        self.audit = AuditLog(db, clock, master, anchor_path=anchor_path)
        self.keyring = Keyring(db, clock, master, self.audit, key_lifetime=key_lifetime)
        self.secrets = SecretStore(db, clock, self.keyring, self.audit)
        self._wakeups: dict[str, asyncio.Event] = {}
        self._rotation_lock = asyncio.Lock()
        self._rotation_task: asyncio.Task[None] | None = None
        self._submit_rotation: RotationSubmitter | None = None
        self._queued_for_term: int | None = None

    def __repr__(self) -> str:
        return f"Vault(backend={self.db.backend!r}, master={self.master!r})"

    @classmethod
    async def open(cls, settings: Settings, db: Database, clock: Clock, bus: Bus) -> Vault:
        """Load the master key the settings name, check it against the keyring, create the first key if new."""
        salt = await _passphrase_salt(db) if settings.master_passphrase is not None else None
        master = masterkey.from_settings(settings, salt)
        vault = cls(
            db,
            clock,
            bus,
            master,
            policy=governance.load_policy(settings.vault_policy_file),
            key_lifetime=timedelta(days=settings.vault_key_lifetime_days),
            anchor_path=settings.data_dir / "audit-anchor.json",
        )
        await vault.keyring.ensure_active()
        return vault

    # -- secrets ---------------------------------------------------------------

    def _owner(self, by: Principal, user_id: str | None) -> str:
        owner = user_id or by.user_id
        by.require_self_or_admin(owner)
        return owner

    async def store(
        self,
        by: Principal,
        key: str,
        value: str,
        *,
        secret_type: str,
        service: str,
        user_id: str | None = None,
        risk_level: str | None = None,
        description: str = "",
        rotation_days: int | None = None,
    ) -> SecretInfo:
        """Store a secret (or a new version of it) for ``user_id`` (the caller unless an admin says otherwise)."""
        if by.agent is not None:
            raise errors.PermissionDenied("agents cannot store secrets; the owner stores them")
        owner = self._owner(by, user_id)
        info = await self._audited(
            self.secrets.store(
                by,
                owner_id=owner,
                key=key,
                value=value,
                secret_type=secret_type,
                service=service,
                risk_level=risk_level,
                description=description,
                rotation_days=rotation_days,
            )
        )
        log.info("vault.secret_stored", extra={"secret_id": info.id, "version": info.version, "type": info.secret_type})
        return info

    async def list_secrets(self, by: Principal, user_id: str | None = None) -> list[SecretInfo]:
        """List the caller's secrets, masked (an admin may name another user)."""
        return await self.secrets.list_for(self._owner(by, user_id))

    async def secret(self, by: Principal, key: str, user_id: str | None = None) -> SecretInfo:
        return await self.secrets.get(self._owner(by, user_id), key)

    async def revoke_secret(
        self, by: Principal, key: str, *, user_id: str | None = None, reason: str = ""
    ) -> SecretInfo:
        """Revoke a secret: no more releases, its consents revoked, its history kept."""
        if by.agent is not None:
            raise errors.PermissionDenied("agents cannot revoke secrets")
        secret = await self.secrets.get(self._owner(by, user_id), key)
        return await self._audited(self.secrets.revoke(by, secret, reason))

    async def rotation_due(self, by: Principal, user_id: str | None = None) -> list[SecretInfo]:
        """List the caller's secrets whose rotation is due."""
        return await self.secrets.rotation_due(self._owner(by, user_id))

    async def publish_rotation_due(self) -> int:
        """Publish ``secrets.rotation.due`` once for each secret that has become due; return how many."""
        published = 0
        for secret in await self.secrets.rotation_due(None):
            if await self.secrets.mark_rotation_notified(secret.id):
                await self.bus.publish(
                    TOPIC_ROTATION_DUE,
                    {
                        "secret_key": secret.key,
                        "secret_type": secret.secret_type,
                        "service": secret.service,
                        "user_id": secret.owner_id,
                        "due_at": secret.rotation_due_at.isoformat() if secret.rotation_due_at else None,
                    },
                )
                published += 1
        return published

    # -- consent -----------------------------------------------------------------

    async def request_consent(
        self,
        secret_key: str,
        secret_type: str | None = None,
        service: str | None = None,
        requested_by: str = "",
        requested_for: str = "",
        requested_action: str = "",
        user_id: str = "",
        risk_level: str | None = None,
        context: dict[str, Any] | None = None,
        timeout_seconds: float | None = None,
        *,
        requester: Principal | None = None,
        wait: bool = True,
    ) -> ConsentDecision:
        """Decide whether ``requested_by`` may use the secret for ``requested_action`` (the seed's signature).

        With ``wait`` (the default) this returns only once the owner has
        answered or the timeout passed (no answer means deny); without it a
        pending request returns at once with its consent id.
        """
        agent = consent.validate_agent(requested_by)
        action = consent.validate_action(requested_action)
        if len(requested_for) > 256:
            raise errors.InvalidInput("requested_for is at most 256 characters")
        ctx = consent.validate_context(context)
        timeout = (
            timedelta(seconds=timeout_seconds) if timeout_seconds is not None else self.consent_policy.default_timeout
        )
        if not timedelta(seconds=1) <= timeout <= self.consent_policy.max_timeout:
            raise errors.InvalidInput(
                f"timeout_seconds must be between 1 and {int(self.consent_policy.max_timeout.total_seconds())}"
            )
        try:
            secret = await self.secrets.get(user_id, secret_key.strip())
        except errors.NotFound:
            # An attempt on a secret that does not exist is an access attempt too.
            await self._audited(
                self.audit.record(
                    "secret.access_denied",
                    actor=agent,
                    user_id=user_id or None,
                    outcome="refused",
                    details={"secret_key": secret_key[:128], "requested_action": action, "reason": "no such secret"},
                )
            )
            raise
        if (
            secret_type is not None
            and secret_type != ""
            and risk.SecretType.parse(secret_type).value != secret.secret_type
        ):
            raise errors.InvalidInput(f"secret {secret.key!r} is a {secret.secret_type}, not a {secret_type}")
        if service and service.strip().lower() != secret.service:
            raise errors.InvalidInput(f"secret {secret.key!r} is for service {secret.service!r}, not {service!r}")
        level = risk.RiskLevel(secret.risk_level)
        if risk_level:
            asked = risk.RiskLevel.parse(risk_level)
            level = asked if asked.rank > level.rank else level
        now = self.clock.now()
        base: dict[str, Any] = {
            "secret_key": secret.key,
            "secret_id": secret.id,
            "secret_type": secret.secret_type,
            "service": secret.service,
            "requested_by": agent,
            "requested_for": requested_for.strip(),
            "requested_action": action,
            "user_id": secret.owner_id,
            "requester_user_id": requester.user_id if requester else None,
            "risk_level": level.value,
            "single_use": True,
            "used_count": 0,
            "governance_approval_required": level.needs_governance,
            "governance_decision": None,
            "second_approval_required": level is risk.RiskLevel.CRITICAL,
            "approved_by": None,
            "second_approved_by": None,
            "denial_reason": None,
            "auto_approved": False,
            "anomalies": [],
            "context": ctx,
            "created_at": now,
            "expires_at": now + timeout,
            "responded_at": None,
            "valid_until": None,
            "idle_timeout_seconds": None,
            "last_used_at": None,
            "revoked_at": None,
            "revoked_by": None,
        }
        if secret.status != "active":
            return await self._deny_new(base, "the secret has been revoked")

        requester_user_id = requester.user_id if requester else None
        async with self.db.read() as conn:
            found = await anomaly.detect(
                conn,
                self.anomaly_policy,
                owner_id=secret.owner_id,
                secret_id=secret.id,
                agent=agent,
                action=action,
                now=now,
            )
            # Looked up now, used only if governance allows below; an anomaly rules it out.
            standing = None if found else await self._standing(secret.id, agent, action, now, requester_user_id, conn)
        base["anomalies"] = found
        if found:
            await self._audited(
                self.audit.record(
                    "secret.anomaly",
                    actor=agent,
                    user_id=secret.owner_id,
                    secret_id=secret.id,
                    outcome="flagged",
                    details={"anomalies": found, "action": action, "secret_key": secret.key},
                )
            )
            await self.bus.publish(
                TOPIC_ANOMALY,
                {
                    "secret_key": secret.key,
                    "service": secret.service,
                    "requested_by": agent,
                    "requested_action": action,
                    "user_id": secret.owner_id,
                    "anomalies": found,
                },
            )
            log.warning("vault.anomaly", extra={"secret_id": secret.id, "agent": agent, "anomalies": found})

        if level.needs_governance:
            decision = self.policy.evaluate(
                governance.Request(secret.service, action, agent, level.value, secret.secret_type, now)
            )
            base["governance_decision"] = "allow" if decision.allowed else "deny"
            await self._audited(
                self.audit.record(
                    "governance.decision",
                    actor="governance",
                    user_id=secret.owner_id,
                    secret_id=secret.id,
                    outcome="allow" if decision.allowed else "deny",
                    details={**decision.as_dict(), "action": action, "requested_by": agent, "stage": "request"},
                )
            )
            if not decision.allowed:
                return await self._deny_new(base, f"governance: {decision.reason}")

        if not found:
            if standing is not None:
                return ConsentDecision("approved", standing.consent_id, "standing consent", record=standing)
            if level is risk.RiskLevel.LOW and risk.is_read_only(action):
                base.update(
                    consent_status="approved",
                    auto_approved=True,
                    approved_by="auto",
                    responded_at=now,
                    valid_until=now + self.consent_policy.single_use_window,
                )
                consent_id = await self._insert(base, "consent.auto_approved", actor="auto")
                return ConsentDecision("approved", consent_id, "low-risk read-only action approved itself")

        base["consent_status"] = "pending"
        consent_id = await self._insert(base, "consent.requested", actor=agent)
        await self.bus.publish(
            TOPIC_REQUEST,
            {
                "consent_id": consent_id,
                "secret_key": secret.key,
                "secret_type": secret.secret_type,
                "service": secret.service,
                "requested_by": agent,
                "requested_for": base["requested_for"],
                "requested_action": action,
                "user_id": secret.owner_id,
                "risk_level": level.value,
                "context": ctx,
                "anomalies": found,
                "second_approval_required": base["second_approval_required"],
                "expires_in_seconds": int(timeout.total_seconds()),
            },
        )
        log.info("vault.consent_requested", extra={"consent_id": consent_id, "agent": agent, "risk": level.value})
        if not wait:
            return ConsentDecision("pending", consent_id, "waiting for the owner's answer", tuple(found))
        return await self.wait(consent_id, timeout.total_seconds())

    async def _insert(self, row: dict[str, Any], event: str, *, actor: str) -> str:
        consent_id = new_id("cns")

        async def work() -> None:
            async with self.db.write() as conn:
                await conn.execute(insert(secret_consent_records).values(consent_id=consent_id, **row))
                await self.audit.append(
                    conn,
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

        await self._audited(work())
        return consent_id

    async def _deny_new(self, row: dict[str, Any], reason: str) -> ConsentDecision:
        row.update(consent_status="denied", denial_reason=reason[:512], responded_at=self.clock.now())
        consent_id = await self._insert(row, "consent.denied", actor="vault")
        return ConsentDecision("denied", consent_id, reason, tuple(row["anomalies"]))

    async def _standing(
        self, secret_id: str, agent: str, action: str, now: Any, requester_user_id: str | None, conn: AsyncConnection
    ) -> ConsentRecord | None:
        rows = (
            (
                await conn.execute(
                    select(secret_consent_records)
                    .where(
                        secret_consent_records.c.secret_id == secret_id,
                        secret_consent_records.c.requested_by == agent,
                        secret_consent_records.c.requested_action == action,
                        secret_consent_records.c.consent_status == "approved",
                        secret_consent_records.c.single_use.is_(False),
                        secret_consent_records.c.valid_until > now,
                        # The same agent name under another user's token is another agent.
                        secret_consent_records.c.requester_user_id.is_(None)
                        if requester_user_id is None
                        else secret_consent_records.c.requester_user_id == requester_user_id,
                    )
                    .order_by(secret_consent_records.c.created_at.desc())
                )
            )
            .mappings()
            .all()
        )
        for row in rows:
            record = consent.record_from_row(row)
            if not record.idle_expired(now):
                return record
        return None

    async def get_consent(self, consent_id: str) -> ConsentRecord:
        async with self.db.read() as conn:
            row = (
                (
                    await conn.execute(
                        select(secret_consent_records).where(secret_consent_records.c.consent_id == consent_id)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise errors.NotFound(f"no consent request {consent_id[:128]!r}")
        return consent.record_from_row(row)

    async def consent_for(self, by: Principal, consent_id: str) -> ConsentRecord:
        """Return a consent record the caller may see (owner, admin, or an operator asked to second it)."""
        record = await self.get_consent(consent_id)
        if record.user_id == by.user_id or by.is_admin:
            return record
        if record.second_approval_required and by.has_role(Role.OPERATOR) and by.agent is None:
            return record
        raise errors.NotFound(f"no consent request {consent_id[:128]!r}")

    def _wake(self, consent_id: str) -> None:
        event = self._wakeups.get(consent_id)
        if event is not None:
            event.set()

    async def wait(self, consent_id: str, timeout_seconds: float | None = None) -> ConsentDecision:
        """Wait for the answer to a pending request, or its expiry (which denies)."""
        event = self._wakeups.setdefault(consent_id, asyncio.Event())
        loop = asyncio.get_running_loop()
        real_deadline = loop.time() + timeout_seconds if timeout_seconds is not None else None
        try:
            while True:
                event.clear()
                record = await self.get_consent(consent_id)
                if record.status != "pending":
                    return ConsentDecision(
                        record.status, consent_id, record.denial_reason or record.status, tuple(record.anomalies)
                    )
                if self.clock.now() >= record.expires_at:
                    await self._expire(record)
                    return ConsentDecision(
                        "expired", consent_id, "no answer before the timeout", tuple(record.anomalies)
                    )
                pause = WAIT_POLL_SECONDS
                if real_deadline is not None:
                    remaining = real_deadline - loop.time()
                    if remaining <= 0:
                        return ConsentDecision(
                            "pending", consent_id, "still waiting for the owner", tuple(record.anomalies)
                        )
                    pause = min(pause, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), pause)
        finally:
            self._wakeups.pop(consent_id, None)

    async def _expire(self, record: ConsentRecord) -> bool:
        async def work() -> bool:
            async with self.db.write() as conn:
                result = await conn.execute(
                    update(secret_consent_records)
                    .where(
                        secret_consent_records.c.consent_id == record.consent_id,
                        secret_consent_records.c.consent_status == "pending",
                    )
                    .values(consent_status="expired", denial_reason="no answer before the timeout")
                )
                if result.rowcount != 1:
                    return False
                await self.audit.append(
                    conn,
                    "consent.expired",
                    actor="vault",
                    user_id=record.user_id,
                    secret_id=record.secret_id,
                    consent_id=record.consent_id,
                    outcome="denied",
                    details={"requested_by": record.requested_by, "requested_action": record.requested_action},
                )
                return True

        return await self._audited(work())

    async def expire_pending(self) -> int:
        """Expire every pending request whose answer window has passed."""
        async with self.db.read() as conn:
            rows = (
                (
                    await conn.execute(
                        select(secret_consent_records).where(
                            secret_consent_records.c.consent_status == "pending",
                            secret_consent_records.c.expires_at <= self.clock.now(),
                        )
                    )
                )
                .mappings()
                .all()
            )
        expired = 0
        for row in rows:
            if await self._expire(consent.record_from_row(row)):
                expired += 1
        return expired

    async def _refuse(self, by: Principal, record: ConsentRecord, event: str, reason: str) -> None:
        await self._audited(
            self.audit.record(
                event,
                actor=by.name,
                user_id=record.user_id,
                secret_id=record.secret_id,
                consent_id=record.consent_id,
                outcome="refused",
                details={"reason": reason},
            )
        )
        log.info("vault.consent_refused", extra={"consent_id": record.consent_id, "reason": reason})

    async def respond(
        self,
        by: Principal,
        consent_id: str,
        approved: bool,
        *,
        reason: str | None = None,
        persistent: bool = False,
        valid_for_seconds: int | None = None,
        idle_timeout_seconds: int | None = None,
    ) -> ConsentRecord:
        """Answer a pending consent request as its owner (or an admin), or as the second approver."""
        record = await self.get_consent(consent_id)
        now = self.clock.now()
        if by.agent is not None:
            await self._refuse(by, record, "consent.answer_refused", "an agent cannot answer consent requests")
            raise errors.PermissionDenied("an agent cannot answer consent requests; the secret's owner must")
        second = record.awaiting_second_approval
        if second:
            if not by.has_role(Role.OPERATOR):
                await self._refuse(by, record, "consent.answer_refused", "second approver must be an operator or admin")
                raise errors.PermissionDenied("the second approval must come from an operator or admin")
            if by.user_id == record.requester_user_id or by.username in (record.approved_by, record.requested_by):
                await self._refuse(by, record, "consent.answer_refused", "second approver must be someone else")
                raise errors.PermissionDenied(
                    "the second approver must be neither the requester nor the first approver"
                )
        elif record.user_id != by.user_id and not by.is_admin:
            await self._refuse(by, record, "consent.answer_refused", "not the owner")
            if record.second_approval_required and by.has_role(Role.OPERATOR):
                raise errors.PermissionDenied("the owner (or an admin) answers first; then a second approver")
            raise errors.PermissionDenied("only the secret's owner or an admin can answer this consent request")
        if record.status != "pending":
            await self._refuse(by, record, "consent.answer_refused", f"already {record.status}")
            raise errors.Conflict(f"this consent request is already {record.status}; nothing changed")
        if now >= record.expires_at:
            await self._expire(record)
            await self._refuse(by, record, "consent.answer_refused", "expired")
            raise errors.Conflict("this consent request expired before the answer; nothing changed")
        if reason is not None and len(reason) > 512:
            raise errors.InvalidInput("a reason is at most 512 characters")

        values: dict[str, Any]
        event = "consent.denied"
        if not approved:
            values = {
                "consent_status": "denied",
                "denial_reason": (reason or "denied by the owner")[:512],
                "responded_at": now,
            }
        else:
            if record.governance_approval_required:
                decision = self.policy.evaluate(
                    governance.Request(
                        record.service,
                        record.requested_action,
                        record.requested_by,
                        record.risk_level,
                        record.secret_type,
                        now,
                    )
                )
                await self._audited(
                    self.audit.record(
                        "governance.decision",
                        actor="governance",
                        user_id=record.user_id,
                        secret_id=record.secret_id,
                        consent_id=record.consent_id,
                        outcome="allow" if decision.allowed else "deny",
                        details={**decision.as_dict(), "stage": "approval"},
                    )
                )
                if not decision.allowed:
                    values = {
                        "consent_status": "denied",
                        "governance_decision": "deny",
                        "denial_reason": f"governance: {decision.reason}"[:512],
                        "responded_at": now,
                    }
                    return await self._transition(by, record, values, "consent.denied")
            if record.second_approval_required and not second:
                values = {"approved_by": by.username}
                event = "consent.first_approval"
            else:
                single_use = not persistent or record.risk_level == "critical"
                policy = self.consent_policy
                if single_use:
                    valid_until = now + policy.single_use_window
                    idle = None
                else:
                    valid_for = (
                        timedelta(seconds=valid_for_seconds) if valid_for_seconds else policy.persistent_valid_for
                    )
                    if not timedelta(seconds=60) <= valid_for <= policy.max_valid_for:
                        raise errors.InvalidInput(
                            f"valid_for_seconds must be between 60 and {int(policy.max_valid_for.total_seconds())}"
                        )
                    valid_until = now + valid_for
                    idle = idle_timeout_seconds or int(policy.idle_timeout.total_seconds())
                    if not 60 <= idle <= int(valid_for.total_seconds()):
                        raise errors.InvalidInput(
                            "idle_timeout_seconds must be at least 60 and within valid_for_seconds"
                        )
                values = {
                    "consent_status": "approved",
                    "single_use": single_use,
                    "responded_at": now,
                    "valid_until": valid_until,
                    "idle_timeout_seconds": idle,
                }
                if second:
                    values["second_approved_by"] = by.username
                else:
                    values["approved_by"] = by.username
                if record.governance_approval_required:
                    values["governance_decision"] = "allow"
                event = "consent.approved"
        return await self._transition(by, record, values, event)

    async def _transition(
        self, by: Principal, record: ConsentRecord, values: dict[str, Any], event: str
    ) -> ConsentRecord:
        async def work() -> bool:
            async with self.db.write() as conn:
                condition = [
                    secret_consent_records.c.consent_id == record.consent_id,
                    secret_consent_records.c.consent_status == "pending",
                ]
                if record.second_approval_required:
                    # The first approval and the second must each happen once.
                    condition.append(
                        secret_consent_records.c.approved_by.is_(None)
                        if record.approved_by is None
                        else secret_consent_records.c.approved_by == record.approved_by
                    )
                result = await conn.execute(update(secret_consent_records).where(*condition).values(**values))
                if result.rowcount != 1:
                    return False
                await self.audit.append(
                    conn,
                    event,
                    actor=by.name,
                    user_id=record.user_id,
                    secret_id=record.secret_id,
                    consent_id=record.consent_id,
                    outcome="denied" if values.get("consent_status") == "denied" else "ok",
                    details={
                        "requested_by": record.requested_by,
                        "requested_action": record.requested_action,
                        "reason": values.get("denial_reason"),
                        "single_use": values.get("single_use"),
                    },
                )
                return True

        if not await self._audited(work()):
            await self._refuse(by, record, "consent.answer_refused", "answered concurrently")
            raise errors.Conflict("this consent request was answered at the same moment; nothing changed")
        self._wake(record.consent_id)
        updated = await self.get_consent(record.consent_id)
        await self.bus.publish(
            TOPIC_RESPONSE,
            {
                "consent_id": updated.consent_id,
                "user_id": updated.user_id,
                "consent_status": updated.status,
                "awaiting_second_approval": updated.awaiting_second_approval,
            },
        )
        log.info("vault.consent_answered", extra={"consent_id": updated.consent_id, "status": updated.status})
        return updated

    async def revoke_consent(self, by: Principal, consent_id: str, reason: str = "") -> ConsentRecord:
        """Revoke a consent (pending or approved); its next use is refused."""
        record = await self.get_consent(consent_id)
        if record.user_id != by.user_id and not by.is_admin:
            await self._refuse(by, record, "consent.revoke_refused", "not the owner")
            raise errors.NotFound(f"no consent request {consent_id[:128]!r}")
        now = self.clock.now()

        async def work() -> bool:
            async with self.db.write() as conn:
                result = await conn.execute(
                    update(secret_consent_records)
                    .where(
                        secret_consent_records.c.consent_id == consent_id,
                        secret_consent_records.c.consent_status.in_(("pending", "approved")),
                    )
                    .values(consent_status="revoked", revoked_at=now, revoked_by=by.name)
                )
                if result.rowcount != 1:
                    return False
                await self.audit.append(
                    conn,
                    "consent.revoked",
                    actor=by.name,
                    user_id=record.user_id,
                    secret_id=record.secret_id,
                    consent_id=consent_id,
                    details={"reason": reason[:256], "was": record.status},
                )
                return True

        if not await self._audited(work()):
            raise errors.Conflict(f"this consent is {record.status}; only pending or approved consents can be revoked")
        self._wake(consent_id)
        return await self.get_consent(consent_id)

    async def history(
        self, by: Principal, user_id: str | None = None, *, secret_key: str | None = None, limit: int = 100
    ) -> list[ConsentRecord]:
        """Return the owner's consent records, newest first."""
        owner = self._owner(by, user_id)
        query = (
            select(secret_consent_records)
            .where(secret_consent_records.c.user_id == owner)
            .order_by(secret_consent_records.c.created_at.desc())
            .limit(max(1, min(limit, 1000)))
        )
        if secret_key:
            query = query.where(secret_consent_records.c.secret_key == secret_key)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [consent.record_from_row(r) for r in rows]

    async def pending(self, by: Principal, user_id: str | None = None) -> list[ConsentRecord]:
        """Return requests waiting for the caller: their own, and (operators, admins) second approvals."""
        owner = self._owner(by, user_id)
        now = self.clock.now()
        condition = secret_consent_records.c.user_id == owner
        if by.has_role(Role.OPERATOR) and by.agent is None and user_id is None:
            condition = condition | (
                secret_consent_records.c.second_approval_required.is_(True)
                & secret_consent_records.c.approved_by.is_not(None)
            )
        async with self.db.read() as conn:
            rows = (
                (
                    await conn.execute(
                        select(secret_consent_records)
                        .where(
                            condition,
                            secret_consent_records.c.consent_status == "pending",
                            secret_consent_records.c.expires_at > now,
                        )
                        .order_by(secret_consent_records.c.created_at)
                    )
                )
                .mappings()
                .all()
            )
        return [consent.record_from_row(r) for r in rows]

    async def stats(self, by: Principal, user_id: str | None = None) -> dict[str, Any]:
        """Aggregate the owner's consents: by status and risk, approval rate, response time."""
        records = await self.history(by, user_id, limit=1000)
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

    # -- access ----------------------------------------------------------------

    async def access(
        self,
        by: Principal,
        key: str,
        *,
        action: str,
        purpose: str = "",
        user_id: str | None = None,
        service: str | None = None,
        secret_type: str | None = None,
        risk_level: str | None = None,
        context: dict[str, Any] | None = None,
        timeout_seconds: float | None = None,
        wait_seconds: float | None = None,
    ) -> AccessResult:
        """Ask for a secret's value; returns it once consent is given and the release is audited.

        ``wait_seconds=None`` waits up to the whole consent timeout; ``0``
        returns a pending consent id at once (redeem it later with :meth:`redeem`).
        """
        owner = self._owner(by, user_id)
        decision = await self.request_consent(
            key,
            secret_type,
            service,
            _requester_name(by),
            purpose,
            action,
            owner,
            risk_level,
            context,
            timeout_seconds,
            requester=by,
            wait=False,
        )
        if decision.status == "pending" and decision.consent_id and (wait_seconds is None or wait_seconds > 0):
            decision = await self.wait(decision.consent_id, wait_seconds)
        if decision.status != "approved" or decision.consent_id is None:
            return AccessResult(decision.status, decision.consent_id, decision.reason, anomalies=decision.anomalies)
        return await self._release(by, decision.record or await self.get_consent(decision.consent_id))

    async def redeem(self, by: Principal, consent_id: str, *, wait_seconds: float = 0) -> AccessResult:
        """Collect the value a consent id stands for (poll mode); pending, denied or released."""
        record = await self.get_consent(consent_id)
        if record.user_id != by.user_id and not by.is_admin:
            raise errors.NotFound(f"no consent request {consent_id[:128]!r}")
        if not _same_requester(by, record):
            await self._refuse(by, record, "secret.access_denied", "consent was given to another requester")
            return AccessResult("denied", consent_id, "this consent was given to another requester")
        if record.status == "pending":
            decision = await self.wait(consent_id, wait_seconds)
            if decision.status == "pending":
                return AccessResult("pending", consent_id, decision.reason, anomalies=decision.anomalies)
            record = await self.get_consent(consent_id)
        if record.status != "approved":
            reason = {"consumed": "this single-use consent was already used"}.get(
                record.status, record.denial_reason or f"consent is {record.status}"
            )
            await self._refuse(by, record, "secret.access_denied", reason)
            return AccessResult("denied" if record.status != "expired" else "expired", consent_id, reason)
        return await self._release(by, record)

    async def _release(self, by: Principal, record: ConsentRecord) -> AccessResult:
        now = self.clock.now()
        if not _same_requester(by, record):
            await self._refuse(by, record, "secret.access_denied", "consent was given to another requester")
            return AccessResult("denied", record.consent_id, "this consent was given to another requester")
        if record.valid_until is not None and now >= record.valid_until:
            await self._refuse(by, record, "secret.access_denied", "consent expired")
            return AccessResult("denied", record.consent_id, "the consent has expired")
        if not record.single_use and record.idle_expired(now):
            await self._refuse(by, record, "secret.access_denied", "consent idle too long")
            return AccessResult("denied", record.consent_id, "the consent lapsed after being idle")
        try:
            secret, value = await self.secrets.open_current(record.secret_id)
        except crypto.IntegrityFailure:
            await self._refuse(by, record, "secret.integrity_failure", "ciphertext failed authentication")
            log.error("vault.integrity_failure", extra={"secret_id": record.secret_id})
            raise
        if value is None:
            await self._refuse(by, record, "secret.access_denied", "secret revoked")
            return AccessResult("denied", record.consent_id, "the secret has been revoked")

        async def work() -> None:
            async with self.db.write() as conn:
                await self._use(conn, record, now)
                counted = await conn.execute(
                    update(vault_secrets)
                    .where(vault_secrets.c.id == secret.id, vault_secrets.c.status == "active")
                    .values(usage_count=vault_secrets.c.usage_count + 1, last_used_at=now)
                )
                if counted.rowcount != 1:
                    raise _LostRace  # revoked since it was read
                await conn.execute(
                    insert(vault_usage).values(
                        secret_id=secret.id,
                        owner_id=secret.owner_id,
                        agent=record.requested_by,
                        action=record.requested_action,
                        at=now,
                        hour=now.hour,
                    )
                )
                # The release is on record before the value leaves: if this write fails, nothing is released.
                await self.audit.append(
                    conn,
                    "secret.released",
                    actor=by.name,
                    user_id=secret.owner_id,
                    secret_id=secret.id,
                    consent_id=record.consent_id,
                    details={
                        "secret_key": secret.key,
                        "version": secret.version,
                        "requested_action": record.requested_action,
                        "single_use": record.single_use,
                    },
                )

        try:
            await self._audited(work())
        except _LostRace:
            reason = (
                "this single-use consent was already used, or it or the secret was revoked"
                if record.single_use
                else "the consent or the secret was revoked"
            )
            await self._refuse(by, record, "secret.access_denied", reason)
            return AccessResult("denied", record.consent_id, reason)
        log.info("vault.secret_released", extra={"secret_id": secret.id, "consent_id": record.consent_id})
        return AccessResult("approved", record.consent_id, "released", value, secret.version, tuple(record.anomalies))

    async def _use(self, conn: AsyncConnection, record: ConsentRecord, now: Any) -> None:
        table = secret_consent_records
        if record.single_use:
            statement = (
                update(table)
                .where(
                    table.c.consent_id == record.consent_id,
                    table.c.consent_status == "approved",
                    table.c.used_count == 0,
                )
                .values(consent_status="consumed", used_count=1, last_used_at=now)
            )
        else:
            statement = (
                update(table)
                .where(
                    table.c.consent_id == record.consent_id,
                    table.c.consent_status == "approved",
                    table.c.valid_until > now,
                )
                .values(used_count=table.c.used_count + 1, last_used_at=now)
            )
        if (await conn.execute(statement)).rowcount != 1:
            raise _LostRace

    async def _audited(self, work: Awaitable[T]) -> T:
        """Run ``work``; a database failure becomes AuditUnavailable (every vault write carries its audit entry)."""
        try:
            return await work
        except DBAPIError as exc:
            log.error("vault.audit_write_failed", extra={"reason": type(exc.orig).__name__ if exc.orig else "unknown"})
            raise AuditUnavailable() from None

    # -- audit and keys -------------------------------------------------------------

    async def audit_entries(
        self, by: Principal, user_id: str | None = None, *, before: int | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Return audit entries about the caller's secrets (admins: anyone's, or everything with user_id='*')."""
        if user_id == "*":
            by.require(Role.ADMIN)
            owner = None
        else:
            owner = self._owner(by, user_id)
        return await self.audit.entries(user_id=owner, before=before, limit=max(1, min(limit, 1000)))

    async def verify_audit(self) -> VerifyReport:
        return await self.audit.verify()

    async def keys_status(self) -> dict[str, Any]:
        return await self.keyring.status()

    async def rotate_keys(
        self, *, by: str = "system", on_step: StepHook | None = None, batch_size: int = 500
    ) -> RotationReport:
        """Rotate the key-encryption key (or resume an unfinished rotation)."""
        async with self._rotation_lock:
            report = await self.keyring.rotate(by=by, on_step=on_step, batch_size=batch_size)
        await self.audit.checkpoint()
        await self.bus.publish(TOPIC_KEY_ROTATED, {"key_id": report.to_key_id, "rewrapped": report.rewrapped})
        return report

    def use_task_manager(self, submit: RotationSubmitter) -> None:
        """Run key rotations as task-manager tasks: ``submit`` queues a ``vault.rotate_keys`` task, returns its id."""
        self._submit_rotation = submit

    async def run_rotation_task(self, ctx: Any) -> dict[str, Any]:
        """The ``vault.rotate_keys`` task handler: rotate, or resume, unless someone already rotated past it."""
        payload = getattr(ctx, "payload", {}) or {}
        status = await self.keyring.status()
        term = (status["active_key"] or {}).get("term")
        expected = payload.get("active_term")
        if expected is not None and term != expected and not status["rotation_in_progress"]:
            return {"skipped": "the key was rotated since this task was queued", "active_term": term}
        try:
            report = await self.rotate_keys(by=f"task:{getattr(ctx, 'task_id', '?')}")
        except errors.Conflict:
            return {"skipped": "another rotation is running"}
        return report.as_dict()

    async def request_rotation(self, *, by: str, reason: str = "requested") -> dict[str, Any]:
        """Queue a rotation on the task manager when it is wired; otherwise run it in the background here."""
        if self._submit_rotation is None:
            return {"queued": False, "started": self.start_rotation(by=by)}
        term = ((await self.keyring.status())["active_key"] or {}).get("term")
        task_id = await self._submit_rotation({"active_term": term, "reason": reason, "requested_by": by})
        log.info("vault.rotation_queued", extra={"task_id": task_id, "reason": reason})
        return {"queued": True, "task_id": task_id}

    def start_rotation(self, *, by: str = "system") -> bool:
        """Run :meth:`rotate_keys` as a background task in this process; False if one is already running here."""
        if self._rotation_task is not None and not self._rotation_task.done():
            return False
        self._rotation_task = asyncio.create_task(self._rotate_in_background(by), name="grace-vault-rotation")
        return True

    async def _rotate_in_background(self, by: str) -> None:
        try:
            await self.rotate_keys(by=by)
        except errors.Conflict:
            log.info("vault.rotation_skipped", extra={"reason": "another rotation is running"})
        except Exception as exc:  # resumable: the next tick or `grace keys rotate` finishes it
            log.error("vault.rotation_failed", extra={"reason": type(exc).__name__})

    async def close(self) -> None:
        """Stop a background rotation (it resumes from its last step next time)."""
        if self._rotation_task is not None and not self._rotation_task.done():
            self._rotation_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotation_task

    async def check_key_expiry(self) -> bool:
        """Publish ``secrets.key.expiring`` when the active key is within 7 days of expiry."""
        status = await self.keyring.status()
        if status["expiring_soon"]:
            await self.bus.publish(
                TOPIC_KEY_EXPIRING,
                {"key_id": (status["active_key"] or {}).get("id"), "expires_at": status["expires_at"]},
            )
            log.warning("vault.key_expiring", extra={"expires_at": status["expires_at"]})
            return True
        return False

    async def tick(self) -> dict[str, Any]:
        """One round of background upkeep: expiries, due rotations, key expiry, scheduled key rotation."""
        done: dict[str, Any] = {
            "expired": await self.expire_pending(),
            "rotation_due": await self.publish_rotation_due(),
        }
        done["key_expiring"] = await self.check_key_expiry()
        if await self.keyring.rotation_due():
            if self._submit_rotation is None:
                done["rotated"] = (await self.rotate_keys(by="schedule")).as_dict()
            else:
                term = ((await self.keyring.status())["active_key"] or {}).get("term")
                if term != self._queued_for_term:  # one task per key term from this process
                    done["rotation_queued"] = await self.request_rotation(by="schedule", reason="schedule")
                    self._queued_for_term = term
        await self.audit.checkpoint()
        return done

    async def counts(self) -> dict[str, int]:
        async with self.db.read() as conn:
            secrets_total = (await conn.execute(select(func.count()).select_from(vault_secrets))).scalar_one()
            consents = (await conn.execute(select(func.count()).select_from(secret_consent_records))).scalar_one()
        return {"secrets": int(secrets_total), "consents": int(consents)}


async def _passphrase_salt(db: Database) -> bytes:
    """Return the vault's Argon2id salt, creating it on first use (it is not secret)."""
    async with db.read() as conn:
        value = (
            await conn.execute(select(vault_meta.c.value).where(vault_meta.c.name == "passphrase_salt"))
        ).scalar_one_or_none()
    if value is None:
        import os

        with contextlib.suppress(DBAPIError):
            async with db.write() as conn:
                await conn.execute(
                    insert(vault_meta).values(name="passphrase_salt", value=os.urandom(masterkey.SALT_BYTES).hex())
                )
        async with db.read() as conn:
            value = (
                await conn.execute(select(vault_meta.c.value).where(vault_meta.c.name == "passphrase_salt"))
            ).scalar_one()
    return bytes.fromhex(value)
