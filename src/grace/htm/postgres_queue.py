"""The queue on PostgreSQL: claims and outcomes through ``htm_claim`` / ``htm_finish_claim``, liveness locks.

- A claim calls ``htm_claim`` (``grace/htm/sql/schema.sql``) on the asyncpg connection itself:
  one round trip, outside an explicit transaction, so the dispatch counter's row lock is held only
  while the function runs; tasks are taken with ``FOR UPDATE SKIP LOCKED``. A claim on its own
  commits without waiting for the log flush: a database crash can undo it, which re-runs a task
  but loses none.
- Outcomes go through ``htm_finish_claim``: a batch of outcomes, then (when asked) a claim into
  the slots they free, in one round trip.
- Each registered worker holds its liveness lock (a :class:`grace.storage.Leadership` on a
  connection of its own, see :mod:`grace.htm.leases`); the server drops it with the connection
  when the worker's process dies, and the reap asks here which locks are free.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import jsontext, storage
from grace.htm import sql
from grace.htm.attempts import Finished
from grace.htm.queue_backend import Claim, OutcomeRow, QueueBackend, liveness_lock
from grace.htm.tables import IS_RUNNING, JSON_COLUMNS, htm_tasks, htm_workers
from grace.htm.tasks import Task

__all__ = ["WAKE_CHANNEL", "PostgresQueue"]

_SQL = sql.queries()

# Both go straight to asyncpg (Database.autocommit_driver): fixed SQL, prepared once per connection.
CLAIM = _SQL["pg_claim"]
FINISH_CLAIM = _SQL["pg_finish_claim"]
# The same, writing their task events into htm_outbox in the same statement (grace.htm.outbox).
# (Filled with replace, not format: the block's SQL writes JSON braces.)
CLAIM_WITH_EVENTS = _SQL["pg_with_events"].replace("{call}", CLAIM.removeprefix("SELECT * FROM "))
FINISH_CLAIM_WITH_EVENTS = _SQL["pg_with_events"].replace("{call}", FINISH_CLAIM.removeprefix("SELECT * FROM "))
# The created events of a batch of new tasks, in the statement that inserts them: {insert} is
# pg_insert_tasks, and the events' payloads (JSON text, in the tasks' order) are its last parameter.
_INSERT_WITH_EVENTS = (
    "WITH inserted AS ({insert}) INSERT INTO htm_outbox (topic, payload)"
    " SELECT $1::text, p FROM unnest(${n}::text[]) WITH ORDINALITY AS e(p, i) ORDER BY e.i"
)

# Route and insert a group of new tasks (htm_submit): the columns it takes, one array each, in order.
SUBMIT = _SQL["pg_submit"]
SUBMIT_COLUMNS = (
    "task_id",
    "task_type",
    "priority",
    "priority_rank",
    "origin",
    "origin_rule",
    "payload",
    "data_size_bytes",
    "created_by",
    "created_by_name",
    "intent_id",
    "sla_ms",
    "deadline",
    "max_attempts",
    "timeout_seconds",
    "sla_due_at",
)

# The NOTIFY channel on which submits wake idle workers in every process.
WAKE_CHANNEL = "grace_htm_wake"
_WAKE = text(_SQL["pg_wake"]).bindparams(channel=WAKE_CHANNEL)

_TIDY = text(_SQL["pg_tidy"])


@functools.lru_cache(maxsize=8)
def _insert(columns: tuple[str, ...]) -> str:
    """Return the insert of a batch of tasks given as one array per column (in ``columns``' order)."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays, values = [], []
    for i, name in enumerate(columns, 1):
        kind = htm_tasks.c[name].type.compile(dialect=dialect)
        base = "text" if kind.startswith(("VARCHAR", "TEXT", "JSON")) else kind.lower()
        arrays.append(f"${i}::{base}[]")
        values.append(f"CAST(u.{name} AS json)" if name in JSON_COLUMNS else f"u.{name}")
    return _SQL["pg_insert_tasks"].format(
        columns=", ".join(columns), values=", ".join(values), arrays=", ".join(arrays)
    )


@functools.lru_cache(maxsize=8)
def _insert_with_events(columns: tuple[str, ...]) -> str:
    """Return :func:`_insert` with the tasks' created events written to the outbox in the same statement.

    Parameters: the topic, one array per column, then the events' payloads.
    """
    shifted = _insert(columns)
    for i in range(len(columns), 0, -1):  # the columns' arrays move up one place, after the topic
        shifted = shifted.replace(f"${i}::", f"${i + 1}::")
    return _INSERT_WITH_EVENTS.format(insert=shifted, n=len(columns) + 2)


def _json_text(value: Any) -> str | None:
    return None if value is None else jsontext.dumps(value)


@dataclass
class PostgresQueue(QueueBackend):
    """The queue's backend-specific operations on PostgreSQL."""

    db: storage.Database
    events: bool = False  # write task events into htm_outbox with the claims and outcomes

    def __post_init__(self) -> None:
        self._claim = CLAIM_WITH_EVENTS if self.events else CLAIM
        self._finish_claim = FINISH_CLAIM_WITH_EVENTS if self.events else FINISH_CLAIM

    async def insert(
        self,
        conn: AsyncConnection,
        rows: Sequence[dict[str, Any]],
        *,
        created: Sequence[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        # One statement for the whole batch on the driver connection, under the caller's transaction.
        columns = tuple(rows[0])
        arrays = [[_json_text(r[c]) for r in rows] if c in JSON_COLUMNS else [r[c] for r in rows] for c in columns]
        driver = await storage.driver_in_transaction(conn)
        if created:
            topic = created[0][0]  # one topic: they are all htm.task.created
            payloads = [jsontext.dumps(p) for _, p in created]
            await driver.execute(_insert_with_events(columns), topic, *arrays, payloads)
        else:
            await driver.execute(_insert(columns), *arrays)
        # NOTIFY is delivered on commit, so no worker looks before the tasks are visible.
        if any(r["status"] == "queued" for r in rows):
            await conn.execute(_WAKE)

    async def submit(
        self,
        on: Any,
        rows: Sequence[dict[str, Any]],
        *,
        now: datetime,
        order: Sequence[str],
        weights: Sequence[int],
        bursts: Sequence[int],
        lock_keys: Sequence[int],
        capacity: int,
        fallback_capacity: int,
        live_after: datetime,
        defer: timedelta,
        defer_text: str,
        event_topic: str | None,
    ) -> list[tuple[str, str, str, datetime]]:
        """Route and insert ``rows`` through ``htm_submit``.

        ``on`` is an asyncpg connection (in its open transaction if it has one), or the database, whose
        autocommit connection then runs it as a transaction of its own. Returns each task's route,
        quota used, reasoning and admission time, in order.
        """
        arrays = [
            [_json_text(r[c]) for r in rows] if c in JSON_COLUMNS else [r[c] for r in rows] for c in SUBMIT_COLUMNS
        ]
        args = (
            now,
            list(order),
            list(weights),
            list(bursts),
            list(lock_keys),
            capacity,
            fallback_capacity,
            live_after,
            defer // timedelta(microseconds=1),
            defer_text,
            jsontext.dumps(defer.total_seconds()),
            event_topic,
            WAKE_CHANNEL,
            *arrays,
        )
        if isinstance(on, storage.Database):
            async with on.autocommit_driver() as driver:
                answers = await driver.fetch(SUBMIT, *args)
        else:
            answers = await on.fetch(SUBMIT, *args)
        return [(a[0], a[1], a[2], a[3]) for a in answers]

    async def exchange(self, outcomes: Sequence[OutcomeRow], claim: Claim) -> tuple[list[Finished], list[Task]]:
        args = (
            claim.n,
            claim.now,
            float(claim.lease_seconds),
            claim.capacity,
            max(1, claim.fallback_capacity),
            claim.now - timedelta(seconds=claim.lease_seconds),
        )
        # One statement, so autocommit makes it one atomic transaction: one round trip, no pool
        # checkout, ping or BEGIN. Outcomes without a claim go through the same function with n = 0.
        async with self.db.autocommit_driver() as conn:
            if not outcomes:
                rows = await conn.fetch(self._claim, claim.worker_id, *args)
                return [], [Task.from_row(r) for r in rows]
            # One array per field of the outcomes, in OutcomeRow's order (the function's parameters').
            fields = [list(f) for f in zip(*outcomes, strict=True)]
            rows = await conn.fetch(self._finish_claim, claim.worker_id, *fields, *args)
        # Claimed rows come back running; no outcome is ever recorded as running.
        recorded = [Finished.from_row(r) for r in rows if r["status"] != "running"]
        return recorded, [Task.from_row(r) for r in rows if r["status"] == "running"]

    async def free_liveness(self, conn: AsyncConnection) -> list[str]:
        holders = (
            await conn.execute(
                select(htm_workers.c.worker_id).where(
                    htm_workers.c.worker_id.in_(select(htm_tasks.c.worker_id).where(IS_RUNNING).distinct())
                )
            )
        ).scalars()
        free = []
        for worker_id in holders:
            # Taken when free, for the rest of the reap's transaction: its worker is gone.
            if await storage.try_serialise(conn, liveness_lock(worker_id)):
                free.append(worker_id)
        return free

    async def tidy(self) -> None:
        """Vacuum the two tiny tables every claim rewrites.

        Each claim leaves dead versions of the dispatch counter and the origins' rows; when
        autovacuum is slow (or off) they pile up and every claim walks them. Vacuuming eight rows
        takes well under a millisecond; SKIP_LOCKED lets one worker do it while the others skip.
        It also makes every session plan ``htm_claim``'s statements afresh (they read
        ``htm_origins``), so the generic plans it keeps follow the task table as it grows.
        """
        async with self.db.autocommit() as conn:
            await conn.execute(_TIDY)
