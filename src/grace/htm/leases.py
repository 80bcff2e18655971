"""Leases: workers' registrations and heartbeats, and the reap that returns a dead worker's tasks.

A claimed task is leased to its worker until ``lease_expires_at``; the worker's heartbeat extends
the leases of the tasks it really holds. The reap returns tasks whose lease ended to the queue (or
fails them on their last attempt). Where the backend has liveness locks (PostgreSQL), a registered
worker whose lock has stayed free for :attr:`Leases.liveness_confirm_seconds` is dead, and its
tasks return at once instead of when their leases end.

Rows are locked in ``seq`` order, as every change of several tasks does (see the lock order in
:mod:`grace.htm.queue`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import storage
from grace.clock import Clock
from grace.htm import outbox as task_outbox
from grace.htm.attempts import SUMMARY, Finished
from grace.htm.queue_backend import QueueBackend, liveness_lock
from grace.htm.tables import IS_RUNNING, htm_tasks, htm_workers
from grace.storage import Database

__all__ = ["LIVENESS_CONFIRM_SECONDS", "Leases"]

log = logging.getLogger("grace.htm")

# A worker whose liveness lock has been free this long (or a quarter of the lease, if shorter) is dead.
LIVENESS_CONFIRM_SECONDS = 3.0

# Whether a reap may have anything to do: a running task (its lease may have ended, its worker may have
# died; the partial index of running tasks answers) or a worker's record whose heartbeat is ``stale``.
_REAP_WORK = select(
    or_(
        select(htm_tasks.c.seq).where(IS_RUNNING).exists(),
        select(htm_workers.c.worker_id)
        .where(htm_workers.c.heartbeat_at < bindparam("stale", type_=htm_workers.c.heartbeat_at.type))
        .exists(),
    )
)


@dataclass
class Leases:
    """Workers' registrations, heartbeats and liveness, and the reap of expired leases."""

    db: Database
    clock: Clock
    backend: QueueBackend
    lease_seconds: float
    outbox: bool = False  # write the reap's task events into htm_outbox in its transaction (grace.htm.outbox)
    # When this process's reaper first saw each registered worker's liveness lock free (see dead_workers).
    _free_since: dict[str, datetime] = field(default_factory=dict, repr=False)

    # -- workers -----------------------------------------------------------------

    async def register_worker(
        self, worker_id: str, *, host: str, pid: int, concurrency: int, task_types: list[str]
    ) -> None:
        """Record a worker (for capacity and the dashboard), replacing an earlier record of it."""
        now = self.clock.now()
        async with self.db.write() as conn:
            await conn.execute(delete(htm_workers).where(htm_workers.c.worker_id == worker_id))
            await conn.execute(
                insert(htm_workers).values(
                    worker_id=worker_id,
                    host=host[:100],
                    pid=pid,
                    concurrency=concurrency,
                    task_types=task_types,
                    started_at=now,
                    heartbeat_at=now,
                    stopping=False,
                )
            )

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record."""
        async with self.db.write() as conn:
            await conn.execute(delete(htm_workers).where(htm_workers.c.worker_id == worker_id))

    async def mark_stopping(self, worker_id: str) -> None:
        """Record that a worker is stopping: its concurrency no longer counts towards the capacity."""
        async with self.db.write() as conn:
            await conn.execute(update(htm_workers).where(htm_workers.c.worker_id == worker_id).values(stopping=True))

    async def hold_liveness(self, worker_id: str) -> storage.Leadership | storage.FileLock:
        """Take the worker's liveness lock, held on a connection of its own (a file, on SQLite) while the worker lives.

        It waits if the lock is taken: only a reaper's probe ever holds another worker's lock, for
        the rest of its transaction (an instant, on SQLite).
        """
        name = liveness_lock(worker_id)
        lock = storage.FileLock(self.db, name) if self.db.is_sqlite else storage.Leadership(self.db, name)
        await lock.acquire(wait=True)
        return lock

    # -- leases --------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, task_ids: Iterable[str]) -> set[str]:
        """Extend the leases of the given tasks ``worker_id`` runs; return those it still holds.

        Only tasks the worker really has are extended: one it was handed but lost (say, a claim whose
        answer never arrived) is left to expire and return to the queue.
        """
        now = self.clock.now()
        t = htm_tasks
        ids = list(task_ids)
        async with self.db.write() as conn:
            held = (
                await conn.execute(
                    update(t)
                    .where(
                        t.c.seq.in_(
                            select(t.c.seq)
                            .where(t.c.worker_id == worker_id, IS_RUNNING, t.c.task_id.in_(ids))
                            .order_by(t.c.seq)
                            .with_for_update()
                        )
                    )
                    .values(lease_expires_at=now + timedelta(seconds=self.lease_seconds))
                    .returning(t.c.task_id)
                )
            ).scalars()
            still = set(held)
            await conn.execute(update(htm_workers).where(htm_workers.c.worker_id == worker_id).values(heartbeat_at=now))
        return still

    async def reap(self) -> list[Finished]:
        """Return tasks whose lease expired to the queue, or fail them when no attempts remain.

        Every maintenance tick of every worker pool calls this. When no task is running and no
        worker's record is stale, one read says so and nothing is written: the write transaction
        (on SQLite the process's one writer, which every acknowledged write queues behind) is taken
        only when there may be something to reap.
        """
        now = self.clock.now()
        stale_before = now - timedelta(seconds=10 * self.lease_seconds)
        if not await self.db.read_sync(lambda conn: bool(conn.execute(_REAP_WORK, {"stale": stale_before}).scalar())):
            self._free_since = {}  # as dead_workers finds with no task running: no worker holds one
            return []
        t = htm_tasks
        expired = and_(IS_RUNNING, t.c.lease_expires_at < now)
        async with self.db.write() as conn:
            dead = await self.dead_workers(conn)
            if dead:
                # A registered worker whose liveness lock is free has died: its leases end now.
                expired = or_(expired, and_(IS_RUNNING, t.c.worker_id.in_(dead)))
                await conn.execute(delete(htm_workers).where(htm_workers.c.worker_id.in_(dead)))
            # Rows are locked in seq order, as every multi-row change of tasks does.
            expired = t.c.seq.in_(select(t.c.seq).where(expired).order_by(t.c.seq).with_for_update())
            requeued = (
                await conn.execute(
                    update(t)
                    .where(expired, t.c.attempts < t.c.max_attempts)
                    .values(
                        status="queued",
                        queued_at=now,
                        lease_expires_at=None,
                        worker_id=None,
                        error=literal("lease expired on worker ") + t.c.worker_id,
                    )
                    .returning(*SUMMARY)
                )
            ).all()
            failed = (
                await conn.execute(
                    update(t)
                    .where(expired, t.c.attempts >= t.c.max_attempts)
                    .values(
                        status="failed",
                        finished_at=now,
                        lease_expires_at=None,
                        error=literal("lease expired on worker ") + t.c.worker_id + " on the last attempt",
                    )
                    .returning(*SUMMARY)
                )
            ).all()
            await conn.execute(delete(htm_workers).where(htm_workers.c.heartbeat_at < stale_before))
            out = [Finished.from_row(r._mapping) for r in (*requeued, *failed)]
            if self.outbox:
                await task_outbox.write(conn, [(task_outbox.topic_of(f), f.event()) for f in out])
        for f in out:
            log.warning(
                "htm.lease_expired", extra={"task_id": f.task_id, "status": f.status.value, "attempts": f.attempts}
            )
        return out

    # -- liveness ------------------------------------------------------------------

    @property
    def liveness_confirm_seconds(self) -> float:
        """How long a worker's liveness lock must stay free before the worker counts as dead.

        No time on SQLite: a file lock is free only once its process has ended, while PostgreSQL
        frees every lock for a moment when the server restarts.
        """
        if self.db.is_sqlite:
            return 0.0
        return min(LIVENESS_CONFIRM_SECONDS, self.lease_seconds / 4)

    async def dead_workers(self, conn: AsyncConnection) -> list[str]:
        """Return registered workers holding tasks whose process is gone (only where there are liveness locks).

        Every registered worker holds a liveness lock (:meth:`hold_liveness`), which PostgreSQL
        drops the moment the worker's connection dies. A free lock is a dead worker once it has
        stayed free for :attr:`liveness_confirm_seconds`: when the server itself restarts, every
        worker's lock is free for a moment, and each live worker takes its lock again within a
        maintenance tick (:meth:`WorkerPool.keep_alive`). Without the wait, every task running
        anywhere would be taken away and run again after a restart.
        """
        now = self.clock.now()
        confirm = timedelta(seconds=self.liveness_confirm_seconds)
        dead = []
        free: dict[str, datetime] = {}
        for worker_id in await self.backend.free_liveness(conn):
            since = free[worker_id] = self._free_since.get(worker_id, now)
            if now - since >= confirm:
                dead.append(worker_id)
        self._free_since = free  # a lock seen held again, or a worker gone, starts afresh
        return dead
