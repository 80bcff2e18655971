"""The sweep: settle what the listener missed, and recover orphans on both sides of the bridge.

- **A task whose intent is gone** (an unfinished ``intent.*`` task naming an intent no longer stored,
  e.g. its owner was deleted): cancelled, since its outcome has no one to go to. Were it to run
  anyway, its handler refuses (``IntentGone``).
- **An intent whose task was never created** (the process died between the two writes of a
  submission; found once it has been pending longer than ``GRACE_INTENTS_RECOVER_AFTER_SECONDS``, so
  a submission still under way in another process is left alone) or **whose task vanished** (its
  row is gone while the intent is open): resubmitted once, as its owner; the next time, failed with
  the reason, and its outcome recorded.

It runs at start and every ``GRACE_INTENTS_SWEEP_SECONDS`` in each serving process; every change it
makes is a guarded UPDATE in the transaction that creates the task, so concurrent sweeps on several
processes recover an intent once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from grace import background, errors
from grace.clock import Clock
from grace.htm import HTM
from grace.intents.bridge import Bridge
from grace.intents.config import IntentsConfig
from grace.intents.handlers import TASK_PREFIX
from grace.intents.model import Intent, IntentStatus
from grace.intents.tables import intent_records
from grace.storage import Database

__all__ = ["NEVER_CREATED", "VANISHED", "Sweep", "Sweeper"]

log = logging.getLogger("grace.intents")

NEVER_CREATED = (
    "its task was never created (the submitting process stopped between recording the intent and creating the task)"
)
VANISHED = "its task vanished from the task manager"
BATCH = 500


@dataclass
class Sweep:
    """What one sweep did."""

    settled: int = 0
    orphan_tasks_cancelled: list[str] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settled": self.settled,
            "orphan_tasks_cancelled": self.orphan_tasks_cancelled,
            "resubmitted": self.resubmitted,
            "failed": self.failed,
        }


class Sweeper:
    """Find and recover orphans; settle open intents whose task finished unnoticed."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        config: IntentsConfig,
        *,
        htm: HTM,
        bridge: Bridge,
        resubmit: Callable[[Intent], Awaitable[str | None]],
    ) -> None:
        self.db = db
        self.clock = clock
        self.config = config
        self.htm = htm
        self.bridge = bridge
        self.resubmit = resubmit

    async def run(self) -> None:
        """Sweep now and every ``sweep_seconds`` until cancelled."""
        while True:
            try:
                done = await self.sweep()
                if done.orphan_tasks_cancelled or done.resubmitted or done.failed:
                    log.info("intents.swept", extra=done.as_dict())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # try again next round, unless asked to stop
                background.stop_if_cancelled()
                log.warning("intents.sweep_failed", extra={"reason": type(exc).__name__})
            await asyncio.sleep(self.config.sweep_seconds)

    async def sweep(self) -> Sweep:
        """Run one sweep."""
        done = Sweep()
        done.settled = await self.bridge.settle(limit=BATCH)
        await self._orphan_tasks(done)
        await self._lost_intents(done)
        return done

    async def _orphan_tasks(self, done: Sweep) -> None:
        pairs = await self.htm.unfinished_with_intent(task_type_prefix=TASK_PREFIX, limit=BATCH)
        if not pairs:
            return
        wanted = sorted({intent_id for _, intent_id in pairs})
        async with self.db.read() as conn:
            stored = {
                r[0]
                for r in (
                    await conn.execute(select(intent_records.c.intent_id).where(intent_records.c.intent_id.in_(wanted)))
                ).all()
            }
        for task_id, intent_id in pairs:
            if intent_id in stored:
                continue
            try:
                await self.htm.cancel(task_id, principal=None)
            except (errors.TaskAlreadyFinished, errors.NotFound):
                continue
            log.info("intents.orphan_task_cancelled", extra={"task_id": task_id, "intent_id": intent_id})
            done.orphan_tasks_cancelled.append(task_id)

    async def _lost_intents(self, done: Sweep) -> None:
        i = intent_records
        now = self.clock.now()
        cutoff = now - timedelta(seconds=self.config.recover_after_seconds)
        async with self.db.read() as conn:
            never = [
                dict(r)
                for r in (
                    await conn.execute(
                        select(i)
                        .where(
                            i.c.status == IntentStatus.PENDING.value,
                            i.c.htm_task_id.is_(None),
                            i.c.created_at <= cutoff,
                        )
                        .order_by(i.c.created_at)
                        .limit(BATCH)
                    )
                )
                .mappings()
                .all()
            ]
            linked = [
                dict(r)
                for r in (
                    await conn.execute(
                        select(i)
                        .where(
                            i.c.status.in_([IntentStatus.QUEUED.value, IntentStatus.RUNNING.value]),
                            i.c.htm_task_id.is_not(None),
                        )
                        .order_by(i.c.created_at)
                        .limit(BATCH)
                    )
                )
                .mappings()
                .all()
            ]
        present = await self.htm.tasks_by_id([r["htm_task_id"] for r in linked])
        vanished = [r for r in linked if r["htm_task_id"] not in present]
        for row, why in [(r, NEVER_CREATED) for r in never] + [(r, VANISHED) for r in vanished]:
            intent = Intent.from_row(row)
            if intent.recoveries == 0:
                task_id = await self.resubmit(intent)
                if task_id is not None:
                    log.info("intents.resubmitted", extra={"intent_id": intent.intent_id, "task_id": task_id})
                    done.resubmitted.append(intent.intent_id)
                    continue
                if not await self._still(intent):
                    continue  # another process recovered or finished it
                reason = f"{why}; resubmitting it was refused"
            else:
                reason = f"{why}, again after it was resubmitted once"
            if await self.bridge.finish(row, IntentStatus.FAILED, reason=reason):
                log.info("intents.recovery_failed", extra={"intent_id": intent.intent_id})
                done.failed.append(intent.intent_id)

    async def _still(self, intent: Intent) -> bool:
        """Return whether ``intent`` is still open and unlinked as read (no one else has recovered it)."""
        i = intent_records
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(i.c.status, i.c.htm_task_id, i.c.recoveries).where(i.c.intent_id == intent.intent_id)
                )
            ).first()
        return (
            row is not None
            and row[0] == intent.status.value
            and row[1] == intent.htm_task_id
            and row[2] == intent.recoveries
        )
