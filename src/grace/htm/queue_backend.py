"""The seam between the queue and its database: claims, inserts and liveness, one implementation per backend.

:class:`grace.htm.queue.Queue` and :class:`grace.htm.leases.Leases` hold what is the same on every
backend (SQLAlchemy Core); what differs goes through :class:`QueueBackend`:

- :class:`grace.htm.postgres_queue.PostgresQueue`: ``htm_claim`` / ``htm_finish_claim`` in one
  round trip on an autocommit asyncpg connection, inserts as one statement of column arrays plus a
  ``NOTIFY``, asking whether workers' liveness locks are free, vacuuming the claim's two tiny tables.
- :class:`grace.htm.sqlite_queue.SqliteQueue`: the claim and the outcomes as one call on SQLite's
  own thread in one ``BEGIN IMMEDIATE`` transaction (:mod:`grace.htm.sqlite_claims`), inserts
  through the driver's ``executemany``; no liveness locks (one process owns the file's workers).

The SQL both send is in ``grace/htm/sql/queries.sql``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from grace.htm.attempts import Finished
from grace.htm.tasks import Task

__all__ = ["Claim", "OutcomeRow", "QueueBackend", "liveness_lock"]


def liveness_lock(worker_id: str) -> str:
    """Return the name of the lock a live worker holds (a :class:`grace.storage.Leadership`)."""
    return f"grace.htm.worker.{worker_id}"


class Claim(NamedTuple):
    """What one claim needs to know."""

    worker_id: str
    n: int  # how many tasks to take (0: none, only record outcomes)
    now: datetime
    lease_seconds: float
    capacity: int  # configured capacity, or 0 to use the live workers' concurrency
    fallback_capacity: int  # when no live worker reports any
    total_weight: int


class OutcomeRow(NamedTuple):
    """One outcome in the form it is written (the fields in the order the backends send them)."""

    task_id: str
    attempt: int
    status: str
    finished_at: datetime | None
    queued_at: datetime | None
    result: str | None  # JSON text
    error: str | None
    give_back: int  # 1 when the attempt is handed back unused (a release), else 0


class QueueBackend(abc.ABC):
    """The queue's backend-specific operations."""

    @abc.abstractmethod
    async def insert(
        self,
        conn: AsyncConnection,
        rows: Sequence[dict[str, Any]],
        *,
        created: Sequence[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        """Insert routed tasks (all with the same keys) inside the caller's transaction; wake idle workers.

        ``created``, when given, are their events, written into the outbox in the same transaction.
        """

    @abc.abstractmethod
    async def exchange(self, outcomes: Sequence[OutcomeRow], claim: Claim) -> tuple[list[Finished], list[Task]]:
        """Record ``claim.worker_id``'s outcomes, then claim up to ``claim.n`` tasks, in one transaction.

        Return the outcomes recorded (an outcome whose attempt the worker no longer holds is left
        out) and the tasks claimed.
        """

    @abc.abstractmethod
    async def free_liveness(self, conn: AsyncConnection) -> list[str]:
        """Return the registered workers holding running tasks whose liveness lock is free now.

        Where every worker leads its lock (SQLite: one process owns the file), none is ever free.
        """

    @abc.abstractmethod
    async def tidy(self) -> None:
        """Do the backend's periodic upkeep of the queue's tables."""
