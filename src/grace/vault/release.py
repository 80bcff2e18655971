"""Releasing a secret's value under a consent: the last step of an access, audited before the value leaves.

The consent is used with one conditional UPDATE (single use: ``approved ->
consumed``, so of two concurrent uses exactly one wins), the release is
counted, and the ``secret.released`` audit entry is written, all in one
transaction; only after it commits is the value handed over.

Releases asked for at the same moment share that transaction (group commit): each waits in a list,
and one drainer per process records the waiting releases together, each with its own audit entry,
chained one after another. The write lock, the chain's head and anchor check, the commit with its
flush to disk and the anchor's advance are paid once per group; each request is answered only once
the transaction holding its entry has committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from grace import errors
from grace.auth import Principal
from grace.clock import Clock
from grace.storage import Database
from grace.vault import consent, crypto
from grace.vault.audit import AuditLog, Fields, audited
from grace.vault.consent import ConsentRecord, ConsentStore
from grace.vault.store import SecretInfo, SecretStore, SecretValue, owner_for
from grace.vault.workflow import ConsentWorkflow

__all__ = ["AccessResult", "Release"]

log = logging.getLogger("grace.vault")

_ANOTHER_REQUESTER = "consent was given to another requester"


# The most releases one transaction records.
MAX_GROUP = 200


class _LostRace(Exception):
    pass


class _Lost(Exception):
    """Some of a group's releases may not happen (a consent used up or revoked, a secret revoked): their indices."""

    def __init__(self, lost: set[int]) -> None:
        super().__init__(f"{len(lost)} releases lost their race")
        self.lost = lost


@dataclass(eq=False)
class _Waiting:
    """A release waiting for its group's transaction."""

    by: Principal
    record: ConsentRecord
    secret: SecretInfo
    now: datetime
    future: asyncio.Future[None]


def _settle(future: asyncio.Future[None], outcome: BaseException | None) -> None:
    if future.done():  # its request was cancelled: the release stands on the record, nobody is told
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)


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
    _waiting: list[_Waiting] = field(default_factory=list, init=False)  # releases not yet in a group
    _drainer: asyncio.Task[None] | None = field(default=None, init=False)

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
        record = decision.record or await self.consents.get(decision.consent_id)
        return await self._release(by, record, decision.secret, decision.version)

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

    async def _release(
        self,
        by: Principal,
        record: ConsentRecord,
        secret: SecretInfo | None = None,
        version: Mapping[Any, Any] | None = None,
    ) -> AccessResult:
        """Release the value ``record`` consents to; ``secret`` and its ``version`` row when the request read them."""
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
            if secret is not None and secret.id == record.secret_id and secret.status == "active":
                value: SecretValue | None = await self.secrets.open_version(secret, version)
            else:
                secret, value = await self.secrets.open_current(record.secret_id)
        except crypto.IntegrityFailure:
            await self.workflow.refuse(by, record, "secret.integrity_failure", "ciphertext failed authentication")
            log.error("vault.integrity_failure", extra={"secret_id": record.secret_id})
            raise
        if value is None:
            return await self._refused(by, record, "secret revoked", "the secret has been revoked")
        try:
            await self._record_release(by, record, secret, now)
        except _LostRace:
            if record.valid_until is not None and self.clock.now() >= record.valid_until:
                return await self._refused(by, record, "consent expired", "the consent has expired")
            reason = (
                "this single-use consent was already used, or it or the secret was revoked"
                if record.single_use
                else "the consent or the secret was revoked"
            )
            return await self._refused(by, record, reason, reason)
        log.info("vault.secret_released", extra={"secret_id": secret.id, "consent_id": record.consent_id})
        return AccessResult("approved", record.consent_id, "released", value, secret.version, tuple(record.anomalies))

    async def _record_release(self, by: Principal, record: ConsentRecord, secret: SecretInfo, now: datetime) -> None:
        """Use the consent, count the release and audit it, in one transaction with the releases asked meanwhile.

        Returns once that transaction has committed; _LostRace if the consent or the secret may no
        longer be used; AuditUnavailable (nothing released) if the transaction failed.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(by, record, secret, now, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="grace-vault-release-group")
        await future

    async def _drain(self) -> None:
        group: list[_Waiting] = []
        try:
            while self._waiting:
                group = []
                try:
                    lost = await audited(self._record_group(group))
                except Exception as exc:  # nothing of the group was recorded, so nothing of it is released
                    if not group:  # no transaction could begin (the database is down): the next ones fail alike
                        group = self._waiting[:MAX_GROUP]
                        del self._waiting[:MAX_GROUP]
                    for waiting in group:
                        _settle(waiting.future, exc)
                    continue
                for i, waiting in enumerate(group):
                    _settle(waiting.future, _LostRace() if i in lost else None)
        except BaseException as exc:  # stopped (shutdown): nobody waits for ever
            for waiting in [*group, *self._waiting]:
                _settle(waiting.future, exc if isinstance(exc, Exception) else errors.ServiceNotRunning())
            self._waiting = []
            raise

    async def _record_group(self, group: list[_Waiting]) -> set[int]:
        """Record ``group`` (filled with the waiting releases once the transaction has begun); return who lost.

        A release that may not happen (its consent used up or revoked, its secret revoked) is found by
        its conditional UPDATE; the transaction is then rolled back and the group recorded again
        without it, so nothing of a lost release is counted.
        """
        lost: set[int] = set()

        def fill() -> None:  # once the transaction may begin: the releases asked meanwhile join it
            if not group:
                # A request cancelled before its group began (its client gone) releases nothing.
                group.extend(w for w in self._waiting[:MAX_GROUP] if not w.future.done())
                del self._waiting[:MAX_GROUP]

        def write(conn: Connection) -> None:
            self._write_group(conn, [(i, w) for i, w in enumerate(group) if i not in lost])

        while True:
            try:
                # On SQLite the whole transaction is one hand-off to the writing thread (Database.write_sync).
                await self.db.write_sync(write, first=fill)
                return lost
            except _Lost as found:
                lost |= found.lost

    def _write_group(self, conn: Connection, group: list[tuple[int, _Waiting]]) -> None:
        """Use the consents, count the releases and audit each, in the caller's transaction; _Lost names losers.

        Rows are changed in the order of their ids (consents, then secrets, as a single release
        does), so two processes' groups never wait for each other in a cycle on PostgreSQL.
        """
        if not group:
            return
        lost: set[int] = set()
        standing: dict[str, list[tuple[int, _Waiting]]] = defaultdict(list)
        single: dict[str, list[tuple[int, _Waiting]]] = defaultdict(list)
        for i, waiting in group:
            (single if waiting.record.single_use else standing)[waiting.record.consent_id].append((i, waiting))
        for consent_id in sorted({*standing, *single}):
            for i, waiting in single.get(consent_id, []):
                if not self.consents.use(conn, waiting.record, waiting.now):
                    lost.add(i)  # of two uses of a single-use consent, the second finds it consumed
            uses = standing.get(consent_id, [])
            if uses and not self.consents.use_standing(conn, consent_id, len(uses), max(w.now for _, w in uses)):
                lost.update(i for i, _ in uses)
        if lost:
            raise _Lost(lost)
        by_secret: dict[str, list[tuple[int, _Waiting]]] = defaultdict(list)
        for i, waiting in group:
            by_secret[waiting.secret.id].append((i, waiting))
        for secret_id in sorted(by_secret):
            releases = by_secret[secret_id]
            counted = self.secrets.count_uses(
                conn,
                releases[0][1].secret,
                [(w.record.requested_by, w.record.requested_action, w.now) for _, w in releases],
            )
            if not counted:
                lost.update(i for i, _ in releases)  # revoked since it was read
        if lost:
            raise _Lost(lost)
        # Each release is on record before its value leaves: if this write fails, nothing is released.
        self.audit.append_many_in(
            conn,
            [
                Fields(
                    "secret.released",
                    actor=w.by.name,
                    user_id=w.secret.owner_id,
                    secret_id=w.secret.id,
                    consent_id=w.record.consent_id,
                    details={
                        "secret_key": w.secret.key,
                        "version": w.secret.version,
                        "requested_action": w.record.requested_action,
                        "single_use": w.record.single_use,
                    },
                )
                for _, w in group
            ],
        )
