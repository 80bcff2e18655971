"""The single-node bus: an in-process log, nothing shared with other processes.

The log keeps each event as a tuple of plain values (its id, topic, payload as JSON text, time
and source), not as an :class:`Event`: the collector stops tracking such a tuple the first time it
looks at it. Kept as objects, the last 100,000 events (a few seconds of a busy task manager's)
stayed in the collector's youngest generation (each event appended as one left, the count that
starts a collection never grew), and a collection walked all of them: 90-150 ms, every request
held meanwhile. An event is made again, its payload decoded, when a subscriber reads it.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from grace import jsontext
from grace.bus.log import Bus, Checked, Event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from grace.storage import Database

__all__ = ["InProcessBus"]

# A logged event: (id, topic, payload as JSON text, published_at, source).
Logged = tuple[int, str, str, datetime, str]


def _event(logged: Logged) -> Event:
    return Event.make(logged[0], logged[1], jsontext.loads(logged[2]), logged[3], logged[4])


class InProcessBus(Bus):
    """Keep the log in memory; retention bounds it by age and by ``max_events``."""

    poll_interval = 5.0

    def __init__(self, *, max_events: int = 100_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_events = max_events
        self._log: deque[Logged] = deque()
        self._next_id = 1
        self._cursors: dict[str, int] = {}

    async def _append(self, items: list[Checked], published_at: datetime, *, returning: bool = True) -> list[Event]:
        return self._append_now(items, published_at, returning=returning)

    async def _append_within(self, db: Database, conn: AsyncConnection, items: list[Checked], at: datetime) -> None:
        # Nothing outlives this process here: the events join the log as the transaction commits
        # (queued first, so they precede the announcement that wakes subscribers).
        def append() -> None:
            self._append_now(items, at, returning=False)

        db.after_commit(conn, append)

    def _append_now(self, items: list[Checked], published_at: datetime, *, returning: bool = True) -> list[Event]:
        out = []
        log, source = self._log, self.source
        for item in items:
            log.append((self._next_id, item.topic, item.encoded, published_at, source))
            if returning:
                out.append(Event.make(self._next_id, item.topic, item.payload(), published_at, source))
            self._next_id += 1
        while len(self._log) > self.max_events:
            self._log.popleft()
        return out

    async def _read_after(self, after_id: int, prefix: str, limit: int) -> list[Event]:
        return self._scan(after_id, prefix, limit)[0]

    async def _read_after_passed(self, after_id: int, prefix: str, limit: int) -> tuple[list[Event], int]:
        return self._scan(after_id, prefix, limit)

    def _scan(self, after_id: int, prefix: str, limit: int) -> tuple[list[Event], int]:
        """Return up to ``limit`` events after ``after_id`` under ``prefix``, and the last id looked at.

        Ids are consecutive in the log (each append takes the next, retention drops from the front),
        so the first event after ``after_id`` is found by arithmetic, not by a search.
        """
        log = self._log
        if not log:
            return [], after_id
        start = max(0, after_id - log[0][0] + 1)
        out: list[Event] = []
        passed = after_id
        for i in range(start, len(log)):
            logged = log[i]
            passed = logged[0]
            if logged[1].startswith(prefix):
                out.append(_event(logged))
                if len(out) >= limit:
                    break
        return out, passed

    async def latest_id(self) -> int:
        return self._next_id - 1

    async def _load_cursor(self, name: str) -> int | None:
        return self._cursors.get(name)

    async def _save_cursor(self, name: str, event_id: int) -> None:
        self._cursors[name] = event_id

    async def prune(self) -> int:
        cutoff = self.clock.now() - timedelta(seconds=self.retention_seconds)
        dropped = 0
        while self._log and self._log[0][3] < cutoff:
            self._log.popleft()
            dropped += 1
        return dropped

    def __repr__(self) -> str:
        return f"InProcessBus(events={len(self._log)})"
