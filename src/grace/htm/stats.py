"""Routing stats: each origin's load against its share, in the seed's shape."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text

from grace.htm import routing
from grace.htm.config import HTMConfig
from grace.htm.origins import ORDER, Origin
from grace.storage import Database, UTCDateTime, utc_text

__all__ = ["SETTLE", "THROUGHPUT_WINDOW", "RecentFinishes", "routing_stats"]

THROUGHPUT_WINDOW = timedelta(seconds=60)


# Every figure the stats need as (kind, origin, status, n, extra) rows, in one statement: on SQLite
# each statement costs several hand-offs to the driver's thread, and eight of them made up most of a
# request's time. Each part reads htm_tasks through the index its condition is written for (the partial
# indexes' predicates as literals; the last minute's finished tasks by finished_at), so no finished
# task older than a minute is read, however many there are (tests/integration/test_htm_plans.py checks
# the plans on SQLite and counts the rows read on PostgreSQL). Every range on finished_at is bounded on
# both sides: PostgreSQL guesses a third of the table for an open range it has no statistics for (a
# table autovacuum has not analysed yet, or a generic plan), and read every task ever kept, live or
# dead, by a sequential scan: right after 60,000 tasks finished, 58 ms a call against 0.5 ms through
# the index. A bounded range it guesses at 0.5%, and reads through ix_htm_tasks_finished_at. The
# upper bound is a window ahead of now, so a task stamped by a clock somewhat ahead still counts.
# SQLite is told which partial index to
# count from: without statistics it took ix_htm_tasks_status_seq (status = ...), which reads the same
# rows but each from the table; these hold the origin.
_FIGURES = """
SELECT 'running', origin, '', count(*), 0 FROM htm_tasks {running}
 WHERE htm_tasks.status = 'running' GROUP BY origin
UNION ALL
SELECT 'queued', origin, '', count(*), 0 FROM htm_tasks {queued}
 WHERE htm_tasks.status = 'queued' GROUP BY origin
UNION ALL
SELECT 'waiting', origin, status, count(*), 0 FROM htm_tasks {waiting}
 WHERE htm_tasks.status IN ('delayed', 'deferred') GROUP BY origin, status
UNION ALL
SELECT 'recent', origin, status, count(*), coalesce(sum(data_size_bytes), 0) FROM htm_tasks
 WHERE finished_at > :since AND finished_at < :first_full GROUP BY origin, status
UNION ALL
SELECT 'recent', origin, status, count(*), coalesce(sum(data_size_bytes), 0) FROM htm_tasks
 WHERE finished_at >= :live_from AND finished_at < :live_until GROUP BY origin, status
UNION ALL
SELECT 'dispatched', origin, '', dispatched, 0 FROM htm_origins
UNION ALL
SELECT 'workers', '', '', count(*), coalesce(sum(CASE WHEN stopping THEN 0 ELSE concurrency END), 0)
  FROM htm_workers WHERE heartbeat_at >= :live_after
"""
_PARAMS = tuple(
    bindparam(n, type_=UTCDateTime()) for n in ("since", "first_full", "live_from", "live_until", "live_after")
)
_SQLITE_FIGURES = text(
    _FIGURES.format(
        running="INDEXED BY ix_htm_tasks_running",
        queued="INDEXED BY ix_htm_tasks_claim",
        waiting="INDEXED BY ix_htm_tasks_waiting",
    )
).bindparams(*_PARAMS)
_POSTGRES_FIGURES = text(_FIGURES.format(running="", queued="", waiting="")).bindparams(*_PARAMS)


# The last minute's finished tasks are counted per second and kept between calls (RecentFinishes): a
# call reads only the seconds finished since the last one, the last SETTLE seconds (whose outcomes may
# still be committing) and the oldest second, which the window cuts. A task whose outcome commits more
# than SETTLE after its finishing time (a worker cut off from the database) is missed by the seconds
# already kept; its row stays right, and a new process counts it. Seconds are in the stored form's text
# on SQLite and truncated times on PostgreSQL.
SETTLE = timedelta(seconds=5)
_SECONDS = """
SELECT {second} AS second, origin, status, count(*), coalesce(sum(data_size_bytes), 0) FROM htm_tasks
 WHERE finished_at >= :start AND finished_at < :end GROUP BY 1, origin, status
"""
_SQLITE_SECONDS = text(_SECONDS.format(second="substr(finished_at, 1, 19)")).bindparams(
    bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime())
)
_POSTGRES_SECONDS = text(_SECONDS.format(second="date_trunc('second', finished_at)")).bindparams(
    bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime())
)

Figures = dict[tuple[str, str], tuple[int, int]]


def _second(when: datetime) -> datetime:
    return when.replace(microsecond=0)


def _add(into: Figures, key: tuple[str, str], n: int, size: int) -> None:
    had = into.get(key, (0, 0))
    into[key] = (had[0] + n, had[1] + size)


class RecentFinishes:
    """The last minute's finished tasks per (origin, status), kept per settled second between calls."""

    def __init__(self) -> None:
        self._seconds: dict[Any, Figures] = {}  # second (text on SQLite, a time on PostgreSQL) -> figures
        self._from: datetime | None = None  # the kept seconds run from here...
        self._until: datetime | None = None  # ...to here (exclusive)
        self._lock = asyncio.Lock()

    async def settled(self, db: Database, now: datetime) -> tuple[Figures, datetime, datetime]:
        """Return the kept figures of the window's whole settled seconds, where they start, and where they end.

        Reads the seconds that settled since the last call (at most once a second).
        """
        first_full = _second(now - THROUGHPUT_WINDOW) + timedelta(seconds=1)
        end = max(first_full, _second(now - SETTLE))
        async with self._lock:
            if self._until is None or self._until < first_full or self._until > end or self._from is None:
                self._seconds, self._from, self._until = {}, first_full, first_full  # anew (or the clock went back)
            if end > self._until:
                query = _SQLITE_SECONDS if db.is_sqlite else _POSTGRES_SECONDS
                async with db.read() as conn:
                    rows = (await conn.execute(query, {"start": self._until, "end": end})).all()
                for second, origin, status, n, size in rows:
                    _add(self._seconds.setdefault(second, {}), (origin, status), int(n), int(size))
                self._until = end
            if self._from < first_full:  # seconds that left the window
                oldest: Any = str(utc_text(first_full))[:19] if db.is_sqlite else first_full
                self._seconds = {k: v for k, v in self._seconds.items() if k >= oldest}
                self._from = first_full
            total: Figures = {}
            for figures in self._seconds.values():
                for key, (n, size) in figures.items():
                    _add(total, key, n, size)
            return total, first_full, end


async def routing_stats(
    db: Database,
    cfg: HTMConfig,
    weights: dict[Origin, int],
    *,
    fallback_capacity: int,
    now: datetime,
    recent_finishes: RecentFinishes | None = None,
) -> dict[str, Any]:
    """Return ``{"origins": {name: {...}}, ...}`` with current_count, max_concurrent, total_queued,
    tasks_starved, utilization, delayed/deferred counts and throughput over the last minute.

    ``fallback_capacity`` is the capacity to assume while no worker has a heartbeat.
    """
    live_after = now - timedelta(seconds=cfg.lease_seconds)
    since = now - THROUGHPUT_WINDOW
    if recent_finishes is not None:
        recent, first_full, live_from = await recent_finishes.settled(db, now)
    else:  # every finished task of the window read now
        recent, first_full, live_from = {}, since, since
    figures = _SQLITE_FIGURES if db.is_sqlite else _POSTGRES_FIGURES
    params = {
        "since": since,
        "first_full": first_full,
        "live_from": live_from,
        "live_until": now + THROUGHPUT_WINDOW,
        "live_after": live_after,
    }
    async with db.read() as conn:
        rows = (await conn.execute(figures, params)).all()
    running: dict[Origin, int] = {}
    counts: dict[tuple[str, str], int] = {}
    dispatched: dict[str, int] = {}
    workers = live = 0
    for kind, origin, status, n, extra in rows:
        if kind == "running":
            running[Origin(origin)] = int(n)
        elif kind == "queued":
            counts[(origin, "queued")] = int(n)
        elif kind == "waiting":
            counts[(origin, status)] = int(n)
        elif kind == "recent":
            _add(recent, (origin, status), int(n), int(extra))
        elif kind == "dispatched":
            dispatched[origin] = int(n)
        else:
            workers, live = int(n), int(extra)
    load = routing.Load(
        capacity=routing.capacity(cfg.capacity, live, fallback_capacity),
        weights=weights,
        running=running,
        waiting={o for o in ORDER if counts.get((o.value, "queued"), 0) > 0},
    )
    starved = set(load.starved())
    window = THROUGHPUT_WINDOW.total_seconds()
    out: dict[str, Any] = {}
    for origin in ORDER:
        o = origin.value
        running_now = load.running.get(origin, 0)
        quota = load.quota(origin)
        queued = counts.get((o, "queued"), 0)
        delayed = counts.get((o, "delayed"), 0)
        deferred = counts.get((o, "deferred"), 0)
        done, done_bytes = recent.get((o, "completed"), (0, 0))
        failed = sum(recent.get((o, s), (0, 0))[0] for s in ("failed", "timed_out"))
        out[o] = {
            "share": round(weights[origin] / load.total_weight, 4),
            "current_count": running_now,
            "max_concurrent": quota,
            "total_queued": queued + delayed + deferred,
            "queued": queued,
            "delayed": delayed,
            "deferred": deferred,
            "tasks_starved": queued if origin in starved else 0,
            "starved": origin in starved,
            "utilization": round(running_now / quota, 4),
            "borrowed": max(0, running_now - quota),
            "completed_last_minute": done,
            "failed_last_minute": failed,
            "throughput_mb_s": round(done_bytes / window / 1_000_000, 6),
            "tasks_per_second": round(done / window, 3),
            "dispatched": dispatched.get(o, 0),
        }
    return {
        "origins": out,
        "capacity": load.capacity,
        "running": sum(load.running.values()),
        "workers": workers,
        "window_seconds": int(window),
        "at": now.isoformat(),
    }
