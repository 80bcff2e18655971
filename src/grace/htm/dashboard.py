"""The dashboard: the task manager's figures for a person and for the agent, read from the database.

Every figure is computed from stored data: finished history from the roll-ups (``rollups.py``) plus
the few rows past their marks, the present (running, waiting, overdue) from the task table through
its partial indexes. So a restart loses nothing, several processes agree, and a million finished
tasks cost a read of a few hundred roll-up rows. A member's figures are their own tasks'
(``visible_to``); operators and admins see everyone's. The health verdict compares figures with
the thresholds in the settings (``GRACE_HTM_HEALTH_*``) and names each it crossed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from grace import errors
from grace.clock import Clock
from grace.htm import histogram, routing
from grace.htm.config import HTMConfig
from grace.htm.origins import ORDER, Origin
from grace.htm.rollups import (
    FINISHED_COLUMNS,
    HOUR,
    Figures,
    Marks,
    floor_hour,
    fold_created,
    fold_finished,
    owner_key,
    read_marks,
)
from grace.htm.sla_levels import elapsed_ratio, ms
from grace.htm.sla_stats import COUNTERS, SLAReport, active_conditions
from grace.htm.tables import IS_QUEUED, IS_RUNNING, SLA_OPEN, htm_hourly, htm_sla_counters, htm_tasks, htm_totals
from grace.htm.tasks import Priority
from grace.htm.workers import LocalWorkers
from grace.storage import Database, utc_read

__all__ = ["MAX_WINDOW_HOURS", "PRIORITIES", "Dashboard", "Live", "verdict"]

MAX_WINDOW_HOURS = 720
PRIORITIES = tuple(p.value for p in Priority)
WAITING = ("queued", "delayed", "deferred")
t = htm_tasks


@dataclass
class Live:
    """The present, per origin: waiting tasks by priority, running tasks, SLA levels reached, violations."""

    waiting: dict[str, dict[str, int]] = field(default_factory=dict)  # origin -> priority -> n
    running: dict[str, int] = field(default_factory=dict)
    levels: dict[str, list[int]] = field(default_factory=dict)  # origin -> [warned, violated, critical]
    violations: dict[str, int] = field(default_factory=dict)
    oldest_queued: datetime | None = None

    def depth(self, origin: str | None = None) -> dict[str, int]:
        out = dict.fromkeys(PRIORITIES, 0)
        for o, by in self.waiting.items():
            if origin is None or o == origin:
                for p, n in by.items():
                    out[p] += n
        return out


def _owned_by(user_id: str) -> Any:
    """A member's tasks, written so the planner keeps the time or status index the query ranges over:
    on SQLite a plain ``created_by = ?`` made it scan all of the member's tasks through their index."""
    return func.coalesce(t.c.created_by, "") == user_id


def _rate(met: int, of: int) -> float | None:
    return round(met / of, 4) if of else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Dashboard:
    """Read the dashboard's figures (``local``: this process's pool, whose capacity counts while no worker is live)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        config: HTMConfig,
        *,
        weights: dict[Origin, int],
        report: SLAReport,
        local: LocalWorkers,
    ) -> None:
        self.db = db
        self.clock = clock
        self.config = config
        self.weights = weights
        self.report = report
        self.local = local

    # -- reading ------------------------------------------------------------------

    @staticmethod
    def _window(now: datetime, hours: int) -> datetime:
        if not 1 <= hours <= MAX_WINDOW_HOURS:
            raise errors.InvalidInput(f"window_hours must be between 1 and {MAX_WINDOW_HOURS}")
        return floor_hour(now) - (hours - 1) * HOUR

    async def _history(
        self, conn: Any, start: datetime, visible_to: str | None
    ) -> tuple[dict[tuple[datetime, str], Figures], Marks]:
        """Return figures per (hour, origin) from ``start`` on: the roll-ups plus the rows past their marks."""
        marks = await read_marks(conn)
        out: dict[tuple[datetime, str], Figures] = {}

        def add(hour: datetime, origin: str, figures: Figures) -> None:
            key = (hour, origin)
            if key in out:
                out[key].merge(figures)
            else:
                out[key] = figures

        h = htm_hourly.c
        rolled = select(htm_hourly).where(h.hour >= start)
        if visible_to is not None:
            rolled = rolled.where(h.owner == owner_key(visible_to))
        for row in (await conn.execute(rolled)).mappings():
            add(utc_read(row["hour"]) or start, row["origin"], Figures.from_row(row))
        lower = start if marks.rolled_until is None else max(start, marks.rolled_until)
        finished = select(*FINISHED_COLUMNS).where(t.c.finished_at.is_not(None), t.c.finished_at >= lower)
        created = select(t.c.origin, t.c.created_by, t.c.created_at).where(
            t.c.seq > marks.rolled_seq, t.c.created_at >= start
        )
        if visible_to is not None:
            finished = finished.where(_owned_by(visible_to))
            created = created.where(_owned_by(visible_to))
        for (hour, origin, _), figures in fold_finished((await conn.execute(finished)).all()).items():
            add(hour, origin, figures)
        for (hour, origin, _), figures in fold_created((await conn.execute(created)).all()).items():
            add(hour, origin, figures)
        return out, marks

    async def _live(self, conn: Any, now: datetime, visible_to: str | None) -> Live:
        live = Live()

        def owned(query: Any) -> Any:
            return query if visible_to is None else query.where(_owned_by(visible_to))

        waiting = owned(
            select(t.c.origin, t.c.priority, func.count())
            .where(t.c.status.in_(WAITING))
            .group_by(t.c.origin, t.c.priority)
        )
        for origin, priority, n in await conn.execute(waiting):
            live.waiting.setdefault(origin, dict.fromkeys(PRIORITIES, 0))[priority] += int(n)
        running = owned(select(t.c.origin, func.count()).where(IS_RUNNING).group_by(t.c.origin))
        live.running = {o: int(n) for o, n in await conn.execute(running)}
        levels = owned(
            select(t.c.origin, t.c.sla_level, func.count())
            .where(SLA_OPEN, t.c.sla_level >= 1)
            .group_by(t.c.origin, t.c.sla_level)
        )
        for origin, level, n in await conn.execute(levels):
            reached = live.levels.setdefault(origin, [0, 0, 0])
            for i in range(min(int(level), 3)):
                reached[i] += int(n)
        for part in active_conditions(now):
            query = owned(select(t.c.origin, func.count()).where(*part).group_by(t.c.origin))
            for origin, n in await conn.execute(query):
                live.violations[origin] = live.violations.get(origin, 0) + int(n)
        oldest = owned(select(func.min(t.c.queued_at)).where(IS_QUEUED))
        live.oldest_queued = utc_read((await conn.execute(oldest)).scalar())
        return live

    def _figures(self, f: Figures, live: Live, origin: str | None) -> dict[str, Any]:
        """One scope's figures (an origin's, or everyone's with ``origin`` None) in the seed's names."""
        depth = live.depth(origin)
        levels = [0, 0, 0]
        for o, reached in live.levels.items():
            if origin is None or o == origin:
                levels = [a + b for a, b in zip(levels, reached, strict=True)]
        running = sum(n for o, n in live.running.items() if origin is None or o == origin)
        violations = sum(n for o, n in live.violations.items() if origin is None or o == origin)
        return {
            "total_tasks": f.created,
            "active_tasks": running,
            "queued_tasks": sum(depth.values()),
            "completed_tasks": f.completed,
            "failed_tasks": f.failures,
            "cancelled_tasks": f.cancelled,
            "sla_compliance_rate": _rate(f.sla_met, f.sla_finished),
            "active_violations": violations,
            "avg_execution_time_ms": _round(f.duration_ms_sum / f.ran) if f.ran else None,
            "p50_execution_ms": f.percentile(50),
            "p95_execution_ms": f.percentile(95),
            "p99_execution_ms": f.percentile(99),
            "queue_depths": depth,
            "warnings_issued": f.warned + levels[0],
            "escalations_triggered": f.violated + levels[1],
            "sub_agents_spawned": f.critical + levels[2],
        }

    async def stats(self, *, visible_to: str | None, window_hours: int = 24) -> dict[str, Any]:
        """Return the seed's figures over the last ``window_hours`` hourly buckets (the current one included),
        everyone's and per origin, with the workers' utilization."""
        now = self.clock.now()
        start = self._window(now, window_hours)
        async with self.db.read() as conn:
            history, _ = await self._history(conn, start, visible_to)
            live = await self._live(conn, now, visible_to)
            load = await routing.load(
                conn,
                self.weights,
                configured=self.config.capacity,
                fallback=self.local.fallback_capacity,
                live_after=now - timedelta(seconds=self.config.lease_seconds),
            )
        per_origin: dict[str, Figures] = {o.value: Figures() for o in ORDER}
        for (_, origin), figures in history.items():
            per_origin.setdefault(origin, Figures()).merge(figures)
        everyone = Figures()
        for figures in per_origin.values():
            everyone.merge(figures)
        running_all = sum(load.running.values())
        out = self._figures(everyone, live, None)
        out.update(
            {
                "worker_utilization": round(running_all / load.capacity, 4) if load.capacity else 0.0,
                "running_all": running_all,
                "capacity": load.capacity,
                "by_origin": {o: self._figures(f, live, o) for o, f in per_origin.items()},
                "scope": "everyone" if visible_to is None else "own",
                "window": {"start": start.isoformat(), "end": now.isoformat(), "hours": window_hours},
                "at": now.isoformat(),
            }
        )
        return out

    async def hourly(self, *, visible_to: str | None, hours: int = 24) -> dict[str, Any]:
        """Return the last ``hours`` hourly buckets, oldest first (the current, partial hour last)."""
        now = self.clock.now()
        start = self._window(now, hours)
        async with self.db.read() as conn:
            history, _ = await self._history(conn, start, visible_to)
        by_hour: dict[datetime, Figures] = {}
        for (hour, _), figures in history.items():
            by_hour.setdefault(hour, Figures()).merge(figures)
        buckets = []
        for i in range(hours):
            hour = start + i * HOUR
            f = by_hour.get(hour, Figures())
            seconds = max(1.0, min(3600.0, (now - hour).total_seconds()))
            buckets.append(
                {
                    "hour": hour.isoformat(),
                    "created": f.created,
                    "completed": f.completed,
                    "failed": f.failures,
                    "cancelled": f.cancelled,
                    "p50_execution_ms": f.percentile(50),
                    "p95_execution_ms": f.percentile(95),
                    "avg_execution_time_ms": _round(f.duration_ms_sum / f.ran) if f.ran else None,
                    "sla_compliance_rate": _rate(f.sla_met, f.sla_finished),
                    "throughput_tasks_per_second": round(f.completed / seconds, 4),
                    "throughput_mb_per_second": round(f.bytes_completed / seconds / 1_000_000, 6),
                    "seconds": seconds,
                }
            )
        return {
            "buckets": buckets,
            "scope": "everyone" if visible_to is None else "own",
            "hours": hours,
            "at": now.isoformat(),
        }

    async def slow_tasks(self, *, visible_to: str | None, limit: int = 20) -> dict[str, Any]:
        """Return running tasks, the longest running first, with elapsed time and SLA."""
        now = self.clock.now()
        query = (
            select(
                t.c.task_id,
                t.c.task_type,
                t.c.origin,
                t.c.priority,
                t.c.worker_id,
                t.c.attempts,
                t.c.max_attempts,
                t.c.created_at,
                t.c.started_at,
                t.c.sla_ms,
                t.c.deadline,
                t.c.created_by_name,
            )
            .where(IS_RUNNING)
            .order_by(t.c.started_at, t.c.seq)
            .limit(limit)
        )
        if visible_to is not None:
            query = query.where(t.c.created_by == visible_to)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        tasks = []
        for r in rows:
            started = utc_read(r.started_at) or now
            created = utc_read(r.created_at) or now
            deadline = utc_read(r.deadline)
            sla = int(r.sla_ms) if r.sla_ms is not None else None
            tasks.append(
                {
                    "task_id": r.task_id,
                    "task_type": r.task_type,
                    "origin": r.origin,
                    "priority": r.priority,
                    "worker_id": r.worker_id,
                    "attempts": int(r.attempts),
                    "max_attempts": int(r.max_attempts),
                    "started_at": started.isoformat(),
                    "elapsed_ms": ms(now - started),
                    "sla_ms": sla,
                    "deadline": deadline.isoformat() if deadline else None,
                    "elapsed_ratio": elapsed_ratio(created, sla, now) if sla else None,
                    "created_by_name": r.created_by_name,
                }
            )
        return {"tasks": tasks, "at": now.isoformat()}

    async def queued_tasks(self, *, visible_to: str | None, limit: int = 50) -> dict[str, Any]:
        """Return the waiting tasks in the order a worker would take them within an origin, with each one's wait
        so far, and the queue's depths by origin and priority."""
        now = self.clock.now()
        query = (
            select(
                t.c.task_id,
                t.c.task_type,
                t.c.origin,
                t.c.priority,
                t.c.status,
                t.c.created_at,
                t.c.queued_at,
                t.c.sla_ms,
                t.c.deadline,
                t.c.attempts,
                t.c.created_by_name,
            )
            .where(t.c.status.in_(WAITING))
            .order_by(t.c.priority_rank, t.c.deadline.is_(None), t.c.deadline, t.c.seq)
            .limit(limit)
        )
        if visible_to is not None:
            query = query.where(t.c.created_by == visible_to)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
            live = await self._live(conn, now, visible_to)
        tasks = []
        for r in rows:
            created = utc_read(r.created_at) or now
            queued = utc_read(r.queued_at) or now
            deadline = utc_read(r.deadline)
            tasks.append(
                {
                    "task_id": r.task_id,
                    "task_type": r.task_type,
                    "origin": r.origin,
                    "priority": r.priority,
                    "status": r.status,
                    "created_at": created.isoformat(),
                    "wait_ms": ms(now - created),
                    "claimable_in_ms": max(0.0, ms(queued - now)),
                    "sla_ms": int(r.sla_ms) if r.sla_ms is not None else None,
                    "deadline": deadline.isoformat() if deadline else None,
                    "attempts": int(r.attempts),
                    "created_by_name": r.created_by_name,
                }
            )
        return {
            "tasks": tasks,
            "queue_depths": live.depth(),
            "by_origin": {o.value: live.depth(o.value) for o in ORDER},
            "total": sum(live.depth().values()),
            "oldest_wait_ms": ms(now - live.oldest_queued) if live.oldest_queued else None,
            "at": now.isoformat(),
        }

    async def health(self, *, visible_to: str | None) -> dict[str, Any]:
        """Return ``ok``, ``degraded`` or ``failing`` with every alert: the figure, the threshold it crossed."""
        cfg = self.config
        stats = await self.stats(visible_to=visible_to, window_hours=cfg.health_window_hours)
        now = self.clock.now()
        async with self.db.read() as conn:
            live = await self._live(conn, now, visible_to)
        wait = (now - live.oldest_queued).total_seconds() if live.oldest_queued else 0.0
        finished = stats["completed_tasks"] + stats["failed_tasks"]
        figures = {
            "sla_compliance_rate": stats["sla_compliance_rate"],
            "failure_rate": round(stats["failed_tasks"] / finished, 4) if finished else None,
            "active_violations": stats["active_violations"],
            "queue_depth": stats["queued_tasks"],
            "oldest_queued_seconds": round(max(0.0, wait), 3),
            "capacity": stats["capacity"],
        }
        alerts = verdict(figures, cfg)
        status = "failing" if any(a["level"] == "failing" for a in alerts) else "degraded" if alerts else "ok"
        return {
            "status": status,
            "alerts": alerts,
            "figures": figures,
            "window_hours": cfg.health_window_hours,
            "scope": stats["scope"],
            "at": now.isoformat(),
        }

    # -- Prometheus' figures ------------------------------------------------------------

    async def metric_figures(self) -> dict[str, Any]:
        """Return everyone's all-time figures per origin, the queue's depths, the running counts and the SLA's."""
        now = self.clock.now()
        totals: dict[str, Figures] = {o.value: Figures() for o in ORDER}
        async with self.db.read() as conn:
            marks = await read_marks(conn)
            for row in (await conn.execute(select(htm_totals))).mappings():
                totals.setdefault(row["origin"], Figures()).merge(Figures.from_row(row))
            finished = select(*FINISHED_COLUMNS).where(t.c.finished_at.is_not(None))
            if marks.rolled_until is not None:
                finished = finished.where(t.c.finished_at >= marks.rolled_until)
            for (_, origin, _), figures in fold_finished((await conn.execute(finished)).all()).items():
                totals.setdefault(origin, Figures()).merge(figures)
            created = select(t.c.origin, t.c.created_by, t.c.created_at).where(t.c.seq > marks.rolled_seq)
            for (_, origin, _), figures in fold_created((await conn.execute(created)).all()).items():
                totals.setdefault(origin, Figures()).merge(figures)
            live = await self._live(conn, now, None)
            counters = dict((await conn.execute(select(htm_sla_counters.c.name, htm_sla_counters.c.value))).all())
        sla = await self.report.get_statistics()
        return {
            "totals": totals,
            "queue_depth": {o.value: live.depth(o.value) for o in ORDER},
            "running": {o.value: live.running.get(o.value, 0) for o in ORDER},
            "active_violations": {o.value: live.violations.get(o.value, 0) for o in ORDER},
            "sla_counters": {name: int(counters.get(name, 0)) for name in COUNTERS},
            "sla_compliance_rate": sla["sla_compliance_rate"],
            "sla_window_seconds": sla["window_seconds"],
            # Per origin, (bound in seconds, tasks at or under it): Prometheus' cumulative buckets.
            "duration_buckets": {
                o: histogram.cumulative(f.durations, histogram.PROMETHEUS_BOUNDS_SECONDS) for o, f in totals.items()
            },
        }


def verdict(figures: dict[str, Any], cfg: HTMConfig) -> list[dict[str, Any]]:
    """Return an alert for each figure past its threshold: failing first where both are crossed (pure)."""
    checks: list[tuple[str, str, float, float, str]] = [
        # (figure, direction, degraded at, failing at, what it says)
        (
            "sla_compliance_rate",
            "below",
            cfg.health_compliance_degraded,
            cfg.health_compliance_failing,
            "SLA compliance",
        ),
        (
            "failure_rate",
            "above",
            cfg.health_failure_rate_degraded,
            cfg.health_failure_rate_failing,
            "share of finished tasks that failed",
        ),
        (
            "active_violations",
            "above",
            cfg.health_violations_degraded,
            cfg.health_violations_failing,
            "unfinished tasks past their deadline",
        ),
        (
            "queue_depth",
            "above",
            cfg.health_queue_depth_degraded,
            cfg.health_queue_depth_failing,
            "waiting tasks",
        ),
        (
            "oldest_queued_seconds",
            "above",
            cfg.health_queue_wait_degraded_seconds,
            cfg.health_queue_wait_failing_seconds,
            "seconds the oldest claimable task has waited",
        ),
    ]
    alerts = []
    for name, direction, degraded, failing, what in checks:
        figure = figures.get(name)
        if figure is None:
            continue
        for level, threshold in (("failing", failing), ("degraded", degraded)):
            if figure < threshold if direction == "below" else figure > threshold:
                alerts.append(
                    {
                        "check": name,
                        "level": level,
                        "figure": figure,
                        "threshold": threshold,
                        "message": f"{what} is {figure:g}, {direction} the {level} threshold {threshold:g}",
                    }
                )
                break
    if figures.get("queue_depth", 0) > 0 and figures.get("capacity", 1) < 1:
        alerts.append(
            {
                "check": "capacity",
                "level": "failing",
                "figure": figures["capacity"],
                "threshold": 1,
                "message": "tasks are waiting and no worker is live to run them",
            }
        )
    return alerts
