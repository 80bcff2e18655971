"""The queue on SQLite: claims and outcomes as one call on SQLite's thread, inserts through executemany.

SQLite has one writer: a claim (with the outcomes recorded before it) is one ``BEGIN IMMEDIATE``
transaction run as a single function on the database's own thread (:mod:`grace.htm.sqlite_claims`),
so the event loop hands off once per exchange, not once per statement. A worker's liveness lock is
an ``flock`` on a file beside the database (:class:`grace.storage.FileLock`): free once its
process has died, so the next server on the file returns a killed one's tasks at once.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import jsontext, storage
from grace.htm import sql, sqlite_claims
from grace.htm.attempts import Finished
from grace.htm.queue_backend import Claim, OutcomeRow, QueueBackend, liveness_lock
from grace.htm.tables import DATETIME_COLUMNS, IS_RUNNING, JSON_COLUMNS, htm_tasks, htm_workers
from grace.htm.tasks import Task
from grace.storage import Database, utc_text

__all__ = ["SqliteQueue"]

_INSERT = sql.queries()["sqlite_insert_tasks"]


def _same(value: Any) -> Any:
    return value


def _json_text(value: Any) -> str | None:
    return None if value is None else jsontext.dumps(value)


def _to_sqlite(column: str) -> Callable[[Any], Any]:
    """Return how a value of ``column`` is written on SQLite (SQLAlchemy's text form for times)."""
    if column in JSON_COLUMNS:
        return _json_text
    if column in DATETIME_COLUMNS:
        return utc_text
    return _same


@functools.lru_cache(maxsize=8)
def _insert(columns: tuple[str, ...]) -> str:
    return _INSERT.format(columns=", ".join(columns), marks=", ".join("?" for _ in columns))


@dataclass
class SqliteQueue(QueueBackend):
    """The queue's backend-specific operations on SQLite."""

    db: Database

    async def insert(
        self,
        conn: AsyncConnection,
        rows: Sequence[dict[str, Any]],
        *,
        created: Sequence[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing cost
        # more than the insert itself. Only the JSON and time columns are converted. Submits wake
        # this process's workers directly; no other process has any. No outbox here (``created`` is
        # never given): the bus is in this process's memory and its events die with it anyway.
        columns = tuple(rows[0])
        converted = [(i, f) for i, f in enumerate(_to_sqlite(c) for c in columns) if f is not _same]
        pick = operator.itemgetter(*columns)
        values = []
        for r in rows:
            value = list(pick(r))
            for i, f in converted:
                value[i] = f(value[i])
            values.append(tuple(value))
        await conn.exec_driver_sql(_insert(columns), values)

    async def exchange(self, outcomes: Sequence[OutcomeRow], claim: Claim) -> tuple[list[Finished], list[Task]]:
        def exchange(raw: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            done = sqlite_claims.finish(raw, claim.worker_id, outcomes) if outcomes else []
            return done, (sqlite_claims.claim(raw, claim) if claim.n > 0 else [])

        # A claim on its own is not flushed before it returns, as on PostgreSQL (htm_claim's
        # asynchronous commit): an OS crash may undo it, which queues its tasks again; outcomes are.
        done, taken = await self.db.write_sqlite(exchange, flush=bool(outcomes))
        return [Finished.from_row(r) for r in done], [Task.from_row(r) for r in taken]

    async def free_liveness(self, conn: AsyncConnection) -> list[str]:
        holders = (
            await conn.execute(
                select(htm_workers.c.worker_id).where(
                    htm_workers.c.worker_id.in_(select(htm_tasks.c.worker_id).where(IS_RUNNING).distinct())
                )
            )
        ).scalars()
        return [w for w in holders if storage.file_lock_free(self.db, liveness_lock(w))]

    async def tidy(self) -> None:
        pass  # nothing: SQLite reuses the space of the rows a claim rewrites
