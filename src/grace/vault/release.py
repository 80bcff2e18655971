"""Releasing a secret's value under a consent: the last step of an access, audited before the value leaves.

The consent is used with one conditional UPDATE (single use: ``approved ->
consumed``, so of two concurrent uses exactly one wins), the release is
counted, and the ``secret.released`` audit entry is written, all in one
transaction; only after it commits is the value handed over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grace import errors
from grace.auth import Principal
from grace.clock import Clock
from grace.storage import Database
from grace.vault import consent, crypto
from grace.vault.audit import AuditLog, audited
from grace.vault.consent import ConsentRecord, ConsentStore
from grace.vault.store import SecretInfo, SecretStore, SecretValue, owner_for
from grace.vault.workflow import ConsentWorkflow

__all__ = ["AccessResult", "Release"]

log = logging.getLogger("grace.vault")

_ANOTHER_REQUESTER = "consent was given to another requester"


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


@dataclass(eq=False, repr=False)
class Release:
    """Ask for a secret and collect its value: consent through the workflow, then the audited release."""

    db: Database
    clock: Clock
    audit: AuditLog
    secrets: SecretStore
    consents: ConsentStore
    workflow: ConsentWorkflow

    def __repr__(self) -> str:
        return "Release()"

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
        decision = await self.workflow.request(
            key,
            secret_type=secret_type,
            service=service,
            requested_by=consent.requester_name(by),
            requested_for=purpose,
            requested_action=action,
            user_id=owner_for(by, user_id),
            risk_level=risk_level,
            context=context,
            timeout_seconds=timeout_seconds,
            requester=by,
            wait=False,
        )
        if decision.status == "pending" and decision.consent_id and (wait_seconds is None or wait_seconds > 0):
            decision = await self.workflow.wait(decision.consent_id, wait_seconds)
        if decision.status != "approved" or decision.consent_id is None:
            return AccessResult(decision.status, decision.consent_id, decision.reason, anomalies=decision.anomalies)
        return await self._release(by, decision.record or await self.consents.get(decision.consent_id))

    async def redeem(self, by: Principal, consent_id: str, *, wait_seconds: float = 0) -> AccessResult:
        """Collect the value a consent id stands for (poll mode); pending, denied or released."""
        record = await self.consents.get(consent_id)
        if record.user_id != by.user_id and not by.is_admin:
            raise errors.NotFound(f"no consent request {consent_id[:128]!r}")
        if record.secret_id is None or record.kind != "secret":
            return await self._refused(by, record, "an approval", "an approval releases no secret")
        if not record.given_to(by):
            return await self._refused(by, record, _ANOTHER_REQUESTER, "this consent was given to another requester")
        if record.status == "pending":
            decision = await self.workflow.wait(consent_id, wait_seconds)
            if decision.status == "pending":
                return AccessResult("pending", consent_id, decision.reason, anomalies=decision.anomalies)
            record = await self.consents.get(consent_id)
        if record.status != "approved":
            reason = {"consumed": "this single-use consent was already used"}.get(
                record.status, record.denial_reason or f"consent is {record.status}"
            )
            await self.workflow.refuse(by, record, "secret.access_denied", reason)
            return AccessResult("denied" if record.status != "expired" else "expired", consent_id, reason)
        return await self._release(by, record)

    async def _refused(self, by: Principal, record: ConsentRecord, audited_reason: str, reason: str) -> AccessResult:
        await self.workflow.refuse(by, record, "secret.access_denied", audited_reason)
        return AccessResult("denied", record.consent_id, reason)

    async def _release(self, by: Principal, record: ConsentRecord) -> AccessResult:
        now = self.clock.now()
        if record.secret_id is None or record.kind != "secret":
            return await self._refused(by, record, "an approval", "an approval releases no secret")
        if not record.given_to(by):
            return await self._refused(by, record, _ANOTHER_REQUESTER, "this consent was given to another requester")
        if record.valid_until is not None and now >= record.valid_until:
            return await self._refused(by, record, "consent expired", "the consent has expired")
        if not record.single_use and record.idle_expired(now):
            return await self._refused(by, record, "consent idle too long", "the consent lapsed after being idle")
        try:
            secret, value = await self.secrets.open_current(record.secret_id)
        except crypto.IntegrityFailure:
            await self.workflow.refuse(by, record, "secret.integrity_failure", "ciphertext failed authentication")
            log.error("vault.integrity_failure", extra={"secret_id": record.secret_id})
            raise
        if value is None:
            return await self._refused(by, record, "secret revoked", "the secret has been revoked")
        try:
            await audited(self._record_release(by, record, secret, now))
        except _LostRace:
            reason = (
                "this single-use consent was already used, or it or the secret was revoked"
                if record.single_use
                else "the consent or the secret was revoked"
            )
            return await self._refused(by, record, reason, reason)
        log.info("vault.secret_released", extra={"secret_id": secret.id, "consent_id": record.consent_id})
        return AccessResult("approved", record.consent_id, "released", value, secret.version, tuple(record.anomalies))

    async def _record_release(self, by: Principal, record: ConsentRecord, secret: SecretInfo, now: datetime) -> None:
        """Use the consent, count the release and audit it in one transaction; _LostRace if either was revoked."""
        async with self.db.write() as conn:
            if not await self.consents.use(conn, record, now):
                raise _LostRace
            if not await self.secrets.count_use(
                conn, secret, agent=record.requested_by, action=record.requested_action, now=now
            ):
                raise _LostRace  # revoked since it was read
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
