"""SLA enforcement: warn at 80% of a task's SLA, escalate it at 100%, send a rescue task at 200%.

A task submitted with ``sla_ms`` has a ``deadline`` (``created_at + sla_ms``). While it is
unfinished (queued, delayed, deferred or running) its *level* rises as time passes, measured
on the injected clock from ``created_at``:

=====  =========  =====  ==========================================================================
level  name       at     what happens
=====  =========  =====  ==========================================================================
1      warning    80%    ``htm.sla.warning``
2      violated   100%   priority raised to ``high`` (never lowered), ``htm.sla.violated``
3      critical   200%   a rescue task (``htm.sla.rescue``, origin remediation), ``htm.sla.critical``
=====  =========  =====  ==========================================================================

Each level fires once per task: the level reached is stored on the task (``sla_level``) and
raised by an UPDATE guarded by the level the enforcer read, in the same transaction that counts
it and creates the rescue task, so a second enforcer (or this one after a restart) finds the
level already raised and fires nothing. ``sla_due_at`` holds when the task's next level falls
due, so a tick reads only tasks with something to do, through a partial index of unfinished
tasks with a deadline; claims and outcomes do no extra work for it. On PostgreSQL one enforcer
across all processes acts: the holder of a session advisory lock (the leader). The others try
for the lock on each tick and take over when the leader's connection goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, or_, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, storage
from grace.htm import origins
from grace.htm.tables import IS_QUEUED, SLA_OPEN, SLA_OUTCOME, htm_sla_counters, htm_tasks
from grace.htm.tasks import Priority, Status, TaskRequest

if TYPE_CHECKING:
    from grace.htm.service import HTM
    from grace.htm.workers import Handler, TaskContext

__all__ = [
    "CRITICAL",
    "LEVEL_NAMES",
    "RESCUE_TASK",
    "STATS",
    "TOPICS",
    "VIOLATED",
    "WARNING",
    "SLAEnforcer",
    "Tick",
    "due_at",
    "first_due",
    "level_at",
    "rescue_handler",
]

log = logging.getLogger("grace.htm")

NONE, WARNING, VIOLATED, CRITICAL = 0, 1, 2, 3
LEVEL_NAMES = {NONE: "none", WARNING: "warning", VIOLATED: "violated", CRITICAL: "critical"}
# Thousandths of the SLA at which each level falls due: the seed's 80%, 100% and 200%. With
# ``sla_ms`` in milliseconds, ``sla_ms * permille`` is the offset in microseconds, exactly.
THRESHOLD_PERMILLE = {WARNING: 800, VIOLATED: 1000, CRITICAL: 2000}
TOPICS = {WARNING: "htm.sla.warning", VIOLATED: "htm.sla.violated", CRITICAL: "htm.sla.critical"}
STATS = "htm.sla.stats"
RESCUE_TASK = "htm.sla.rescue"
COUNTERS = ("warnings_issued", "total_violations", "escalations_triggered", "sub_agents_spawned")

BATCH = 200  # tasks escalated per transaction
MAX_BATCHES = 20  # per tick; whatever is left is due on the next tick
HIGH_RANK = Priority.HIGH.rank
# The leadership whose holder enforces, one across the processes sharing a PostgreSQL database.
LEADER_LOCK = "grace.htm.sla.enforcer"

_DUE_COLUMNS = (
    htm_tasks.c.seq,
    htm_tasks.c.task_id,
    htm_tasks.c.task_type,
    htm_tasks.c.origin,
    htm_tasks.c.priority,
    htm_tasks.c.priority_rank,
    htm_tasks.c.status,
    htm_tasks.c.intent_id,
    htm_tasks.c.worker_id,
    htm_tasks.c.created_at,
    htm_tasks.c.sla_ms,
    htm_tasks.c.deadline,
    htm_tasks.c.sla_level,
)


def due_at(created_at: datetime, sla_ms: int, level: int) -> datetime:
    """Return when ``level`` falls due for a task created at ``created_at`` with an SLA of ``sla_ms``."""
    return created_at + timedelta(microseconds=sla_ms * THRESHOLD_PERMILLE[level])


def first_due(created_at: datetime, sla_ms: int | None) -> datetime | None:
    """Return when a new task's first level (the warning) falls due; None without an SLA."""
    return due_at(created_at, sla_ms, WARNING) if sla_ms else None


def level_at(created_at: datetime, sla_ms: int, now: datetime) -> int:
    """Return the level a task created at ``created_at`` has reached at ``now``."""
    elapsed = now - created_at
    for level in (CRITICAL, VIOLATED, WARNING):
        if elapsed >= timedelta(microseconds=sla_ms * THRESHOLD_PERMILLE[level]):
            return level
    return NONE


def _ms(delta: timedelta) -> float:
    return round(delta / timedelta(milliseconds=1), 3)


def _ratio(created_at: datetime, sla_ms: int, now: datetime) -> float:
    return round((now - created_at) / timedelta(milliseconds=sla_ms), 4)


@dataclass
class Tick:
    """What one tick did: whether this enforcer led, the levels it fired, the rescue tasks it created."""

    leader: bool
    fired: list[tuple[str, str]] = field(default_factory=list)  # (task_id, level name), in firing order
    rescues: dict[str, str] = field(default_factory=dict)  # overdue task id -> rescue task id
    stats: dict[str, Any] | None = None  # the statistics, when this tick published them

    def tasks_at(self, level: str) -> list[str]:
        """Return the ids of the tasks this tick fired ``level`` for."""
        return [task_id for task_id, name in self.fired if name == level]


@dataclass
class _Fired:
    row: Row[Any]
    seen: int
    reached: int
    priority: str
    escalated: bool
    rescue_id: str | None = None


class SLAEnforcer:
    """Raise unfinished tasks' SLA levels as their time runs out; report what it did from the database."""

    def __init__(self, htm: HTM, *, singleton: bool = True) -> None:
        self.htm = htm
        # On PostgreSQL, act only while holding the leader lock. Off only in tests of the guarded UPDATE.
        self.singleton = singleton
        self._leadership = storage.Leadership(htm.db, LEADER_LOCK)
        self._runner: asyncio.Task[None] | None = None
        self._last_stats: datetime | None = None

    @property
    def running(self) -> bool:
        """Return whether the background loop runs in this process."""
        return self._runner is not None and not self._runner.done()

    @property
    def is_leader(self) -> bool:
        """Return whether this enforcer acts: always on SQLite, the lock holder on PostgreSQL."""
        return not self.singleton or self._leadership.is_leader

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Tick every ``GRACE_HTM_SLA_TICK_SECONDS`` in the background until :meth:`stop`."""
        if not self.running:
            self._runner = asyncio.create_task(self._run(), name="grace-htm-sla")

    async def stop(self) -> None:
        """Stop ticking and give up the leader lock."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await self._leadership.release()

    async def _run(self) -> None:
        # The loop's pace is wall time; every decision inside a tick uses the injected clock.
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # try again on the next tick
                log.warning("htm.sla_tick_failed", extra={"reason": type(exc).__name__})
            await asyncio.sleep(self.htm.config.sla_tick_seconds)

    # -- leadership ---------------------------------------------------------------

    async def _lead(self) -> bool:
        if not self.singleton:
            return True
        return await self._leadership.acquire()

    # -- enforcing --------------------------------------------------------------------

    async def tick(self) -> Tick:
        """Fire every level that has fallen due (when leading); publish the statistics when they are due."""
        if not await self._lead():
            return Tick(leader=False)
        await self.htm.prepare()
        now = self.htm.clock.now()
        tick = Tick(leader=True)
        for _ in range(MAX_BATCHES):
            due = await self._due(now)
            if not due:
                break
            progressed = await self._escalate(due, now, tick)
            if len(due) < BATCH or not progressed:
                break
        every = timedelta(seconds=self.htm.config.sla_stats_seconds)
        if self._last_stats is None or now - self._last_stats >= every:
            tick.stats = await self.publish_statistics()
        return tick

    async def _due(self, now: datetime) -> list[Any]:
        t = htm_tasks
        query = (
            select(*_DUE_COLUMNS)
            .where(SLA_OPEN, t.c.sla_level.in_([NONE, WARNING, VIOLATED]), t.c.sla_due_at <= now)
            .limit(BATCH)
        )
        async with self.htm.db.read() as conn:
            rows = (await conn.execute(query)).all()
        # One lock order for every enforcer: by seq.
        return sorted(rows, key=lambda r: int(r.seq))

    async def _escalate(self, rows: Sequence[Row[Any]], now: datetime, tick: Tick) -> bool:
        """Raise the rows' levels in one transaction; publish what fired after commit. Return whether any moved."""
        t = htm_tasks
        fired: list[_Fired] = []
        moved = 0
        counts: Counter[str] = Counter()
        rescues: list[TaskRequest] = []
        async with self.htm.db.write() as conn:
            # In seq order, as every change of several tasks locks them (see grace.htm.queue).
            for row in sorted(rows, key=lambda r: int(r.seq)):
                seen = int(row.sla_level)
                reached = max(seen, level_at(row.created_at, int(row.sla_ms), now))
                values: dict[str, Any] = {
                    "sla_level": reached,
                    "sla_due_at": due_at(row.created_at, int(row.sla_ms), min(reached + 1, CRITICAL)),
                }
                escalate = seen < VIOLATED <= reached
                if escalate:
                    # Raise to high, never lower: the right-hand sides see the row before the update.
                    values["priority"] = case((t.c.priority_rank > HIGH_RANK, Priority.HIGH.value), else_=t.c.priority)
                    values["priority_rank"] = case((t.c.priority_rank > HIGH_RANK, HIGH_RANK), else_=t.c.priority_rank)
                # Guarded by the level read, so exactly one transaction makes each transition.
                changed = (
                    await conn.execute(
                        update(t)
                        .where(t.c.seq == row.seq, t.c.sla_level == seen, SLA_OPEN)
                        .values(**values)
                        .returning(t.c.priority)
                    )
                ).first()
                if changed is None:
                    continue  # finished meanwhile, or another enforcer got there first
                moved += 1
                if reached == seen:
                    continue  # only its due time moved (a task from before the upgrade)
                raised = escalate and int(row.priority_rank) > HIGH_RANK
                fired.append(_Fired(row, seen, reached, str(changed.priority), raised))
                counts["warnings_issued"] += seen < WARNING <= reached
                counts["total_violations"] += escalate
                counts["escalations_triggered"] += raised
                if reached == CRITICAL:
                    rescues.append(self._rescue_request(row))
            created = None
            if rescues:
                created = await self.htm.enqueue_in(conn, rescues, creator=None)
                spawned = iter(created.submitted)
                for f in fired:
                    if f.reached == CRITICAL:
                        f.rescue_id = next(spawned).task_id
                counts["sub_agents_spawned"] += len(rescues)
            await _add(conn, counts)
        if created is not None:
            await self.htm.announce_created(created)
        for f in fired:
            await self._announce(f, now, tick)
        return moved > 0

    def _rescue_request(self, row: Row[Any]) -> TaskRequest:
        return self.htm.request(
            RESCUE_TASK,
            payload={"task_id": row.task_id, "task_type": row.task_type},
            origin=origins.Origin.REMEDIATION.value,
            priority=Priority.HIGH,
            max_attempts=3,
            timeout_seconds=60,
        )

    async def _announce(self, f: _Fired, now: datetime, tick: Tick) -> None:
        row = f.row
        base = {
            "task_id": row.task_id,
            "task_type": row.task_type,
            "origin": row.origin,
            "priority": f.priority,
            "status": row.status,
            "intent_id": row.intent_id,
            "worker_id": row.worker_id,
            "sla_ms": int(row.sla_ms),
            "created_at": row.created_at.isoformat(),
            "deadline": row.deadline.isoformat(),
            "elapsed_ms": _ms(now - row.created_at),
            "elapsed_ratio": _ratio(row.created_at, int(row.sla_ms), now),
        }
        for level in range(f.seen + 1, f.reached + 1):
            payload = {**base, "level": LEVEL_NAMES[level]}
            if level == WARNING:
                payload["remaining_ms"] = _ms(row.deadline - now)
            else:
                payload["overdue_ms"] = _ms(now - row.deadline)
            if level == VIOLATED:
                payload["previous_priority"] = row.priority
                payload["escalated"] = f.escalated
            if level == CRITICAL:
                payload["rescue_task_id"] = f.rescue_id
                assert f.rescue_id is not None
                tick.rescues[row.task_id] = f.rescue_id
            tick.fired.append((row.task_id, LEVEL_NAMES[level]))
            log_at = logging.INFO if level == WARNING else logging.WARNING
            log.log(
                log_at,
                f"htm.sla_{LEVEL_NAMES[level]}",
                extra={"task_id": row.task_id, "origin": row.origin, "elapsed_ratio": payload["elapsed_ratio"]},
            )
            await self.htm.events.emit(TOPICS[level], payload, essential=True)

    # -- reporting ----------------------------------------------------------------------

    async def get_statistics(self, *, window_seconds: float | None = None) -> dict[str, Any]:
        """Return the seed's figures plus active violations, read from the database.

        The four counts are all-time; ``sla_compliance_rate`` is over tasks with a deadline that
        completed, failed or timed out in the last ``window_seconds`` (None when there were none).
        """
        t = htm_tasks
        now = self.htm.clock.now()
        window = self.htm.config.sla_window_seconds if window_seconds is None else window_seconds
        on_time = func.coalesce(func.sum(case((t.c.finished_at <= t.c.deadline, 1), else_=0)), 0)
        async with self.htm.db.read() as conn:
            counted = dict((await conn.execute(select(htm_sla_counters.c.name, htm_sla_counters.c.value))).all())
            finished, met = (
                await conn.execute(
                    select(func.count(), on_time)
                    .select_from(t)
                    .where(SLA_OUTCOME, t.c.finished_at > now - timedelta(seconds=window))
                )
            ).one()
            counts = [select(func.count()).select_from(t).where(*part).scalar_subquery() for part in _active(now)]
            active = (await conn.execute(select(counts[0] + counts[1]))).scalar_one()
        out: dict[str, Any] = {name: int(counted.get(name, 0)) for name in COUNTERS}
        finished, met = int(finished), int(met)
        out.update(
            {
                "sla_compliance_rate": round(met / finished, 4) if finished else None,
                "active_violations": int(active),
                "finished_with_sla": finished,
                "finished_late": finished - met,
                "window_seconds": window,
                "at": now.isoformat(),
            }
        )
        return out

    async def publish_statistics(self) -> dict[str, Any]:
        """Publish ``htm.sla.stats`` with the current statistics and return them."""
        stats = await self.get_statistics()
        self._last_stats = self.htm.clock.now()
        await self.htm.events.emit(STATS, stats, essential=True)
        return stats

    async def active_violations(
        self, *, visible_to: str | None, origin: origins.Origin | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Return unfinished tasks past their deadline, the most overdue first."""
        t = htm_tasks
        now = self.htm.clock.now()
        parts = []
        for part in _active(now):
            query = select(*_DUE_COLUMNS, t.c.created_by_name, t.c.attempts, t.c.max_attempts).where(*part)
            if visible_to is not None:
                query = query.where(t.c.created_by == visible_to)
            if origin is not None:
                query = query.where(t.c.origin == origin.value)
            parts.append(query)
        both = union_all(*parts).subquery()
        ordered = select(both).order_by(both.c.deadline, both.c.seq).limit(limit)
        async with self.htm.db.read() as conn:
            rows = (await conn.execute(ordered)).all()
        return [
            {
                "task_id": r.task_id,
                "task_type": r.task_type,
                "origin": r.origin,
                "priority": r.priority,
                "status": r.status,
                "sla_level": LEVEL_NAMES[int(r.sla_level)],
                "sla_ms": int(r.sla_ms),
                "deadline": r.deadline.isoformat(),
                "overdue_ms": _ms(now - r.deadline),
                "elapsed_ratio": _ratio(r.created_at, int(r.sla_ms), now),
                "worker_id": r.worker_id,
                "attempts": int(r.attempts),
                "max_attempts": int(r.max_attempts),
                "created_by_name": r.created_by_name,
            }
            for r in rows
        ]


def _active(now: datetime) -> list[tuple[Any, ...]]:
    """Two disjoint sets of conditions that together select unfinished tasks past their deadline.

    Each is a tight range of the SLA index: levels 2 and 3 are past their deadline by definition;
    a task below level 2 whose deadline passed since the last tick is already due, because its
    next level falls due no later than its deadline.
    """
    t = htm_tasks
    return [
        (SLA_OPEN, t.c.sla_level.in_([VIOLATED, CRITICAL])),
        (SLA_OPEN, t.c.sla_level.in_([NONE, WARNING]), t.c.sla_due_at <= now, t.c.deadline <= now),
    ]


async def _add(conn: AsyncConnection, counts: Counter[str]) -> None:
    rows = [{"name": name, "value": n} for name, n in counts.items() if n]
    if not rows:
        return
    c = htm_sla_counters.c
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(htm_sla_counters).values(rows)
        stmt: Any = pg.on_conflict_do_update(index_elements=[c.name], set_={"value": c.value + pg.excluded.value})
    else:
        lite = sqlite.insert(htm_sla_counters).values(rows)
        stmt = lite.on_conflict_do_update(index_elements=[c.name], set_={"value": c.value + lite.excluded.value})
    await conn.execute(stmt)


# -- the rescue task -------------------------------------------------------------------


def rescue_handler(htm: HTM) -> Handler:
    """Return the handler of ``htm.sla.rescue``: inspect an overdue task, return it if its worker is gone."""

    async def rescue(ctx: TaskContext) -> dict[str, Any]:
        task_id = ctx.payload.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise errors.InvalidInput("payload.task_id must name the overdue task")
        return await inspect_overdue(htm, task_id)

    return rescue


async def inspect_overdue(htm: HTM, task_id: str) -> dict[str, Any]:
    """Report an overdue task's state, worker, lease and lateness; return it to the queue if its lease is gone.

    A running task whose lease expired (or, on PostgreSQL, whose worker's process died) goes back
    through the queue's own reap, exactly as a worker's maintenance would return it.
    """
    t = htm_tasks
    now = htm.clock.now()
    async with htm.db.read() as conn:
        row = (await conn.execute(select(t).where(t.c.task_id == task_id))).first()
    if row is None:
        return {"task_id": task_id, "found": False, "action": "none", "summary": f"task {task_id} does not exist"}
    status = Status(row.status)
    report: dict[str, Any] = {
        "task_id": task_id,
        "found": True,
        "task_type": row.task_type,
        "origin": row.origin,
        "priority": row.priority,
        "status": status.value,
        "worker_id": row.worker_id,
        "attempts": int(row.attempts),
        "max_attempts": int(row.max_attempts),
        "lease_expires_at": row.lease_expires_at.isoformat() if row.lease_expires_at else None,
        "lease_expired": None,
        "deadline": row.deadline.isoformat() if row.deadline else None,
        "overdue_ms": _ms(now - row.deadline) if row.deadline else None,
        "elapsed_ratio": _ratio(row.created_at, int(row.sla_ms), now) if row.sla_ms else None,
        "queued_ahead": None,
        "action": "none",
        "status_after": status.value,
    }
    late = f"{report['overdue_ms'] / 1000:.1f}s past its deadline" if row.deadline else "without a deadline"
    if status.finished:
        report["summary"] = f"{task_id} already {status.value} at {row.finished_at.isoformat()}; nothing to do"
    elif status is Status.RUNNING:
        expired = row.lease_expires_at is not None and row.lease_expires_at < now
        report["lease_expired"] = expired
        returned = next((f for f in await htm.reap() if f.task_id == task_id), None)
        if returned is not None:
            report["status_after"] = returned.status.value
            report["action"] = "returned_to_queue" if returned.status is Status.QUEUED else "failed_on_last_attempt"
            why = "whose lease had expired" if expired else "whose process had died"
            done = "returned it to the queue" if returned.status is Status.QUEUED else "failed it (no attempts left)"
            report["summary"] = (
                f"{task_id} was running on {row.worker_id} {why} (attempt {row.attempts} of "
                f"{row.max_attempts}), {late}; {done}"
            )
        else:
            until = row.lease_expires_at.isoformat() if row.lease_expires_at else "unknown"
            report["summary"] = (
                f"{task_id} is running on {row.worker_id} (attempt {row.attempts} of {row.max_attempts}), "
                f"its lease held until {until}, {late}; left to its worker"
            )
    elif status is Status.QUEUED:
        async with htm.db.read() as conn:
            ahead = (
                await conn.execute(
                    select(func.count())
                    .select_from(t)
                    .where(
                        IS_QUEUED,
                        t.c.origin == row.origin,
                        or_(
                            t.c.priority_rank < row.priority_rank,
                            and_(t.c.priority_rank == row.priority_rank, t.c.seq < row.seq),
                        ),
                    )
                )
            ).scalar_one()
        report["queued_ahead"] = int(ahead)
        report["summary"] = (
            f"{task_id} is queued at priority {row.priority} with {ahead} {row.origin} task(s) ahead of it, {late}"
        )
    else:
        report["summary"] = f"{task_id} is {status.value} until {row.queued_at.isoformat()}, {late}"
    return report
