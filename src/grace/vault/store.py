"""Secrets at rest: validation, envelope encryption of each version, listing (masked), revocation.

Each version of a secret gets its own data key; the value is sealed with it
(bound to secret id, version and data key id) and the data key is sealed by
the active key-encryption key (bound to secret id, version and KEK id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Label, bindparam, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import clock, errors
from grace.auth import Principal
from grace.clock import Clock
from grace.integrity import RowSeal
from grace.storage import Database, new_id
from grace.vault import crypto, risk
from grace.vault.audit import AuditLog
from grace.vault.consent import ConsentStore
from grace.vault.keyring import Keyring
from grace.vault.tables import SECRETS, vault_secret_versions, vault_secrets, vault_usage

__all__ = ["MAX_VALUE_BYTES", "SecretInfo", "SecretStore", "SecretValue", "owner_for", "validate_key"]

MAX_VALUE_BYTES = 64 * 1024
HINT_MIN_LENGTH = 16
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$")


class SecretValue:
    """A released secret value; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the value itself: call only where it is handed to its authorised user."""
        return self._value

    def __repr__(self) -> str:
        return "SecretValue(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("SecretValue", len(self._value)))


def owner_for(by: Principal, user_id: str | None) -> str:
    """Return whose secrets a call acts on: the caller's, or (admins only) the user it names."""
    owner = user_id or by.user_id
    by.require_self_or_admin(owner)
    return owner


def validate_key(key: str) -> str:
    key = key.strip()
    if not _KEY.match(key):
        raise errors.InvalidInput(
            "a secret key is 1 to 128 characters: letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return key


def validate_service(service: str) -> str:
    service = service.strip().lower()
    if not _SERVICE.match(service):
        raise errors.InvalidInput("a service is 1 to 128 characters: letters, digits, '_', '.', ':', '/' or '-'")
    return service


def _hint(value: str) -> str:
    trimmed = value.strip()
    return trimmed[-4:] if len(trimmed) >= HINT_MIN_LENGTH else ""


@dataclass(frozen=True)
class SecretInfo:
    """A secret's description, with its value masked (at most the last 4 characters shown)."""

    id: str
    owner_id: str
    key: str
    secret_type: str
    service: str
    risk_level: str
    description: str
    status: str
    version: int
    hint: str
    usage_count: int
    last_used_at: datetime | None
    rotation_interval_seconds: int | None
    rotation_due_at: datetime | None
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None

    @property
    def masked(self) -> str:
        return "****" + self.hint if self.hint else "********"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner_id": self.owner_id,
            "secret_key": self.key,
            "secret_type": self.secret_type,
            "service": self.service,
            "risk_level": self.risk_level,
            "description": self.description,
            "status": self.status,
            "version": self.version,
            "masked_value": self.masked,
            "usage_count": self.usage_count,
            "last_used_at": clock.iso(self.last_used_at),
            "rotation_days": self.rotation_interval_seconds // 86400 if self.rotation_interval_seconds else None,
            "rotation_due_at": clock.iso(self.rotation_due_at),
            "created_at": clock.iso(self.created_at),
            "updated_at": clock.iso(self.updated_at),
            "revoked_at": clock.iso(self.revoked_at),
        }


# The statement that reads a secret's current version, built once.
_VERSION = select(vault_secret_versions).where(
    vault_secret_versions.c.secret_id == bindparam("secret_id"),
    vault_secret_versions.c.version == bindparam("version"),
)


def version_columns(prefix: str) -> list[Label[Any]]:
    """Every column of a secret's version, labelled ``prefix + name``, for a join (read back by ``version_of``)."""
    return [column.label(prefix + column.name) for column in vault_secret_versions.c]


def version_of(row: Mapping[Any, Any], prefix: str) -> dict[str, Any] | None:
    """The version a join's row holds under ``prefix`` (``version_columns``); None if it found none."""
    if row[prefix + "secret_id"] is None:
        return None
    return {column.name: row[prefix + column.name] for column in vault_secret_versions.c}


def secret_info(row: Mapping[Any, Any]) -> SecretInfo:
    return SecretInfo(
        row["id"],
        row["owner_id"],
        row["key"],
        row["secret_type"],
        row["service"],
        row["risk_level"],
        row["description"],
        row["status"],
        int(row["current_version"]),
        row["hint"],
        int(row["usage_count"]),
        row["last_used_at"],
        row["rotation_interval_seconds"],
        row["rotation_due_at"],
        row["created_at"],
        row["updated_at"],
        row["revoked_at"],
    )


class SecretStore:
    """Store, read, list and revoke secrets.

    A secret's row is sealed (owner, key, type, service, risk, status, current version: see
    ``tables.SECRETS``): every write seals what it writes, every read that decides checks it.
    """

    def __init__(
        self, db: Database, clock: Clock, keyring: Keyring, audit: AuditLog, consents: ConsentStore, seal: RowSeal
    ) -> None:
        self.db = db
        self.clock = clock
        self.keyring = keyring
        self.audit = audit
        self.consents = consents
        self.seal = seal

    def __repr__(self) -> str:
        return "SecretStore()"

    async def store(
        self,
        by: Principal,
        *,
        owner_id: str,
        key: str,
        value: str,
        secret_type: str,
        service: str,
        risk_level: str | None = None,
        description: str = "",
        rotation_days: int | None = None,
    ) -> SecretInfo:
        """Store a new secret, or a new version of an existing one (the history is kept)."""
        key = validate_key(key)
        kind = risk.SecretType.parse(secret_type)
        service = validate_service(service)
        level = risk.effective_risk(kind, risk_level)
        if not isinstance(value, str) or not value.strip():
            raise errors.InvalidInput("a secret value must not be empty")
        material = value.encode()
        if len(material) > MAX_VALUE_BYTES:
            raise errors.PayloadTooLarge(f"a secret value is at most {MAX_VALUE_BYTES} bytes")
        if len(description) > 512:
            raise errors.InvalidInput("a description is at most 512 characters")
        if rotation_days is not None and not 1 <= rotation_days <= 3650:
            raise errors.InvalidInput("rotation_days must be between 1 and 3650")
        interval_days = rotation_days or risk.default_rotation_days(kind)
        now = self.clock.now()
        async with self.seal.reporting(), self.db.write() as conn:
            kek = await self.keyring.active(conn)
            existing = (
                (
                    await conn.execute(
                        select(vault_secrets)
                        .where(vault_secrets.c.owner_id == owner_id, vault_secrets.c.key == key)
                        .with_for_update()
                    )
                )
                .mappings()
                .first()
            )
            if existing is not None:
                # Its type, risk and version carry over into the new version: they must be genuine.
                self.seal.require(SECRETS, existing)
                if existing["status"] == "revoked":
                    raise errors.Conflict(f"secret {key!r} was revoked; store it under a new name")
                if existing["secret_type"] != kind.value:
                    raise errors.Conflict(
                        f"secret {key!r} is a {existing['secret_type']}; its type cannot change to {kind.value}"
                    )
                if risk_level is None:
                    old = risk.RiskLevel(existing["risk_level"])
                    level = old if old.rank > level.rank else level
            secret_id = existing["id"] if existing else new_id("sec")
            version = int(existing["current_version"]) + 1 if existing else 1
            dek = crypto.new_key(new_id("dek"))
            ciphertext = crypto.seal(dek, material, crypto.Binding("value", secret_id, version, dek.id))
            fields: dict[str, Any] = {
                "secret_type": kind.value,
                "service": service,
                "risk_level": level.value,
                "current_version": version,
                "hint": _hint(value),
                "rotation_interval_seconds": interval_days * 86400 if interval_days else None,
                "rotation_due_at": now + timedelta(days=interval_days) if interval_days else None,
                "rotation_notified_at": None,
                "updated_at": now,
            }
            if description or existing is None:
                fields["description"] = description
            if existing is None:
                created: dict[str, Any] = {
                    "id": secret_id,
                    "owner_id": owner_id,
                    "key": key,
                    "status": "active",
                    "usage_count": 0,
                    "last_used_at": None,
                    "created_at": now,
                    "revoked_at": None,
                    "revoked_by": None,
                    **fields,
                }
                await conn.execute(insert(vault_secrets).values(**created, seal=self.seal.seal(SECRETS, created)))
            else:
                fields["seal"] = self.seal.seal(SECRETS, {**existing, **fields})
                await conn.execute(update(vault_secrets).where(vault_secrets.c.id == secret_id).values(**fields))
            await conn.execute(
                insert(vault_secret_versions).values(
                    id=new_id("ver"),
                    secret_id=secret_id,
                    version=version,
                    key_id=kek.id,
                    dek_id=dek.id,
                    wrapped_dek=self.keyring.wrap_dek(kek, dek, secret_id, version),
                    ciphertext=ciphertext,
                    created_at=now,
                    created_by=by.name,
                )
            )
            await self.audit.append(
                conn,
                "secret.stored",
                actor=by.name,
                user_id=owner_id,
                secret_id=secret_id,
                details={
                    "secret_key": key,
                    "version": version,
                    "secret_type": kind.value,
                    "service": service,
                    "risk_level": level.value,
                    "value_hmac": self.audit.fingerprint(material),
                },
            )
            row = (await conn.execute(select(vault_secrets).where(vault_secrets.c.id == secret_id))).mappings().one()
        return secret_info(row)

    async def get(self, owner_id: str, key: str) -> SecretInfo:
        """Return a secret, its seal checked (its owner, risk and status decide what is asked of a request)."""
        query = select(vault_secrets).where(vault_secrets.c.owner_id == owner_id, vault_secrets.c.key == key)
        async with self.db.read() as read:
            row = (await read.execute(query)).mappings().first()
        if row is None:
            raise errors.NotFound(f"no secret named {key[:128]!r}")
        await self.seal.check(SECRETS, row)
        return secret_info(row)

    async def get_by_id(self, secret_id: str) -> SecretInfo:
        async with self.db.read() as conn:
            row = (await conn.execute(select(vault_secrets).where(vault_secrets.c.id == secret_id))).mappings().first()
        if row is None:
            raise errors.NotFound("no such secret")
        await self.seal.check(SECRETS, row)
        return secret_info(row)

    async def list_for(self, owner_id: str | None, *, include_revoked: bool = True) -> list[SecretInfo]:
        query = select(vault_secrets).order_by(vault_secrets.c.key)
        if owner_id is not None:
            query = query.where(vault_secrets.c.owner_id == owner_id)
        if not include_revoked:
            query = query.where(vault_secrets.c.status == "active")
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [secret_info(r) for r in rows]

    async def versions(self, secret_id: str) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (
                (
                    await conn.execute(
                        select(
                            vault_secret_versions.c.version,
                            vault_secret_versions.c.key_id,
                            vault_secret_versions.c.created_at,
                            vault_secret_versions.c.created_by,
                        )
                        .where(vault_secret_versions.c.secret_id == secret_id)
                        .order_by(vault_secret_versions.c.version)
                    )
                )
                .mappings()
                .all()
            )
        return [
            {
                "version": r["version"],
                "key_id": r["key_id"],
                "created_at": r["created_at"].isoformat(),
                "created_by": r["created_by"],
            }
            for r in rows
        ]

    async def open_current(self, secret_id: str) -> tuple[SecretInfo, SecretValue | None]:
        """Read a secret and, when it is active, open its current version (one read transaction).

        The secret's seal is checked first: its owner, status and current version decide what is released.
        """
        async with self.seal.reporting(), self.db.read() as conn:
            found = (
                (await conn.execute(select(vault_secrets).where(vault_secrets.c.id == secret_id))).mappings().first()
            )
            if found is None:
                raise errors.NotFound("no such secret")
            self.seal.require(SECRETS, found)
            info = secret_info(found)
            if info.status != "active":
                return info, None
            row = await self.current_version(conn, info)
        return info, await self.open_version(info, row)

    def sealed(self, row: Mapping[Any, Any]) -> SecretInfo:
        """The secret a row read inside the caller's transaction holds, its seal required (RowTampered, not
        yet reported: the caller wraps its read in ``seal.reporting()``)."""
        self.seal.require(SECRETS, row)
        return secret_info(row)

    async def current_version(self, conn: AsyncConnection, secret: SecretInfo) -> RowMapping | None:
        """The sealed row of ``secret``'s current version, read inside the caller's transaction."""
        return (await conn.execute(_VERSION, {"secret_id": secret.id, "version": secret.version})).mappings().first()

    async def open_version(self, secret: SecretInfo, row: Mapping[Any, Any] | None) -> SecretValue:
        """Open the version row :meth:`current_version` (or ``version_columns``) read; IntegrityFailure if
        anything was altered."""
        if row is None:
            raise errors.NotFound(f"no version {secret.version} of this secret")
        return await self._open(row, secret.id, secret.version)

    async def _open(self, row: Mapping[Any, Any], secret_id: str, version: int) -> SecretValue:
        dek = await self.keyring.unwrap_dek(row["key_id"], row["dek_id"], row["wrapped_dek"], secret_id, version)
        plaintext = crypto.open_sealed(dek, row["ciphertext"], crypto.Binding("value", secret_id, version, dek.id))
        return SecretValue(plaintext.decode())

    async def decrypt(self, secret_id: str, version: int | None = None) -> SecretValue:
        """Open a version (the current one by default); IntegrityFailure if anything was altered."""
        async with self.seal.reporting(), self.db.read() as conn:
            if version is None:
                found = (
                    (await conn.execute(select(*SECRETS.selected()).where(vault_secrets.c.id == secret_id)))
                    .mappings()
                    .first()
                )
                if found is None:
                    raise errors.NotFound("no such secret")
                self.seal.require(SECRETS, found)
                version = int(found["current_version"])
            row = (
                (
                    await conn.execute(
                        select(vault_secret_versions).where(
                            vault_secret_versions.c.secret_id == secret_id, vault_secret_versions.c.version == version
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise errors.NotFound(f"no version {version} of this secret")
        return await self._open(row, secret_id, int(version))

    async def revoke(self, by: Principal, secret: SecretInfo, reason: str = "") -> SecretInfo:
        """Revoke a secret (soft: the record and its history stay); its consents are revoked with it."""
        if secret.status == "revoked":
            raise errors.Conflict(f"secret {secret.key!r} is already revoked")
        now = self.clock.now()
        async with self.seal.reporting(), self.db.write() as conn:
            current = (
                (
                    await conn.execute(
                        select(*SECRETS.selected()).where(vault_secrets.c.id == secret.id).with_for_update()
                    )
                )
                .mappings()
                .first()
            )
            if current is None or current["status"] != "active":
                raise errors.Conflict(f"secret {secret.key!r} is already revoked")
            self.seal.require(SECRETS, current)
            await conn.execute(
                update(vault_secrets)
                .where(vault_secrets.c.id == secret.id)
                .values(
                    status="revoked",
                    revoked_at=now,
                    revoked_by=by.name,
                    updated_at=now,
                    seal=self.seal.seal(SECRETS, {**current, "status": "revoked"}),
                )
            )
            await self.consents.revoke_for_secret(conn, secret.id, actor=by.name, now=now)
            await self.audit.append(
                conn,
                "secret.revoked",
                actor=by.name,
                user_id=secret.owner_id,
                secret_id=secret.id,
                details={"secret_key": secret.key, "reason": reason[:256]},
            )
            row = (await conn.execute(select(vault_secrets).where(vault_secrets.c.id == secret.id))).mappings().one()
        return secret_info(row)

    @staticmethod
    def count_uses(conn: Connection, secret: SecretInfo, uses: Sequence[tuple[str, str, datetime]]) -> bool:
        """Count several releases of one secret, each ``(agent, action, at)``, in the caller's (sync) transaction.

        One update of the secret's counters and one insert of the releases (anomalies read them);
        False, and nothing counted, if the secret was revoked meanwhile.
        """
        counted = conn.execute(
            update(vault_secrets)
            .where(vault_secrets.c.id == secret.id, vault_secrets.c.status == "active")
            .values(usage_count=vault_secrets.c.usage_count + len(uses), last_used_at=max(at for _, _, at in uses))
        )
        if counted.rowcount != 1:
            return False
        conn.execute(
            insert(vault_usage),
            [
                {
                    "secret_id": secret.id,
                    "owner_id": secret.owner_id,
                    "agent": agent,
                    "action": action,
                    "at": at,
                    "hour": at.hour,
                }
                for agent, action, at in uses
            ],
        )
        return True

    async def count(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(vault_secrets))).scalar_one())

    async def rotation_due(self, owner_id: str | None, *, within: timedelta = timedelta(0)) -> list[SecretInfo]:
        """Return active secrets whose rotation is due now (or within ``within``)."""
        horizon = self.clock.now() + within
        query = (
            select(vault_secrets)
            .where(vault_secrets.c.status == "active", vault_secrets.c.rotation_due_at <= horizon)
            .order_by(vault_secrets.c.rotation_due_at)
        )
        if owner_id is not None:
            query = query.where(vault_secrets.c.owner_id == owner_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [secret_info(r) for r in rows]

    async def mark_rotation_notified(self, secret_id: str) -> bool:
        """Note that ``secrets.rotation.due`` went out for this due date; False if it already had."""
        async with self.db.write() as conn:
            result = await conn.execute(
                update(vault_secrets)
                .where(vault_secrets.c.id == secret_id, vault_secrets.c.rotation_notified_at.is_(None))
                .values(rotation_notified_at=self.clock.now())
            )
        return result.rowcount == 1
