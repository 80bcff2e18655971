"""Migrations and the UTC timestamp column, on every backend."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select, text
from sqlalchemy.exc import StatementError

from grace import logs, storage
from grace.auth.tables import users


async def test_migrations_reapply_as_a_no_op(db: storage.Database) -> None:
    head = storage.head_revision()
    assert await storage.current_revision(db) == head
    before, after = await storage.upgrade(db)
    assert (before, after) == (head, head)


async def test_timestamps_read_back_aware_utc(db: storage.Database) -> None:
    written = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    async with db.write() as conn:
        await conn.execute(
            insert(users).values(
                id="usr_t",
                username="tz",
                password_hash=None,
                role="member",
                disabled=False,
                created_at=written,
                updated_at=written,
            )
        )
    async with db.read() as conn:
        read = (await conn.execute(select(users.c.created_at))).scalar_one()
    assert read.tzinfo is not None and read.utcoffset() == timedelta(0)
    assert read == written and read.hour == 7


async def test_naive_timestamps_are_refused(db: storage.Database) -> None:
    naive = datetime(2026, 3, 1, 9, 30)  # noqa: DTZ001 - the point of the test
    with pytest.raises(StatementError, match="naive datetime refused"):
        async with db.write() as conn:
            await conn.execute(
                insert(users).values(
                    id="usr_n",
                    username="naive",
                    password_hash=None,
                    role="member",
                    disabled=False,
                    created_at=naive,
                    updated_at=datetime.now(UTC),
                )
            )
    async with db.read() as conn:
        assert (await conn.execute(select(users.c.id))).all() == []


async def test_migrations_apply_on_an_empty_database(empty_database_url: str) -> None:
    db = storage.Database(empty_database_url)
    try:
        assert await storage.current_revision(db) is None
        assert await storage.upgrade(db) == (None, storage.head_revision())
        assert await storage.upgrade(db) == (storage.head_revision(), storage.head_revision())
    finally:
        await db.dispose()


async def test_processes_starting_together_on_an_empty_database_migrate_it_once(
    empty_database_url: str, tmp_path: Path
) -> None:
    # A server and its workers started at once on a new database: one migrates, the others wait
    # for it and find nothing to do.
    env = {**os.environ, "GRACE_DATABASE_URL": empty_database_url, "GRACE_DATA_DIR": str(tmp_path / "data")}
    grace = str(Path(sys.executable).with_name("grace"))
    procs = [
        await asyncio.create_subprocess_exec(
            grace, "db", "upgrade", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        for _ in range(3)
    ]
    outputs = [(await asyncio.wait_for(p.communicate(), 120))[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sorted("upgraded from empty" in out for out in outputs) == [False, False, True], outputs
    db = storage.Database(empty_database_url)
    try:
        assert await storage.current_revision(db) == storage.head_revision()
        async with db.write() as conn:
            await conn.execute(insert(users).values(**row("usr_first")))
    finally:
        await db.dispose()


def row(user_id: str) -> dict[str, object]:
    """A member user, for tests that need a row to write."""
    now = datetime.now(UTC)
    return {
        "id": user_id,
        "username": user_id,
        "password_hash": None,
        "role": "member",
        "disabled": False,
        "created_at": now,
        "updated_at": now,
    }


async def test_a_read_sync_sees_each_commit_at_once_and_holds_nothing_after(db: storage.Database) -> None:
    """Database.read_sync (the consented read's one hand-off) sees what was just committed, as read() does."""

    def user(conn: Connection, user_id: str) -> tuple[str, datetime] | None:
        found = conn.execute(select(users.c.username, users.c.created_at).where(users.c.id == user_id)).first()
        return None if found is None else (found[0], found[1])

    assert await db.read_sync(lambda conn: user(conn, "usr_sync")) is None
    async with db.write() as conn:
        await conn.execute(insert(users).values(**row("usr_sync")))
    seen = await db.read_sync(lambda conn: user(conn, "usr_sync"))
    async with db.read() as conn:
        created = (await conn.execute(select(users.c.created_at).where(users.c.id == "usr_sync"))).scalar_one()
    assert seen == ("usr_sync", created) and seen[1].utcoffset() == timedelta(0)

    # Many at once, each sees the row; an error raised inside reaches the caller.
    names = await asyncio.gather(*(db.read_sync(lambda conn: user(conn, "usr_sync")) for _ in range(20)))
    assert {n[0] if n else None for n in names} == {"usr_sync"}

    def fails(conn: Connection) -> None:
        conn.execute(select(users.c.id))
        raise LookupError("not there")

    with pytest.raises(LookupError):
        await db.read_sync(fails)
    # Nothing was left open by the reads: a change and a read of it follow at once.
    async with db.write() as conn:
        await conn.execute(users.update().where(users.c.id == "usr_sync").values(username="renamed"))
    assert (await db.read_sync(lambda conn: user(conn, "usr_sync")) or ("", None))[0] == "renamed"


async def test_read_sync_and_write_sync_run_in_the_callers_context(db: storage.Database) -> None:
    """A log line written inside them (on SQLite, on another thread) carries the caller's request id."""
    token = logs.request_id.set("req-sync-0001")
    try:
        read = await db.read_sync(lambda conn: logs.request_id.get())
        written = await db.write_sync(lambda conn: logs.request_id.get())
    finally:
        logs.request_id.reset(token)
    assert read == written == "req-sync-0001"
    assert await db.read_sync(lambda conn: logs.request_id.get()) is None  # nothing leaks past the caller


async def test_after_commit_runs_once_the_write_commits_and_never_after_a_rollback(db: storage.Database) -> None:
    ran: list[str] = []

    async with db.write() as conn:
        await conn.execute(insert(users).values(**row("usr_kept")))
        db.after_commit(conn, lambda: ran.append("kept"))
        assert ran == []  # not before the commit
    assert ran == ["kept"]

    async def failing_change() -> None:
        async with db.write() as conn:
            await conn.execute(insert(users).values(**row("usr_lost")))
            db.after_commit(conn, lambda: ran.append("lost"))
            raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await failing_change()
    # The next transaction, on the same pooled connection or another, does not run what was queued
    # for the rolled-back one.
    for _ in range(3):
        async with db.write() as conn:
            await conn.execute(select(users.c.id))
    assert ran == ["kept"]

    def broken() -> None:
        raise OSError("disk full")

    async with db.write() as conn:
        await conn.execute(insert(users).values(**row("usr_after")))
        db.after_commit(conn, broken)  # a failing follow-up is logged; the commit stands
        db.after_commit(conn, lambda: ran.append("after"))
    assert ran == ["kept", "after"]
    async with db.read() as conn:
        ids = set((await conn.execute(select(users.c.id))).scalars())
    assert {"usr_kept", "usr_after"} <= ids and "usr_lost" not in ids


async def test_a_follow_up_safe_on_any_thread_leaves_the_event_loop_on_sqlite_and_still_precedes_the_return(
    db: storage.Database,
) -> None:
    # The audit anchor's advance (a file lock, a read, a signature, a rename after each release group)
    # is such a follow-up: on a SQLite file it runs on the writing thread, sparing the event loop that
    # serves every request, yet the caller still finds it done when write_sync returns.
    loop_thread = threading.get_ident()
    ran: list[tuple[str, bool]] = []

    def change(conn: Connection) -> None:
        conn.execute(insert(users).values(**row("usr_threaded")))
        db.after_commit(conn, lambda: ran.append(("loop", threading.get_ident() == loop_thread)))
        db.after_commit(conn, lambda: ran.append(("anywhere", threading.get_ident() == loop_thread)), any_thread=True)
        assert ran == []  # not before the commit

    await db.write_sync(change)
    on_writing_thread = db.sqlite_path is not None
    assert ran == [("anywhere", not on_writing_thread), ("loop", True)]

    def failing(conn: Connection) -> None:
        conn.execute(insert(users).values(**row("usr_lost")))
        db.after_commit(conn, lambda: ran.append(("lost", False)), any_thread=True)
        raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await db.write_sync(failing)
    assert len(ran) == 2  # a rolled-back transaction runs none of its follow-ups, wherever they would run
    ids = await db.read_sync(lambda conn: set(conn.execute(select(users.c.id)).scalars()))
    assert "usr_threaded" in ids and "usr_lost" not in ids


async def test_a_write_cancelled_in_the_middle_of_a_statement_ends_cancelled_and_locks_nothing(
    db: storage.Database,
) -> None:
    # A cancelled transaction must end with the cancellation itself: a loop that retries on errors
    # (the serving process's upkeep jobs) would otherwise never stop.
    slow = (
        "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000000) "
        "SELECT x FROM c) AS counted"
        if db.is_sqlite
        else "SELECT pg_sleep(3)"
    )
    ran: list[str] = []
    inside = asyncio.Event()

    async def long_write() -> None:
        async with db.write() as conn:
            db.after_commit(conn, lambda: ran.append("committed"))
            inside.set()
            await conn.execute(text(slow))

    task = asyncio.create_task(long_write())
    await inside.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=60)
    assert task in done and task.cancelled(), None if not task.done() else task.exception()
    assert ran == []
    # Nothing stays locked. The cancelled call's traceback, held here by ``task``, still references
    # its statement; on SQLite that used to keep the transaction, and the write lock, for good.
    async with db.write() as conn:
        await conn.execute(insert(users).values(**row("usr_next")))
    async with db.read() as conn:
        assert (await conn.execute(select(users.c.id))).scalars().all() == ["usr_next"]
    assert task.cancelled()


async def test_a_statement_cancelled_twice_leaves_no_task_that_outlives_the_database(
    db: storage.Database,
) -> None:
    # A shutdown asks a loop to stop, then asks again a second later (grace.background.stop). When
    # the second ask reached the connection while SQLAlchemy was closing it after the first, a close
    # task was left waiting for a connection thread that had already ended: it could not be
    # cancelled, and closing the event loop (which cancels and awaits every task left) hung for ever.
    slow = (
        "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
        "SELECT x FROM c) AS counted"
        if db.is_sqlite
        else "SELECT pg_sleep(3)"
    )
    inside = asyncio.Event()

    async def long_write() -> None:
        async with db.write() as conn:
            inside.set()
            await conn.execute(text(slow))

    before = asyncio.all_tasks()
    task = asyncio.create_task(long_write())
    await inside.wait()
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.sleep(0.01)  # SQLAlchemy is closing the connection it gave up on
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=60)
    assert task in done and task.cancelled()
    await db.dispose()
    left = asyncio.all_tasks() - before - {task}
    for other in left:  # what closing the event loop does
        other.cancel()
    if left:
        _, pending = await asyncio.wait(left, timeout=60)
        assert not pending, f"tasks that outlive the database and cannot be cancelled: {pending}"
    # The file is not locked by the connection given up on.
    again = storage.Database(db.url)
    try:
        async with again.write() as conn:
            await conn.execute(insert(users).values(**row("usr_after_cancel")))
        async with again.read() as conn:
            assert "usr_after_cancel" in set((await conn.execute(select(users.c.id))).scalars())
    finally:
        await again.dispose()


async def test_callers_waiting_for_a_connection_are_served_in_turn(database_url: str) -> None:
    # Two dozen callers each sending one short statement after another (as agents keep submitting),
    # on a pool of two connections. On PostgreSQL the hot paths (submissions, the workers' claims, the
    # bus) use autocommit_driver: a caller that arrived while others waited used to take a connection
    # handed back just then, ahead of them, and a batch submission at c=50 waited up to 17 s while
    # the median was 0.36 s. Every caller must get its turns.
    db = storage.Database(database_url, pool_size=2)
    try:
        counts = [0] * 24
        done = asyncio.Event()

        async def caller(i: int) -> None:
            while not done.is_set():
                if db.is_sqlite:
                    await db.write_sync(lambda conn: conn.execute(text("SELECT 1")).scalar())
                else:
                    async with db.autocommit_driver() as driver:
                        await driver.fetchval("SELECT pg_sleep(0.002)")
                counts[i] += 1
                if sum(counts) >= 20 * len(counts):
                    done.set()

        await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(len(counts)))), timeout=300)
        assert min(counts) >= 5, f"turns per caller (a fair share is 20): {sorted(counts)}"
    finally:
        await db.dispose()
