"""Routing stats: each origin's load against its share, in the seed's shape."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from grace.htm import routing
from grace.htm.config import HTMConfig
from grace.htm.origins import ORDER, Origin
from grace.htm.tables import IS_QUEUED, IS_WAITING, htm_origins, htm_tasks, htm_workers
from grace.storage import Database

__all__ = ["THROUGHPUT_WINDOW", "routing_stats"]

THROUGHPUT_WINDOW = timedelta(seconds=60)


async def routing_stats(
    db: Database, cfg: HTMConfig, weights: dict[Origin, int], *, fallback_capacity: int, now: datetime
) -> dict[str, Any]:
    """Return ``{"origins": {name: {...}}, ...}`` with current_count, max_concurrent, total_queued,
    tasks_starved, utilization, delayed/deferred counts and throughput over the last minute.

    ``fallback_capacity`` is the capacity to assume while no worker has a heartbeat.
    """
    t = htm_tasks
    live_after = now - timedelta(seconds=cfg.lease_seconds)
    async with db.read() as conn:
        load = await routing.load(
            conn,
            weights,
            configured=cfg.capacity,
            fallback=fallback_capacity,
            live_after=live_after,
        )
        # Each count's condition is written as its partial index's (literals, not bound values), so the
        # index serves it and finished tasks are never read, however many there are.
        counts: dict[tuple[str, str], int] = {
            (o, "queued"): int(n)
            for o, n in (await conn.execute(select(t.c.origin, func.count()).where(IS_QUEUED).group_by(t.c.origin)))
        }
        counts.update(
            ((o, s), int(n))
            for o, s, n in (
                await conn.execute(
                    select(t.c.origin, t.c.status, func.count()).where(IS_WAITING).group_by(t.c.origin, t.c.status)
                )
            )
        )
        recent = {
            (o, s): (int(n), int(b or 0))
            for o, s, n, b in (
                await conn.execute(
                    select(t.c.origin, t.c.status, func.count(), func.sum(t.c.data_size_bytes))
                    .where(t.c.finished_at > now - THROUGHPUT_WINDOW)
                    .group_by(t.c.origin, t.c.status)
                )
            )
        }
        dispatched = {
            o: int(n) for o, n in (await conn.execute(select(htm_origins.c.origin, htm_origins.c.dispatched)))
        }
        workers = int(
            (
                await conn.execute(
                    select(func.count()).select_from(htm_workers).where(htm_workers.c.heartbeat_at >= live_after)
                )
            ).scalar_one()
        )
    starved = set(load.starved())
    window = THROUGHPUT_WINDOW.total_seconds()
    out: dict[str, Any] = {}
    for origin in ORDER:
        o = origin.value
        running = load.running.get(origin, 0)
        quota = load.quota(origin)
        queued = counts.get((o, "queued"), 0)
        delayed = counts.get((o, "delayed"), 0)
        deferred = counts.get((o, "deferred"), 0)
        done, done_bytes = recent.get((o, "completed"), (0, 0))
        failed = sum(recent.get((o, s), (0, 0))[0] for s in ("failed", "timed_out"))
        out[o] = {
            "share": round(weights[origin] / load.total_weight, 4),
            "current_count": running,
            "max_concurrent": quota,
            "total_queued": queued + delayed + deferred,
            "queued": queued,
            "delayed": delayed,
            "deferred": deferred,
            "tasks_starved": queued if origin in starved else 0,
            "starved": origin in starved,
            "utilization": round(running / quota, 4),
            "borrowed": max(0, running - quota),
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
