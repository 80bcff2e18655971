"""The bus's shared model: an append-only event log that subscribers read with a cursor.

Both implementations keep every event in a log with increasing ids. A
subscriber remembers the last id it saw, reads what came after it, and sleeps
until the log grows. A named subscriber stores its cursor, so after a restart
it resumes exactly where it stopped and receives what it missed, in order.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from grace import errors, jsontext
from grace.bus import topics
from grace.clock import Clock, SystemClock

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from grace.storage import Database

__all__ = ["Bus", "Checked", "Event", "Subscription"]

log = logging.getLogger("grace.bus")

MAX_PAYLOAD_BYTES = 256 * 1024
READ_BATCH = 200


# Keys and values that read back from JSON as they are (by exact type: a subclass may not).
_TEXT = frozenset({str})
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


class Checked(NamedTuple):
    """An event about to be appended: its topic, its payload as JSON, and the payload as given."""

    topic: str
    encoded: str
    given: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        """Return a copy of the payload of its own, as subscribers will read it back from JSON.

        A flat payload of plain values with text keys reads back as an equal dict, so a shallow
        copy is that copy; anything else is decoded from the JSON. Call it before the publisher
        can run again: the shallow copy is taken from the publisher's dict when called.
        """
        given = self.given
        if _TEXT.issuperset(map(type, given)) and _PLAIN_TYPES.issuperset(map(type, given.values())):
            return dict(given)
        decoded: dict[str, Any] = jsontext.loads(self.encoded)
        return decoded


@dataclass(frozen=True)
class Event:
    """One published event."""

    id: int
    topic: str
    payload: dict[str, Any]
    published_at: datetime
    source: str = ""

    @classmethod
    def make(cls, id: int, topic: str, payload: dict[str, Any], published_at: datetime, source: str) -> Event:
        """Build an event with its fields set straight in (a bus appends thousands a second)."""
        event = object.__new__(cls)
        event.__dict__.update(id=id, topic=topic, payload=payload, published_at=published_at, source=source)
        return event

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "payload": self.payload,
            "published_at": self.published_at.isoformat(),
            "source": self.source,
        }


def node_name() -> str:
    """Return a name for this process, used as the ``source`` of what it publishes."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


class Bus(abc.ABC):
    """Publish/subscribe by topic over an append-only log."""

    poll_interval = 1.0

    def __init__(self, *, clock: Clock | None = None, retention_seconds: int = 7 * 24 * 3600) -> None:
        self.clock = clock or SystemClock()
        self.retention_seconds = retention_seconds
        self.source = node_name()
        self._wakeups: set[asyncio.Event] = set()
        self._closed = False
        # (topic prefix, callback): told at once, before any subscriber reads it, that such a topic was
        # published here or (PostgreSQL) by another process; see on_published.
        self._hints: list[tuple[str, Callable[[], None]]] = []

    # -- what each implementation provides --------------------------------

    @abc.abstractmethod
    async def _append(self, items: list[Checked], published_at: datetime, *, returning: bool = True) -> list[Event]:
        """Append ``items`` in order; return them as events unless ``returning`` is false (then any list)."""

    @abc.abstractmethod
    async def _append_within(self, db: Database, conn: AsyncConnection, items: list[Checked], at: datetime) -> None:
        """Append ``items`` as part of ``conn``'s write transaction: visible when it commits, never if it rolls back."""

    @abc.abstractmethod
    async def _read_after(self, after_id: int, prefix: str, limit: int) -> list[Event]: ...

    async def _read_after_passed(self, after_id: int, prefix: str, limit: int) -> tuple[list[Event], int]:
        """Return what :meth:`_read_after` returns, and the id a cursor may move to after this read.

        That is the last event returned, or ``after_id`` when none came back. A log that can tell
        which events it looked at (the in-process one) says the newest of them, so a subscriber
        whose topics are rare does not read the same unmatched events again at every wake-up.
        """
        batch = await self._read_after(after_id, prefix, limit)
        return batch, batch[-1].id if batch else after_id

    @abc.abstractmethod
    async def latest_id(self) -> int:
        """Return the id of the newest event (0 when the log is empty)."""

    @abc.abstractmethod
    async def _load_cursor(self, name: str) -> int | None: ...

    @abc.abstractmethod
    async def _save_cursor(self, name: str, event_id: int) -> None: ...

    @abc.abstractmethod
    async def prune(self) -> int:
        """Drop events older than the retention period; return how many went."""

    async def start(self) -> None:  # noqa: B027 - optional hook; the in-process bus needs nothing
        """Begin receiving wake-ups from other processes, where the backend has them."""

    async def close(self) -> None:
        """Stop; wakes every subscriber so it can finish."""
        self._closed = True
        self._wake_all()

    async def barrier(self) -> int:
        """Return once every process listening to this bus has heard everything committed before the call.

        Each process's hints (:meth:`on_published`) have then run for those events, so a change whose
        hint empties a cache is in force everywhere when this returns. Returns how many processes
        confirmed. In process there is no other listener: at once, 0.
        """
        return 0

    # -- the public surface --------------------------------------------------

    async def publish(self, topic: str, payload: Mapping[str, Any] | None = None) -> Event:
        """Append an event under ``topic`` and wake every subscriber."""
        return (await self.publish_many([(topic, payload or {})]))[0]

    async def publish_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Event]:
        """Append several events at once (one transaction on PostgreSQL), in order."""
        checked = self._check(items)
        if not checked:
            return []
        published = await self._append(checked, self.clock.now())
        self._hint([c.topic for c in checked])
        self._wake_all()
        return published

    async def publish_within(
        self, db: Database, conn: AsyncConnection, items: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """Publish events with the change they describe: as part of ``conn``'s transaction (from ``db.write()``).

        They are published when that transaction commits and never when it rolls back, so no process
        can die between a change and its announcement. On PostgreSQL the events are rows written in the
        transaction (other processes are woken by a NOTIFY sent on its commit); it takes the bus's append
        lock until it ends, so keep it for rare changes and commit soon after. In process, they are
        appended the moment the transaction commits.
        """
        checked = self._check(items)
        if not checked:
            return
        await self._append_within(db, conn, checked, self.clock.now())
        published = [c.topic for c in checked]

        def announce() -> None:
            self._hint(published)
            self._wake_all()

        db.after_commit(conn, announce)

    async def publish_batch(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Append several events like :meth:`publish_many` without handing them back; return how many.

        The path for bulk publishers (the task manager's events): no copy of each payload is built.
        """
        checked = self._check(items)
        if not checked:
            return 0
        await self._append(checked, self.clock.now(), returning=False)
        if self._hints:
            self._hint([c.topic for c in checked])
        self._wake_all()
        return len(checked)

    @staticmethod
    def _check(items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Checked]:
        checked: list[Checked] = []
        for topic, payload in items:
            topics.validate_topic(topic)
            try:
                encoded = jsontext.dumps(payload if type(payload) is dict else dict(payload))
            except (TypeError, ValueError) as exc:
                raise errors.InvalidInput(f"event payload is not JSON-serialisable: {exc}") from None
            if len(encoded) > MAX_PAYLOAD_BYTES:
                raise errors.PayloadTooLarge(f"event payload is {len(encoded)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
            checked.append(Checked(topic, encoded, payload))
        return checked

    def subscribe(self, pattern: str, *, name: str | None = None, since: int | None = None) -> Subscription:
        """Subscribe to topics matching ``pattern``.

        ``since`` replays from just after that event id (0 replays everything
        retained). A ``name`` makes the subscription durable: its cursor is saved
        as events are consumed, and a later subscription with the same name
        resumes after the last one consumed. A new subscription with neither
        starts at the end of the log.
        """
        topics.validate_pattern(pattern)
        if name is not None and not (0 < len(name) <= 128):
            raise errors.InvalidInput("a subscription name must be 1 to 128 characters")
        return Subscription(self, pattern, name=name, since=since)

    async def replay(self, pattern: str, *, since: int = 0, limit: int = 1000) -> list[Event]:
        """Return up to ``limit`` retained events matching ``pattern`` after ``since``."""
        topics.validate_pattern(pattern)
        out: list[Event] = []
        cursor = since
        prefix = topics.literal_prefix(pattern)
        while len(out) < limit:
            batch = await self._read_after(cursor, prefix, READ_BATCH)
            if not batch:
                break
            cursor = batch[-1].id
            out.extend(e for e in batch if topics.matches(pattern, e.topic))
        return out[:limit]

    # -- wake-ups -----------------------------------------------------------

    def on_published(self, prefix: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (synchronously, cheaply) whenever a topic starting with ``prefix`` is published.

        Published here: right after the append. By another process (PostgreSQL): as soon as the NOTIFY
        sent on its commit arrives, before a subscriber has read the event; and whenever the listening
        connection was lost, since something may have been missed. A hint, not the event: for what was
        published, subscribe.
        """
        self._hints.append((prefix, callback))

    def _hint(self, published: Sequence[str] | None) -> None:
        """Tell the hints about ``published`` topics (None: unknown, so every hint)."""
        for prefix, callback in self._hints:
            if published is None or any(t.startswith(prefix) for t in published):
                callback()

    def _wake_all(self) -> None:
        for wake in tuple(self._wakeups):
            wake.set()

    def _register(self, wake: asyncio.Event) -> None:
        self._wakeups.add(wake)

    def _unregister(self, wake: asyncio.Event) -> None:
        self._wakeups.discard(wake)


@dataclass
class Subscription:
    """A cursor over the bus for one pattern; iterate it, or call :meth:`get`."""

    bus: Bus
    pattern: str
    name: str | None = None
    since: int | None = None
    cursor: int = 0
    _buffer: list[Event] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _pending_commit: int | None = None
    _opened: bool = False

    async def open(self) -> Subscription:
        if self._opened:
            return self
        stored = await self.bus._load_cursor(self.name) if self.name else None
        if self.since is not None:
            self.cursor = self.since
        elif stored is not None:
            self.cursor = stored
        else:
            self.cursor = await self.bus.latest_id()
        if self.name and stored is None:
            await self.bus._save_cursor(self.name, self.cursor)
        self.bus._register(self._wake)
        self._opened = True
        return self

    async def close(self) -> None:
        await self.commit()
        self.bus._unregister(self._wake)

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def commit(self) -> None:
        """Save the cursor of a named subscription up to the last event handed out."""
        if self.name and self._pending_commit is not None:
            await self.bus._save_cursor(self.name, self._pending_commit)
            self._pending_commit = None

    async def get(self, timeout: float | None = None) -> Event | None:
        """Return the next matching event, or None if ``timeout`` seconds pass first."""
        await self.open()
        # Handing out the next event means the previous one was handled.
        await self.commit()
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            if self._buffer:
                event = self._buffer.pop(0)
                self._pending_commit = event.id
                return event
            if self.bus._closed:
                return None
            self._wake.clear()
            await self._fill()
            if self._buffer:
                continue
            wait = self.bus.poll_interval
            if deadline is not None:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return None
                wait = min(wait, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _fill(self) -> None:
        prefix = topics.literal_prefix(self.pattern)
        while not self._buffer:
            batch, passed = await self.bus._read_after_passed(self.cursor, prefix, READ_BATCH)
            moved = passed > self.cursor
            self.cursor = max(self.cursor, passed)
            if not batch:
                if moved and self.name:
                    # Saved with the next event handed out, or at close: not a write per wake-up.
                    self._pending_commit = self.cursor
                return
            self._buffer = [e for e in batch if topics.matches(self.pattern, e.topic)]
            if not self._buffer and self.name:
                # Skip past events that did not match, so a restart need not re-read them.
                self._pending_commit = self.cursor
                await self.commit()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self.get()
            if event is None:
                return
            yield event
