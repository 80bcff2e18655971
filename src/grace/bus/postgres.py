"""The multi-node bus: a durable ``events`` table, with LISTEN/NOTIFY for wake-ups.

The table is the source of truth: NOTIFY only says "the log grew", so a missed
notification costs at most one poll interval, never an event. A subscriber in
any process that shares the database sees what any other process published,
and a named subscriber that was down catches up from its stored cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from grace import background, jsontext, storage
from grace.bus.log import Bus, Checked, Event
from grace.bus.tables import bus_cursors, events
from grace.storage import Database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["PostgresBus"]

log = logging.getLogger("grace.bus")

CHANNEL = "grace_events"
# Bus.barrier: a NOTIFY on BARRIER that every process's listening connection (named LISTENER_NAME, so
# the barrier can count them in pg_stat_activity) answers on BARRIER_ACK. PostgreSQL delivers a
# session's notifications in commit order, and asyncpg calls its listeners in the order received, so a
# process that answers has already run its hints for everything committed before the barrier.
BARRIER = "grace_barrier"
BARRIER_ACK = "grace_barrier_ack"
LISTENER_NAME = "grace-bus-listener"
BARRIER_SECONDS = 10.0
_LISTENERS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1"
# Appends are serialised by this named lock (grace.storage.locks), so event ids become visible in
# order: without it, a reader could see id 11 committed before id 10 and move its cursor past 10
# for good. The whole append is one statement in autocommit (one round trip), so the statement
# takes the lock itself rather than through storage.serialise (a round trip of its own): take the
# lock, insert the batch in order (ids come from the sequence in that order), and notify
# listeners once, on commit, so none wakes before the rows are visible.
APPEND_LOCK = "grace.bus.append"
_APPEND_KEY = storage.lock_key(APPEND_LOCK)
# Run on the asyncpg connection itself (Database.autocommit_driver): fixed SQL, prepared once per
# connection. $1 lock key, $2 topics, $3 payloads (JSON text), $4 published at, $5 source, $6 channel,
# $7 the NOTIFY's payload: the batch's distinct topics separated by spaces ('' when too long), read by
# the listeners' hints (Bus.on_published) before any subscriber reads the table. An empty payload only
# says "the log grew".
_APPEND = """
    WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock($1::bigint)),
    added AS (
        INSERT INTO events (topic, payload, published_at, source)
        SELECT v.topic, CAST(v.payload AS json), $4::timestamptz, $5::text
          FROM lock, unnest($2::text[], $3::text[]) WITH ORDINALITY AS v(topic, payload, n)
         ORDER BY v.n
        RETURNING id
    )
    SELECT id FROM added
     UNION ALL
    SELECT NULL FROM (SELECT pg_notify($6::text, $7::text)) AS notified
"""

# Events after $1 whose topic starts with $2 ('' for all), at most $3, oldest first, and the newest
# id in the same snapshot (every row has it; one row of NULLs beside it when nothing matched).
# Appends take APPEND_LOCK, so ids become visible in order: nothing at or below that newest id can
# appear later, and a subscriber that read everything up to it may move its cursor there, past
# the events it did not want. One statement on an autocommit connection: one round trip, no
# BEGIN or COMMIT.
_READ_AFTER = """
    WITH newest AS MATERIALIZED (SELECT coalesce(max(id), 0) AS id FROM events)
    SELECT newest.id AS newest, e.id, e.topic, e.payload::text AS payload, e.published_at, e.source
      FROM newest
      LEFT JOIN LATERAL (
        SELECT id, topic, payload, published_at, source FROM events
         WHERE id > $1::bigint AND id <= newest.id AND ($2::text = '' OR starts_with(topic, $2::text))
         ORDER BY id LIMIT $3::int
      ) e ON true
     ORDER BY e.id
"""

# Moves up to $2 rows of an outbox table (id, topic, payload as JSON text), oldest first, into the
# log in one statement: the append lock first (so one relay at a time, and ids visible in order),
# then the rows deleted and appended in their id order, and one NOTIFY when any moved. A row another
# relay deleted meanwhile is skipped by the DELETE (READ COMMITTED re-checks it), so no row is
# published twice. FOR UPDATE makes the pick read the rows (an index scan, not an index-only one),
# which marks the index entries of rows already moved as dead: otherwise every relay walks all the
# rows deleted since the last vacuum (26 ms after 30,000, against under 1 ms). $1 lock key, $3
# published at, $4 source, $5 channel. {outbox}: a table name given by the code, never input.
_RELAY = """
    WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock($1::bigint)),
    moved AS (
        DELETE FROM {outbox}
         WHERE id IN (SELECT o.id FROM lock, {outbox} o ORDER BY o.id LIMIT $2 FOR UPDATE OF o)
        RETURNING id, topic, payload
    ),
    added AS (
        INSERT INTO events (topic, payload, published_at, source)
        SELECT m.topic, CAST(m.payload AS json), $3::timestamptz, $4::text FROM moved m ORDER BY m.id
        RETURNING topic
    ),
    summary AS (
        SELECT count(*) AS n, string_agg(DISTINCT topic, ' ') AS topics FROM added
    )
    SELECT s.n, s.topics, CASE WHEN s.n > 0 THEN (SELECT 1 FROM pg_notify($5::text, s.topics)) END AS notified
      FROM summary s
"""


def _notice(topics: list[str]) -> str:
    """Return the NOTIFY payload for a batch: its distinct topics, space-separated ('' past 7,000 characters)."""
    text = " ".join(dict.fromkeys(topics))
    return text if len(text) <= 7000 else ""


class PostgresBus(Bus):
    """Events in PostgreSQL, shared by every process that points at the same database."""

    poll_interval = 2.0

    def __init__(self, db: Database, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db = db
        self._listener: asyncpg.Connection | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._confirming: set[asyncio.Task[None]] = set()
        self._confirm_lock = asyncio.Lock()

    async def start(self) -> None:
        dsn = self.db.driver_dsn
        self._listener = await self._listen(dsn)
        self._keepalive = asyncio.create_task(self._watch_listener(dsn), name="grace-bus-listener")

    async def _listen(self, dsn: str) -> asyncpg.Connection:
        listener = await asyncpg.connect(dsn, server_settings={"application_name": LISTENER_NAME})
        await listener.add_listener(CHANNEL, self._on_notify)
        await listener.add_listener(BARRIER, self._on_barrier)
        return listener

    async def _watch_listener(self, dsn: str) -> None:
        # Reconnect the LISTEN connection if the server drops it; polling covers the gap.
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            if self._listener is not None and not self._listener.is_closed():
                continue
            try:
                self._listener = await self._listen(dsn)
                self._hint(None)  # what was published while not listening is unknown
                self._wake_all()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("bus.listener_reconnect_failed", extra={"reason": type(exc).__name__})

    def _on_notify(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        if self._hints and isinstance(payload, str) and payload:
            self._hint(payload.split(" "))
        self._wake_all()

    def _on_barrier(self, conn: object, _pid: object, _channel: object, payload: object) -> None:
        # Called after the listeners of every notification received before it (asyncpg keeps the order).
        if isinstance(conn, asyncpg.Connection) and isinstance(payload, str):
            task = asyncio.create_task(self._confirm(conn, payload), name="grace-bus-barrier-ack")
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)

    async def _confirm(self, conn: asyncpg.Connection, nonce: str) -> None:
        async with self._confirm_lock:  # one statement at a time on the listening connection
            try:
                await conn.execute("SELECT pg_notify($1, $2)", BARRIER_ACK, nonce)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("bus.barrier_ack_failed", extra={"reason": type(exc).__name__})

    async def barrier(self) -> int:
        """Wait (at most ``BARRIER_SECONDS``) until every listening process confirms; return how many did.

        The processes are the sessions named ``LISTENER_NAME`` on this database, counted again while
        waiting so that one that died is not waited for. One that is alive but does not answer in
        time is logged (``bus.barrier_incomplete``) and left to its cache's time limit.
        """
        nonce = secrets.token_hex(8)
        confirmed: set[int] = set()
        heard = asyncio.Event()

        def on_ack(_conn: object, pid: object, _channel: object, payload: object) -> None:
            if payload == nonce and isinstance(pid, int):
                confirmed.add(pid)
                heard.set()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + BARRIER_SECONDS
        conn = await asyncpg.connect(self.db.driver_dsn)
        try:
            await conn.add_listener(BARRIER_ACK, on_ack)
            await conn.execute("SELECT pg_notify($1, $2)", BARRIER, nonce)
            while True:
                live = {int(r[0]) for r in await conn.fetch(_LISTENERS, LISTENER_NAME)}
                if live <= confirmed:
                    return len(live)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.warning(
                        "bus.barrier_incomplete",
                        extra={"listeners": len(live), "unconfirmed": len(live - confirmed)},
                    )
                    return len(live & confirmed)
                heard.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), min(remaining, 0.5))
        finally:
            await conn.close()

    async def close(self) -> None:
        await super().close()
        await background.stop(self._keepalive)
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def _append(self, items: list[Checked], published_at: datetime, *, returning: bool = True) -> list[Event]:
        topics_ = [c.topic for c in items]
        payloads = [c.encoded for c in items]
        # The copies handed back are taken now, before the caller can run again and change its dicts.
        copies = [c.payload() for c in items] if returning else []
        async with self.db.autocommit_driver() as conn:
            rows = await conn.fetch(
                _APPEND, _APPEND_KEY, topics_, payloads, published_at, self.source, CHANNEL, _notice(topics_)
            )
        ids = sorted(int(r[0]) for r in rows if r[0] is not None)
        if not returning:
            return []
        return [
            Event(i, c.topic, copy, published_at, self.source) for i, c, copy in zip(ids, items, copies, strict=True)
        ]

    async def _append_within(self, db: Database, conn: AsyncConnection, items: list[Checked], at: datetime) -> None:
        # The same statement inside the caller's transaction: the append lock is held until it ends,
        # and PostgreSQL sends the NOTIFY only when it commits (never when it rolls back).
        topics_ = [c.topic for c in items]
        driver = await storage.driver_in_transaction(conn)
        await driver.fetch(
            _APPEND, _APPEND_KEY, topics_, [c.encoded for c in items], at, self.source, CHANNEL, _notice(topics_)
        )

    async def relay(self, outbox: str, *, limit: int = 500) -> int:
        """Move up to ``limit`` events from an outbox table into the log, oldest first; return how many.

        An outbox (``id`` in order of writing, ``topic``, ``payload`` as JSON text) is where a
        package writes events in the transaction of the change they describe, so a process killed
        right after its commit loses none: any process's relay publishes them later. One relay runs
        at a time (it holds the append lock), so events keep the order they were written in, and a
        row is published once. ``outbox`` names a table the code owns, never input.
        """
        query = _RELAY.format(outbox=outbox)
        async with self.db.autocommit_driver() as conn:
            row = await conn.fetchrow(query, _APPEND_KEY, limit, self.clock.now(), self.source, CHANNEL)
        moved = int(row["n"]) if row is not None else 0
        if moved and row is not None:
            if self._hints:
                self._hint(str(row["topics"]).split(" "))
            self._wake_all()
        return moved

    async def _read_after(self, after_id: int, prefix: str, limit: int) -> list[Event]:
        query = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(events.c.topic.like(escaped + "%", escape="\\"))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [Event(int(r["id"]), r["topic"], r["payload"], r["published_at"], r["source"]) for r in rows]

    async def _read_after_passed(self, after_id: int, prefix: str, limit: int) -> tuple[list[Event], int]:
        async with self.db.autocommit_driver() as conn:
            rows = await conn.fetch(_READ_AFTER, after_id, prefix, limit)
        found = [
            Event(int(r["id"]), r["topic"], jsontext.loads(r["payload"]), r["published_at"], r["source"])
            for r in rows
            if r["id"] is not None
        ]
        if len(found) >= limit:
            return found, found[-1].id
        return found, max(after_id, int(rows[0]["newest"]) if rows else after_id)

    async def latest_id(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.coalesce(func.max(events.c.id), 0)))).scalar_one())

    async def _load_cursor(self, name: str) -> int | None:
        async with self.db.read() as conn:
            value = (
                await conn.execute(select(bus_cursors.c.last_event_id).where(bus_cursors.c.name == name))
            ).scalar_one_or_none()
        return None if value is None else int(value)

    async def _save_cursor(self, name: str, event_id: int) -> None:
        stmt = pg_insert(bus_cursors).values(name=name, last_event_id=event_id, updated_at=self.clock.now())
        stmt = stmt.on_conflict_do_update(
            index_elements=[bus_cursors.c.name],
            set_={"last_event_id": stmt.excluded.last_event_id, "updated_at": stmt.excluded.updated_at},
        )
        async with self.db.write() as conn:
            await conn.execute(stmt)

    async def prune(self) -> int:
        cutoff = self.clock.now() - timedelta(seconds=self.retention_seconds)
        async with self.db.write() as conn:
            result = await conn.execute(delete(events).where(events.c.published_at < cutoff))
        return int(result.rowcount or 0)

    def __repr__(self) -> str:
        return f"PostgresBus(db={self.db!r})"
