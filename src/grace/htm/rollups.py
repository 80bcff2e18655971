"""The dashboard's roll-ups: finished tasks folded into hourly and all-time figures, and the retention.

A task's figures are folded once: the roll-up (:meth:`RollUps.run`, a periodic job) reads tasks that
finished before ``rolled_until`` and tasks with ``seq <= rolled_seq`` (for their creation) and adds
them to ``htm_hourly`` (per hour, origin and owner) and ``htm_totals`` (per origin and owner), in
the transaction that moves the marks. A reader adds the roll-ups to the same figures folded from
the rows past the marks (:func:`fold_finished`, :func:`fold_created` — the very functions the
roll-up uses), so a figure is the same before and after a roll-up, and the rows a reader folds are
at most one roll-up interval's worth.

The marks stay ``GRACE_HTM_ROLLUP_SETTLE_SECONDS`` behind the clock, so a task whose outcome commits
a little after its finishing time is still folded. One that commits later than that (a worker cut
off from the database for longer) is missed by the roll-ups; its row stays correct.

Retention (``GRACE_HTM_RETENTION_DAYS``) deletes finished tasks older than that, and only once they
are in the roll-ups: hourly figures and totals outlive the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import storage
from grace.clock import Clock
from grace.htm import histogram
from grace.htm.config import HTMConfig
from grace.htm.tables import ROLLUP_COLUMNS, htm_hourly, htm_late_completions, htm_rollup, htm_tasks, htm_totals

__all__ = [
    "FINISHED_COLUMNS",
    "Figures",
    "Marks",
    "RollUps",
    "floor_hour",
    "fold_created",
    "fold_finished",
    "owner_key",
    "read_marks",
]

log = logging.getLogger("grace.htm")

ROLLUP_LOCK = "grace.htm.rollup"
# Tasks folded per transaction. Each step reads and folds its rows on the event loop, between other
# work: 50,000 at a time (after a burst of batch submissions) held the loop, and every request with
# it, for over 100 ms, and left the collector a young generation of 200,000 objects to walk.
CREATED_CHUNK = 1_000  # tasks folded for their creation per transaction
FINISHED_CHUNK = 1_000  # finished tasks read per transaction (more when more finished at one instant)
DELETE_CHUNK = 5_000  # rows deleted per transaction by the retention
HOUR = timedelta(hours=1)
OUTCOMES = frozenset({"completed", "failed", "timed_out"})
FINISHED_STATUSES = ("completed", "failed", "timed_out", "cancelled")

t = htm_tasks
# What folding a finished task reads of it.
FINISHED_COLUMNS = (
    t.c.origin,
    t.c.created_by,
    t.c.status,
    t.c.started_at,
    t.c.finished_at,
    t.c.deadline,
    t.c.data_size_bytes,
    t.c.sla_level,
)


def floor_hour(when: datetime) -> datetime:
    """Return the start of the hour ``when`` falls in."""
    return when.replace(minute=0, second=0, microsecond=0)


def owner_key(created_by: str | None) -> str:
    """Return the roll-ups' owner for a task's creator ('' for Grace itself)."""
    return created_by or ""


@dataclass
class Figures:
    """What a set of tasks did: counts, execution times (sum and histogram), SLA outcomes, bytes."""

    created: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    ran: int = 0
    sla_finished: int = 0
    sla_met: int = 0
    warned: int = 0
    violated: int = 0
    critical: int = 0
    bytes_completed: int = 0
    duration_ms_sum: float = 0.0
    durations: dict[int, int] = field(default_factory=dict)

    def add_created(self, row: Any) -> None:
        """Count one created task."""
        self.created += 1

    def add_finished(self, row: Any) -> None:
        """Fold one finished task (a row of :data:`FINISHED_COLUMNS`)."""
        status = row.status
        if status == "completed":
            self.completed += 1
            self.bytes_completed += int(row.data_size_bytes or 0)
        elif status == "failed":
            self.failed += 1
        elif status == "timed_out":
            self.timed_out += 1
        elif status == "cancelled":
            self.cancelled += 1
        finished = storage.utc_read(row.finished_at)
        if status in OUTCOMES:
            started = storage.utc_read(row.started_at)
            if started is not None and finished is not None:
                ms = (finished - started) / timedelta(milliseconds=1)
                self.ran += 1
                self.duration_ms_sum += ms
                bucket = histogram.bucket_of(ms)
                self.durations[bucket] = self.durations.get(bucket, 0) + 1
            deadline = storage.utc_read(row.deadline)
            if deadline is not None and finished is not None:
                self.sla_finished += 1
                self.sla_met += finished <= deadline
        level = int(row.sla_level or 0)
        self.warned += level >= 1
        self.violated += level >= 2
        self.critical += level >= 3

    def merge(self, other: Figures) -> Figures:
        """Add ``other`` into this (in place) and return it."""
        for name in ROLLUP_COLUMNS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.duration_ms_sum += other.duration_ms_sum
        histogram.merge(self.durations, other.durations)
        return self

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Figures:
        """Read a roll-up row."""
        durations = row["durations"] or {}
        return cls(
            **{name: int(row[name]) for name in ROLLUP_COLUMNS},
            duration_ms_sum=float(row["duration_ms_sum"]),
            durations={int(k): int(v) for k, v in durations.items()},
        )

    def values(self) -> dict[str, Any]:
        """Return the row's figure columns."""
        out: dict[str, Any] = {name: getattr(self, name) for name in ROLLUP_COLUMNS}
        out["duration_ms_sum"] = self.duration_ms_sum
        out["durations"] = {str(k): v for k, v in sorted(self.durations.items())}
        return out

    @property
    def failures(self) -> int:
        """Failed and timed-out tasks."""
        return self.failed + self.timed_out

    def percentile(self, p: float) -> float | None:
        return histogram.percentile(self.durations, p)


Key = tuple[datetime, str, str]  # hour, origin, owner


def fold_finished(rows: Iterable[Any]) -> dict[Key, Figures]:
    """Fold finished tasks into figures per (hour finished, origin, owner)."""
    return _fold(rows, "finished_at", Figures.add_finished)


def fold_created(rows: Iterable[Any]) -> dict[Key, Figures]:
    """Fold tasks (``origin``, ``created_by``, ``created_at``) into created counts per (hour, origin, owner)."""
    return _fold(rows, "created_at", Figures.add_created)


def _fold(rows: Iterable[Any], moment: str, add: Callable[[Figures, Any], None]) -> dict[Key, Figures]:
    """Fold rows into figures keyed by (the hour of the row's ``moment``, its origin, its owner)."""
    out: dict[Key, Figures] = {}
    for row in rows:
        at = storage.utc_read(getattr(row, moment))
        assert at is not None
        key = (floor_hour(at), row.origin, owner_key(row.created_by))
        figures = out.get(key)
        if figures is None:
            figures = out[key] = Figures()
        add(figures, row)
    return out


@dataclass(frozen=True)
class Marks:
    """How far the roll-ups reach: tasks finished before ``rolled_until``; tasks up to ``rolled_seq``."""

    rolled_until: datetime | None
    rolled_seq: int


async def read_marks(conn: AsyncConnection) -> Marks:
    """Return the roll-ups' marks (nothing rolled up yet when the row is missing)."""
    row = (await conn.execute(select(htm_rollup.c.rolled_until, htm_rollup.c.rolled_seq))).first()
    if row is None:
        return Marks(None, 0)
    return Marks(storage.utc_read(row.rolled_until), int(row.rolled_seq))


class RollUps:
    """Fold finished tasks into the roll-ups, and delete finished rows past the retention."""

    def __init__(self, db: storage.Database, clock: Clock, config: HTMConfig) -> None:
        self.db = db
        self.clock = clock
        self.config = config

    async def run(self, *, now: datetime | None = None) -> int:
        """Fold every task the marks have not reached up to the settle time; return how many tasks were folded."""
        now = now or self.clock.now()
        target = now - timedelta(seconds=self.config.rollup_settle_seconds)
        folded, more = 0, True
        while more:
            step, more = await self._finished_step(target)
            folded += step
        more = True
        while more:
            step, more = await self._created_step(target)
            folded += step
        return folded

    async def _locked_marks(self, conn: AsyncConnection) -> Marks:
        await storage.serialise(conn, ROLLUP_LOCK)
        marks = await read_marks(conn)
        if (await conn.execute(select(htm_rollup.c.id))).first() is None:
            await conn.execute(insert(htm_rollup).values(id=1, rolled_until=None, rolled_seq=0))
        return marks

    async def _finished_step(self, target: datetime) -> tuple[int, bool]:
        """Fold about :data:`FINISHED_CHUNK` finished tasks, in order of finish; return how many, and whether
        there may be more.

        The figures are sums, so an hour may be folded over several steps: the mark (``rolled_until``)
        is the exact time the fold reached, and the dashboard reads the rows from it on.
        """
        async with self.db.write() as conn:
            marks = await self._locked_marks(conn)
            since = marks.rolled_until
            if since is not None and since >= target:
                return 0, False

            def finished_between(lower: datetime | None, upper: datetime) -> Any:
                query = select(*FINISHED_COLUMNS).where(t.c.finished_at.is_not(None), t.c.finished_at < upper)
                return query if lower is None else query.where(t.c.finished_at >= lower)

            rows = (
                await conn.execute(finished_between(since, target).order_by(t.c.finished_at).limit(FINISHED_CHUNK))
            ).all()
            until = target
            if len(rows) == FINISHED_CHUNK:
                # Stop at the last finish time read: tasks finished at that instant may lie past the
                # chunk, so they are all left to the next step.
                first, last = storage.utc_read(rows[0].finished_at), storage.utc_read(rows[-1].finished_at)
                assert first is not None and last is not None
                if first < last:
                    until = last
                    rows = [r for r in rows if (storage.utc_read(r.finished_at) or until) < until]
                else:  # the whole chunk finished at one instant (outcomes recorded together): take all of them
                    until = min(last + timedelta(microseconds=1), target)
                    rows = (await conn.execute(finished_between(since, until))).all()
            await _add(conn, fold_finished(rows))
            await conn.execute(update(htm_rollup).values(rolled_until=until))
            return len(rows), until < target

    async def _created_step(self, target: datetime) -> tuple[int, bool]:
        """Fold up to :data:`CREATED_CHUNK` tasks, in seq order, created before ``target``; return how many,
        and whether there may be more."""
        async with self.db.write() as conn:
            marks = await self._locked_marks(conn)
            rows = (
                await conn.execute(
                    select(t.c.seq, t.c.origin, t.c.created_by, t.c.created_at)
                    .where(t.c.seq > marks.rolled_seq)
                    .order_by(t.c.seq)
                    .limit(CREATED_CHUNK)
                )
            ).all()
            taken = []
            for row in rows:
                created = storage.utc_read(row.created_at)
                assert created is not None
                if created >= target:
                    break  # later tasks are folded by a later run
                taken.append(row)
            if not taken:
                return 0, False
            await _add(conn, fold_created(taken))
            await conn.execute(update(htm_rollup).values(rolled_seq=int(taken[-1].seq)))
            return len(taken), len(taken) == CREATED_CHUNK

    async def prune(self, *, now: datetime | None = None) -> int:
        """Delete finished tasks older than the retention that the roll-ups hold; return how many."""
        days = self.config.retention_days
        if days <= 0:
            return 0
        now = now or self.clock.now()
        deleted = 0
        while True:
            async with self.db.write() as conn:
                marks = await read_marks(conn)
                if marks.rolled_until is None:
                    return deleted
                before = min(now - timedelta(days=days), marks.rolled_until)
                doomed = (
                    select(t.c.seq, t.c.task_id)
                    .where(
                        t.c.finished_at.is_not(None),
                        t.c.finished_at < before,
                        t.c.seq <= marks.rolled_seq,
                        t.c.status.in_(FINISHED_STATUSES),
                    )
                    .limit(DELETE_CHUNK)
                )
                rows = (await conn.execute(doomed)).all()
                if not rows:
                    return deleted
                ids = [r.task_id for r in rows]
                await conn.execute(delete(htm_late_completions).where(htm_late_completions.c.task_id.in_(ids)))
                await conn.execute(delete(t).where(t.c.seq.in_([int(r.seq) for r in rows])))
            deleted += len(rows)
            log.info("htm.retention_deleted", extra={"tasks": len(rows)})
            if len(rows) < DELETE_CHUNK:
                return deleted


async def _add(conn: AsyncConnection, folded: Mapping[Key, Figures]) -> None:
    """Add figures to their hourly rows and to the totals (under the roll-up lock), in a few statements."""
    if not folded:
        return
    totals: dict[tuple[str, str], Figures] = {}
    for (_, origin, owner), figures in folded.items():
        totals.setdefault((origin, owner), Figures()).merge(figures)
    h = htm_hourly.c
    hours = sorted({hour for hour, _, _ in folded})
    existing = {
        (storage.utc_read(row["hour"]), row["origin"], row["owner"]): Figures.from_row(row)
        for row in (await conn.execute(select(htm_hourly).where(h.hour >= hours[0], h.hour <= hours[-1]))).mappings()
    }
    await _write(
        conn,
        htm_hourly,
        ("hour", "origin", "owner"),
        {key: figures for key, figures in folded.items()},
        {key: existing[key] for key in folded if key in existing},
    )
    existing_totals = {
        (row["origin"], row["owner"]): Figures.from_row(row)
        for row in (await conn.execute(select(htm_totals))).mappings()
    }
    await _write(
        conn,
        htm_totals,
        ("origin", "owner"),
        dict(totals),
        {key: existing_totals[key] for key in totals if key in existing_totals},
    )


async def _write(
    conn: AsyncConnection,
    table: Any,
    keys: tuple[str, ...],
    adding: Mapping[Any, Figures],
    existing: Mapping[Any, Figures],
) -> None:
    """Insert the rows that are new and update the others with their sums, each as one executemany."""
    new = [{**dict(zip(keys, key, strict=True)), **f.values()} for key, f in adding.items() if key not in existing]
    if new:
        await conn.execute(insert(table), new)
    changed = []
    for key, f in adding.items():
        if key in existing:
            merged = Figures().merge(existing[key]).merge(f)
            changed.append({**{f"k_{k}": v for k, v in zip(keys, key, strict=True)}, **merged.values()})
    if changed:
        where = [table.c[k] == bindparam(f"k_{k}") for k in keys]
        await conn.execute(update(table).where(*where), changed)
