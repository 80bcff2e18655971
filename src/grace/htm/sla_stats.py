"""SLA reporting: the enforcer's figures and the unfinished tasks past their deadline, read from the database."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, union_all

from grace.clock import Clock
from grace.htm import origins
from grace.htm.config import HTMConfig
from grace.htm.sla_levels import CRITICAL, LEVEL_NAMES, NONE, VIOLATED, WARNING, elapsed_ratio, ms
from grace.htm.tables import SLA_COLUMNS, SLA_OPEN, SLA_OUTCOME, htm_sla_counters, htm_tasks
from grace.storage import Database

__all__ = ["COUNTERS", "SLAReport", "active_conditions"]

# The all-time counts the enforcer keeps in htm_sla_counters, in the seed's names.
COUNTERS = ("warnings_issued", "total_violations", "escalations_triggered", "sub_agents_spawned")


class SLAReport:
    """Read the SLA figures and the active violations; the enforcer publishes the figures, the API shows both."""

    def __init__(self, db: Database, clock: Clock, config: HTMConfig) -> None:
        self.db = db
        self.clock = clock
        self.config = config

    async def get_statistics(self, *, window_seconds: float | None = None) -> dict[str, Any]:
        """Return the seed's figures plus active violations, read from the database.

        The four counts are all-time; ``sla_compliance_rate`` is over tasks with a deadline that
        completed, failed or timed out in the last ``window_seconds`` (None when there were none).
        """
        t = htm_tasks
        now = self.clock.now()
        window = self.config.sla_window_seconds if window_seconds is None else window_seconds
        on_time = func.coalesce(func.sum(case((t.c.finished_at <= t.c.deadline, 1), else_=0)), 0)
        async with self.db.read() as conn:
            counted = dict((await conn.execute(select(htm_sla_counters.c.name, htm_sla_counters.c.value))).all())
            finished, met = (
                await conn.execute(
                    select(func.count(), on_time)
                    .select_from(t)
                    .where(SLA_OUTCOME, t.c.finished_at > now - timedelta(seconds=window))
                )
            ).one()
            counts = [
                select(func.count()).select_from(t).where(*part).scalar_subquery() for part in active_conditions(now)
            ]
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

    async def active_violations(
        self, *, visible_to: str | None, origin: origins.Origin | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Return unfinished tasks past their deadline, the most overdue first."""
        t = htm_tasks
        now = self.clock.now()
        parts = []
        for part in active_conditions(now):
            query = select(*SLA_COLUMNS, t.c.created_by_name, t.c.attempts, t.c.max_attempts).where(*part)
            if visible_to is not None:
                query = query.where(t.c.created_by == visible_to)
            if origin is not None:
                query = query.where(t.c.origin == origin.value)
            parts.append(query)
        both = union_all(*parts).subquery()
        ordered = select(both).order_by(both.c.deadline, both.c.seq).limit(limit)
        async with self.db.read() as conn:
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
                "overdue_ms": ms(now - r.deadline),
                "elapsed_ratio": elapsed_ratio(r.created_at, int(r.sla_ms), now),
                "worker_id": r.worker_id,
                "attempts": int(r.attempts),
                "max_attempts": int(r.max_attempts),
                "created_by_name": r.created_by_name,
            }
            for r in rows
        ]


def active_conditions(now: datetime) -> list[tuple[Any, ...]]:
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
