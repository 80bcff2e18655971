"""The intent ↔ task bridge: an intent's status follows its task, and a finished intent feeds the learning loop.

Three things call :meth:`Bridge.settle`: the listener on ``htm.task.*`` (the fast path, in every
serving process), the sweep (``recovery.py``, which covers events lost or published while no one
listened), and every read of an intent, so an answer is never behind its task. Each change is a
guarded UPDATE (``WHERE status = <what was read>``), so when several processes settle the same
intent, one finishes it, records its outcome and publishes ``agentic.intent.*``; the others find
nothing to do. The outcome is written in the transaction that finishes the intent, and
``learning_outcomes.intent_id`` is unique, so an intent is learned from exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import background
from grace.bus import Bus
from grace.clock import Clock
from grace.htm import HTM, Task
from grace.intents.model import FINISHED, OPEN, TOPICS, IntentStatus, status_of_task
from grace.intents.outcomes import LearningLoop
from grace.intents.tables import intent_records
from grace.storage import Database

__all__ = ["Bridge", "action_type_of"]

log = logging.getLogger("grace.intents")

LINKED = (IntentStatus.QUEUED.value, IntentStatus.RUNNING.value)


def action_type_of(domain: str) -> str:
    """Return the learning loop's action type for an intent of ``domain`` (the seed's ``intent_<domain>``)."""
    return f"intent_{domain}"


class Bridge:
    """Keep intents in step with their tasks; finish them, feed the learning loop, tell the bus."""

    def __init__(self, db: Database, clock: Clock, bus: Bus, htm: HTM, learning: LearningLoop) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        self.htm = htm
        self.learning = learning

    async def settle(
        self, *, intent_ids: Sequence[str] | None = None, owner_id: str | None = None, limit: int = 1000
    ) -> int:
        """Bring open intents with a task in step with it; return how many changed."""
        i = intent_records
        query = (
            select(i)
            .where(
                i.c.status.in_([IntentStatus.QUEUED.value, IntentStatus.RUNNING.value]), i.c.htm_task_id.is_not(None)
            )
            .order_by(i.c.created_at)
            .limit(limit)
        )
        if intent_ids is not None:
            query = query.where(i.c.intent_id.in_(list(intent_ids)))
        if owner_id is not None:
            query = query.where(i.c.owner_id == owner_id)
        async with self.db.read() as conn:
            rows = [dict(r) for r in (await conn.execute(query)).mappings().all()]
        if not rows:
            return 0
        tasks = await self.htm.tasks_by_id([r["htm_task_id"] for r in rows])
        changed = 0
        for row in rows:
            task = tasks.get(row["htm_task_id"])
            if task is None:
                continue  # vanished: the sweep resubmits it (recovery.py)
            new = status_of_task(task.status.value)
            if new.value == row["status"]:
                continue
            if new.finished:
                changed += await self.finish(row, new, task=task)
            else:
                async with self.db.write() as conn:
                    result = await conn.execute(
                        update(i)
                        .where(i.c.intent_id == row["intent_id"], i.c.status == row["status"])
                        .values(status=new.value, updated_at=self.clock.now())
                    )
                changed += result.rowcount
        return changed

    async def finish(
        self,
        row: Mapping[str, Any],
        status: IntentStatus,
        *,
        task: Task | None = None,
        reason: str | None = None,
        conn: AsyncConnection | None = None,
    ) -> int:
        """Finish the open intent ``row`` as ``status``, recording its outcome unless cancelled; 1 if this call did."""
        assert status in FINISHED
        if conn is not None:
            done = await self._finish_in(conn, row, status, task=task, reason=reason)
        else:
            async with self.db.write() as own:
                done = await self._finish_in(own, row, status, task=task, reason=reason)
        if done is not None:
            await self._announce(done)
            return 1
        return 0

    async def _finish_in(
        self,
        conn: AsyncConnection,
        row: Mapping[str, Any],
        status: IntentStatus,
        *,
        task: Task | None,
        reason: str | None,
    ) -> dict[str, Any] | None:
        i = intent_records
        now = self.clock.now()
        finished_at: datetime = task.finished_at if task is not None and task.finished_at is not None else now
        # The task's whole time, submission to finish (what an SLA is measured against); without a task,
        # the intent's own.
        started: datetime = task.created_at if task is not None else row["created_at"]
        execution_s = max(0.0, (finished_at - started).total_seconds())
        sla_met: bool | None
        if task is not None and task.deadline is not None:
            sla_met = finished_at <= task.deadline
        elif row["sla_ms"] is not None:
            sla_met = False if status is not IntentStatus.COMPLETED else execution_s * 1000 <= row["sla_ms"]
        else:
            sla_met = None
        why = reason or (task.error if task is not None and status is not IntentStatus.COMPLETED else None)
        learned = status is not IntentStatus.CANCELLED
        result = await conn.execute(
            update(i)
            .where(i.c.intent_id == row["intent_id"], i.c.status.in_([s.value for s in OPEN]))
            .values(
                status=status.value,
                reason=why,
                result=task.result if task is not None else None,
                sla_met=sla_met,
                execution_ms=execution_s * 1000,
                learned=learned,
                updated_at=now,
                finished_at=finished_at,
            )
        )
        if result.rowcount != 1:
            return None
        if learned:
            await self.learning.record_outcome(
                conn=conn,
                action_type=action_type_of(row["domain"]),
                success=status is IntentStatus.COMPLETED,
                confidence_score=row["confidence"],
                execution_time=execution_s,
                context={
                    "intent_id": row["intent_id"],
                    "goal": row["goal"],
                    "sla_met": sla_met,
                    "status": status.value,
                    "handler": row["handler"],
                    "reason": why,
                    "metrics": {
                        "total_ms": round(execution_s * 1000, 3),
                        "run_ms": round(task.duration.total_seconds() * 1000, 3)
                        if task is not None and task.duration is not None
                        else None,
                        "attempts": task.attempts if task is not None else 0,
                        "recoveries": int(row["recoveries"]),
                    },
                },
                owner_id=row["owner_id"],
                recorded_by=f"{row['agent']}@{row['owner_name']}" if row["agent"] else row["owner_name"],
                domain=row["domain"],
                task_type=row["task_type"],
                intent_id=row["intent_id"],
                sla_ms=row["sla_ms"],
                sla_met=sla_met,
            )
        return {
            "intent_id": row["intent_id"],
            "htm_task_id": task.task_id if task is not None else row["htm_task_id"],
            "status": status.value,
            "domain": row["domain"],
            "handler": row["handler"],
            "owner": row["owner_name"],
            "agent": row["agent"],
            "sla_met": sla_met,
            "execution_ms": round(execution_s * 1000, 3),
            "reason": why,
        }

    async def _announce(self, done: dict[str, Any]) -> None:
        topic = TOPICS[IntentStatus(done["status"])]
        log.info("intents.finished", extra={"intent_id": done["intent_id"], "status": done["status"]})
        try:
            await self.bus.publish(topic, done)
        except Exception as exc:  # the intent is finished and learned from whatever the bus says
            log.warning("intents.publish_failed", extra={"topic": topic, "reason": type(exc).__name__})

    async def listen(self) -> None:
        """Settle intents as their tasks' events arrive (runs until cancelled)."""
        async with self.bus.subscribe("htm.task.*") as events:
            while True:
                event = await events.get()
                if event is None:
                    return
                intent_id = event.payload.get("intent_id")
                if not intent_id:
                    continue
                try:
                    await self.settle(intent_ids=[str(intent_id)])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the sweep settles it later, unless asked to stop
                    background.stop_if_cancelled()
                    log.warning("intents.settle_failed", extra={"reason": type(exc).__name__})
