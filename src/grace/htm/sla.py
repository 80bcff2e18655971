"""SLA enforcement: warn at 80% of a task's SLA, escalate it at 100%, send a rescue task at 200%.

A task submitted with ``sla_ms`` has a ``deadline`` (``created_at + sla_ms``). While it is
unfinished (queued, delayed, deferred or running) its *level* rises as time passes, measured
on the injected clock from ``created_at`` (the levels themselves are in ``sla_levels.py``):

=====  =========  =====  ==========================================================================
level  name       at     what happens
=====  =========  =====  ==========================================================================
1      warning    80%    ``htm.sla.warning``
2      violated   100%   priority raised to ``high`` (never lowered), ``htm.sla.violated``
3      critical   200%   a rescue task (``htm.sla.rescue``, origin remediation), ``htm.sla.critical``
=====  =========  =====  ==========================================================================

Each level fires once per task: the level reached is stored on the task (``sla_level``), raised
for tasks read and locked inside the write transaction that also counts it and creates the rescue
task, so a second enforcer (or this one after a restart) finds the level already raised and fires
nothing. ``sla_due_at`` holds when the task's next level falls due, so a tick reads only tasks
with something to do, through a partial index of unfinished tasks with a deadline; claims and
outcomes do no extra work for it. Between ticks the leader sleeps until the next level falls due,
at most ``GRACE_HTM_SLA_TICK_SECONDS``, and a task submitted in its process that falls due sooner
wakes it (:meth:`SLAEnforcer.nudge`). On PostgreSQL one enforcer across all processes acts: the
holder of the ``grace.htm.sla.enforcer`` leadership (``storage.Leadership``). The others try for
it on each tick and take over when the leader's connection goes. The figures it publishes are
read by ``sla_stats.py``; the rescue task is ``rescue.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import background, storage
from grace.clock import Clock
from grace.htm import events, rescue
from grace.htm.config import HTMConfig
from grace.htm.sla_levels import (
    CRITICAL,
    LEVEL_NAMES,
    NONE,
    VIOLATED,
    WARNING,
    due_at,
    elapsed_ratio,
    level_at,
    ms,
)
from grace.htm.sla_stats import SLAReport
from grace.htm.submission import Submitter
from grace.htm.tables import SLA_COLUMNS, SLA_OPEN, htm_sla_counters, htm_tasks
from grace.htm.tasks import Priority, TaskRequest

__all__ = ["STATS", "TOPICS", "SLAEnforcer", "Tick"]

log = logging.getLogger("grace.htm")

TOPICS = {WARNING: "htm.sla.warning", VIOLATED: "htm.sla.violated", CRITICAL: "htm.sla.critical"}
STATS = "htm.sla.stats"

# After a tick the leader sleeps until the next level falls due (a little after, so it is due when
# read), at most GRACE_HTM_SLA_TICK_SECONDS; with a backlog it goes on after a moment.
WAKE_SLACK = 0.002
BACKLOG_PAUSE = 0.01
BATCH = 200  # tasks escalated per transaction
MAX_BATCHES = 20  # per tick; whatever is left is due on the next tick
HIGH_RANK = Priority.HIGH.rank
# The leadership whose holder enforces, one across the processes sharing a PostgreSQL database.
LEADER_LOCK = "grace.htm.sla.enforcer"


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
    row: Any  # a row of SLA_COLUMNS
    seen: int
    reached: int
    priority: str
    escalated: bool
    rescue_id: str | None = None


class SLAEnforcer:
    """Raise unfinished tasks' SLA levels as their time runs out; publish the SLA figures now and then."""

    def __init__(
        self,
        db: storage.Database,
        clock: Clock,
        config: HTMConfig,
        *,
        submitter: Submitter,
        publisher: events.EventPublisher,
        report: SLAReport,
        singleton: bool = True,
    ) -> None:
        self.db = db
        self.clock = clock
        self.config = config
        self.submitter = submitter  # rescue tasks are submitted in the transaction that raises the level
        self.events = publisher
        self.report = report
        # On PostgreSQL, act only while holding the leader lock. Off only in tests of the guarded UPDATE.
        self.singleton = singleton
        self._leadership = storage.Leadership(db, LEADER_LOCK)
        self._runner: asyncio.Task[None] | None = None
        self._last_stats: datetime | None = None
        # The soonest first level of tasks this process submitted since the loop last looked (nudge).
        self._soonest: datetime | None = None
        self._nudged = asyncio.Event()

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
        await background.stop(runner)
        await self._leadership.release()

    async def _run(self) -> None:
        # The loop's pace is wall time; every decision inside a tick uses the injected clock.
        while True:
            pause = self.config.sla_tick_seconds
            try:
                tick = await self.tick()
                if tick.leader:
                    pause = await self.pause_after(tick)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # try again on the next tick, unless asked to stop
                background.stop_if_cancelled()
                log.warning("htm.sla_tick_failed", extra={"reason": type(exc).__name__})
            await self._sleep(pause)

    def nudge(self, due: datetime) -> None:
        """Tell the loop that a task whose first level falls due at ``due`` was just submitted here.

        The submitter calls it after commit; a sleeping loop that would wake later wakes in time for
        it. Tasks submitted by other processes are seen at the leader's next look (at most a tick).
        """
        if self._soonest is None or due < self._soonest:
            self._soonest = due
            self._nudged.set()

    async def _sleep(self, pause: float) -> None:
        """Sleep ``pause`` seconds, or less when a nudge brings a level due sooner."""
        loop = asyncio.get_running_loop()
        until = loop.time() + pause
        while True:
            if self._soonest is not None:
                wait = (self._soonest - self.clock.now()).total_seconds() + WAKE_SLACK
                self._soonest = None
                until = min(until, loop.time() + max(0.0, wait))
            left = until - loop.time()
            if left <= 0:
                return
            self._nudged.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel (stop()) that
            # arrives as the nudge is set, and the loop would go on.
            try:
                async with asyncio.timeout(left):
                    await self._nudged.wait()
            except TimeoutError:
                return

    async def pause_after(self, tick: Tick) -> float:
        """Return how long the leader sleeps after ``tick``: until the next level falls due, at most a tick.

        So a level fires when it falls due, not up to a whole tick later. A level already due again
        (more were due than one tick takes) is taken after a moment; one that stays due though the
        tick fired nothing waits the whole tick, so a failing row never makes the loop spin.
        """
        limit = self.config.sla_tick_seconds
        upcoming = await self.next_due()
        if upcoming is None:
            return limit
        wait = (upcoming - self.clock.now()).total_seconds()
        if wait <= 0:
            return BACKLOG_PAUSE if tick.fired else limit
        return min(limit, wait + WAKE_SLACK)

    async def next_due(self) -> datetime | None:
        """Return when the next level of an unfinished task falls due (None: no task with a deadline is open)."""
        t = htm_tasks
        # One probe of the SLA index per level (the minimum over an IN list would read every open task).
        firsts = [
            select(t.c.sla_due_at)
            .where(SLA_OPEN, t.c.sla_level == level, t.c.sla_due_at.is_not(None))
            .order_by(t.c.sla_due_at)
            .limit(1)
            .scalar_subquery()
            for level in (NONE, WARNING, VIOLATED)
        ]
        async with self.db.read() as conn:
            row = (await conn.execute(select(*firsts))).one()
        found = [when for when in row if when is not None]
        return min(found) if found else None

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
        await self.submitter.prepare()
        now = self.clock.now()
        tick = Tick(leader=True)
        for _ in range(MAX_BATCHES):
            read = await self._escalate(now, tick)
            if read < BATCH:
                break
        every = timedelta(seconds=self.config.sla_stats_seconds)
        if self._last_stats is None or now - self._last_stats >= every:
            tick.stats = await self.publish_statistics()
        return tick

    async def _escalate(self, now: datetime, tick: Tick) -> int:
        """Raise the levels of up to BATCH due tasks in one transaction; publish what fired after commit.

        The due tasks are read inside the write transaction, locked (PostgreSQL: ``FOR UPDATE``, in seq
        order as every change of several tasks locks them, see grace.htm.queue; SQLite: the write
        transaction is the only writer), so each read row is changed by exactly this transaction: a
        second enforcer waits, then no longer finds them due. The changes go in one statement per kind
        (an executemany), not one round trip per task. Return how many tasks were read.
        """
        t = htm_tasks
        fired: list[_Fired] = []
        counts: Counter[str] = Counter()
        rescues: list[TaskRequest] = []
        moves: list[dict[str, Any]] = []
        raises: list[dict[str, Any]] = []
        query = (
            select(*SLA_COLUMNS)
            .where(SLA_OPEN, t.c.sla_level.in_([NONE, WARNING, VIOLATED]), t.c.sla_due_at <= now)
            .order_by(t.c.seq)
            .limit(BATCH)
        )
        async with self.db.write() as conn:
            if not self.db.is_sqlite:
                query = query.with_for_update()
            rows = (await conn.execute(query)).all()
            for row in rows:
                seen = int(row.sla_level)
                reached = max(seen, level_at(row.created_at, int(row.sla_ms), now))
                change = {
                    "b_seq": row.seq,
                    "b_level": reached,
                    "b_due": due_at(row.created_at, int(row.sla_ms), min(reached + 1, CRITICAL)),
                }
                escalate = seen < VIOLATED <= reached
                raised = escalate and int(row.priority_rank) > HIGH_RANK
                (raises if raised else moves).append(change)
                if reached == seen:
                    continue  # only its due time moves (a task from before the upgrade)
                # Raised to high, never lowered.
                fired.append(_Fired(row, seen, reached, Priority.HIGH.value if raised else str(row.priority), raised))
                counts["warnings_issued"] += seen < WARNING <= reached
                counts["total_violations"] += escalate
                counts["escalations_triggered"] += raised
                if reached == CRITICAL:
                    rescues.append(rescue.request_for(self.submitter, task_id=row.task_id, task_type=row.task_type))
            if moves:
                await conn.execute(_MOVE, moves)
            if raises:
                await conn.execute(_RAISE, raises)
            created = None
            if rescues:
                created = await self.submitter.enqueue_in(conn, rescues, creator=None)
                spawned = iter(created.submitted)
                for f in fired:
                    if f.reached == CRITICAL:
                        f.rescue_id = next(spawned).task_id
                counts["sub_agents_spawned"] += len(rescues)
            await _add(conn, counts)
        if created is not None:
            await self.submitter.announce_created(created)
        for f in fired:
            await self._announce(f, now, tick)
        return len(rows)

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
            "elapsed_ms": ms(now - row.created_at),
            "elapsed_ratio": elapsed_ratio(row.created_at, int(row.sla_ms), now),
        }
        for level in range(f.seen + 1, f.reached + 1):
            payload = {**base, "level": LEVEL_NAMES[level]}
            if level == WARNING:
                payload["remaining_ms"] = ms(row.deadline - now)
            else:
                payload["overdue_ms"] = ms(now - row.deadline)
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
            await self.events.emit(TOPICS[level], payload, essential=True)

    # -- publishing the figures ------------------------------------------------------

    async def publish_statistics(self) -> dict[str, Any]:
        """Publish ``htm.sla.stats`` with the current statistics and return them."""
        stats = await self.report.get_statistics()
        self._last_stats = self.clock.now()
        await self.events.emit(STATS, stats, essential=True)
        return stats


# A due task's new level and when its next one falls due; _RAISE also raises its priority to high.
_MOVE = (
    update(htm_tasks)
    .where(htm_tasks.c.seq == bindparam("b_seq"))
    .values(sla_level=bindparam("b_level"), sla_due_at=bindparam("b_due", type_=storage.UTCDateTime()))
)
_RAISE = _MOVE.values(priority=Priority.HIGH.value, priority_rank=HIGH_RANK)


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
