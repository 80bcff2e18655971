"""Idempotency keys: a creating request retried with the same key gets the first answer, not a second effect.

A key belongs to a principal (a user, or one agent of a user): two principals may use the same key.
Each stored key holds the fingerprint of the request that first used it (method, path and body,
SHA-256) and, once that request succeeded, its answer (status and body). For ``ttl`` (24 h):

- the same key with the same fingerprint returns the stored answer (nothing runs again);
- the same key with another fingerprint is refused (:class:`grace.errors.IdempotencyKeyReused`);
- the same key while its first request is still running is refused
  (:class:`grace.errors.IdempotencyKeyInUse`: try again in a moment).

Two ways to record an answer:

- in the transaction that makes the change (:meth:`IdempotencyKeys.record_in`, the task manager's
  submissions): the key and the change commit together, so a crash can leave neither or both;
- around a change made elsewhere (:meth:`begin`, then :meth:`finish` or :meth:`abandon`): the key is
  held while the request runs. A process killed in between leaves the key held until ``ttl``, so a
  retry is refused rather than run twice.

Only successful answers (2xx) are kept; any other answer releases the key, so a retry runs again.
Expired keys are deleted by :meth:`prune` (the serving process's periodic upkeep) and ignored before.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Column, Index, Integer, String, Table, Text, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.clock import Clock
from grace.storage import Database, UTCDateTime, metadata

__all__ = ["MAX_KEY_LENGTH", "TTL", "IdempotencyKeys", "Stored", "fingerprint", "idempotency_keys"]

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("principal", String(200), primary_key=True),  # user id, "/" and the agent's name (or nothing)
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # SHA-256 of method, path and body
    Column("status", Integer, nullable=True),  # NULL while the first request runs
    Column("body", Text, nullable=True),  # the first answer's body (JSON text)
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)


def fingerprint(method: str, path: str, body: bytes) -> str:
    """Return what identifies a request for its key: SHA-256 over method, path and body."""
    digest = hashlib.sha256(f"{method.upper()} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True)
class Stored:
    """The first answer given under a key."""

    status: int
    body: str


class IdempotencyKeys:
    """The stored keys, per principal, for ``ttl``."""

    def __init__(self, db: Database, clock: Clock, *, ttl: timedelta = TTL) -> None:
        self.db = db
        self.clock = clock
        self.ttl = ttl

    async def lookup(self, principal: str, key: str, fingerprint: str) -> Stored | None:
        """Return the stored answer for a matching retry, None if the key is free; refuse a reuse or a key in use."""
        t = idempotency_keys
        async with self.db.read() as conn:
            row = (
                (
                    await conn.execute(
                        select(t.c.fingerprint, t.c.status, t.c.body, t.c.expires_at).where(
                            t.c.principal == principal, t.c.key == key
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None or row["expires_at"] <= self.clock.now():
            return None
        return self._judge(row["fingerprint"], row["status"], row["body"], fingerprint)

    @staticmethod
    def _judge(stored_fp: str, status: int | None, body: str | None, fingerprint: str) -> Stored:
        if stored_fp != fingerprint:
            raise errors.IdempotencyKeyReused()
        if status is None or body is None:
            raise errors.IdempotencyKeyInUse()
        return Stored(status, body)

    async def _insert(
        self, conn: AsyncConnection, principal: str, key: str, fingerprint: str, status: int | None, body: str | None
    ) -> None:
        t = idempotency_keys
        now = self.clock.now()
        # An expired key is free again: its row goes before the new one is written.
        await conn.execute(delete(t).where(t.c.principal == principal, t.c.key == key, t.c.expires_at <= now))
        await conn.execute(
            insert(t).values(
                principal=principal,
                key=key,
                fingerprint=fingerprint,
                status=status,
                body=body,
                created_at=now,
                expires_at=now + self.ttl,
            )
        )

    async def record_in(
        self, conn: AsyncConnection, principal: str, key: str, fingerprint: str, status: int, body: str
    ) -> None:
        """Record an answer inside the transaction that made the change; IntegrityError if the key was taken."""
        await self._insert(conn, principal, key, fingerprint, status, body)

    async def begin(self, principal: str, key: str, fingerprint: str) -> Stored | None:
        """Hold a free key for a request about to run (None), or return or refuse as :meth:`lookup` does."""
        while True:
            stored = await self.lookup(principal, key, fingerprint)
            if stored is not None:
                return stored
            try:
                async with self.db.write() as conn:
                    await self._insert(conn, principal, key, fingerprint, None, None)
                return None
            except IntegrityError:
                continue  # another request took it a moment ago: judge against it

    async def finish(self, principal: str, key: str, status: int, body: str) -> None:
        """Record the answer of a request that held its key."""
        t = idempotency_keys
        async with self.db.write() as conn:
            await conn.execute(
                update(t).where(t.c.principal == principal, t.c.key == key).values(status=status, body=body)
            )

    async def abandon(self, principal: str, key: str) -> None:
        """Release a key whose request failed, so a retry runs again."""
        t = idempotency_keys
        async with self.db.write() as conn:
            await conn.execute(delete(t).where(t.c.principal == principal, t.c.key == key, t.c.status.is_(None)))

    async def prune(self) -> int:
        """Delete expired keys; return how many went."""
        t = idempotency_keys
        async with self.db.write() as conn:
            result = await conn.execute(delete(t).where(t.c.expires_at <= self.clock.now()))
        return int(result.rowcount or 0)
