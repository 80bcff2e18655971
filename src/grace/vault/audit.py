"""The vault's audit log: append-only, hash-chained, with signed checkpoints.

Each entry carries ``hash = HMAC(chain key, seq, fields, prev_hash)``; the
chain key is derived from the master key, which never touches the database,
so nobody who can only write the database can forge or re-chain an entry.
Every ``CHECKPOINT_EVERY`` entries (and on demand) the head is signed with an
Ed25519 key that is also derived from the master key; the public key can be
published to let others check checkpoints. Every committed entry also advances
an anchor file outside the database to the signed head, so deleting the newest
entries, with or without the checkpoints, is caught by someone who can only
write the database.

Sensitive values are never stored: :meth:`AuditLog.fingerprint` gives an HMAC
that tells two values apart without revealing them. Entries are written in the
same transaction as the change they record, so when the audit write fails the
change (and any release of a value) fails with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, storage
from grace.clock import Clock
from grace.storage import Database
from grace.vault import crypto
from grace.vault.masterkey import MasterKey
from grace.vault.tables import vault_audit, vault_audit_checkpoints

__all__ = ["AuditEntry", "AuditLog", "AuditUnavailable", "Checkpoint", "VerifyReport", "audited"]

log = logging.getLogger("grace.vault")

T = TypeVar("T")

GENESIS = "0" * 64
CHECKPOINT_EVERY = 64
MOVE_WINDOW = 64
# The lock that serialises appends to the chain across processes.
AUDIT_LOCK = "grace.vault.audit"


@dataclass(frozen=True)
class AuditEntry:
    """One audit record (it never holds a secret value)."""

    seq: int
    at: datetime
    event: str
    actor: str
    user_id: str | None
    secret_id: str | None
    consent_id: str | None
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "event": self.event,
            "actor": self.actor,
            "user_id": self.user_id,
            "secret_id": self.secret_id,
            "consent_id": self.consent_id,
            "outcome": self.outcome,
            "details": self.details,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    at: datetime
    signature: str
    public_key: str


@dataclass
class VerifyReport:
    """What ``grace audit verify`` found; ``ok`` only when every list is empty."""

    entries: int = 0
    checkpoints: int = 0
    modified: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    inserted: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    bad_checkpoints: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.modified or self.deleted or self.inserted or self.reordered or self.truncated or self.bad_checkpoints
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "modified": self.modified,
            "deleted": self.deleted,
            "inserted": self.inserted,
            "reordered": self.reordered,
            "truncated": self.truncated,
            "bad_checkpoints": self.bad_checkpoints,
        }


def _details_text(details: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(details or {}), sort_keys=True, separators=(",", ":"), default=str)


def _payload(seq: int, row: Mapping[str, Any]) -> bytes:
    return json.dumps(
        [
            seq,
            row["at"].isoformat(),
            row["event"],
            row["actor"],
            row["user_id"],
            row["secret_id"],
            row["consent_id"],
            row["outcome"],
            row["details"],
            row["prev_hash"],
        ],
        separators=(",", ":"),
    ).encode()


def _entry(row: RowMapping) -> AuditEntry:
    try:
        details = json.loads(row["details"])
    except ValueError:
        details = {"unreadable": True}
    return AuditEntry(
        int(row["seq"]),
        row["at"],
        row["event"],
        row["actor"],
        row["user_id"],
        row["secret_id"],
        row["consent_id"],
        row["outcome"],
        details if isinstance(details, dict) else {"value": details},
        row["prev_hash"],
        row["hash"],
    )


class AuditLog:
    """Append, read, checkpoint and verify the vault's audit chain."""

    def __init__(self, db: Database, clock: Clock, master: MasterKey, *, anchor_path: Path | None = None) -> None:
        self.db = db
        self.clock = clock
        self.anchor_path = anchor_path
        self._chain_key = master.derive("audit-chain")
        self._value_key = master.derive("audit-values")
        self._signer = Ed25519PrivateKey.from_private_bytes(master.derive("audit-checkpoint-signing"))
        self.public_key = self._signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def __repr__(self) -> str:
        return f"AuditLog(public_key={self.public_key[:16]}…)"

    def fingerprint(self, value: bytes) -> str:
        """Return an HMAC of a sensitive value: equal values match, the value cannot be recovered."""
        return "hmac-sha256:" + crypto.mac(self._value_key, value)

    def _mac(self, seq: int, row: Mapping[str, Any]) -> str:
        return crypto.mac(self._chain_key, _payload(seq, row))

    async def _lock(self, conn: AsyncConnection) -> None:
        await storage.serialise(conn, AUDIT_LOCK)

    async def append(
        self,
        conn: AsyncConnection,
        event: str,
        *,
        actor: str,
        outcome: str = "ok",
        user_id: str | None = None,
        secret_id: str | None = None,
        consent_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry inside the caller's write transaction."""
        await self._lock(conn)
        last = (
            (
                await conn.execute(
                    select(vault_audit.c.seq, vault_audit.c.hash).order_by(vault_audit.c.seq.desc()).limit(1)
                )
            )
            .mappings()
            .first()
        )
        seq = int(last["seq"]) + 1 if last else 1
        row: dict[str, Any] = {
            "at": self.clock.now(),
            "event": event,
            "actor": actor[:140],
            "user_id": user_id,
            "secret_id": secret_id,
            "consent_id": consent_id,
            "outcome": outcome,
            "details": _details_text(details),
            "prev_hash": last["hash"] if last else GENESIS,
        }
        row["hash"] = self._mac(seq, row)
        await conn.execute(insert(vault_audit).values(seq=seq, **row))
        if seq % CHECKPOINT_EVERY == 0:
            await self._insert_checkpoint(conn, seq, row["hash"])
        head_hash = row["hash"]
        # Only once the entry is committed: an anchor ahead of the log would read as a truncation.
        self.db.after_commit(conn, lambda: self._advance_anchor(seq, head_hash))
        return _entry({"seq": seq, **row})  # type: ignore[arg-type]

    async def record(self, event: str, **kwargs: Any) -> AuditEntry:
        """Append one entry in a transaction of its own."""
        async with self.db.write() as conn:
            return await self.append(conn, event, **kwargs)

    # -- checkpoints ---------------------------------------------------------

    def _sign(self, seq: int, head_hash: str) -> str:
        return self._signer.sign(f"grace-audit-checkpoint:{seq}:{head_hash}".encode()).hex()

    def _signature_ok(self, checkpoint: Checkpoint) -> bool:
        if checkpoint.public_key != self.public_key:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_key)).verify(
                bytes.fromhex(checkpoint.signature),
                f"grace-audit-checkpoint:{checkpoint.seq}:{checkpoint.head_hash}".encode(),
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    async def _insert_checkpoint(self, conn: AsyncConnection, seq: int, head_hash: str) -> Checkpoint:
        checkpoint = Checkpoint(seq, head_hash, self.clock.now(), self._sign(seq, head_hash), self.public_key)
        await conn.execute(
            insert(vault_audit_checkpoints).values(
                seq=seq,
                head_hash=head_hash,
                at=checkpoint.at,
                signature=checkpoint.signature,
                public_key=self.public_key,
            )
        )
        return checkpoint

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head (unless already signed) and write it to the anchor file."""
        async with self.db.write() as conn:
            await self._lock(conn)
            last = (
                (
                    await conn.execute(
                        select(vault_audit.c.seq, vault_audit.c.hash).order_by(vault_audit.c.seq.desc()).limit(1)
                    )
                )
                .mappings()
                .first()
            )
            if last is None:
                return None
            newest = (
                (
                    await conn.execute(
                        select(vault_audit_checkpoints).order_by(vault_audit_checkpoints.c.seq.desc()).limit(1)
                    )
                )
                .mappings()
                .first()
            )
            if newest is not None and int(newest["seq"]) == int(last["seq"]):
                checkpoint = Checkpoint(
                    int(newest["seq"]), newest["head_hash"], newest["at"], newest["signature"], newest["public_key"]
                )
            else:
                checkpoint = await self._insert_checkpoint(conn, int(last["seq"]), last["hash"])
        self._write_anchor(checkpoint)
        return checkpoint

    def _advance_anchor(self, seq: int, head_hash: str) -> None:
        """Write the signed head ``seq`` to the anchor file (after its entry committed)."""
        self._replace_anchor_if_behind(
            seq, lambda: Checkpoint(seq, head_hash, self.clock.now(), self._sign(seq, head_hash), self.public_key)
        )

    def _write_anchor(self, checkpoint: Checkpoint) -> None:
        self._replace_anchor_if_behind(checkpoint.seq, lambda: checkpoint)

    def _replace_anchor_if_behind(self, seq: int, make: Callable[[], Checkpoint]) -> None:
        """Replace the anchor with ``make()`` unless it already holds a genuine head as late as ``seq``.

        Processes sharing the anchor check and replace it one at a time (an exclusive lock on a file
        beside it): otherwise one that read the anchor before another advanced it could put it back.
        """
        if self.anchor_path is None:
            return
        try:
            self.anchor_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.anchor_path.with_name(self.anchor_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if self._anchor_behind(seq):
                    self._store_anchor(make())
            finally:
                os.close(fd)  # and with it the lock
        except OSError as exc:
            log.warning("vault.audit_anchor_failed", extra={"reason": type(exc).__name__})

    def _anchor_behind(self, seq: int) -> bool:
        """Return whether the anchor file holds no genuine head as late as ``seq``.

        An anchor this key did not sign (unreadable, forged, or from before the master key changed)
        is replaced rather than trusted to be ahead.
        """
        current = self._read_anchor()
        return current is None or current.seq < seq or not self._signature_ok(current)

    def _store_anchor(self, checkpoint: Checkpoint) -> None:
        assert self.anchor_path is not None
        body = {
            "seq": checkpoint.seq,
            "head_hash": checkpoint.head_hash,
            "at": checkpoint.at.isoformat(),
            "signature": checkpoint.signature,
            "public_key": checkpoint.public_key,
        }
        tmp = self.anchor_path.with_suffix(f".{os.getpid()}.tmp")  # processes sharing it never share this
        storage.write_private(tmp, json.dumps(body))  # 0600 whatever the umask
        tmp.replace(self.anchor_path)

    def _read_anchor(self) -> Checkpoint | None:
        if self.anchor_path is None or not self.anchor_path.exists():
            return None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            body = json.loads(self.anchor_path.read_text())
            return Checkpoint(
                int(body["seq"]),
                body["head_hash"],
                datetime.fromisoformat(body["at"]),
                body["signature"],
                body["public_key"],
            )
        return None

    # -- reading -------------------------------------------------------------

    async def entries(
        self,
        *,
        user_id: str | None = None,
        secret_id: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Return entries newest first, optionally only one user's or one secret's."""
        query = select(vault_audit).order_by(vault_audit.c.seq.desc()).limit(limit)
        if user_id is not None:
            query = query.where(vault_audit.c.user_id == user_id)
        if secret_id is not None:
            query = query.where(vault_audit.c.secret_id == secret_id)
        if before is not None:
            query = query.where(vault_audit.c.seq < before)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_entry(r) for r in rows]

    # -- verification ----------------------------------------------------------

    def _origin(self, row: Any) -> int | None:
        """Return the seq this row was written at, if its MAC proves one; None if it is not authentic."""
        seq = int(row["seq"])
        if self._mac(seq, row) == row["hash"]:
            return seq
        for k in range(max(1, seq - MOVE_WINDOW), seq + MOVE_WINDOW + 1):
            if k != seq and self._mac(k, row) == row["hash"]:
                return k
        return None

    async def verify(self) -> VerifyReport:
        """Check the whole chain and every checkpoint; report each kind of tampering found."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(vault_audit).order_by(vault_audit.c.seq))).mappings().all()
            checkpoint_rows = (
                (await conn.execute(select(vault_audit_checkpoints).order_by(vault_audit_checkpoints.c.seq)))
                .mappings()
                .all()
            )
        report = VerifyReport(entries=len(rows), checkpoints=len(checkpoint_rows))
        checkpoints = [
            Checkpoint(int(c["seq"]), c["head_hash"], c["at"], c["signature"], c["public_key"]) for c in checkpoint_rows
        ]
        valid_checkpoints: dict[str, int] = {}
        for checkpoint in checkpoints:
            if self._signature_ok(checkpoint):
                valid_checkpoints[checkpoint.head_hash] = checkpoint.seq
            else:
                report.bad_checkpoints.append(checkpoint.seq)

        origins = [self._origin(r) for r in rows]
        # An altered entry keeps its stored hash; an authentic neighbour or a signed checkpoint vouches for it.
        vouched = {r["prev_hash"]: o - 1 for r, o in zip(rows, origins, strict=True) if o is not None}
        authentic = {o for o in origins if o is not None}
        for i, (row, origin) in enumerate(zip(rows, origins, strict=True)):
            if origin is not None:
                continue
            claimed = vouched.get(row["hash"], valid_checkpoints.get(row["hash"]))
            if claimed is not None and claimed not in authentic:
                origins[i] = claimed
                report.modified.append(int(row["seq"]))
            else:
                # Unauthenticated, and either vouched for by nobody or a copy of an entry that is still there.
                report.inserted.append(int(row["seq"]))

        highest = 0
        for row, origin in zip(rows, origins, strict=True):
            if origin is None:
                continue
            if origin < highest:
                report.reordered.append(int(row["seq"]))
            highest = max(highest, origin)
        if report.reordered:
            # Name both sides of each swap: the entries that now stand before their successors too.
            moved = {int(r["seq"]) for r, o in zip(rows, origins, strict=True) if o is not None and o != int(r["seq"])}
            report.reordered = sorted(moved | set(report.reordered))

        known = {o for o in origins if o is not None}
        report.deleted = [k for k in range(1, highest + 1) if k not in known]

        for checkpoint in checkpoints:
            if checkpoint.seq in report.bad_checkpoints:
                continue
            holder = next((r for r, o in zip(rows, origins, strict=True) if o == checkpoint.seq), None)
            if holder is not None and holder["hash"] != checkpoint.head_hash:
                report.bad_checkpoints.append(checkpoint.seq)
        claimed = max((c.seq for c in checkpoints if c.seq not in report.bad_checkpoints), default=0)
        anchor = self._read_anchor()
        if anchor is not None and self._signature_ok(anchor):
            claimed = max(claimed, anchor.seq)
        if claimed > highest:
            report.truncated = list(range(highest + 1, claimed + 1))
        report.bad_checkpoints.sort()
        log.info(
            "vault.audit_verified",
            extra={
                "ok": report.ok,
                "entries": report.entries,
                "modified": len(report.modified),
                "deleted": len(report.deleted),
                "inserted": len(report.inserted),
                "reordered": len(report.reordered),
                "truncated": len(report.truncated),
            },
        )
        return report


class AuditUnavailable(errors.StorageUnavailable):
    """The audit log could not be written, so nothing was released or changed."""

    code = "audit_unavailable"


async def audited(work: Awaitable[T]) -> T:
    """Run ``work``; a database failure becomes AuditUnavailable (every vault write carries its audit entry)."""
    try:
        return await work
    except DBAPIError as exc:
        log.error("vault.audit_write_failed", extra={"reason": type(exc.orig).__name__ if exc.orig else "unknown"})
        raise AuditUnavailable() from None
