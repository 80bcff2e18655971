"""What workers report: claims, outcomes and reaped leases, recorded in the queue and published as task events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from grace.htm import events, outbox
from grace.htm.queue import Exchange, Finished, Outcome, Queue
from grace.htm.tasks import Status, Task

__all__ = ["Recorder", "claimed_event"]

log = logging.getLogger("grace.htm")


def claimed_event(worker_id: str, task: Task) -> dict[str, Any]:
    """Return the ``htm.task.update`` payload announcing that ``worker_id`` runs ``task``.

    On PostgreSQL the claim's statement builds the same payload in SQL (``pg_with_events``).
    """
    return {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "origin": task.origin.value,
        "priority": task.priority.value,
        "intent_id": task.intent_id,
        "status": Status.RUNNING.value,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "worker_id": worker_id,
    }


class Recorder:
    """Record workers' outcomes and return dead workers' leases; publish ``htm.task.*`` for each change."""

    def __init__(self, queue: Queue, publisher: events.EventPublisher) -> None:
        self.queue = queue
        self.events = publisher

    async def claimed(self, worker_id: str, tasks: Sequence[Task]) -> None:
        """Publish that ``worker_id`` runs ``tasks`` (claimed and committed already).

        With an outbox (PostgreSQL) the claim wrote these events itself: the relay is woken.
        """
        if self.queue.outbox:
            if tasks:
                self.events.relay_soon()
            return
        await self.events.emit_many([(events.UPDATE, claimed_event(worker_id, task)) for task in tasks])

    async def record(
        self, worker_id: str, outcomes: Sequence[Outcome], *, claim: int = 0, fallback_capacity: int = 1
    ) -> Exchange:
        """Record a worker's outcomes (and claim up to ``claim`` tasks in the same call); publish what changed."""
        done = await self.queue.finish_and_claim(worker_id, outcomes, claim, fallback_capacity=fallback_capacity)
        await self._announce(done.recorded)
        return done

    async def reap(self) -> list[Finished]:
        """Return dead workers' expired leases to the queue (or fail them on their last attempt)."""
        changed = await self.queue.reap()
        await self._announce(changed)
        return changed

    async def _announce(self, changes: Sequence[Finished]) -> None:
        for f in changes:
            if outbox.topic_of(f) == events.FAILED:
                log.info("htm.task_failed", extra={"task_id": f.task_id, "status": f.status.value})
        if self.queue.outbox:
            # Written with the change (in the same statement or transaction): the relay publishes them,
            # so no payload is built here (on every outcome, that was a few microseconds a task for nothing).
            if changes:
                self.events.relay_soon()
        else:
            await self.events.emit_many([(outbox.topic_of(f), f.event()) for f in changes])
