"""The keyring: key-encryption keys wrapped by the master key, and their rotation.

Hierarchy: master key -> key-encryption keys (KEKs, one *active* at a time,
stored wrapped in ``vault_keys``) -> one data key per secret version (stored
wrapped by a KEK beside the ciphertext it encrypts).

Rotation is a resumable job recorded in ``vault_rotations``; each step is its
own transaction, so a crash between (or inside) any of them leaves every
secret readable and exactly one active key (a partial unique index makes the
database refuse a second):

1. ``key_created``: a new KEK is stored as *pending*.
2. ``key_activated``: the old KEK becomes *retiring* and the new one *active*
   in one transaction; new secrets use the new key from here on.
3. ``batch_committed`` (repeated): data keys still wrapped by an older KEK are
   unwrapped and re-wrapped by the active one, a batch per transaction: the secrets'
   first, then those of every table registered with :meth:`Keyring.register_sealed`
   (other capabilities' envelope-sealed data, e.g. voice notes' audio).
4. ``archived``: retiring keys that wrap nothing any more (in the secrets or any
   registered table) become *archived*; they are kept for the audit trail, never deleted.

Running :meth:`Keyring.rotate` again after a crash resumes from the recorded step.
The optional ``on_step`` hook is called after each step commits (the names
above) and inside each step's transaction just before it commits
(``create_uncommitted``, ``activate_uncommitted``, ``batch_uncommitted``,
``archive_uncommitted``), so tests can stop the process at every point.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import clock, errors
from grace.clock import Clock
from grace.storage import Database, new_id
from grace.vault import crypto
from grace.vault.audit import AuditLog
from grace.vault.masterkey import MasterKey
from grace.vault.tables import vault_keys, vault_rotations, vault_secret_versions

__all__ = [
    "EXPIRY_WARNING",
    "KeyInfo",
    "Keyring",
    "RotationReport",
    "SealedTable",
    "StepHook",
    "next_scheduled_rotation",
]

log = logging.getLogger("grace.vault")

EXPIRY_WARNING = timedelta(days=7)
REWRAP_BATCH = 500
# Key rotation runs weekly, Sunday 02:00 UTC (seed 000, playbook D).
ROTATION_WEEKDAY = 6
ROTATION_HOUR = 2

StepHook = Callable[[str], Awaitable[None]]


def next_scheduled_rotation(after: datetime) -> datetime:
    """Return the first Sunday 02:00 UTC strictly after ``after``."""
    after = after.astimezone(UTC)
    candidate = after.replace(hour=ROTATION_HOUR, minute=0, second=0, microsecond=0)
    candidate += timedelta(days=(ROTATION_WEEKDAY - candidate.weekday()) % 7)
    if candidate <= after:
        candidate += timedelta(days=7)
    return candidate


@dataclass(frozen=True)
class KeyInfo:
    """A KEK's public description (never its bytes)."""

    id: str
    term: int
    status: str
    created_at: datetime
    activated_at: datetime | None
    expires_at: datetime | None
    archived_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "term": self.term,
            "status": self.status,
            "created_at": clock.iso(self.created_at),
            "activated_at": clock.iso(self.activated_at),
            "expires_at": clock.iso(self.expires_at),
            "archived_at": clock.iso(self.archived_at),
        }


@dataclass(frozen=True)
class RotationReport:
    rotation_id: str
    from_key_id: str | None
    to_key_id: str
    rewrapped: int
    resumed: bool
    archived: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rotation_id": self.rotation_id,
            "from_key_id": self.from_key_id,
            "to_key_id": self.to_key_id,
            "rewrapped": self.rewrapped,
            "resumed": self.resumed,
            "archived": self.archived,
        }


@dataclass(frozen=True)
class SealedTable:
    """Another capability's table of envelope-sealed rows (:class:`~grace.vault.envelope.Envelope`).

    Each row holds a data key wrapped by a KEK: ``key_id`` names the KEK, ``wrapped_dek`` is the
    wrapped key, and ``subject(row id)`` and ``version`` are the binding it was wrapped under.
    """

    table: Table
    id_column: str
    subject: Callable[[str], str]
    version: int
    key_id_column: str = "key_id"
    wrapped_column: str = "wrapped_dek"
    name: str = field(default="")

    def column(self, name: str) -> Column[Any]:
        return self.table.c[name]


async def _no_hook(_step: str) -> None:
    return None


class Keyring:
    """Create, unwrap and rotate key-encryption keys; wrap and unwrap data keys."""

    def __init__(
        self, db: Database, clock: Clock, master: MasterKey, audit: AuditLog, *, key_lifetime: timedelta
    ) -> None:
        self.db = db
        self.clock = clock
        self.master = master
        self.audit = audit
        self.key_lifetime = key_lifetime
        self._unwrapped: dict[str, crypto.Key] = {}
        self._sealed: dict[str, SealedTable] = {}

    def register_sealed(self, sealed: SealedTable) -> None:
        """Have rotation re-wrap the data keys in ``sealed``'s table too (idempotent per table)."""
        self._sealed[sealed.table.name] = sealed

    def __repr__(self) -> str:
        return f"Keyring(master={self.master!r}, cached_keys={len(self._unwrapped)})"

    # -- key-encryption keys -----------------------------------------------------

    def _wrap_kek(self, key: crypto.Key, term: int) -> bytes:
        wrapping = self.master.wrapping_key(self.master.key_id)
        return crypto.seal(wrapping, key.material, crypto.Binding("kek", key.id, term, wrapping.id))

    def _unwrap_row(self, row: Any) -> crypto.Key:
        if row["master_key_id"] != self.master.key_id:
            raise errors.ConfigurationError(
                "the master key does not match the one that made this vault's keyring "
                f"(key {row['id']} was wrapped by master key {row['master_key_id']}, this one is {self.master.key_id})"
            )
        wrapping = self.master.wrapping_key(row["master_key_id"])
        material = crypto.open_sealed(
            wrapping, row["wrapped_key"], crypto.Binding("kek", row["id"], row["term"], wrapping.id)
        )
        return crypto.Key(row["id"], material)

    async def kek(self, key_id: str, conn: AsyncConnection | None = None) -> crypto.Key:
        """Return the unwrapped KEK ``key_id`` (cached: KEK rows never change their bytes)."""
        cached = self._unwrapped.get(key_id)
        if cached is not None:
            return cached
        query = select(vault_keys).where(vault_keys.c.id == key_id)
        if conn is not None:
            row = (await conn.execute(query)).mappings().first()
        else:
            async with self.db.read() as read:
                row = (await read.execute(query)).mappings().first()
        if row is None:
            raise crypto.IntegrityFailure("a stored data key names a key-encryption key that does not exist")
        key = self._unwrap_row(row)
        self._unwrapped[key_id] = key
        return key

    async def active(self, conn: AsyncConnection | None = None) -> crypto.Key:
        """Return the active KEK."""
        query = select(vault_keys.c.id).where(vault_keys.c.status == "active")
        if conn is not None:
            key_id = (await conn.execute(query)).scalar_one_or_none()
        else:
            async with self.db.read() as read:
                key_id = (await read.execute(query)).scalar_one_or_none()
        if key_id is None:
            raise errors.ConfigurationError("the vault has no active key; run `grace keys rotate`")
        return await self.kek(key_id, conn)

    async def ensure_active(self) -> None:
        """Create the first key on a new vault; check the master key opens the active one."""
        async with self.db.read() as conn:
            count = (await conn.execute(select(func.count()).select_from(vault_keys))).scalar_one()
        if count == 0:
            key = crypto.new_key(new_id("kek"))
            now = self.clock.now()
            try:
                async with self.db.write() as conn:
                    await conn.execute(
                        insert(vault_keys).values(
                            id=key.id,
                            term=1,
                            status="active",
                            wrapped_key=self._wrap_kek(key, 1),
                            master_key_id=self.master.key_id,
                            created_at=now,
                            activated_at=now,
                            expires_at=now + self.key_lifetime,
                        )
                    )
                    await self.audit.append(conn, "key.created", actor="system", details={"key_id": key.id, "term": 1})
            except IntegrityError:
                pass  # another process created the first key at the same moment
        await self.active()

    # -- data keys ---------------------------------------------------------------

    def wrap_dek(self, kek: crypto.Key, dek: crypto.Key, secret_id: str, version: int) -> bytes:
        return crypto.seal(kek, dek.material, crypto.Binding("dek", secret_id, version, kek.id))

    async def unwrap_dek(self, key_id: str, dek_id: str, wrapped: bytes, secret_id: str, version: int) -> crypto.Key:
        kek = await self.kek(key_id)
        material = crypto.open_sealed(kek, wrapped, crypto.Binding("dek", secret_id, version, key_id))
        return crypto.Key(dek_id, material)

    # -- status ------------------------------------------------------------------

    async def keys(self, conn: AsyncConnection | None = None) -> list[KeyInfo]:
        if conn is None:
            async with self.db.read() as own:
                return await self.keys(own)
        rows = (await conn.execute(select(vault_keys).order_by(vault_keys.c.term))).mappings().all()
        return [
            KeyInfo(
                r["id"], r["term"], r["status"], r["created_at"], r["activated_at"], r["expires_at"], r["archived_at"]
            )
            for r in rows
        ]

    async def status(self) -> dict[str, Any]:
        """Describe the keyring: active key, expiry (with the 7-day warning), next rotation, unfinished work."""
        now = self.clock.now()
        # One read transaction, so the keys and the rotation state come from the same moment.
        async with self.db.read() as conn:
            keys = await self.keys(conn)
            active = next((k for k in keys if k.status == "active"), None)
            running = (
                (await conn.execute(select(vault_rotations).where(vault_rotations.c.status == "running")))
                .mappings()
                .first()
            )
            per_key: dict[str, int] = dict(
                (
                    await conn.execute(
                        select(vault_secret_versions.c.key_id, func.count()).group_by(vault_secret_versions.c.key_id)
                    )
                ).all()
            )
        expires_at = active.expires_at if active else None
        last_change = max((k.activated_at for k in keys if k.activated_at), default=now)
        return {
            "master_key_source": self.master.source,
            "master_key_id": self.master.key_id,
            "active_key": active.as_dict() if active else None,
            "active_keys": sum(1 for k in keys if k.status == "active"),
            "expires_at": clock.iso(expires_at),
            "expiring_soon": bool(expires_at and expires_at - now <= EXPIRY_WARNING),
            "expired": bool(expires_at and expires_at <= now),
            "next_scheduled_rotation": next_scheduled_rotation(last_change).isoformat(),
            "rotation_in_progress": running["id"] if running else None,
            "keys": [dict(k.as_dict(), data_keys=int(per_key.get(k.id, 0))) for k in keys],
        }

    async def rotation_due(self) -> bool:
        """Return whether the weekly schedule or the key's expiry calls for a rotation now."""
        keys = await self.keys()
        active = next((k for k in keys if k.status == "active"), None)
        if active is None or await self._unfinished() is not None:
            return True
        now = self.clock.now()
        if active.expires_at is not None and active.expires_at - now <= EXPIRY_WARNING:
            return True
        return now >= next_scheduled_rotation(active.activated_at or active.created_at)

    # -- rotation ----------------------------------------------------------------

    async def _unfinished(self) -> Any:
        async with self.db.read() as conn:
            return (
                (await conn.execute(select(vault_rotations).where(vault_rotations.c.status == "running")))
                .mappings()
                .first()
            )

    async def rotate(
        self, *, by: str = "system", on_step: StepHook | None = None, batch_size: int = REWRAP_BATCH
    ) -> RotationReport:
        """Rotate (or resume an unfinished rotation): new active key, re-wrapped data keys, old keys archived."""
        hook = on_step or _no_hook
        rotation = await self._unfinished()
        resumed = rotation is not None
        if rotation is None:
            rotation = await self._begin(by, hook)
            await hook("key_created")
        if rotation["step"] == "created":
            await self._activate(rotation, hook)
            await hook("key_activated")
        while await self._rewrap_batch(rotation["id"], rotation["to_key_id"], batch_size, hook):
            await hook("batch_committed")
        archived, rewrapped = await self._finish(rotation, hook)
        await hook("archived")
        log.info(
            "vault.key_rotated",
            extra={"rotation_id": rotation["id"], "to_key_id": rotation["to_key_id"], "rewrapped": rewrapped},
        )
        return RotationReport(
            rotation["id"], rotation["from_key_id"], rotation["to_key_id"], rewrapped, resumed, archived
        )

    async def _begin(self, by: str, hook: StepHook) -> Any:
        now = self.clock.now()
        try:
            async with self.db.write() as conn:
                current = (
                    (await conn.execute(select(vault_keys).where(vault_keys.c.status == "active"))).mappings().first()
                )
                term = int((await conn.execute(select(func.coalesce(func.max(vault_keys.c.term), 0)))).scalar_one()) + 1
                key = crypto.new_key(new_id("kek"))
                await conn.execute(
                    insert(vault_keys).values(
                        id=key.id,
                        term=term,
                        status="pending",
                        wrapped_key=self._wrap_kek(key, term),
                        master_key_id=self.master.key_id,
                        created_at=now,
                    )
                )
                row = {
                    "id": new_id("rot"),
                    "from_key_id": current["id"] if current else None,
                    "to_key_id": key.id,
                    "status": "running",
                    "step": "created",
                    "rewrapped": 0,
                    "started_by": by[:140],
                    "started_at": now,
                    "updated_at": now,
                    "finished_at": None,
                }
                await conn.execute(insert(vault_rotations).values(**row))
                await self.audit.append(
                    conn,
                    "key.rotation_started",
                    actor=by,
                    details={
                        "rotation_id": row["id"],
                        "from_key_id": row["from_key_id"],
                        "to_key_id": key.id,
                        "term": term,
                    },
                )
                await hook("create_uncommitted")
        except IntegrityError:
            raise errors.Conflict("another key rotation is already running") from None
        return row

    async def _activate(self, rotation: Any, hook: StepHook) -> None:
        now = self.clock.now()
        async with self.db.write() as conn:
            await conn.execute(update(vault_keys).where(vault_keys.c.status == "active").values(status="retiring"))
            await conn.execute(
                update(vault_keys)
                .where(vault_keys.c.id == rotation["to_key_id"])
                .values(status="active", activated_at=now, expires_at=now + self.key_lifetime)
            )
            await conn.execute(
                update(vault_rotations)
                .where(vault_rotations.c.id == rotation["id"])
                .values(step="activated", updated_at=now)
            )
            await self.audit.append(
                conn,
                "key.activated",
                actor=rotation["started_by"],
                details={"rotation_id": rotation["id"], "key_id": rotation["to_key_id"]},
            )
            await hook("activate_uncommitted")

    async def _rewrap_batch(self, rotation_id: str, to_key_id: str, batch_size: int, hook: StepHook) -> int:
        done = await self._rewrap_secrets(rotation_id, to_key_id, batch_size, hook)
        for sealed in list(self._sealed.values()):
            if done:
                break
            done = await self._rewrap_sealed(sealed, rotation_id, to_key_id, batch_size, hook)
        return done

    async def _rewrap_sealed(
        self, sealed: SealedTable, rotation_id: str, to_key_id: str, batch_size: int, hook: StepHook
    ) -> int:
        target = await self.kek(to_key_id)
        row_id, key_id, wrapped = (
            sealed.column(sealed.id_column),
            sealed.column(sealed.key_id_column),
            sealed.column(sealed.wrapped_column),
        )
        async with self.db.write() as conn:
            query = select(row_id, key_id, wrapped).where(key_id != to_key_id).limit(batch_size)
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).all()
            if not rows:
                return 0
            for ident, old_id, old_wrapped in rows:
                subject = sealed.subject(str(ident))
                old = await self.kek(str(old_id), conn)
                material = crypto.open_sealed(
                    old, bytes(old_wrapped), crypto.Binding("dek", subject, sealed.version, old.id)
                )
                await conn.execute(
                    update(sealed.table)
                    .where(row_id == ident, key_id == old_id)
                    .values(
                        {
                            sealed.key_id_column: target.id,
                            sealed.wrapped_column: crypto.seal(
                                target, material, crypto.Binding("dek", subject, sealed.version, target.id)
                            ),
                        }
                    )
                )
            await conn.execute(
                update(vault_rotations)
                .where(vault_rotations.c.id == rotation_id)
                .values(
                    step="rewrapping",
                    rewrapped=vault_rotations.c.rewrapped + len(rows),
                    updated_at=self.clock.now(),
                )
            )
            await hook("batch_uncommitted")
        return len(rows)

    async def _rewrap_secrets(self, rotation_id: str, to_key_id: str, batch_size: int, hook: StepHook) -> int:
        target = await self.kek(to_key_id)
        async with self.db.write() as conn:
            query = (
                select(
                    vault_secret_versions.c.id,
                    vault_secret_versions.c.secret_id,
                    vault_secret_versions.c.version,
                    vault_secret_versions.c.key_id,
                    vault_secret_versions.c.wrapped_dek,
                )
                .where(vault_secret_versions.c.key_id != to_key_id)
                .limit(batch_size)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).mappings().all()
            if not rows:
                return 0
            changes = []
            for row in rows:
                old = await self.kek(row["key_id"], conn)
                material = crypto.open_sealed(
                    old, row["wrapped_dek"], crypto.Binding("dek", row["secret_id"], row["version"], old.id)
                )
                changes.append(
                    {
                        "b_id": row["id"],
                        "b_old": row["key_id"],
                        "wrapped_dek": crypto.seal(
                            target, material, crypto.Binding("dek", row["secret_id"], row["version"], target.id)
                        ),
                        "key_id": target.id,
                    }
                )
            await conn.execute(
                update(vault_secret_versions)
                .where(
                    vault_secret_versions.c.id == bindparam("b_id"),
                    vault_secret_versions.c.key_id == bindparam("b_old"),
                )
                .values(wrapped_dek=bindparam("wrapped_dek"), key_id=bindparam("key_id")),
                changes,
            )
            await conn.execute(
                update(vault_rotations)
                .where(vault_rotations.c.id == rotation_id)
                .values(
                    step="rewrapping",
                    rewrapped=vault_rotations.c.rewrapped + len(changes),
                    updated_at=self.clock.now(),
                )
            )
            # A crash here rolls the batch back: every row still opens with the key it names.
            await hook("batch_uncommitted")
        return len(changes)

    async def _finish(self, rotation: Any, hook: StepHook) -> tuple[list[str], int]:
        now = self.clock.now()
        async with self.db.write() as conn:
            still_used = set((await conn.execute(select(vault_secret_versions.c.key_id).distinct())).scalars().all())
            for sealed in self._sealed.values():
                column = sealed.column(sealed.key_id_column)
                still_used |= set((await conn.execute(select(column).distinct())).scalars().all())
            retiring = (
                (await conn.execute(select(vault_keys.c.id).where(vault_keys.c.status.in_(("retiring", "pending")))))
                .scalars()
                .all()
            )
            archived = [k for k in retiring if k not in still_used]
            if archived:
                await conn.execute(
                    update(vault_keys).where(vault_keys.c.id.in_(archived)).values(status="archived", archived_at=now)
                )
            rewrapped = int(
                (
                    await conn.execute(
                        select(vault_rotations.c.rewrapped).where(vault_rotations.c.id == rotation["id"])
                    )
                ).scalar_one()
            )
            await conn.execute(
                update(vault_rotations)
                .where(vault_rotations.c.id == rotation["id"])
                .values(status="complete", step="archived", updated_at=now, finished_at=now)
            )
            await self.audit.append(
                conn,
                "key.rotation_completed",
                actor=rotation["started_by"],
                details={
                    "rotation_id": rotation["id"],
                    "key_id": rotation["to_key_id"],
                    "archived": archived,
                    "rewrapped": rewrapped,
                },
            )
            await hook("archive_uncommitted")
        return archived, rewrapped
