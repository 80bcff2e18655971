"""The durable queue: enqueue, claim by fair pick, finish, release, cancel, and leases.

Everything goes through SQLAlchemy Core except the hot path, which is written
per backend in the named SQL blocks below:

- ``CLAIM_POSTGRES`` calls ``htm_claim`` (migrations ``0006_htm_lean_claim`` and
  ``0007_htm_single_claim``, which gives a claim of one task a one-statement path) on
  the asyncpg connection itself: one round trip, outside an explicit transaction,
  so the dispatch counter's row lock is held only while the function runs; tasks
  are taken with ``FOR UPDATE SKIP LOCKED``. A claim on its own commits without
  waiting for the log flush: a database crash can undo it, which re-runs a task
  but loses none.
- ``FINISH_CLAIM_POSTGRES`` calls ``htm_finish_claim`` (migration
  ``0007_htm_single_claim``): a batch of outcomes, then (when asked) a claim
  into the slots they free, in one round trip.
- On SQLite the same steps are :mod:`grace.htm.sqlite_claims`, run as one call
  on SQLite's thread inside one ``BEGIN IMMEDIATE`` transaction (SQLite has one
  writer), using :mod:`grace.htm.fairness`.

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

import functools
import logging
import operator
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, jsontext, storage
from grace.clock import Clock
from grace.htm import sqlite_claims
from grace.htm.origins import ORDER, Origin
from grace.htm.tables import (
    DATETIME_COLUMNS,
    IS_RUNNING,
    JSON_COLUMNS,
    SUMMARY_COLUMNS,
    htm_late_completions,
    htm_origins,
    htm_scheduler,
    htm_tasks,
    htm_workers,
)
from grace.htm.tasks import FINISHED, WAITING, Status, Task, member_of
from grace.storage import Database
from grace.storage.types import utc_from_text, utc_text

__all__ = ["Exchange", "Finished", "Outcome", "Queue", "backoff"]

log = logging.getLogger("grace.htm")

# A claim on its own commits asynchronously (migration ``0006_htm_lean_claim`` says why that loses no task).
# Both go straight to asyncpg (Database.autocommit_driver): fixed SQL, prepared once per connection.
CLAIM_POSTGRES = "SELECT * FROM htm_claim($1, $2, $3, $4, $5, $6, $7, true)"

# htm_finish_claim (migration ``0007_htm_single_claim``): the outcomes, then a claim, in one call.
FINISH_CLAIM_POSTGRES = (
    "SELECT * FROM htm_finish_claim($1, $2::text[], $3::integer[], $4::text[], $5::timestamptz[], "
    "$6::timestamptz[], $7::text[], $8::text[], $9::integer[], $10, $11, $12, $13, $14, $15)"
)

# PostgreSQL NOTIFY channel on which submits wake idle workers in every process.
WAKE_CHANNEL = "grace_htm_wake"
_WAKE = text(f"SELECT pg_notify('{WAKE_CHANNEL}', '')")

# Columns handed back after a state change, for events and callers.
SUMMARY = tuple(htm_tasks.c[name] for name in SUMMARY_COLUMNS)

MAX_ERROR_CHARS = 2000
LIVENESS_KEY = "grace.htm.worker."
# A worker whose liveness lock has been free this long (or a quarter of the lease, if shorter) is dead.
LIVENESS_CONFIRM_SECONDS = 3.0


def backoff(attempt: int, base: float, cap: float) -> float:
    """Return the wait before retry number ``attempt`` (1 after the first failure): capped exponential."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Outcome:
    """What a worker reports for one attempt of a task."""

    task_id: str
    attempt: int
    status: Status  # completed, failed, timed_out, delayed (retry), queued (released)
    at: datetime
    result: Any = None
    error: str | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Exchange:
    """What :meth:`Queue.finish_and_claim` did: outcomes recorded, outcomes rejected as late, tasks claimed."""

    recorded: list[Finished]
    late: list[Outcome]
    claimed: list[Task]


@dataclass(frozen=True)
class Finished:
    """The recorded effect of an outcome (or of a lease expiry, or a cancel)."""

    task_id: str
    task_type: str
    origin: str
    priority: str
    intent_id: str | None
    status: Status
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_at: datetime
    deadline: datetime | None
    data_size_bytes: int
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Finished:
        # On the outcome path for every task: fields set straight into a new instance, as Task.from_row.
        finished = object.__new__(cls)
        finished.__dict__.update(
            task_id=row["task_id"],
            task_type=row["task_type"],
            origin=row["origin"],
            priority=row["priority"],
            intent_id=row["intent_id"],
            status=member_of(Status, row["status"]),
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            created_at=_utc(row["created_at"]),
            started_at=_aware(row["started_at"]),
            finished_at=_aware(row["finished_at"]),
            queued_at=_utc(row["queued_at"]),
            deadline=_aware(row["deadline"]),
            data_size_bytes=int(row["data_size_bytes"]),
            error=row["error"],
        )
        return finished

    def event(self) -> dict[str, Any]:
        """Return the bus payload describing this change (never the payload or result)."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "origin": self.origin,
            "priority": self.priority,
            "intent_id": self.intent_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
        }
        if self.started_at is not None and self.finished_at is not None:
            out["duration_ms"] = round((self.finished_at - self.started_at).total_seconds() * 1000, 3)
        if self.finished_at is not None:
            out["total_ms"] = round((self.finished_at - self.created_at).total_seconds() * 1000, 3)
            if self.deadline is not None:
                out["sla_met"] = self.finished_at <= self.deadline
        if self.status in (Status.DELAYED, Status.QUEUED):
            out["queued_at"] = self.queued_at.isoformat()
        if self.error:
            out["error"] = self.error
        return out


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
def _insert_postgres(columns: tuple[str, ...]) -> str:
    """Return the insert of a batch of tasks given as one array per column (in ``columns``' order).

    Text goes as ``text[]`` and is checked against each column's length on insert (a cast to
    ``varchar(n)[]`` would cut it short instead); JSON goes as text and is cast to JSON.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays, picks = [], []
    for i, name in enumerate(columns, 1):
        kind = htm_tasks.c[name].type.compile(dialect=dialect)
        base = "text" if kind.startswith(("VARCHAR", "TEXT", "JSON")) else kind.lower()
        arrays.append(f"${i}::{base}[]")
        picks.append(f"CAST(u.{name} AS json)" if name in JSON_COLUMNS else f"u.{name}")
    names = ", ".join(columns)
    return (
        f"INSERT INTO htm_tasks ({names}) SELECT {', '.join(picks)} "  # noqa: S608 - column names
        f"FROM unnest({', '.join(arrays)}) AS u({names})"
    )


def _utc(value: Any) -> datetime:
    out = _aware(value)
    assert out is not None
    return out


def _aware(value: Any) -> datetime | None:
    # Text queries on SQLite hand back naive ISO strings; everything stored is UTC.
    if value is None:
        return None
    if type(value) is datetime and value.tzinfo is UTC:  # as asyncpg hands them back
        return value
    if isinstance(value, str):
        return utc_from_text(value)
    when: datetime = value
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


# The lock that serialises the queue's one-time set-up across processes.
PREPARE_LOCK = "grace.htm.prepare"


@dataclass
class Queue:
    """The task table and the operations workers and the router perform on it."""

    db: Database
    clock: Clock
    weights: dict[Origin, int]
    lease_seconds: float
    capacity: int = 0
    # When this process's reaper first saw each registered worker's liveness lock free (see _dead_workers).
    _free_since: dict[str, datetime] = field(default_factory=dict, repr=False)

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

    async def insert(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert routed tasks inside the router's transaction.

        On PostgreSQL, when any can run now, idle workers in every process are woken (NOTIFY is
        delivered on commit, so none looks before the tasks are visible).
        """
        if not rows:
            return
        columns = tuple(rows[0])
        if self.db.is_sqlite:
            # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing cost
            # more than the insert itself. Only the JSON and time columns are converted.
            marks = ", ".join("?" for _ in columns)
            statement = f"INSERT INTO htm_tasks ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - column names
            converted = [(i, f) for i, f in enumerate(_to_sqlite(c) for c in columns) if f is not _same]
            pick = operator.itemgetter(*columns)
            values = []
            for r in rows:
                value = list(pick(r))
                for i, f in converted:
                    value[i] = f(value[i])
                values.append(tuple(value))
            await conn.exec_driver_sql(statement, values)
            return
        # PostgreSQL: one statement for the whole batch, each column sent as one array (an
        # executemany would run the insert once per row), on the driver connection under the
        # router's transaction.
        arrays = [[_json_text(r[c]) for r in rows] if c in JSON_COLUMNS else [r[c] for r in rows] for c in columns]
        driver: Any = (await conn.get_raw_connection()).driver_connection
        await driver.execute(_insert_postgres(columns), *arrays)
        if any(r["status"] == "queued" for r in rows):
            await conn.execute(_WAKE)

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
        now = self.clock.now()
        if self.db.is_sqlite:
            recorded, claimed = await self._exchange_sqlite(worker_id, outcomes, n, now, fallback_capacity)
        else:
            recorded, claimed = await self._exchange_postgres(worker_id, outcomes, n, now, fallback_capacity)
        claimed.sort(key=lambda t: t.dispatch_seq or 0)
        done = {f.task_id for f in recorded}
        late = [o for o in outcomes if o.task_id not in done]
        if late:
            await self._record_late(worker_id, late)
        return Exchange(recorded, late, claimed)

    @staticmethod
    def _values(o: Outcome) -> dict[str, Any]:
        final = o.status in FINISHED
        return {
            "status": o.status.value,
            "finished_at": o.at if final else None,
            "queued_at": o.retry_at if o.status is Status.DELAYED else (o.at if o.status is Status.QUEUED else None),
            "result": None if o.status is not Status.COMPLETED or o.result is None else jsontext.dumps(o.result),
            "error": o.error[:MAX_ERROR_CHARS] if o.error else None,
            "give_back": 1 if o.status is Status.QUEUED else 0,
        }

    async def _exchange_postgres(
        self, worker_id: str, outcomes: Sequence[Outcome], n: int, now: datetime, fallback: int
    ) -> tuple[list[Finished], list[Task]]:
        claim = (
            n,
            now,
            float(self.lease_seconds),
            self.capacity,
            max(1, fallback),
            now - timedelta(seconds=self.lease_seconds),
        )
        # One statement, so autocommit makes it one atomic transaction: one round trip, no pool
        # checkout, ping or BEGIN. Outcomes without a claim go through the same function with n = 0.
        async with self.db.autocommit_driver() as conn:
            if not outcomes:
                rows = await conn.fetch(CLAIM_POSTGRES, worker_id, *claim)
                return [], [Task.from_row(r) for r in rows]
            values = [self._values(o) for o in outcomes]
            rows = await conn.fetch(
                FINISH_CLAIM_POSTGRES,
                worker_id,
                [o.task_id for o in outcomes],
                [o.attempt for o in outcomes],
                [v["status"] for v in values],
                [v["finished_at"] for v in values],
                [v["queued_at"] for v in values],
                [v["result"] for v in values],
                [v["error"] for v in values],
                [v["give_back"] for v in values],
                *claim,
            )
        # Claimed rows come back running; no outcome is ever recorded as running.
        recorded = [Finished.from_row(r) for r in rows if r["status"] != "running"]
        return recorded, [Task.from_row(r) for r in rows if r["status"] == "running"]

    async def _exchange_sqlite(
        self, worker_id: str, outcomes: Sequence[Outcome], n: int, now: datetime, fallback: int
    ) -> tuple[list[Finished], list[Task]]:
        rows = []
        for o in outcomes:
            v = self._values(o)
            rows.append(
                sqlite_claims.FinishRow(
                    o.task_id,
                    o.attempt,
                    v["status"],
                    v["finished_at"],
                    v["queued_at"],
                    v["result"],
                    v["error"],
                    v["give_back"],
                )
            )
        lease = timedelta(seconds=self.lease_seconds)
        req = sqlite_claims.ClaimRequest(
            worker_id=worker_id,
            n=n,
            now=now,
            lease_until=now + lease,
            live_after=now - lease,
            capacity=self.capacity,
            fallback_capacity=fallback,
            total_weight=self.total_weight,
        )

        def exchange(raw: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            done = sqlite_claims.finish(raw, worker_id, rows) if rows else []
            return done, (sqlite_claims.claim(raw, req) if n > 0 else [])

        done, taken = await self.db.write_sqlite(exchange)
        return [Finished.from_row(r) for r in done], [Task.from_row(r) for r in taken]

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

    # -- leases --------------------------------------------------------------

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
        """Return tasks whose lease expired to the queue, or fail them when no attempts remain."""
        now = self.clock.now()
        t = htm_tasks
        expired = and_(IS_RUNNING, t.c.lease_expires_at < now)
        async with self.db.write() as conn:
            dead = await self._dead_workers(conn)
            if dead:
                # A registered worker whose liveness lock is free has died: its leases end now.
                expired = or_(expired, and_(IS_RUNNING, t.c.worker_id.in_(dead)))
                await conn.execute(delete(htm_workers).where(htm_workers.c.worker_id.in_(dead)))
            # Rows are locked in seq order, as every multi-row change of tasks does (see LOCK ORDER).
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
            await conn.execute(
                delete(htm_workers).where(htm_workers.c.heartbeat_at < now - timedelta(seconds=10 * self.lease_seconds))
            )
        out = [Finished.from_row(r._mapping) for r in (*requeued, *failed)]
        for f in out:
            log.warning(
                "htm.lease_expired", extra={"task_id": f.task_id, "status": f.status.value, "attempts": f.attempts}
            )
        return out

    async def tidy(self) -> None:
        """On PostgreSQL, vacuum the two tiny tables every claim rewrites.

        Each claim leaves dead versions of the dispatch counter and the origins' rows; when
        autovacuum is slow (or off) they pile up and every claim walks them. Vacuuming eight rows
        takes well under a millisecond; SKIP_LOCKED lets one worker do it while the others skip.
        It also makes every session plan ``htm_claim``'s statements afresh (they read
        ``htm_origins``), so the generic plans it keeps follow the task table as it grows.
        """
        if self.db.is_sqlite:
            return
        async with self.db.autocommit() as conn:
            await conn.execute(text("VACUUM (SKIP_LOCKED) htm_origins, htm_scheduler"))

    @property
    def liveness_confirm_seconds(self) -> float:
        """How long a worker's liveness lock must stay free before the worker counts as dead."""
        return min(LIVENESS_CONFIRM_SECONDS, self.lease_seconds / 4)

    async def _dead_workers(self, conn: AsyncConnection) -> list[str]:
        """On PostgreSQL, return registered workers holding tasks whose process is gone.

        Every registered worker holds a session advisory lock (:meth:`hold_liveness`); PostgreSQL
        drops it the moment the worker's connection dies. A free lock is a dead worker once it has
        stayed free for :attr:`liveness_confirm_seconds`: when the server itself restarts, every
        worker's lock is free for a moment, and each live worker takes its lock again within a
        maintenance tick (:meth:`WorkerPool.keep_alive`). Without the wait, every task running
        anywhere would be taken away and run again after a restart.
        """
        if conn.dialect.name != "postgresql":
            return []
        holders = (
            await conn.execute(
                select(htm_workers.c.worker_id).where(
                    htm_workers.c.worker_id.in_(select(htm_tasks.c.worker_id).where(IS_RUNNING).distinct())
                )
            )
        ).scalars()
        now = self.clock.now()
        confirm = timedelta(seconds=self.liveness_confirm_seconds)
        dead = []
        free: dict[str, datetime] = {}
        for worker_id in holders:
            if await storage.try_serialise(conn, LIVENESS_KEY + worker_id):
                since = free[worker_id] = self._free_since.get(worker_id, now)
                if now - since >= confirm:
                    dead.append(worker_id)
        self._free_since = free  # a lock seen held again, or a worker gone, starts afresh
        return dead

    async def hold_liveness(self, worker_id: str) -> AsyncConnection | None:
        """On PostgreSQL, take the worker's liveness lock on a connection kept open while it lives."""
        if self.db.is_sqlite:
            return None
        conn = await (await self.db.engine.connect()).execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": storage.lock_key(LIVENESS_KEY + worker_id)})
        return conn

    # -- workers ---------------------------------------------------------------

    async def register_worker(
        self, worker_id: str, *, host: str, pid: int, concurrency: int, task_types: list[str]
    ) -> None:
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
        async with self.db.write() as conn:
            await conn.execute(delete(htm_workers).where(htm_workers.c.worker_id == worker_id))

    async def mark_stopping(self, worker_id: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(update(htm_workers).where(htm_workers.c.worker_id == worker_id).values(stopping=True))

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
