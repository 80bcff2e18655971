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

With ``relay`` (PostgreSQL, :mod:`grace.htm.outbox`) the task events are not queued here: they
were written into ``htm_outbox`` with the change they describe, and the same background runner
moves them into the bus (:meth:`grace.bus.PostgresBus.relay`), woken by :meth:`relay_soon` after a
local commit and every ``SWEEP_SECONDS`` anyway, for rows a dead process left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from grace.bus import Bus, PostgresBus
from grace.htm.tables import htm_outbox

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
# How often the relay looks in the outbox with nothing woken it: rows a process wrote just before
# it died are published within this long by any other serving process (or its successor).
SWEEP_SECONDS = 1.0
# The wait before the relay tries again after a failed move (the rows stay in the outbox meanwhile).
RELAY_RETRY_SECONDS = 0.5


class EventPublisher:
    """Queue events for publication on the bus; publish them in batches in the background.

    ``enabled`` switches the task events off (``GRACE_HTM_EVENTS=false``); events emitted as
    ``essential`` (the SLA enforcer's warnings, violations and statistics) are published anyway:
    they are rare, and they are how an operator hears that a deadline is slipping.
    """

    def __init__(self, bus: Bus, *, enabled: bool = True, relay: bool = False) -> None:
        self.bus = bus
        self.enabled = enabled
        self._relay = bus if relay and isinstance(bus, PostgresBus) else None
        self._relay_due = False
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

    @property
    def relays(self) -> bool:
        """Whether task events reach the bus through the outbox (written with their changes) rather than here."""
        return self._relay is not None

    def start(self) -> None:
        """Start the background runner now (with an outbox, its sweep publishes what dead processes left)."""
        if self._runner is None:
            self._relay_due = self._relay is not None
            self._runner = asyncio.create_task(self._run(), name="grace-htm-events")

    def relay_soon(self) -> None:
        """Have the relay move the outbox's events into the bus soon (after a local commit wrote some)."""
        if self._relay is None:
            return
        self._relay_due = True
        self._idle.clear()
        if self._runner is None:
            self.start()
        self._ready.set()

    async def emit_many(self, items: list[tuple[str, dict[str, Any]]], *, essential: bool = False) -> None:
        """Queue events in order (dropped while disabled, unless ``essential``); waits only when the backlog is full."""
        if not (self.enabled or essential) or not items:
            return
        if self._runner is None:
            self.start()
        while len(self._pending) >= BACKLOG:
            self._room.clear()
            await self._room.wait()
        self._pending.extend(items)
        self._idle.clear()
        self._ready.set()

    async def _run(self) -> None:
        while True:
            if not self._pending and not self._relay_due:
                self._idle.set()
                if self._closing:
                    return
                self._ready.clear()
                if self._relay is None:
                    await self._ready.wait()
                else:
                    try:
                        await asyncio.wait_for(self._ready.wait(), SWEEP_SECONDS)
                    except TimeoutError:
                        self._relay_due = True  # the sweep: what a dead process left
                continue
            if len(self._pending) < BATCH and not self._closing:
                await asyncio.sleep(COALESCE_SECONDS)  # let a small batch grow, under load as when idle
            if self._relay_due:
                self._relay_due = False
                await self._move()
            if self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                self._room.set()
                await self._publish(batch)

    async def _move(self) -> None:
        """Relay the outbox into the bus until it is empty (as far as this relay can see)."""
        assert self._relay is not None
        try:
            while True:
                moved = await self._relay.relay(htm_outbox.name, limit=BATCH)
                self.published += moved
                if moved < BATCH:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Nothing is lost: the rows stay in the outbox for the next try (or another process's).
            log.warning("htm.event_relay_retry", extra={"reason": type(exc).__name__})
            if not self._closing:  # when closing, another process's relay (or the next start) moves them
                self._relay_due = True
                await asyncio.sleep(RELAY_RETRY_SECONDS)

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
        if self._relay is not None:
            self._relay_due = True  # a last move of what this process wrote
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._runner = None
        self._closing = False
