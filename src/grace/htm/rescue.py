"""The rescue task (``htm.sla.rescue``): report an overdue task, and return it if its worker is gone.

The SLA enforcer submits one when a task reaches 200% of its SLA; a worker runs it like any
other task (origin remediation, priority high).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select

from grace import errors
from grace.clock import Clock, iso
from grace.htm import origins
from grace.htm.outcomes import Recorder
from grace.htm.sla_levels import elapsed_ratio, ms
from grace.htm.submission import Submitter
from grace.htm.tables import IS_QUEUED, htm_tasks
from grace.htm.tasks import Priority, Status, TaskRequest
from grace.htm.workers import TaskContext
from grace.storage import Database

__all__ = ["TASK_TYPE", "Rescuer", "request_for"]

TASK_TYPE = "htm.sla.rescue"


def request_for(submitter: Submitter, *, task_id: str, task_type: str) -> TaskRequest:
    """Return the submission of a rescue task for the overdue task ``task_id``."""
    return submitter.request(
        TASK_TYPE,
        payload={"task_id": task_id, "task_type": task_type},
        origin=origins.Origin.REMEDIATION.value,
        priority=Priority.HIGH,
        max_attempts=3,
        timeout_seconds=60,
    )


class Rescuer:
    """Run rescue tasks: inspect the overdue task, and return it through the reap when its lease is gone."""

    def __init__(self, db: Database, clock: Clock, recorder: Recorder) -> None:
        self.db = db
        self.clock = clock
        self.recorder = recorder

    async def handle(self, ctx: TaskContext) -> dict[str, Any]:
        """Run one ``htm.sla.rescue`` task (the registered handler)."""
        task_id = ctx.payload.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise errors.InvalidInput("payload.task_id must name the overdue task")
        return await self.inspect_overdue(task_id)

    async def inspect_overdue(self, task_id: str) -> dict[str, Any]:
        """Report an overdue task's state, worker, lease and lateness; return it to the queue if its lease is gone.

        A running task whose lease expired (or, on PostgreSQL, whose worker's process died) goes back
        through the queue's own reap, exactly as a worker's maintenance would return it.
        """
        t = htm_tasks
        now = self.clock.now()
        async with self.db.read() as conn:
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
            "lease_expires_at": iso(row.lease_expires_at),
            "lease_expired": None,
            "deadline": iso(row.deadline),
            "overdue_ms": ms(now - row.deadline) if row.deadline else None,
            "elapsed_ratio": elapsed_ratio(row.created_at, int(row.sla_ms), now) if row.sla_ms else None,
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
            returned = next((f for f in await self.recorder.reap() if f.task_id == task_id), None)
            if returned is not None:
                report["status_after"] = returned.status.value
                report["action"] = "returned_to_queue" if returned.status is Status.QUEUED else "failed_on_last_attempt"
                why = "whose lease had expired" if expired else "whose process had died"
                done = (
                    "returned it to the queue" if returned.status is Status.QUEUED else "failed it (no attempts left)"
                )
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
            report["queued_ahead"] = ahead = await self._queued_ahead(row)
            report["summary"] = (
                f"{task_id} is queued at priority {row.priority} with {ahead} {row.origin} task(s) ahead of it, {late}"
            )
        else:
            report["summary"] = f"{task_id} is {status.value} until {row.queued_at.isoformat()}, {late}"
        return report

    async def _queued_ahead(self, row: Any) -> int:
        """Return how many queued tasks of the row's origin a claim takes before it: higher priority, or at its
        priority an earlier deadline (a deadline before none), or at its priority and deadline older."""
        t = htm_tasks
        if row.deadline is None:
            sooner = or_(t.c.deadline.is_not(None), and_(t.c.deadline.is_(None), t.c.seq < row.seq))
        else:
            sooner = or_(t.c.deadline < row.deadline, and_(t.c.deadline == row.deadline, t.c.seq < row.seq))
        async with self.db.read() as conn:
            ahead = (
                await conn.execute(
                    select(func.count())
                    .select_from(t)
                    .where(
                        IS_QUEUED,
                        t.c.origin == row.origin,
                        or_(
                            t.c.priority_rank < row.priority_rank,
                            and_(t.c.priority_rank == row.priority_rank, sooner),
                        ),
                    )
                )
            ).scalar_one()
        return int(ahead)
