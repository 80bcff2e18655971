"""The async database handle: one engine, configured per backend.

SQLite runs in WAL mode with a busy timeout and foreign keys on; write
transactions take the write lock up front (``BEGIN IMMEDIATE``) and are
serialised in-process, so SQLite has exactly one writer at a time. Every commit
is flushed to disk before it returns (``synchronous=FULL``: one ``fsync`` of the
write-ahead log per transaction), so a write that was acknowledged survives an
OS crash or a power cut, not only a crash of Grace. PostgreSQL uses asyncpg with
a connection pool and the server's own ``synchronous_commit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from grace import errors, jsontext
from grace.config import to_async_url
from grace.storage import files, outages

log = logging.getLogger("grace.storage")

__all__ = ["Database", "SQLiteConnection", "driver_in_transaction"]

SQLITE_BUSY_TIMEOUT_MS = 10_000
# FULL, not WAL mode's usual NORMAL: under NORMAL a commit returns before the WAL is flushed, and
# an OS crash or power cut can undo work already acknowledged to a client. Read when each
# connection opens; the throughput benchmark sets NORMAL for one run to measure what FULL costs.
SQLITE_SYNCHRONOUS = "FULL"
# Threads (each with its own connection) that run SQLite's read_sync transactions.
SQLITE_READ_THREADS = 4

T = TypeVar("T")


class SQLiteConnection(sqlite3.Connection):
    """A sqlite3 connection that ends its open transaction before it closes.

    ``close()`` leaves the connection open, and with it its transaction and SQLite's write lock,
    while any statement of it is still referenced: the cursor of a call that was cancelled
    mid-statement is, by the cancelled call's traceback. SQLAlchemy closes such a connection
    without a rollback, so without this every later write in every process found the database
    locked until this process exited.
    """

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.in_transaction:
                self.rollback()
        super().close()


class Database:
    """An async engine plus the per-backend rules for reading and writing."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = to_async_url(url)
        parsed = make_url(self.url)
        self.backend = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql"
        self._write_lock = asyncio.Lock()
        self._sqlite_conn: AsyncConnection | None = None
        self._sqlite_driver: Any = None  # the aiosqlite connection under _sqlite_conn
        self._autocommit: list[AsyncConnection] = []
        # Autocommit connections handed out by autocommit_driver, each with its asyncpg connection.
        self._drivers: list[tuple[AsyncConnection, Any]] = []
        # How many idle autocommit connections of each kind are kept: each is checked out of the pool
        # while kept, so keeping every one a burst opened (a batch submission per request) left the
        # pool's other users none, and they timed out. Those beyond go back to the pool.
        self._keep = max(1, pool_size // 2)
        # PostgreSQL: how many autocommit connections are in use at once, taken in turn (_turn).
        self._turns_allowed = pool_size
        self._turns: asyncio.Semaphore | None = None
        self._turns_loop: asyncio.AbstractEventLoop | None = None
        # What to run once each open write transaction commits, by the id of its connection object.
        self._after_commit: dict[int, _Hooks] = {}
        # The SQLite database's file (None in memory and on PostgreSQL).
        self.sqlite_path: Path | None = None
        # SQLite (a file): read_sync's engine and threads, made at its first call.
        self._read_engine: Engine | None = None
        self._read_threads: ThreadPoolExecutor | None = None
        self._write_thread: ThreadPoolExecutor | None = None
        # SQLite: the threads of connections given up on, until they have ended (_terminate_without_waiting).
        self._stopping: set[asyncio.Future[Any]] = set()
        if self.backend == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                self.sqlite_path = Path(database)
                try:
                    # Created 0600 before SQLite opens it (its WAL and shared-memory files take its mode).
                    path = Path(database)
                    path.parent.mkdir(mode=files.PRIVATE_DIR_MODE, parents=True, exist_ok=True)
                    files.private_file(path)
                    for suffix in ("-wal", "-shm", "-journal"):
                        files.private_file(path.with_name(path.name + suffix), create=False)
                except OSError as exc:
                    raise errors.StorageUnavailable(
                        f"the SQLite database {database} cannot be created: {exc.strerror or exc} "
                        "(check GRACE_DATABASE_URL or GRACE_DATA_DIR)"
                    ) from None
            self.engine: AsyncEngine = create_async_engine(
                self.url,
                echo=echo,
                hide_parameters=True,  # statements' values (password hashes, hints) never reach a log or an error
                json_deserializer=jsontext.loads,
                connect_args={"factory": SQLiteConnection},
            )
            _configure_sqlite(self.engine.sync_engine)
            _terminate_without_waiting(self.engine, self._stopping)
        else:
            # No pre-ping: it would cost a round trip per transaction on the hot path. A
            # connection the server dropped raises a disconnect error, which makes
            # SQLAlchemy discard the whole pool; recycling bounds a connection's age.
            self.engine = create_async_engine(
                self.url,
                echo=echo,
                hide_parameters=True,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_recycle=1800,
                json_deserializer=jsontext.loads,
            )

    @property
    def driver_dsn(self) -> str:
        """The URL in the form asyncpg itself takes (for LISTEN connections); PostgreSQL only."""
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """Open a read transaction."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def read_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one read transaction, given a (synchronous) SQLAlchemy connection; return its result.

        On a SQLite file the whole transaction runs on a thread of its own with a connection of its
        own (pysqlite, the engine's connect hooks): the event loop waits once for it, instead of
        once per step (aiosqlite hands every cursor, execute, fetch, close, BEGIN and COMMIT to its
        connection's thread and back, four hand-offs per statement). On PostgreSQL ``fn`` runs on a
        kept :meth:`autocommit` connection through ``run_sync``, without BEGIN and COMMIT (two of a
        short read's round trips): under READ COMMITTED, PostgreSQL's default and Grace's, each
        statement of a transaction sees what was committed when it began, as it does alone. SQLite
        in memory runs it in a :meth:`read` transaction. ``fn`` must only read; it may run on
        another thread.
        """
        if not self.is_sqlite:
            async with self.autocommit() as conn:
                return await conn.run_sync(fn)
        if self.sqlite_path is None:
            async with self.read() as conn:
                return await conn.run_sync(fn)
        engine, threads = self._sync_engine()

        def transaction() -> T:
            with engine.connect() as conn, conn.begin():
                return fn(conn)

        # In the caller's context (its request id reaches the log lines written on the thread).
        return await asyncio.get_running_loop().run_in_executor(threads, contextvars.copy_context().run, transaction)

    def _sync_engine(self) -> tuple[Engine, ThreadPoolExecutor]:
        """SQLite: the synchronous engine of read_sync and write_sync, and the reading threads (made once)."""
        if self._read_engine is None or self._read_threads is None:
            engine = create_engine(
                f"sqlite:///{self.sqlite_path}",
                hide_parameters=True,
                json_deserializer=jsontext.loads,
                connect_args={"factory": SQLiteConnection, "check_same_thread": False},
                pool_size=SQLITE_READ_THREADS + 1,  # and the writing thread's
                max_overflow=0,
            )
            _configure_sqlite(engine)
            self._read_engine = engine
            self._read_threads = ThreadPoolExecutor(SQLITE_READ_THREADS, thread_name_prefix="grace-sqlite-read")
        return self._read_engine, self._read_threads

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """Open a write transaction; on SQLite, the only one in this process.

        Functions given to :meth:`after_commit` during it run once it has committed.
        """
        if self.is_sqlite:
            async with self._write_lock, self.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_immediate=True)
                async with self._committing(conn):
                    yield conn
        else:
            async with self.engine.connect() as conn, self._committing(conn):
                yield conn

    async def write_sync(self, fn: Callable[[Connection], T], *, first: Callable[[], None] | None = None) -> T:
        """Run ``fn`` in one write transaction, given a (synchronous) SQLAlchemy connection; return its result.

        On a SQLite file the transaction (``BEGIN IMMEDIATE``, ``fn``'s statements, ``COMMIT`` with
        its flush) runs on a thread of its own, serialised with every other write in this process:
        the event loop waits once instead of four times per statement (see :meth:`read_sync`).
        Elsewhere ``fn`` runs in a :meth:`write` transaction through ``run_sync``. Either way
        :meth:`after_commit` takes ``fn``'s connection, and what it queued runs once the transaction
        has committed (on the writing thread what it may run anywhere, then the rest on the event
        loop). ``first`` runs on the event loop just before ``fn``,
        once the transaction may begin (on SQLite, the write lock held). A cancelled caller waits
        for the thread to finish (the write lock is held until then).
        """
        if self.sqlite_path is None:
            async with self.write() as conn:
                if first is not None:
                    first()
                return await conn.run_sync(fn)
        engine, _ = self._sync_engine()
        writer = self._write_thread
        if writer is None:
            writer = self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="grace-sqlite-write")
        hooks = _Hooks()

        def transaction() -> T:
            with engine.connect() as plain:
                conn = plain.execution_options(sqlite_immediate=True)
                self._after_commit[id(conn)] = hooks
                try:
                    with conn.begin():
                        result = fn(conn)
                finally:
                    self._after_commit.pop(id(conn), None)
            _run_hooks(hooks.any_thread)  # committed; here, under the write lock, the event loop spared them
            return result

        async with self._write_lock:
            if first is not None:
                first()
            running = asyncio.get_running_loop().run_in_executor(writer, contextvars.copy_context().run, transaction)
            try:
                result = await asyncio.shield(running)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await running  # the lock is held until the thread's transaction has ended
                raise
        _run_hooks(hooks.on_loop)
        return result

    def after_commit(
        self, conn: AsyncConnection | Connection, fn: Callable[[], None], *, any_thread: bool = False
    ) -> None:
        """Run ``fn`` when the :meth:`write` (or :meth:`write_sync`) transaction on ``conn`` commits; never if it
        rolls back. It runs on the event loop's thread, after those given ``any_thread``.

        ``any_thread``: ``fn`` is safe on any thread and touches nothing of the event loop's. In a
        :meth:`write_sync` transaction on a SQLite file it then runs on the writing thread as soon as
        the commit has returned, still under the write lock and before ``write_sync`` returns;
        elsewhere on the event loop like the rest.
        """
        hooks = self._after_commit.get(id(conn))
        if hooks is None:
            raise RuntimeError("after_commit needs a connection from Database.write()")
        (hooks.any_thread if any_thread else hooks.on_loop).append(fn)

    @contextlib.asynccontextmanager
    async def _committing(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """Run ``conn``'s transaction, then the functions queued for after its commit.

        The queue is this object's, not the connection's: after a cancelled statement, reading the
        connection's own state may try to reconnect, which would replace the cancellation with
        another error. Nothing queued survives the transaction it was queued in.
        """
        # Registered under the synchronous connection too: code run through ``run_sync`` is given that one.
        keys = (id(conn), id(conn.sync_connection))
        hooks = _Hooks()
        for key in keys:
            self._after_commit[key] = hooks
        try:
            async with conn.begin():
                yield
        finally:
            for key in keys:
                self._after_commit.pop(key, None)
        _run_hooks(hooks.any_thread)
        _run_hooks(hooks.on_loop)

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """PostgreSQL only: a long-lived autocommit connection for single-statement hot paths.

        One statement is one atomic transaction, sent in one round trip: no pool
        checkout, BEGIN or COMMIT. Connections are kept (one per concurrent
        caller, at most half the pool's size; more go back to the pool) until
        :meth:`dispose`; one that fails is discarded. At most ``pool_size``
        autocommit connections (these and :meth:`autocommit_driver`'s) are in use
        at once, given to callers in the order they asked (:meth:`_turn`).
        """
        if self.is_sqlite:
            raise RuntimeError("autocommit connections are for PostgreSQL; SQLite has write_sqlite")
        async with self._turn():
            conn = self._autocommit.pop() if self._autocommit else await self._open_autocommit()
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                raise
            if len(self._autocommit) < self._keep:
                self._autocommit.append(conn)
            else:
                await conn.close()  # back to the pool, its isolation level reset

    def _turn(self) -> asyncio.Semaphore:
        """The gate every autocommit use passes, in the order callers arrive (at most ``pool_size`` at once).

        Without it a caller that arrived while others waited for a connection could take one being
        handed back (a kept one, or the pool's, which SQLAlchemy gives to whoever asks first and puts
        a woken waiter at the back of its queue): under load a few callers were served again and
        again while the rest waited seconds (a batch submission's p99 13 s at c=50, median 0.36 s).
        asyncio's semaphore lets nobody past its waiters. Made for the running event loop.
        """
        loop = asyncio.get_running_loop()
        if self._turns is None or self._turns_loop is not loop:
            self._turns, self._turns_loop = asyncio.Semaphore(self._turns_allowed), loop
        return self._turns

    async def _open_autocommit(self) -> AsyncConnection:
        return await (await self.engine.connect()).execution_options(isolation_level="AUTOCOMMIT")

    async def _open_driver(self) -> tuple[AsyncConnection, Any]:
        """Open an autocommit connection and return it with its asyncpg connection, never a dead one.

        The pool hands out what it holds without a ping; one the server dropped while it was idle
        is thrown away here and the next one taken (SQLAlchemy would do the same had it run the
        statement; the hot paths run theirs on the driver itself).
        """
        for _ in range(2 * self.engine.pool.size() + 1):  # type: ignore[attr-defined]
            conn = await self._open_autocommit()
            driver: Any = (await conn.get_raw_connection()).driver_connection
            if not driver.is_closed():
                return conn, driver
            await self.discard(conn)
        conn = await self._open_autocommit()
        return conn, (await conn.get_raw_connection()).driver_connection

    @contextlib.asynccontextmanager
    async def autocommit_driver(self) -> AsyncIterator[Any]:
        """PostgreSQL only: the asyncpg connection under an :meth:`autocommit` connection.

        For the hottest statements, which are fixed SQL with positional parameters: asyncpg
        prepares each once per connection, and nothing is compiled or converted in between.
        Values come back as asyncpg gives them (aware UTC datetimes, JSON decoded).
        """
        if self.is_sqlite:
            raise RuntimeError("autocommit connections are for PostgreSQL; SQLite has write_sqlite")
        async with self._turn():
            while self._drivers:
                conn, driver = self._drivers.pop()
                if not driver.is_closed():
                    break
                # The server or the network dropped it while it was idle (a restart): never hand it out.
                await self.discard(conn)
            else:
                conn, driver = await self._open_driver()
            try:
                yield driver
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                raise
            if len(self._drivers) < self._keep:
                self._drivers.append((conn, driver))
            else:
                await conn.close()  # back to the pool, its isolation level reset

    @staticmethod
    async def discard(conn: AsyncConnection) -> None:
        """Close ``conn`` for good, never back to the pool, so session-level locks it holds end now."""
        with contextlib.suppress(Exception):
            await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()

    async def write_sqlite(self, fn: Callable[[sqlite3.Connection], T], *, flush: bool = True) -> T:
        """SQLite only: run ``fn`` in one ``BEGIN IMMEDIATE`` transaction with a single hand-off.

        For hot paths made of many small statements. ``fn`` gets the raw sqlite3
        connection and runs on aiosqlite's thread, so the event loop waits once
        instead of once per statement (plus SQLAlchemy's BEGIN, COMMIT and
        pool reset). It is serialised with every other write in this process,
        commits when ``fn`` returns and rolls back when it raises.

        Without ``flush`` the commit returns before the log is flushed
        (``synchronous=NORMAL`` for this one transaction): for a change nobody is
        told of and that an OS crash may undo harmlessly (a task manager's claim:
        the task is queued again). The next flushed commit puts it on disk too.
        """
        if not self.is_sqlite:
            raise RuntimeError("write_sqlite is for SQLite databases")
        async with self._write_lock:
            if self._sqlite_conn is None:
                # A connection of its own, kept open: it went through the engine's connect hook
                # (WAL, busy timeout, foreign keys) and never sees SQLAlchemy's transactions.
                self._sqlite_conn = await self.engine.connect()
                self._sqlite_driver = (await self._sqlite_conn.get_raw_connection()).driver_connection
            driver = self._sqlite_driver  # aiosqlite.Connection
            assert driver is not None

            def transaction() -> T:
                raw: sqlite3.Connection = driver._conn
                if not flush:
                    raw.execute("PRAGMA synchronous=NORMAL")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    try:
                        out = fn(raw)
                    except BaseException:
                        raw.rollback()
                        raise
                    raw.commit()
                finally:
                    if not flush:
                        raw.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
                return out

            # aiosqlite runs queued callables on its thread with ``_execute``; all its methods use it.
            result: T = await driver._execute(transaction)
            return result

    async def ping(self) -> None:
        """Check the database answers; raise StorageUnavailable if not, saying only that (for ``/ready``)."""
        await self.reach(say_where=False)

    async def reach(self, *, say_where: bool = True) -> None:
        """Check the database answers; raise StorageUnavailable if not.

        With ``say_where`` the message names the database (password hidden) and why it cannot be
        reached: for whoever starts Grace, on their terminal, not for a client.
        """
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OSError, OperationalError, DBAPIError) as exc:
            if not say_where:
                raise errors.DatabaseUnreachable(f"the database cannot be reached ({type(exc).__name__})") from None
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise errors.DatabaseUnreachable(
                f"the database at {self.display_url} cannot be reached: {reason} "
                "(check GRACE_DATABASE_URL and that the server is running)"
            ) from None

    async def check_write(self) -> None:
        """Check that a write commits now; raise a StorageUnavailable leaf naming why not (for ``/ready``).

        It rewrites the migration marker's one row unchanged and commits: the commit appends to
        the write-ahead log and flushes it, so a full disk, a read-only database or a lost
        connection shows here as it would on the next real write.
        """
        try:
            async with self.write() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        except (OSError, DBAPIError, sqlite3.Error) as exc:
            down = outages.outage(exc)
            log.warning("storage.write_check_failed", extra={"reason": outages.driver_message(exc)})
            raise (down or errors.StorageUnavailable("the database does not accept writes")) from None

    @property
    def display_url(self) -> str:
        """The database URL as it may be shown: with the password hidden."""
        return make_url(self.url).set(drivername=self.backend).render_as_string(hide_password=True)

    async def dispose(self) -> None:
        if self._stopping:  # SQLite connections given up on: their threads end their statements first
            _, running = await asyncio.wait(list(self._stopping), timeout=2 * SQLITE_BUSY_TIMEOUT_MS / 1000)
            if running:  # a statement still running: its thread ends after it, on its own
                log.warning("storage.connections_still_closing", extra={"connections": len(running)})
        conn, self._sqlite_conn = self._sqlite_conn, None
        self._sqlite_driver = None
        held, self._autocommit = self._autocommit, []
        held += [c for c, _ in self._drivers]
        self._drivers = []
        for c in [*held, *([conn] if conn is not None else [])]:
            with contextlib.suppress(Exception):
                await c.close()
        engine, self._read_engine = self._read_engine, None
        for threads in (self._read_threads, self._write_thread):
            if threads is not None:
                await asyncio.get_running_loop().run_in_executor(None, threads.shutdown)
        self._read_threads = self._write_thread = None
        if engine is not None:
            engine.dispose()
        await self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database(backend={self.backend!r}, url={self.display_url!r})"


@dataclass(eq=False)
class _Hooks:
    """What a write transaction runs once it has committed: where it may run, then on the event loop."""

    any_thread: list[Callable[[], None]] = field(default_factory=list)
    on_loop: list[Callable[[], None]] = field(default_factory=list)


def _run_hooks(hooks: list[Callable[[], None]]) -> None:
    for fn in hooks:
        try:
            fn()
        except Exception as exc:  # the transaction is committed; what follows it must not undo that
            log.warning("storage.after_commit_failed", extra={"reason": type(exc).__name__})


async def driver_in_transaction(conn: AsyncConnection) -> Any:
    """PostgreSQL: the asyncpg connection under ``conn``, inside ``conn``'s transaction.

    SQLAlchemy opens the driver's transaction at its first statement, not at ``begin()``: a statement
    sent straight to the driver before that would commit on its own, whatever became of the rest.
    """
    driver: Any = (await conn.get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        await conn.execute(text("SELECT 1"))
    return driver


def _terminate_without_waiting(engine: AsyncEngine, stopping: set[asyncio.Future[Any]]) -> None:
    """End an aiosqlite connection SQLAlchemy gives up on by stopping its thread, without waiting for it.

    SQLAlchemy gives a connection up (invalidates it) when a statement on it is cancelled, and its
    aiosqlite dialect then closes it "gracefully": a task of its own awaits the connection's close,
    shielded from the cancelled caller. When the caller was asked to stop again meanwhile (as
    :func:`grace.background.stop` asks every second), SQLAlchemy stops the connection's thread as
    well, and the shielded task then waits for a thread that has ended: it never finishes, and it
    cannot be cancelled, so closing the event loop (which cancels and awaits every task left) waits
    for ever. Here the thread is told to close its connection and end once its current statement
    has (a cancelled transaction rolls back: :class:`SQLiteConnection`), and nobody waits on the
    event loop; :meth:`Database.dispose` waits for those threads.
    """
    dialect = engine.sync_engine.dialect

    def terminate(dbapi_connection: Any) -> None:
        stopped = dialect.get_driver_connection(dbapi_connection).stop()  # aiosqlite.Connection.stop
        if stopped is not None:
            stopping.add(stopped)
            stopped.add_done_callback(stopping.discard)

    dialect.do_terminate = terminate  # type: ignore[method-assign]


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below emit BEGIN itself, so write
        # transactions can take the lock at the start (see SQLAlchemy's
        # pysqlite/aiosqlite docs on serializable isolation).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        # Straight to the driver: SQLAlchemy's own execution path (events, result) cost more than the
        # BEGIN itself, on every transaction (a tenth of a consented read's work on its reading thread).
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        finally:
            cursor.close()
