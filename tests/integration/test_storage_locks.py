"""Named locks across processes (grace.storage.locks), on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import storage
from grace.bus.tables import bus_cursors
from grace.clock import SystemClock
from tests.backends import advisory_holder

LEAD = "grace.test.leader"


def postgres_only(db: storage.Database) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite has one writer and one serving process: there is nothing to contend for")


@pytest.fixture
async def watch(db: storage.Database) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection that looks at the server's locks and sessions from outside."""
    postgres_only(db)
    async with db.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


async def sessions_waiting_on_a_lock(watch: AsyncConnection, count: int) -> None:
    """Poll until ``count`` other sessions of this database wait on a lock (a barrier between sessions)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(1000):
        if (await watch.execute(query)).scalar_one() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} sessions came to wait on a lock")


async def until_free(watch: AsyncConnection, name: str) -> None:
    """Poll until no session holds ``name`` (a terminated session lets go once its process has exited)."""
    for _ in range(1000):
        if await advisory_holder(watch, name) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} stayed held")


def test_a_lock_key_is_fixed_by_its_name_alone() -> None:
    # Processes of one deployment must agree on every key, whichever version or machine they run.
    assert storage.lock_key("grace.storage.migrate") == storage.lock_key("grace.storage.migrate")
    assert storage.lock_key("grace.storage.migrate") == 4716588391780867004
    keys = {storage.lock_key(f"grace.htm.route.{n}") for n in range(10_000)}
    assert len(keys) == 10_000
    assert all(-(2**63) <= k < 2**63 for k in keys)


async def test_two_leaderships_of_one_name_have_one_leader_on_postgresql(db: storage.Database) -> None:
    a, b = storage.Leadership(db, LEAD), storage.Leadership(db, LEAD)
    try:
        first, second = await a.acquire(), await b.acquire()
        if db.is_sqlite:
            assert first and second and a.is_leader and b.is_leader  # one serving process: it leads
            return
        assert (first, second) == (True, False)
        assert a.is_leader and not b.is_leader
        assert await a.acquire() and not await b.acquire()  # asking again changes nothing
        other = storage.Leadership(db, "grace.test.another")
        assert await other.acquire()  # other names are other leaderships
        await other.release()
    finally:
        await a.release()
        await b.release()


async def test_a_released_leadership_passes_to_the_next_to_ask(db: storage.Database) -> None:
    postgres_only(db)
    a, b = storage.Leadership(db, LEAD), storage.Leadership(db, LEAD)
    try:
        assert await a.acquire() and not await b.acquire()
        await a.release()
        assert not a.is_leader
        assert await b.acquire() and b.is_leader
        assert not await a.acquire()  # the old leader comes back as a follower
    finally:
        await a.release()
        await b.release()


async def test_when_the_leaders_connection_is_lost_the_other_takes_the_lead(
    db: storage.Database, watch: AsyncConnection, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = storage.Leadership(db, LEAD), storage.Leadership(db, LEAD)
    try:
        assert await a.acquire() and not await b.acquire()
        pid = await advisory_holder(watch, LEAD)
        assert pid is not None
        # The server ends the leader's session (as a restart or a dropped network would).
        assert (await watch.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})).scalar()
        await until_free(watch, LEAD)
        assert await b.acquire() and b.is_leader
        assert await advisory_holder(watch, LEAD) != pid
        # The old leader finds out on its next tick, cleanly: no error, it follows now.
        assert not await a.acquire()
        assert not a.is_leader
        assert "storage.leadership_lost" in [r.getMessage() for r in caplog.records]
        await b.release()
        assert await a.acquire()  # and can lead again later, on a new connection
    finally:
        await a.release()
        await b.release()


async def test_a_leadership_lost_while_nobody_else_asked_is_taken_again(
    db: storage.Database, watch: AsyncConnection
) -> None:
    a = storage.Leadership(db, LEAD)
    try:
        assert await a.acquire()
        pid = await advisory_holder(watch, LEAD)
        await watch.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await until_free(watch, LEAD)
        assert await a.acquire() and a.is_leader
        assert await advisory_holder(watch, LEAD) not in (None, pid)
    finally:
        await a.release()


async def test_acquire_with_wait_takes_the_lead_once_the_holder_lets_go(
    db: storage.Database, watch: AsyncConnection
) -> None:
    a, b = storage.Leadership(db, LEAD), storage.Leadership(db, LEAD)
    try:
        assert await a.acquire()
        waiting = asyncio.create_task(b.acquire(wait=True))
        await sessions_waiting_on_a_lock(watch, 1)
        assert not waiting.done()
        await a.release()
        assert await asyncio.wait_for(waiting, 60)
        assert b.is_leader
    finally:
        await a.release()
        await b.release()


async def test_serialise_makes_a_second_transaction_wait_until_the_first_ends(
    db: storage.Database, watch: AsyncConnection
) -> None:
    order: list[str] = []

    async def second() -> None:
        async with db.write() as conn:
            await storage.serialise(conn, "grace.test.serialised")
            order.append("second")

    async with db.write() as conn:
        await storage.serialise(conn, "grace.test.serialised")
        waiting = asyncio.create_task(second())
        await sessions_waiting_on_a_lock(watch, 1)
        async with db.write() as other:  # another name is another lock: it does not wait
            await storage.serialise(other, "grace.test.unrelated")
        assert not waiting.done()
        order.append("first")
    await asyncio.wait_for(waiting, 60)
    assert order == ["first", "second"]


async def test_serialised_read_modify_write_transactions_lose_no_update(db: storage.Database) -> None:
    # Each transaction reads a counter, yields, and writes it back plus one: interleaved without
    # the lock, two would read the same value and one increment would be lost.
    now = SystemClock().now()
    async with db.write() as conn:
        await conn.execute(insert(bus_cursors).values(name="counter", last_event_id=0, updated_at=now))
    row = bus_cursors.c.name == "counter"

    async def increment() -> None:
        async with db.write() as conn:
            await storage.serialise(conn, "grace.test.counter")
            value = (await conn.execute(select(bus_cursors.c.last_event_id).where(row))).scalar_one()
            await asyncio.sleep(0.01)
            await conn.execute(update(bus_cursors).where(row).values(last_event_id=value + 1))

    await asyncio.gather(*(increment() for _ in range(8)))
    async with db.read() as conn:
        assert (await conn.execute(select(bus_cursors.c.last_event_id).where(row))).scalar_one() == 8


async def test_try_serialise_finds_a_held_leadership_and_takes_a_free_one(db: storage.Database) -> None:
    lead = storage.Leadership(db, LEAD)
    try:
        assert await lead.acquire()
        async with db.write() as conn:
            free_while_led = await storage.try_serialise(conn, LEAD)
        await lead.release()
        async with db.write() as conn:
            assert await storage.try_serialise(conn, LEAD)
        # On PostgreSQL the leader's lock is seen taken; SQLite has no other holder to find.
        assert free_while_led is db.is_sqlite
    finally:
        await lead.release()
