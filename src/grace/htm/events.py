"""Publishing task events after commit, off the hot path, batched and in order.

Topics: ``htm.task.created``, ``htm.task.update``, ``htm.task.completed``,
``htm.task.failed``. Events are queued once the change is committed; one
background publisher lets a batch smaller than ``BATCH`` gather for
``COALESCE_SECONDS``, then takes everything queued so far and appends it with
``Bus.publish_batch`` (one transaction on PostgreSQL, where each event is a
row), so a thousand tasks a second cost a few inserts' round trips, not
thousands. A batch whose append fails is tried again, backing off, for about a
minute (a connection the server dropped is replaced meanwhile; a database outage
of up to that long loses no event), then logged and dropped. Meanwhile new events
queue behind it, up to ``BACKLOG``.
:meth:`EventPublisher.drain` waits until everything queued so far is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from grace.bus import Bus

__all__ = ["COMPLETED", "CREATED", "FAILED", "UPDATE", "EventPublisher"]

log = logging.getLogger("grace.htm")

CREATED = "htm.task.created"
UPDATE = "htm.task.update"
COMPLETED = "htm.task.completed"
FAILED = "htm.task.failed"

BATCH = 500
BACKLOG = 20_000
# How long the publisher lets events gather before appending a batch smaller than BATCH: tasks
# claimed one at a time would otherwise cost an append (a transaction) every few events.
COALESCE_SECONDS = 0.025
# Waits before each new try of a batch whose append failed; after the last, the batch is dropped.
# About a minute in all: a database restart or a short outage (the fault tests' is a few seconds)
# must not cost the events of the tasks that finished just before it.
PUBLISH_RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class EventPublisher:
    """Queue events for publication on the bus; publish them in batches in the background.

    ``enabled`` switches the task events off (``GRACE_HTM_EVENTS=false``); events emitted as
    ``essential`` (the SLA enforcer's warnings, violations and statistics) are published anyway:
    they are rare, and they are how an operator hears that a deadline is slipping.
    """

    def __init__(self, bus: Bus, *, enabled: bool = True) -> None:
        self.bus = bus
        self.enabled = enabled
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self.published = 0
        self.failed = 0

    async def emit(self, topic: str, payload: dict[str, Any], *, essential: bool = False) -> None:
        """Queue one event; waits only when the backlog is full."""
        await self.emit_many([(topic, payload)], essential=essential)

    async def emit_many(self, items: list[tuple[str, dict[str, Any]]], *, essential: bool = False) -> None:
        """Queue events in order (dropped while disabled, unless ``essential``); waits only when the backlog is full."""
        if not (self.enabled or essential) or not items:
            return
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="grace-htm-events")
        while len(self._pending) >= BACKLOG:
            self._room.clear()
            await self._room.wait()
        self._pending.extend(items)
        self._idle.clear()
        self._ready.set()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            if len(self._pending) < BATCH and not self._closing:
                await asyncio.sleep(COALESCE_SECONDS)  # let a small batch grow, under load as when idle
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            self._room.set()
            await self._publish(batch)

    async def _publish(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Append ``batch``, trying again a few times (a dropped connection is replaced on the next try).

        The tasks' state is committed whatever happens here; a batch that fails every try is logged
        and dropped, not retried forever. An append whose answer was lost after it committed is
        appended again, so a subscriber may, rarely, see an event twice.
        """
        for wait in (*PUBLISH_RETRY_SECONDS, None):
            try:
                await self.bus.publish_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if wait is None:
                    self.failed += len(batch)
                    log.warning("htm.event_publish_failed", extra={"events": len(batch), "reason": type(exc).__name__})
                    return
                log.warning("htm.event_publish_retry", extra={"events": len(batch), "reason": type(exc).__name__})
                await asyncio.sleep(wait)
            else:
                self.published += len(batch)
                return

    async def drain(self) -> None:
        """Wait until every event queued so far has been published."""
        if self._runner is not None:
            await self._idle.wait()

    async def close(self) -> None:
        """Publish what is queued, then stop."""
        if self._runner is None:
            return
        self._closing = True
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._runner = None
        self._closing = False
