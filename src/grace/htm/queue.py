"""The durable queue: enqueue, claim by fair pick, record outcomes, cancel and read tasks.

What is the same on every backend goes through SQLAlchemy Core here; the hot path, which differs,
goes through a :class:`~grace.htm.queue_backend.QueueBackend` (:mod:`grace.htm.postgres_queue`,
:mod:`grace.htm.sqlite_queue`) whose SQL is in ``grace/htm/sql/``. Leases, heartbeats and the reap
are :mod:`grace.htm.leases`; the queue hands those calls on, so its callers need one object.

LOCK ORDER (PostgreSQL). A change of several tasks locks their rows in ``seq`` order (outcomes,
heartbeats, reaping, SLA escalation). A claim holds the dispatch counter's lock and never waits
for a task row: the tasks it takes, and the due waiting tasks it releases, are locked with SKIP
LOCKED. So a worker may record outcomes (locking their rows) and then queue for the counter to
claim, and still no two transactions wait on each other in a cycle.

Every state change is guarded by ``status = 'running' AND worker_id = :worker
AND attempts = :attempt``, so a worker that lost its lease cannot overwrite
what another attempt did: its outcome is rejected and recorded in
``htm_late_completions``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, jsontext, storage
from grace.clock import Clock
from grace.htm import outbox as task_outbox
from grace.htm.attempts import MAX_ERROR_CHARS, SUMMARY, Exchange, Finished, Outcome, backoff
from grace.htm.leases import Leases
from grace.htm.origins import ORDER, Origin
from grace.htm.postgres_queue import WAKE_CHANNEL, PostgresQueue
from grace.htm.queue_backend import Claim, OutcomeRow, QueueBackend
from grace.htm.sqlite_queue import SqliteQueue
from grace.htm.tables import IS_RUNNING, htm_late_completions, htm_origins, htm_scheduler, htm_tasks
from grace.htm.tasks import FINISHED, WAITING, Status, Task
from grace.storage import Database

__all__ = ["WAKE_CHANNEL", "Exchange", "Finished", "Outcome", "Queue", "backoff"]

log = logging.getLogger("grace.htm")

# The lock that serialises the queue's one-time set-up across processes.
PREPARE_LOCK = "grace.htm.prepare"


def written(o: Outcome) -> OutcomeRow:
    """Return ``o`` in the form the backends write it."""
    status = o.status
    return OutcomeRow(
        o.task_id,
        o.attempt,
        status.value,
        o.at if status in FINISHED else None,
        o.retry_at if status is Status.DELAYED else (o.at if status is Status.QUEUED else None),
        None if status is not Status.COMPLETED or o.result is None else jsontext.dumps(o.result),
        o.error[:MAX_ERROR_CHARS] if o.error else None,
        1 if status is Status.QUEUED else 0,
    )


@dataclass
class Queue:
    """The task table and the operations workers and the router perform on it."""

    db: Database
    clock: Clock
    weights: dict[Origin, int]
    lease_seconds: float
    capacity: int = 0
    # Task events go into htm_outbox with the changes they describe (PostgreSQL with task events on
    # and the bus in the database; grace.htm.outbox): the callers then only wake the relay.
    outbox: bool = False
    backend: QueueBackend = field(init=False, repr=False)
    leases: Leases = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The one place the backend is chosen; everything backend-specific is behind it.
        if self.db.is_sqlite:
            self.outbox = False  # the bus is in this process's memory: nothing to write ahead
        self.backend = SqliteQueue(self.db) if self.db.is_sqlite else PostgresQueue(self.db, events=self.outbox)
        self.leases = Leases(self.db, self.clock, self.backend, self.lease_seconds, outbox=self.outbox)

    @property
    def total_weight(self) -> int:
        return sum(self.weights.values())

    # -- set-up --------------------------------------------------------------

    async def prepare(self) -> None:
        """Make sure the dispatch counter and every origin's row exist, with the configured weights."""
        async with self.db.write() as conn:
            # Processes starting together must not both insert the rows; the lock ends with the transaction.
            await storage.serialise(conn, PREPARE_LOCK)
            if (await conn.execute(select(htm_scheduler.c.id).where(htm_scheduler.c.id == 1))).first() is None:
                await conn.execute(insert(htm_scheduler).values(id=1, dispatched=0))
            existing = {
                r.origin: r.weight for r in (await conn.execute(select(htm_origins.c.origin, htm_origins.c.weight)))
            }
            for origin in ORDER:
                weight = self.weights[origin]
                if origin.value not in existing:
                    await conn.execute(
                        insert(htm_origins).values(
                            origin=origin.value,
                            position=origin.position,
                            weight=weight,
                            credit=0,
                            since=0,
                            dispatched=0,
                        )
                    )
                elif existing[origin.value] != weight:
                    await conn.execute(
                        update(htm_origins).where(htm_origins.c.origin == origin.value).values(weight=weight)
                    )

    # -- enqueue -------------------------------------------------------------

    async def insert(
        self,
        conn: AsyncConnection,
        rows: Sequence[dict[str, Any]],
        *,
        created: Sequence[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        """Insert routed tasks inside the router's transaction, with their ``created`` events in the outbox.

        On PostgreSQL, when any can run now, idle workers in every process are woken (NOTIFY is
        delivered on commit, so none looks before the tasks are visible).
        """
        if rows:
            await self.backend.insert(conn, rows, created=created if self.outbox else None)

    # -- claim and finish ----------------------------------------------------

    async def claim(self, worker_id: str, n: int, *, fallback_capacity: int) -> list[Task]:
        """Take up to ``n`` tasks by fair pick for ``worker_id``; return them in dispatch order."""
        return (await self.finish_and_claim(worker_id, [], n, fallback_capacity=fallback_capacity)).claimed

    async def finish(self, worker_id: str, outcomes: Sequence[Outcome]) -> tuple[list[Finished], list[Outcome]]:
        """Record outcomes of ``worker_id``'s attempts; return (recorded, rejected as late)."""
        done = await self.finish_and_claim(worker_id, outcomes, 0, fallback_capacity=1)
        return done.recorded, done.late

    async def finish_and_claim(
        self, worker_id: str, outcomes: Sequence[Outcome], n: int, *, fallback_capacity: int
    ) -> Exchange:
        """Record ``outcomes``, then claim up to ``n`` tasks, in one round trip and one transaction.

        A worker whose tasks just finished claims into the slots they free without a second trip to
        the database. The claim is the same fair pick as :meth:`claim`.
        """
        n = max(0, n)
        if not outcomes and n == 0:
            return Exchange([], [], [])
        claim = Claim(
            worker_id, n, self.clock.now(), self.lease_seconds, self.capacity, fallback_capacity, self.total_weight
        )
        recorded, claimed = await self.backend.exchange([written(o) for o in outcomes], claim)
        claimed.sort(key=lambda t: t.dispatch_seq or 0)
        done = {f.task_id for f in recorded}
        late = [o for o in outcomes if o.task_id not in done]
        if late:
            # An outcome sent again after a dropped connection may have committed the first time.
            already = await self._already_recorded(worker_id, late)
            if already:
                recorded = [*recorded, *already]
                done.update(f.task_id for f in already)
                late = [o for o in late if o.task_id not in done]
        if late:
            await self._record_late(worker_id, late)
        return Exchange(recorded, late, claimed)

    async def _already_recorded(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Finished]:
        """Return the outcomes among ``outcomes`` that the task rows already show as recorded, by this worker.

        A worker sends an outcome again when the answer to the first send was lost (the connection
        dropped after the commit): the row then holds exactly what that outcome wrote (its status,
        its attempt, its own finish or requeue time, and, for a finished task, this worker), which
        no other change writes. Such an outcome is the worker's own, recorded once; it is handed
        back as recorded, so its event is published, rather than rejected as a late completion.
        """
        t = htm_tasks
        ids = [o.task_id for o in outcomes]
        async with self.db.read() as conn:
            rows = {
                r["task_id"]: r
                for r in (await conn.execute(select(*SUMMARY, t.c.worker_id).where(t.c.task_id.in_(ids)))).mappings()
            }
        out = []
        for o in outcomes:
            row = rows.get(o.task_id)
            w = written(o)
            if row is None or row["status"] != w.status or int(row["attempts"]) != w.attempt - w.give_back:
                continue
            if o.status in FINISHED:
                same = row["worker_id"] == worker_id and storage.utc_read(row["finished_at"]) == w.finished_at
            else:
                same = row["worker_id"] is None and storage.utc_read(row["queued_at"]) == w.queued_at
            if same:
                log.info("htm.outcome_already_recorded", extra={"task_id": o.task_id, "worker_id": worker_id})
                out.append(Finished.from_row(row))
        return out

    async def running_for(self, worker_id: str, *, since: datetime) -> list[Task]:
        """Return the tasks running for ``worker_id`` that were claimed at ``since`` or later."""
        t = htm_tasks
        async with self.db.read() as conn:
            rows = (
                (await conn.execute(select(t).where(IS_RUNNING, t.c.worker_id == worker_id, t.c.started_at >= since)))
                .mappings()
                .all()
            )
        return [Task.from_row(r) for r in rows]

    async def _record_late(self, worker_id: str, late: Iterable[Outcome]) -> None:
        rows = []
        for o in late:
            rows.append(
                {
                    "task_id": o.task_id,
                    "worker_id": worker_id,
                    "attempt": o.attempt,
                    "outcome": o.status.value,
                    "reason": "the worker no longer held the task's lease",
                    "at": self.clock.now(),
                }
            )
            log.warning(
                "htm.late_completion_rejected",
                extra={"task_id": o.task_id, "worker_id": worker_id, "attempt": o.attempt, "outcome": o.status.value},
            )
        async with self.db.write() as conn:
            await conn.execute(insert(htm_late_completions), rows)

    async def late_completions(self, task_id: str) -> list[dict[str, Any]]:
        """Return the rejected late outcomes recorded for a task."""
        c = htm_late_completions.c
        async with self.db.read() as conn:
            rows = (
                (await conn.execute(select(htm_late_completions).where(c.task_id == task_id).order_by(c.id)))
                .mappings()
                .all()
            )
        return [
            {
                "worker_id": r["worker_id"],
                "attempt": r["attempt"],
                "outcome": r["outcome"],
                "reason": r["reason"],
                "at": r["at"].isoformat(),
            }
            for r in rows
        ]

    # -- leases and workers (grace.htm.leases) -------------------------------------

    async def heartbeat(self, worker_id: str, task_ids: Iterable[str]) -> set[str]:
        """Extend the leases of the given tasks ``worker_id`` runs; return those it still holds."""
        return await self.leases.heartbeat(worker_id, task_ids)

    async def reap(self) -> list[Finished]:
        """Return tasks whose lease expired (or whose worker died) to the queue, or fail them."""
        return await self.leases.reap()

    async def hold_liveness(self, worker_id: str) -> storage.Leadership | storage.FileLock:
        """Take the worker's liveness lock, held on a connection of its own while it lives."""
        return await self.leases.hold_liveness(worker_id)

    @property
    def liveness_confirm_seconds(self) -> float:
        """How long a worker's liveness lock must stay free before the worker counts as dead."""
        return self.leases.liveness_confirm_seconds

    async def register_worker(
        self, worker_id: str, *, host: str, pid: int, concurrency: int, task_types: list[str]
    ) -> None:
        await self.leases.register_worker(worker_id, host=host, pid=pid, concurrency=concurrency, task_types=task_types)

    async def unregister_worker(self, worker_id: str) -> None:
        await self.leases.unregister_worker(worker_id)

    async def mark_stopping(self, worker_id: str) -> None:
        await self.leases.mark_stopping(worker_id)

    async def tidy(self) -> None:
        """Do the backend's periodic upkeep of the queue's tables (on PostgreSQL, vacuum the claim's two)."""
        await self.backend.tidy()

    # -- cancel and read ---------------------------------------------------------

    async def cancel(self, task_id: str, *, visible_to: str | None) -> Finished:
        """Cancel a waiting or running task; 404 if unseen, 409 if it already finished."""
        now = self.clock.now()
        t = htm_tasks
        owned = t.c.created_by == visible_to if visible_to is not None else literal(True)
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    update(t)
                    .where(t.c.task_id == task_id, owned, t.c.status.in_([s.value for s in (*WAITING, Status.RUNNING)]))
                    .values(status="cancelled", finished_at=now, lease_expires_at=None, error="cancelled")
                    .returning(*SUMMARY)
                )
            ).first()
            if row is None:
                current = (await conn.execute(select(t.c.status).where(t.c.task_id == task_id, owned))).scalar()
            elif self.outbox:
                finished = Finished.from_row(row._mapping)
                await task_outbox.write(conn, [(task_outbox.topic_of(finished), finished.event())])
        if row is not None:
            return Finished.from_row(row._mapping)
        if current is None:
            raise errors.NotFound(f"no task {task_id[:60]!r}")
        raise errors.TaskAlreadyFinished(
            f"task {task_id} is already {current}; only waiting or running tasks can be cancelled"
        )

    async def get(self, task_id: str, *, visible_to: str | None) -> Task:
        query = select(htm_tasks).where(htm_tasks.c.task_id == task_id)
        if visible_to is not None:
            query = query.where(htm_tasks.c.created_by == visible_to)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise errors.NotFound(f"no task {task_id[:60]!r}")
        return Task.from_row(row)

    async def list_tasks(
        self,
        *,
        visible_to: str | None,
        status: Status | None = None,
        origin: Origin | None = None,
        limit: int = 50,
        before_seq: int | None = None,
    ) -> list[Task]:
        t = htm_tasks
        query = select(t).order_by(t.c.seq.desc()).limit(limit)
        if visible_to is not None:
            query = query.where(t.c.created_by == visible_to)
        if status is not None:
            query = query.where(t.c.status == status.value)
        if origin is not None:
            query = query.where(t.c.origin == origin.value)
        if before_seq is not None:
            query = query.where(t.c.seq < before_seq)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [Task.from_row(r) for r in rows]
