"""The consent workflow: how a request for a secret becomes approved, denied or expired (seed 002 §4).

The agent asks -> a standing consent for exactly (agent, secret, action) is
reused, or a low-risk read-only action approves itself, or a pending request
is published on ``secrets.consent.request`` and awaited -> the owner approves
or denies -> high and critical risk also pass the governance policy, and
critical needs a second approver. Usage anomalies skip the first two
shortcuts and force a fresh consent. The records and their conditional
UPDATEs are in ``consent.py``; handing the value over is ``release.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from grace import errors
from grace.auth import Principal, Role, Scope
from grace.bus import Bus
from grace.clock import Clock
from grace.storage import Database
from grace.vault import anomaly, consent, decision, governance, risk
from grace.vault.audit import AuditLog, Fields, audited
from grace.vault.consent import ConsentDecision, ConsentPolicy, ConsentRecord, ConsentStore
from grace.vault.store import SecretInfo, SecretStore

__all__ = ["TOPIC_ANOMALY", "TOPIC_APPROVAL", "TOPIC_REQUEST", "TOPIC_RESPONSE", "ConsentWorkflow"]

log = logging.getLogger("grace.vault")

TOPIC_REQUEST = "secrets.consent.request"
TOPIC_RESPONSE = "secrets.consent.response"
TOPIC_ANOMALY = "secrets.anomaly"
TOPIC_APPROVAL = "secrets.consent.approval"
APPROVAL_MAX_TIMEOUT = timedelta(days=7)
APPROVAL_RISK = "medium"
WAIT_POLL_SECONDS = 0.2
REVOKE_ATTEMPTS = 5


@dataclass(eq=False, repr=False)
class ConsentWorkflow:
    """Ask for, answer, wait for, expire and revoke consents."""

    db: Database
    clock: Clock
    bus: Bus
    audit: AuditLog
    secrets: SecretStore
    store: ConsentStore
    policy: governance.Policy
    consent_policy: ConsentPolicy
    anomaly_policy: anomaly.AnomalyPolicy
    _wakeups: dict[str, asyncio.Event] = field(default_factory=dict, init=False)

    def __repr__(self) -> str:
        return f"ConsentWorkflow(policy={self.policy.source!r})"

    # -- asking ------------------------------------------------------------------

    async def request(
        self,
        secret_key: str,
        *,
        requested_by: str,
        requested_action: str,
        user_id: str,
        requested_for: str = "",
        secret_type: str | None = None,
        service: str | None = None,
        risk_level: str | None = None,
        context: dict[str, Any] | None = None,
        timeout_seconds: float | None = None,
        requester: Principal | None = None,
        wait: bool = True,
    ) -> ConsentDecision:
        """Decide whether ``requested_by`` may use ``user_id``'s secret for ``requested_action`` (the seed's call).

        With ``wait`` (the default) this returns only once the owner has
        answered or the timeout passed (no answer means deny); without it a
        pending request returns at once with its consent id.
        """
        agent = consent.validate_agent(requested_by)
        action = consent.validate_action(requested_action)
        if len(requested_for) > 256:
            raise errors.InvalidInput("requested_for is at most 256 characters")
        ctx = consent.validate_context(context)
        timeout = self._answer_window(timeout_seconds)
        now = self.clock.now()
        requester_user_id = requester.user_id if requester else None
        key = secret_key.strip()

        def decide(conn: Connection) -> decision.Read:
            return decision.read(
                conn,
                secrets=self.secrets,
                consents=self.store,
                policy=self.anomaly_policy,
                owner_id=user_id,
                key=key,
                agent=agent,
                action=action,
                requester_user_id=requester_user_id,
                now=now,
            )

        # One statement (decision.py); on SQLite one hand-off to a reading thread (Database.read_sync).
        async with self.store.seal.reporting():
            secret, found, standing, version = await self.db.read_sync(decide)
        if secret is None:
            await self._no_such_secret(user_id, secret_key, agent, action)
            raise errors.NotFound(f"no secret named {secret_key.strip()[:128]!r}")
        level = _level(secret, secret_type, service, risk_level)
        base = _new_row(secret, agent, requested_for, action, requester_user_id, level, ctx, now, timeout)
        if secret.status != "active":
            return await self._deny_new(base, "the secret has been revoked")

        base["anomalies"] = found
        # An anomaly is audited in the transaction that stores the consent request it forces (or its denial).
        flagged = [_anomaly_entry(secret, agent, action, found)] if found else []

        if level.needs_governance:
            ruling = await self._govern(
                governance.Request(secret.service, action, agent, level.value, secret.secret_type, now),
                user_id=secret.owner_id,
                secret_id=secret.id,
                stage="request",
            )
            base["governance_decision"] = "allow" if ruling.allowed else "deny"
            if not ruling.allowed:
                denied = await self._deny_new(base, f"governance: {ruling.reason}", also=flagged)
                if found:
                    await self._publish_anomaly(secret, agent, action, found)
                return denied

        if not found:
            if standing is not None:
                return ConsentDecision(
                    "approved", standing.consent_id, "standing consent", record=standing, secret=secret, version=version
                )
            if level is risk.RiskLevel.LOW and risk.is_read_only(action):
                base.update(
                    consent_status="approved",
                    auto_approved=True,
                    approved_by="auto",
                    responded_at=now,
                    valid_until=now + self.consent_policy.single_use_window,
                )
                consent_id = await audited(self.store.insert(base, "consent.auto_approved", actor="auto"))
                return ConsentDecision("approved", consent_id, "low-risk read-only action approved itself")

        base["consent_status"] = "pending"
        consent_id = await audited(self.store.insert(base, "consent.requested", actor=agent, also=flagged))
        if found:
            await self._publish_anomaly(secret, agent, action, found)
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

    async def ask_approval(
        self,
        *,
        user_id: str,
        asked_by: str,
        action: str,
        what: str,
        why: str,
        service: str,
        timeout_seconds: float,
        context: dict[str, Any] | None = None,
    ) -> ConsentRecord:
        """Ask ``user_id`` to approve something that is not the use of a secret (a playbook step).

        The request is a consent record of kind ``approval``, tied to no secret, in the owner's inbox
        beside the secrets' requests and answered the same way (:meth:`respond`: the owner or an
        admin, never an agent); no answer before ``timeout_seconds`` expires it. Published on
        ``secrets.consent.approval``; the answer on ``secrets.consent.response`` like any other.
        """
        agent = consent.validate_agent(asked_by)
        verb = consent.validate_action(action)
        timeout = timedelta(seconds=timeout_seconds)
        if not timedelta(seconds=1) <= timeout <= APPROVAL_MAX_TIMEOUT:
            raise errors.InvalidInput("an approval's timeout is between 1 second and 7 days")
        ctx = consent.validate_context({**(context or {}), "what": what[:1000], "why": why[:1000]})
        now = self.clock.now()
        row: dict[str, Any] = {
            "kind": "approval",
            "secret_key": "",
            "secret_id": None,
            "secret_type": "approval",
            "service": service[:128],
            "requested_by": agent,
            "requested_for": why.strip()[:256],
            "requested_action": verb,
            "user_id": user_id,
            "requester_user_id": None,
            "consent_status": "pending",
            "risk_level": APPROVAL_RISK,
            "governance_approval_required": False,
            "second_approval_required": False,
            "context": ctx,
            **_undecided(now, timeout),
        }
        consent_id = await audited(self.store.insert(row, "consent.approval_requested", actor=agent))
        await self.bus.publish(
            TOPIC_APPROVAL,
            {
                "consent_id": consent_id,
                "kind": "approval",
                "requested_by": agent,
                "requested_for": row["requested_for"],
                "requested_action": verb,
                "user_id": user_id,
                "expires_in_seconds": int(timeout.total_seconds()),
            },
        )
        log.info("vault.approval_requested", extra={"consent_id": consent_id, "agent": agent})
        return await self.store.get(consent_id)

    async def settle(self, consent_id: str) -> ConsentRecord:
        """Return a consent record, expired first when its answer window has passed unanswered."""
        record = await self.store.get(consent_id)
        if record.status == "pending" and self.clock.now() >= record.expires_at:
            await self._expire(record)
            record = await self.store.get(consent_id)
        return record

    def _answer_window(self, timeout_seconds: float | None) -> timedelta:
        policy = self.consent_policy
        timeout = timedelta(seconds=timeout_seconds) if timeout_seconds is not None else policy.default_timeout
        if not timedelta(seconds=1) <= timeout <= policy.max_timeout:
            raise errors.InvalidInput(
                f"timeout_seconds must be between 1 and {int(policy.max_timeout.total_seconds())}"
            )
        return timeout

    async def _no_such_secret(self, user_id: str, secret_key: str, agent: str, action: str) -> None:
        """Audit an attempt on a secret that does not exist: an access attempt too."""
        await audited(
            self.audit.record(
                "secret.access_denied",
                actor=agent,
                user_id=user_id or None,
                outcome="refused",
                details={"secret_key": secret_key[:128], "requested_action": action, "reason": "no such secret"},
            )
        )

    async def _publish_anomaly(self, secret: SecretInfo, agent: str, action: str, found: list[str]) -> None:
        """Publish and log the anomalies a request showed (audited with the record it forced)."""
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

    async def _govern(
        self,
        request: governance.Request,
        *,
        user_id: str,
        secret_id: str | None,
        stage: str,
        consent_id: str | None = None,
    ) -> governance.Decision:
        """Judge a high- or critical-risk request by the policy, with the judgement on the audit record."""
        decision = self.policy.evaluate(request)
        await audited(
            self.audit.record(
                "governance.decision",
                actor="governance",
                user_id=user_id,
                secret_id=secret_id,
                consent_id=consent_id,
                outcome="allow" if decision.allowed else "deny",
                details={**decision.as_dict(), "action": request.action, "requested_by": request.agent, "stage": stage},
            )
        )
        return decision

    async def _deny_new(self, row: dict[str, Any], reason: str, *, also: Sequence[Fields] = ()) -> ConsentDecision:
        row.update(consent_status="denied", denial_reason=reason[:512], responded_at=self.clock.now())
        consent_id = await audited(self.store.insert(row, "consent.denied", actor="vault", also=also))
        return ConsentDecision("denied", consent_id, reason, tuple(row["anomalies"]))

    # -- answering -----------------------------------------------------------------

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
        record = await self.store.get(consent_id)
        now = self.clock.now()
        second = await self._check_answerer(by, record)
        if record.status != "pending":
            await self.refuse(by, record, "consent.answer_refused", f"already {record.status}")
            raise errors.ConsentAlreadyAnswered(f"this consent request is already {record.status}; nothing changed")
        if now >= record.expires_at:
            await self._expire(record)
            await self.refuse(by, record, "consent.answer_refused", "expired")
            # No answer in time is an answer too: deny.
            raise errors.ConsentAlreadyAnswered("this consent request expired before the answer; nothing changed")
        if reason is not None and len(reason) > 512:
            raise errors.InvalidInput("a reason is at most 512 characters")

        if not approved:
            denial = {"consent_status": "denied", "denial_reason": (reason or "denied by the owner")[:512]}
            return await self._answer(by, record, {**denial, "responded_at": now}, "consent.denied")
        if record.governance_approval_required:
            decision = await self._govern(
                governance.Request(
                    record.service,
                    record.requested_action,
                    record.requested_by,
                    record.risk_level,
                    record.secret_type,
                    now,
                ),
                user_id=record.user_id,
                secret_id=record.secret_id,
                consent_id=record.consent_id,
                stage="approval",
            )
            if not decision.allowed:
                values = {
                    "consent_status": "denied",
                    "governance_decision": "deny",
                    "denial_reason": f"governance: {decision.reason}"[:512],
                    "responded_at": now,
                }
                return await self._answer(by, record, values, "consent.denied")
        if record.second_approval_required and not second:
            return await self._answer(by, record, {"approved_by": by.username}, "consent.first_approval")
        values = self._approval(record, now, persistent, valid_for_seconds, idle_timeout_seconds)
        values["second_approved_by" if second else "approved_by"] = by.username
        if record.governance_approval_required:
            values["governance_decision"] = "allow"
        return await self._answer(by, record, values, "consent.approved")

    async def _check_answerer(self, by: Principal, record: ConsentRecord) -> bool:
        """Refuse (audited) anyone who may not answer; return whether ``by`` answers as the second approver."""
        if by.agent is not None:
            await self.refuse(by, record, "consent.answer_refused", "an agent cannot answer consent requests")
            raise errors.PermissionDenied("an agent cannot answer consent requests; the secret's owner must")
        if not by.can(Scope.CONSENTS):
            await self.refuse(by, record, "consent.answer_refused", "the token lacks the consents scope")
            raise errors.PermissionDenied("this token cannot answer consent requests: it lacks the 'consents' scope")
        second = record.awaiting_second_approval
        if second:
            if not by.has_role(Role.OPERATOR):
                await self.refuse(by, record, "consent.answer_refused", "second approver must be an operator or admin")
                raise errors.PermissionDenied("the second approval must come from an operator or admin")
            if by.user_id == record.requester_user_id or by.username in (record.approved_by, record.requested_by):
                await self.refuse(by, record, "consent.answer_refused", "second approver must be someone else")
                raise errors.PermissionDenied(
                    "the second approver must be neither the requester nor the first approver"
                )
        elif record.user_id != by.user_id and not by.is_admin:
            await self.refuse(by, record, "consent.answer_refused", "not the owner")
            if record.second_approval_required and by.has_role(Role.OPERATOR):
                raise errors.PermissionDenied("the owner (or an admin) answers first; then a second approver")
            raise errors.PermissionDenied("only the secret's owner or an admin can answer this consent request")
        return second

    def _approval(
        self,
        record: ConsentRecord,
        now: datetime,
        persistent: bool,
        valid_for_seconds: int | None,
        idle_timeout_seconds: int | None,
    ) -> dict[str, Any]:
        """Return the fields of a final approval: single use, or persistent within the policy's bounds."""
        single_use = not persistent or record.risk_level == "critical" or record.is_approval
        policy = self.consent_policy
        if single_use:
            valid_until = now + policy.single_use_window
            idle = None
        else:
            valid_for = timedelta(seconds=valid_for_seconds) if valid_for_seconds else policy.persistent_valid_for
            if not timedelta(seconds=60) <= valid_for <= policy.max_valid_for:
                raise errors.InvalidInput(
                    f"valid_for_seconds must be between 60 and {int(policy.max_valid_for.total_seconds())}"
                )
            valid_until = now + valid_for
            idle = idle_timeout_seconds or int(policy.idle_timeout.total_seconds())
            if not 60 <= idle <= int(valid_for.total_seconds()):
                raise errors.InvalidInput("idle_timeout_seconds must be at least 60 and within valid_for_seconds")
        return {
            "consent_status": "approved",
            "single_use": single_use,
            "responded_at": now,
            "valid_until": valid_until,
            "idle_timeout_seconds": idle,
        }

    async def _answer(self, by: Principal, record: ConsentRecord, values: dict[str, Any], event: str) -> ConsentRecord:
        if not await audited(self.store.answer(record, values, event, actor=by.name)):
            await self.refuse(by, record, "consent.answer_refused", "answered concurrently")
            raise errors.ConsentAlreadyAnswered("this consent request was answered at the same moment; nothing changed")
        self._wake(record.consent_id)
        updated = await self.store.get(record.consent_id)
        await self.bus.publish(
            TOPIC_RESPONSE,
            {
                "consent_id": updated.consent_id,
                "kind": updated.kind,
                "user_id": updated.user_id,
                "consent_status": updated.status,
                "awaiting_second_approval": updated.awaiting_second_approval,
            },
        )
        log.info("vault.consent_answered", extra={"consent_id": updated.consent_id, "status": updated.status})
        return updated

    async def refuse(self, by: Principal, record: ConsentRecord, event: str, reason: str) -> None:
        """Put a refused answer, use or revocation on the audit record."""
        await audited(
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

    async def revoke(self, by: Principal, consent_id: str, reason: str = "") -> ConsentRecord:
        """Revoke a consent (pending or approved); its next use is refused."""
        record = await self.store.get(consent_id)
        if not by.can(Scope.CONSENTS):  # an agent never holds it: it asks, never answers
            await self.refuse(by, record, "consent.revoke_refused", "the caller lacks the consents scope")
            raise errors.PermissionDenied("this token cannot revoke consents: it lacks the 'consents' scope")
        if record.user_id != by.user_id and not by.is_admin:
            await self.refuse(by, record, "consent.revoke_refused", "not the owner")
            raise errors.NotFound(f"no consent request {consent_id[:128]!r}")
        # A change made since it was read (a first approval, an answer) is read again and revoked in turn.
        for _ in range(REVOKE_ATTEMPTS):
            if record.status not in ("pending", "approved"):
                break
            if await audited(self.store.revoke(record, actor=by.name, reason=reason, now=self.clock.now())):
                self._wake(consent_id)
                return await self.store.get(consent_id)
            record = await self.store.get(consent_id)
        raise errors.Conflict(f"this consent is {record.status}; only pending or approved consents can be revoked")

    async def withdraw_approval(self, consent_id: str, *, actor: str, reason: str = "") -> ConsentRecord:
        """Withdraw a pending approval on behalf of what asked it (a cancelled playbook run).

        The record moves from ``pending`` to ``revoked`` (audited ``consent.revoked``, by ``actor``),
        so it leaves the owner's inbox and can no longer be answered. Only an approval: a secret's
        request is its owner's to revoke (:meth:`revoke`). One already answered is returned unchanged.
        """
        record = await self.store.get(consent_id)
        if not record.is_approval:
            raise errors.InvalidInput("only an approval can be withdrawn by what asked for it")
        for _ in range(REVOKE_ATTEMPTS):
            if record.status != "pending":
                return record
            if await audited(self.store.revoke(record, actor=actor, reason=reason, now=self.clock.now())):
                self._wake(consent_id)
                return await self.store.get(consent_id)
            record = await self.store.get(consent_id)
        return record

    # -- waiting and expiry ----------------------------------------------------------

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
                record = await self.store.get(consent_id)
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
        return await audited(self.store.expire(record))

    async def expire_pending(self) -> int:
        """Expire every pending request whose answer window has passed."""
        expired = 0
        for record in await self.store.past_expiry(self.clock.now()):
            if await self._expire(record):
                expired += 1
        return expired

    # -- reading -----------------------------------------------------------------------

    async def consent_for(self, by: Principal, consent_id: str) -> ConsentRecord:
        """Return a consent record the caller may see (owner, admin, or an operator asked to second it)."""
        record = await self.store.get(consent_id)
        if record.user_id == by.user_id or by.is_admin:
            return record
        if record.second_approval_required and by.has_role(Role.OPERATOR) and by.agent is None:
            return record
        raise errors.NotFound(f"no consent request {consent_id[:128]!r}")

    async def pending(self, by: Principal, owner_id: str, *, named_owner: bool) -> list[ConsentRecord]:
        """Return requests waiting for the caller: the owner's, and (operators, admins) second approvals."""
        second_approvals = by.has_role(Role.OPERATOR) and by.agent is None and not named_owner
        return await self.store.pending(owner_id, self.clock.now(), second_approvals=second_approvals)


def _anomaly_entry(secret: SecretInfo, agent: str, action: str, found: list[str]) -> Fields:
    """The ``secret.anomaly`` audit entry of a request that showed ``found``."""
    return Fields(
        "secret.anomaly",
        actor=agent,
        outcome="flagged",
        user_id=secret.owner_id,
        secret_id=secret.id,
        details={"anomalies": found, "action": action, "secret_key": secret.key},
    )


def _level(secret: SecretInfo, secret_type: str | None, service: str | None, risk_level: str | None) -> risk.RiskLevel:
    """Check the request names the secret's own type and service; return its risk, raised if the request asks."""
    if secret_type is not None and secret_type != "" and risk.SecretType.parse(secret_type).value != secret.secret_type:
        raise errors.InvalidInput(f"secret {secret.key!r} is a {secret.secret_type}, not a {secret_type}")
    if service and service.strip().lower() != secret.service:
        raise errors.InvalidInput(f"secret {secret.key!r} is for service {secret.service!r}, not {service!r}")
    level = risk.RiskLevel(secret.risk_level)
    if risk_level:
        asked = risk.RiskLevel.parse(risk_level)
        level = asked if asked.rank > level.rank else level
    return level


def _new_row(
    secret: SecretInfo,
    agent: str,
    requested_for: str,
    action: str,
    requester_user_id: str | None,
    level: risk.RiskLevel,
    ctx: dict[str, Any],
    now: datetime,
    timeout: timedelta,
) -> dict[str, Any]:
    """Return a new consent record's fields, before anything is decided."""
    return {
        "secret_key": secret.key,
        "secret_id": secret.id,
        "secret_type": secret.secret_type,
        "service": secret.service,
        "requested_by": agent,
        "requested_for": requested_for.strip(),
        "requested_action": action,
        "user_id": secret.owner_id,
        "requester_user_id": requester_user_id,
        "risk_level": level.value,
        "governance_approval_required": level.needs_governance,
        "second_approval_required": level is risk.RiskLevel.CRITICAL,
        "context": ctx,
        **_undecided(now, timeout),
    }


def _undecided(now: datetime, timeout: timedelta) -> dict[str, Any]:
    """Return the fields every new consent record starts with: asked now, single use, nothing decided yet."""
    return {
        "single_use": True,
        "used_count": 0,
        "governance_decision": None,
        "approved_by": None,
        "second_approved_by": None,
        "denial_reason": None,
        "auto_approved": False,
        "anomalies": [],
        "created_at": now,
        "expires_at": now + timeout,
        "responded_at": None,
        "valid_until": None,
        "idle_timeout_seconds": None,
        "last_used_at": None,
        "revoked_at": None,
        "revoked_by": None,
    }
