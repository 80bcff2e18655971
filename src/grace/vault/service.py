"""The vault's facade: what the API, the CLI and other capabilities call.

It checks who may act for whom and delegates each job to its part: secrets to
:class:`~grace.vault.store.SecretStore`, the consent workflow to
:class:`~grace.vault.workflow.ConsentWorkflow`, handing values over to
:class:`~grace.vault.release.Release`, background upkeep and key rotation to
:class:`~grace.vault.upkeep.Upkeep`, and the audit log and keyring to
:class:`~grace.vault.audit.AuditLog` and :class:`~grace.vault.keyring.Keyring`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.auth import SEALED as AUTH_SEALED
from grace.auth import Principal, Role
from grace.bus import Bus
from grace.clock import Clock
from grace.config import Settings
from grace.integrity import SEAL_LABEL, RowSeal
from grace.storage import Database
from grace.vault import anomaly, consent, governance, masterkey
from grace.vault.audit import AuditEntry, AuditLog, Checkpoint, VerifyReport, audited
from grace.vault.consent import ConsentPolicy, ConsentRecord, ConsentStore
from grace.vault.envelope import Envelope
from grace.vault.keyring import Keyring
from grace.vault.release import Release
from grace.vault.store import SecretInfo, SecretStore, owner_for
from grace.vault.tables import SEALED, vault_meta
from grace.vault.upkeep import Upkeep
from grace.vault.workflow import ConsentWorkflow

__all__ = ["Vault", "stored_master_key"]

log = logging.getLogger("grace.vault")


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
        self.audit = AuditLog(db, clock, master, anchor_path=anchor_path)
        # Rows that decide a release or a privilege are sealed under this key (users and tokens too:
        # the composition root hands it to the accounts); a mismatch is put on the audit record.
        self.seal = RowSeal(master.derive(SEAL_LABEL))
        self.seal.on_tamper(self._record_tamper)
        self.keyring = Keyring(db, clock, master, self.audit, key_lifetime=key_lifetime)
        self.consent_store = ConsentStore(db, self.audit, self.seal)
        self.secrets = SecretStore(db, clock, self.keyring, self.audit, self.consent_store, self.seal)
        self.consents = ConsentWorkflow(
            db,
            clock,
            bus,
            self.audit,
            self.secrets,
            self.consent_store,
            policy=policy or governance.Policy(),
            consent_policy=consent_policy or ConsentPolicy(),
            anomaly_policy=anomaly_policy or anomaly.AnomalyPolicy(),
        )
        self.release = Release(db, clock, self.audit, self.secrets, self.consent_store, self.consents)
        self.envelope = Envelope(self.keyring)
        self.upkeep = Upkeep(bus, self.audit, self.keyring, self.secrets, self.consents.expire_pending)
        # Where the facade adds nothing, its calls are the parts' own (one signature, one docstring each).
        self.request_consent = self.consents.request
        self.respond = self.consents.respond
        self.wait = self.consents.wait
        self.consent_for = self.consents.consent_for
        self.revoke_consent = self.consents.revoke
        self.withdraw_approval = self.consents.withdraw_approval
        self.expire_pending = self.consents.expire_pending
        self.get_consent = self.consent_store.get
        self.ask_approval = self.consents.ask_approval
        self.settle_consent = self.consents.settle
        self.access = self.release.access
        self.redeem = self.release.redeem
        self.seal_data = self.envelope.seal
        self.open_data = self.envelope.open
        self.register_sealed_data = self.envelope.register
        self.rotate_keys = self.upkeep.rotate_keys
        self.use_task_manager = self.upkeep.use_task_manager
        self.run_rotation_task = self.upkeep.run_rotation_task
        self.request_rotation = self.upkeep.request_rotation
        self.start_rotation = self.upkeep.start_rotation
        self.publish_rotation_due = self.upkeep.publish_rotation_due
        self.check_key_expiry = self.upkeep.check_key_expiry
        self.tick = self.upkeep.tick
        self.close = self.upkeep.close

    def __repr__(self) -> str:
        return f"Vault(backend={self.db.backend!r}, master={self.master!r})"

    @classmethod
    async def open(
        cls, settings: Settings, db: Database, clock: Clock, bus: Bus, *, master: masterkey.MasterKey | None = None
    ) -> Vault:
        """Load the master key the settings name (unless given), check it against the keyring; a first key if new."""
        if master is None:
            salt = await _passphrase_salt(db) if settings.master_passphrase is not None else None
            master = masterkey.from_settings(settings, salt)
        vault = cls(
            db,
            clock,
            bus,
            master,
            policy=governance.load_policy(settings.vault_policy_file),
            key_lifetime=timedelta(days=settings.vault_key_lifetime_days),
            anchor_path=settings.audit_anchor_file,
            anomaly_policy=anomaly.AnomalyPolicy(burst_count=settings.vault_burst_per_minute),
        )
        await vault.keyring.ensure_active()
        return vault

    # -- secrets ---------------------------------------------------------------

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
        owner = owner_for(by, user_id)
        info = await audited(
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
        return await self.secrets.list_for(owner_for(by, user_id))

    async def secret(self, by: Principal, key: str, user_id: str | None = None) -> SecretInfo:
        return await self.secrets.get(owner_for(by, user_id), key)

    async def revoke_secret(
        self, by: Principal, key: str, *, user_id: str | None = None, reason: str = ""
    ) -> SecretInfo:
        """Revoke a secret: no more releases, its consents revoked, its history kept."""
        if by.agent is not None:
            raise errors.PermissionDenied("agents cannot revoke secrets")
        secret = await self.secrets.get(owner_for(by, user_id), key)
        return await audited(self.secrets.revoke(by, secret, reason))

    async def rotation_due(self, by: Principal, user_id: str | None = None) -> list[SecretInfo]:
        """List the caller's secrets whose rotation is due."""
        return await self.secrets.rotation_due(owner_for(by, user_id))

    # -- consent -----------------------------------------------------------------

    async def history(
        self, by: Principal, user_id: str | None = None, *, secret_key: str | None = None, limit: int = 100
    ) -> list[ConsentRecord]:
        """Return the caller's consent records, newest first (an admin may name another user)."""
        return await self.consent_store.history(owner_for(by, user_id), secret_key=secret_key, limit=limit)

    async def pending(self, by: Principal, user_id: str | None = None) -> list[ConsentRecord]:
        """Return requests waiting for the caller: their own, and (operators, admins) second approvals."""
        return await self.consents.pending(by, owner_for(by, user_id), named_owner=user_id is not None)

    async def stats(self, by: Principal, user_id: str | None = None) -> dict[str, Any]:
        """Aggregate the owner's consents: by status and risk, approval rate, response time."""
        return consent.summarise(await self.history(by, user_id, limit=1000))

    # -- audit and keys -------------------------------------------------------------

    async def audit_entries(
        self, by: Principal, user_id: str | None = None, *, before: int | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Return audit entries about the caller's secrets (admins: anyone's, or everything with user_id='*')."""
        if user_id == "*":
            by.require(Role.ADMIN)
            owner = None
        else:
            owner = owner_for(by, user_id)
        return await self.audit.entries(user_id=owner, before=before, limit=max(1, min(limit, 1000)))

    async def verify_audit(self, against: Sequence[Checkpoint] = ()) -> VerifyReport:
        """Verify the whole audit log, its anchor, if given exported signed heads (``read_audit_export``),
        and every sealed row (users, tokens, sessions, secrets, consents)."""
        report = await self.audit.verify(against)
        async with self.db.read() as conn:
            tampered = await self.seal.find_tampered(conn, (*AUTH_SEALED, *SEALED))
        report.tampered_rows = [{"table": table, "id": row_id} for table, row_id in tampered]
        return report

    async def export_audit(self) -> dict[str, Any]:
        """Return the log's signed checkpoints (the current head signed first) for safekeeping elsewhere."""
        return await self.audit.export()

    def read_audit_export(self, text: str) -> list[Checkpoint]:
        """Read an export (or a copy of the anchor file); InvalidInput unless this vault signed each head."""
        return self.audit.read_export(text)

    async def reanchor_audit(self, *, actor: str, reason: str = "") -> Checkpoint:
        """Sign the current head into the anchor file, audited (after an investigated incident or an upgrade)."""
        return await self.audit.reanchor(actor=actor, reason=reason)

    async def _record_tamper(self, exc: errors.RowTampered) -> None:
        """Put a row whose seal failed on the audit record: which table and row, never its values."""
        await self.audit.record(
            "integrity.row_tampered",
            actor="vault",
            outcome="refused",
            secret_id=exc.row_id if exc.table == "vault_secrets" else None,
            consent_id=exc.row_id if exc.table == "secret_consent_records" else None,
            details={"table": exc.table, "id": exc.row_id},
        )

    async def keys_status(self) -> dict[str, Any]:
        return await self.keyring.status()

    async def counts(self) -> dict[str, int]:
        return {"secrets": await self.secrets.count(), "consents": await self.consent_store.count()}

    async def consent_counts(self) -> dict[str, int]:
        """Return how many consent records are in each status, everyone's (for Prometheus)."""
        return await self.consent_store.count_by_status()


async def stored_master_key(settings: Settings, db: Database) -> masterkey.MasterKey | None:
    """Return the master key as it can be loaded before the database is migrated.

    None only for a passphrase whose salt the database does not hold yet: a new database, with no
    rows to seal (``storage.upgrade(db, seal_key=...)``); :meth:`Vault.open` creates the salt.
    """
    if settings.master_passphrase is None:
        return masterkey.from_settings(settings)
    try:
        async with db.read() as conn:
            value = await _stored_salt(conn)
    except (DBAPIError, OSError):  # no vault_meta table yet (a new database), or none reached: upgrade says why
        return None
    return masterkey.from_settings(settings, bytes.fromhex(value)) if value is not None else None


async def _stored_salt(conn: AsyncConnection) -> str | None:
    found: str | None = (
        await conn.execute(select(vault_meta.c.value).where(vault_meta.c.name == "passphrase_salt"))
    ).scalar_one_or_none()
    return found


async def _passphrase_salt(db: Database) -> bytes:
    """Return the vault's Argon2id salt, creating it on first use (it is not secret)."""
    async with db.read() as conn:
        value = await _stored_salt(conn)
    if value is None:
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
