"""The vault's audit log: append-only, hash-chained, with signed checkpoints and an anchor.

Each entry carries ``hash = HMAC(chain key, seq, fields, prev_hash)``; the
chain key is derived from the master key, which never touches the database,
so nobody who can only write the database can forge or re-chain an entry.
Every ``CHECKPOINT_EVERY`` entries (and on demand) the head is signed with an
Ed25519 key that is also derived from the master key (:mod:`grace.vault.anchor`).
Every committed entry also advances the anchor file outside the database to the
signed head, and an entry is only appended to a chain that continues from that
anchor (:class:`~grace.errors.AuditChainBroken` otherwise, fail closed): deleting
the newest entries, with or without their checkpoints, cannot be healed by new
ones. Signed checkpoints can be exported and the log verified against them.

Sensitive values are never stored: :meth:`AuditLog.fingerprint` gives an HMAC
that tells two values apart without revealing them. Entries are written in the
same transaction as the change they record, so when the audit write fails the
change (and any release of a value) fails with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, storage
from grace.clock import Clock
from grace.storage import Database
from grace.vault import crypto
from grace.vault.anchor import AnchorFile, AnchorReading, Checkpoint, HeadSigner, export_document, parse_export
from grace.vault.masterkey import MasterKey
from grace.vault.tables import vault_audit, vault_audit_checkpoints

__all__ = ["AuditEntry", "AuditLog", "AuditUnavailable", "Checkpoint", "Fields", "VerifyReport", "audited"]

log = logging.getLogger("grace.vault")

T = TypeVar("T")

GENESIS = "0" * 64
CHECKPOINT_EVERY = 64
MOVE_WINDOW = 64
# The lock that serialises appends to the chain across processes.
AUDIT_LOCK = "grace.vault.audit"
REANCHORED = "audit.reanchored"
# How many stale checkpoints one re-anchoring entry names.
SUPERSEDED_MAX = 1000

# Why a chain does not continue from its anchor, as a refused write tells its caller (no path: any
# principal may be refused).
BREAKS = {
    "anchor_missing": "the anchor file is missing while the log has entries (for an install from before the"
    " anchor, or an anchor that was moved: once the log is checked, run `grace audit reanchor`)",
    "empty": "the anchor file is empty",
    "unreadable": "the anchor file is garbled",
    "foreign": "the anchor file is not signed by this vault's key",
    "truncated": "the log ends before the anchor's signed head (entries were cut)",
    "forked": "the log's entry at the anchor's head is not the one it signed (entries were cut and written again)",
}


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
class Fields:
    """An entry to append: what happened, who did it, and about what (never a secret value)."""

    event: str
    actor: str
    outcome: str = "ok"
    user_id: str | None = None
    secret_id: str | None = None
    consent_id: str | None = None
    details: Mapping[str, Any] | None = None


@dataclass
class VerifyReport:
    """What ``grace audit verify`` found; ``ok`` only when every list is empty and the anchor holds."""

    entries: int = 0
    checkpoints: int = 0
    modified: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    inserted: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    forked: list[int] = field(default_factory=list)
    bad_checkpoints: list[int] = field(default_factory=list)
    anchor: str | None = None  # what is wrong with the anchor file itself
    against: int = 0  # exported checkpoints the log was checked against

    # Sealed rows (grace.integrity) whose seal does not match: {"table", "id"}.
    tampered_rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.anchor is None and not (
            self.modified
            or self.deleted
            or self.inserted
            or self.reordered
            or self.truncated
            or self.forked
            or self.bad_checkpoints
            or self.tampered_rows
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
            "forked": self.forked,
            "bad_checkpoints": self.bad_checkpoints,
            "anchor": self.anchor,
            "against": self.against,
            "tampered_rows": self.tampered_rows,
        }


@dataclass(frozen=True)
class _Break:
    """Why the chain does not continue from its anchor: a reason (a key of BREAKS) and the whole story."""

    reason: str
    story: str


def _head_in(conn: Connection) -> RowMapping | None:
    """The chain's last entry (its seq and hash), inside the caller's transaction."""
    return conn.execute(_HEAD).mappings().first()


_HEAD = select(vault_audit.c.seq, vault_audit.c.hash).order_by(vault_audit.c.seq.desc()).limit(1)


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
    """Append, read, checkpoint, export and verify the vault's audit chain."""

    def __init__(self, db: Database, clock: Clock, master: MasterKey, *, anchor_path: Path | None = None) -> None:
        self.db = db
        self.clock = clock
        self._chain_key = master.derive("audit-chain")
        self._value_key = master.derive("audit-values")
        self.signer = HeadSigner(master)
        self.public_key = self.signer.public_key
        self.anchor = AnchorFile(anchor_path, self.signer) if anchor_path is not None else None

    def __repr__(self) -> str:
        return f"AuditLog(public_key={self.public_key[:16]}…)"

    @property
    def anchor_path(self) -> Path | None:
        return self.anchor.path if self.anchor is not None else None

    def fingerprint(self, value: bytes) -> str:
        """Return an HMAC of a sensitive value: equal values match, the value cannot be recovered."""
        return "hmac-sha256:" + crypto.mac(self._value_key, value)

    def _mac(self, seq: int, row: Mapping[str, Any]) -> str:
        return crypto.mac(self._chain_key, _payload(seq, row))

    async def _lock(self, conn: AsyncConnection) -> None:
        await storage.serialise(conn, AUDIT_LOCK)

    async def _head(self, conn: AsyncConnection) -> RowMapping | None:
        return await conn.run_sync(_head_in)

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
        """Append one entry inside the caller's write transaction.

        Raises AuditChainBroken, and writes nothing, unless the chain continues from the anchor.
        """
        (entry,) = await self.append_many(
            conn,
            [
                Fields(
                    event,
                    actor=actor,
                    outcome=outcome,
                    user_id=user_id,
                    secret_id=secret_id,
                    consent_id=consent_id,
                    details=details,
                )
            ],
        )
        return entry

    async def append_many(self, conn: AsyncConnection, entries: Sequence[Fields]) -> list[AuditEntry]:
        """Append ``entries``, in order, inside the caller's write transaction (:meth:`append_many_in`)."""
        return await conn.run_sync(self.append_many_in, entries)

    def append_many_in(self, conn: Connection, entries: Sequence[Fields]) -> list[AuditEntry]:
        """Append ``entries``, in order, inside the caller's (synchronous) write transaction.

        For many requests' entries at once; on SQLite it runs on ``Database.write_sync``'s thread.

        The chain's lock, its head and the anchor are read once, the entries are chained one after
        another and inserted in one statement, a checkpoint is signed at each multiple of
        ``CHECKPOINT_EVERY`` among them, and the anchor advances once, to the last, after the commit.
        Raises AuditChainBroken, and writes nothing, unless the chain continues from the anchor.
        """
        if not entries:
            return []
        storage.serialise_in(conn, AUDIT_LOCK)
        last = _head_in(conn)
        checked = self._continues_in(conn, last)
        seq = int(last["seq"]) if last else 0
        prev = last["hash"] if last else GENESIS
        at = self.clock.now()
        rows: list[dict[str, Any]] = []
        for fields in entries:
            seq += 1
            row = self._row(seq, prev, at, fields)
            rows.append(row)
            prev = row["hash"]
        conn.execute(insert(vault_audit), rows)
        for row in rows:
            if row["seq"] % CHECKPOINT_EVERY == 0:
                self._insert_checkpoint_in(conn, row["seq"], row["hash"])
        written = [_entry(row) for row in rows]  # type: ignore[arg-type]
        if self.anchor is not None and checked is not None:
            anchor, signer, now, head = self.anchor, self.signer, self.clock.now(), written[-1]
            # Only once the entries are committed: an anchor ahead of the log would read as a truncation.
            # A file lock, a read, a signature and a rename: on SQLite's writing thread, not the event loop.
            self.db.after_commit(
                conn,
                lambda: anchor.advance(lambda: signer.sign(head.seq, head.hash, now), head.seq, checked=checked),
                any_thread=True,
            )
        return written

    def _row(self, seq: int, prev_hash: str, at: datetime, fields: Fields) -> dict[str, Any]:
        """The stored row of the entry ``seq`` after the entry whose hash is ``prev_hash``, its own hash made."""
        row: dict[str, Any] = {
            "at": at,
            "event": fields.event,
            "actor": fields.actor[:140],
            "user_id": fields.user_id,
            "secret_id": fields.secret_id,
            "consent_id": fields.consent_id,
            "outcome": fields.outcome,
            "details": _details_text(fields.details),
            "prev_hash": prev_hash,
        }
        row["hash"] = self._mac(seq, row)
        return {"seq": seq, **row}

    async def _write(
        self,
        conn: AsyncConnection,
        last: RowMapping | None,
        event: str,
        *,
        actor: str,
        details: Mapping[str, Any] | None = None,
        sign: bool = False,
    ) -> tuple[AuditEntry, Checkpoint | None]:
        """Insert the entry after ``last`` (under the lock), and its checkpoint when one is due or ``sign``."""
        seq = int(last["seq"]) + 1 if last else 1
        row = self._row(seq, last["hash"] if last else GENESIS, self.clock.now(), Fields(event, actor, details=details))
        await conn.execute(insert(vault_audit).values(**row))
        checkpoint = None
        if sign or seq % CHECKPOINT_EVERY == 0:
            checkpoint = await self._insert_checkpoint(conn, seq, row["hash"])
        return _entry(row), checkpoint  # type: ignore[arg-type]

    async def record(self, event: str, **kwargs: Any) -> AuditEntry:
        """Append one entry in a transaction of its own."""
        async with self.db.write() as conn:
            return await self.append(conn, event, **kwargs)

    # -- the anchor --------------------------------------------------------------

    async def _continues(self, conn: AsyncConnection, last: RowMapping | None) -> AnchorReading | None:
        """Return the anchor read (None without one); raise AuditChainBroken unless the chain continues from it."""
        return await conn.run_sync(self._continues_in, last)

    def _continues_in(self, conn: Connection, last: RowMapping | None) -> AnchorReading | None:
        """:meth:`_continues` inside a synchronous transaction."""
        if self.anchor is None:
            return None
        reading = self.anchor.read()
        broken = self._break_in(conn, last, reading)
        if broken is not None:
            log.error(
                "vault.audit_chain_broken",
                extra={
                    "reason": broken.reason,
                    "anchor": str(reading.path),
                    "log_seq": int(last["seq"]) if last else 0,
                },
            )
            raise errors.AuditChainBroken(
                f"the audit log does not continue from its signed anchor: {BREAKS[broken.reason]}; nothing was"
                " written. An administrator must run `grace audit verify`.",
                details={"reason": broken.reason},
            )
        return reading

    async def _break(self, conn: AsyncConnection, last: RowMapping | None, reading: AnchorReading) -> _Break | None:
        """Say why the chain (ending at ``last``) does not continue from the anchor ``reading``; None if it does."""
        return await conn.run_sync(self._break_in, last, reading)

    @staticmethod
    def _break_in(conn: Connection, last: RowMapping | None, reading: AnchorReading) -> _Break | None:
        """:meth:`_break` inside a synchronous transaction."""
        head = int(last["seq"]) if last else 0
        if reading.state == "absent":
            if last is None:
                return None  # a new log: its first entry creates the anchor
            return _anchor_missing(reading.path, head)
        signed = reading.checkpoint
        if signed is None:
            return _Break(reading.state, reading.problem or reading.state)
        if signed.seq > head:
            return _Break(
                "truncated", f"the log ends at seq {head}, before the anchor's signed head at seq {signed.seq}"
            )
        if signed.seq == head and last is not None:
            found = last["hash"]
        else:
            query = select(vault_audit.c.hash).where(vault_audit.c.seq == signed.seq)
            found = conn.execute(query).scalar_one_or_none()
        if found != signed.head_hash:
            return _Break(
                "forked",
                f"the log's entry at seq {signed.seq} is not the one the anchor signed: entries were cut and"
                " written again",
            )
        return None

    async def reanchor(self, *, actor: str, reason: str = "") -> Checkpoint:
        """Sign the current head into the anchor, whatever the anchor held, with an entry that says so.

        For after an investigated incident, or an install from before the anchor. The entry records
        what the anchor held and the checkpoints that no longer match the chain (verify stops
        reporting exactly those); deleted, modified, inserted or reordered entries stay reported.
        """
        if self.anchor is None:
            raise errors.ConfigurationError("this vault keeps no anchor file")
        async with self.db.write() as conn:
            await self._lock(conn)
            last = await self._head(conn)
            reading = self.anchor.read()
            broken = await self._break(conn, last, reading)
            superseded = await self._stale_checkpoints(conn)
            details = {
                "reason": reason[:500],
                "found": broken.reason if broken is not None else "intact",
                "previous_anchor": reading.describe(),
                "log_seq": int(last["seq"]) if last else 0,
                "superseded": [[c.seq, c.head_hash] for c in superseded],
            }
            _, checkpoint = await self._write(conn, last, REANCHORED, actor=actor, details=details, sign=True)
        assert checkpoint is not None
        try:
            self.anchor.replace(checkpoint, over=reading)
        except OSError as exc:
            raise errors.StorageUnavailable(
                f"the anchor file {self.anchor.path} could not be written ({exc.strerror or type(exc).__name__});"
                " the re-anchoring is in the log: make the file writable and run `grace audit reanchor` again"
            ) from None
        log.warning(
            "vault.audit_reanchored",
            extra={"seq": checkpoint.seq, "found": details["found"], "superseded": len(superseded)},
        )
        return checkpoint

    async def _stale_checkpoints(self, conn: AsyncConnection) -> list[Checkpoint]:
        """Checkpoints whose head is not the chain's entry at their seq (above a cut, or before it was regrown)."""
        query = (
            select(vault_audit_checkpoints)
            .select_from(
                vault_audit_checkpoints.outerjoin(vault_audit, vault_audit.c.seq == vault_audit_checkpoints.c.seq)
            )
            .where((vault_audit.c.hash.is_(None)) | (vault_audit.c.hash != vault_audit_checkpoints.c.head_hash))
            .order_by(vault_audit_checkpoints.c.seq)
            .limit(SUPERSEDED_MAX)
        )
        return [_checkpoint(r) for r in (await conn.execute(query)).mappings()]

    # -- checkpoints ---------------------------------------------------------

    async def _insert_checkpoint(self, conn: AsyncConnection, seq: int, head_hash: str) -> Checkpoint:
        return await conn.run_sync(self._insert_checkpoint_in, seq, head_hash)

    def _insert_checkpoint_in(self, conn: Connection, seq: int, head_hash: str) -> Checkpoint:
        checkpoint = self.signer.sign(seq, head_hash, self.clock.now())
        conn.execute(
            insert(vault_audit_checkpoints).values(
                seq=seq,
                head_hash=head_hash,
                at=checkpoint.at,
                signature=checkpoint.signature,
                public_key=checkpoint.public_key,
            )
        )
        return checkpoint

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head (unless already signed) and advance the anchor file to it.

        Raises AuditChainBroken, and signs nothing, unless the chain continues from the anchor.
        """
        async with self.db.write() as conn:
            await self._lock(conn)
            last = await self._head(conn)
            checked = await self._continues(conn, last)
            if last is None:
                return None
            cp = vault_audit_checkpoints.c
            query = select(vault_audit_checkpoints).where(cp.seq == last["seq"], cp.head_hash == last["hash"]).limit(1)
            signed = (await conn.execute(query)).mappings().first()
            checkpoint = (
                _checkpoint(signed)
                if signed is not None
                else await self._insert_checkpoint(conn, int(last["seq"]), last["hash"])
            )
        if self.anchor is not None and checked is not None:
            self.anchor.advance(lambda: checkpoint, checkpoint.seq, checked=checked)
        return checkpoint

    async def export(self) -> dict[str, Any]:
        """Return every genuine signed head (the database's checkpoints and the anchor's) for safekeeping.

        The current head is signed first when the chain continues from its anchor; when it does not,
        what is already signed is exported all the same (it is the evidence).
        """
        with contextlib.suppress(errors.AuditChainBroken):
            await self.checkpoint()
        async with self.db.read() as conn:
            rows = (
                (await conn.execute(select(vault_audit_checkpoints).order_by(vault_audit_checkpoints.c.seq)))
                .mappings()
                .all()
            )
        heads = [c for c in map(_checkpoint, rows) if self.signer.genuine(c)]
        if self.anchor is not None and (anchored := self.anchor.read().checkpoint) is not None:
            heads.append(anchored)
        return export_document(heads, public_key=self.public_key, at=self.clock.now())

    def read_export(self, text: str) -> list[Checkpoint]:
        """Read an export (or a copy of the anchor file); InvalidInput unless this vault's key signed each head."""
        return parse_export(text, self.signer)

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

    async def verify(self, against: Sequence[Checkpoint] = ()) -> VerifyReport:
        """Check the chain, every checkpoint, the anchor and ``against`` (exported heads); report what is wrong."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(vault_audit).order_by(vault_audit.c.seq))).mappings().all()
            checkpoint_rows = (
                (await conn.execute(select(vault_audit_checkpoints).order_by(vault_audit_checkpoints.c.seq)))
                .mappings()
                .all()
            )
        report = VerifyReport(entries=len(rows), checkpoints=len(checkpoint_rows), against=len(against))
        origins = [self._origin(r) for r in rows]
        superseded = _superseded(r for r, o in zip(rows, origins, strict=True) if o is not None)
        checkpoints = [c for c in map(_checkpoint, checkpoint_rows) if (c.seq, c.head_hash) not in superseded]
        valid_checkpoints: dict[str, int] = {}
        for checkpoint in checkpoints:
            if self.signer.genuine(checkpoint):
                valid_checkpoints[checkpoint.head_hash] = checkpoint.seq
            else:
                report.bad_checkpoints.append(checkpoint.seq)

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

        holders: dict[int, RowMapping] = {}
        for row, origin in zip(rows, origins, strict=True):
            if origin is not None:
                holders.setdefault(origin, row)
        for checkpoint in checkpoints:
            if checkpoint.seq in report.bad_checkpoints:
                continue
            holder = holders.get(checkpoint.seq)
            if holder is not None and holder["hash"] != checkpoint.head_hash:
                report.bad_checkpoints.append(checkpoint.seq)
        claimed = max((c.seq for c in checkpoints if c.seq not in report.bad_checkpoints), default=0)

        # Heads signed outside the database: the anchor, and an export the caller kept.
        outside = list(against)
        if self.anchor is not None:
            reading = self.anchor.read()
            if reading.checkpoint is not None:
                outside.append(reading.checkpoint)
            elif reading.state != "absent":
                report.anchor = reading.problem
            elif rows:
                report.anchor = _anchor_missing(reading.path, highest).story
        for signed in outside:
            holder = holders.get(signed.seq)
            if signed.seq > highest:
                claimed = max(claimed, signed.seq)
            elif holder is not None and holder["hash"] != signed.head_hash and signed.seq not in report.forked:
                report.forked.append(signed.seq)
        if claimed > highest:
            report.truncated = list(range(highest + 1, claimed + 1))
        report.bad_checkpoints.sort()
        report.forked.sort()
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
                "forked": len(report.forked),
                "anchor_ok": report.anchor is None,
            },
        )
        return report


def _anchor_missing(path: Path, head: int) -> _Break:
    return _Break(
        "anchor_missing",
        f"the anchor file {path} is missing while the log reaches seq {head}. If this install predates the"
        " anchor, or the anchor was moved (GRACE_AUDIT_ANCHOR_PATH), copy it back; otherwise check the log and"
        " then run `grace audit reanchor`",
    )


def _checkpoint(row: RowMapping) -> Checkpoint:
    return Checkpoint(int(row["seq"]), row["head_hash"], row["at"], row["signature"], row["public_key"])


def _superseded(rows: Iterable[RowMapping]) -> set[tuple[int, str]]:
    """The checkpoints authentic re-anchoring entries name as no longer matching the chain."""
    found: set[tuple[int, str]] = set()
    for row in rows:
        if row["event"] != REANCHORED:
            continue
        try:
            listed = json.loads(row["details"]).get("superseded") or []
            found.update((int(seq), str(head)) for seq, head in listed)
        except (ValueError, TypeError, AttributeError):
            continue
    return found


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
