"""Named locks across processes: serialise transactions, or hold a leadership.

Every lock has a name, dot-separated and starting with the package that takes it
(``grace.storage.migrate``, ``grace.htm.route.intent``). On PostgreSQL it is an advisory
lock whose one 64-bit key is derived from the name (:func:`key`), so no two sites pick
numbers by hand and none can collide by accident. Advisory locks belong to one database:
two databases on one server never share a lock.

On SQLite both kinds are free. A write transaction (:meth:`Database.write`, ``BEGIN
IMMEDIATE``) already holds the database's one write lock, so nothing else writes until it
ends; and a SQLite database belongs to one machine, whose serving process does the work
a PostgreSQL cluster elects a leader for.

What SQLite has instead is the machine's own locks: a :class:`FileLock` is an ``flock`` on a
file beside the database (``grace.db.locks/``), which the kernel drops the instant its process
dies, however it dies. A task worker holds one while it lives, so whoever starts next on the
same file knows at once that its predecessor's workers are gone (:func:`file_lock_free`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from grace.storage import files
from grace.storage.database import Database

__all__ = ["FileLock", "Leadership", "file_lock_free", "key", "serialise", "serialise_in", "try_serialise"]

log = logging.getLogger("grace.storage")

_XACT_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_XACT_TRY = text("SELECT pg_try_advisory_xact_lock(:key)")
_SESSION_LOCK = text("SELECT true FROM pg_advisory_lock(:key)")
_SESSION_TRY = text("SELECT pg_try_advisory_lock(:key)")
_ALIVE = text("SELECT 1")


def key(name: str) -> int:
    """Return the PostgreSQL advisory lock key for ``name``: a signed 64-bit number.

    The first eight bytes of the name's BLAKE2b digest: stable across processes, versions and
    servers (unlike ``hashtext``), and wide enough that distinct names do not meet.
    """
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


async def serialise(conn: AsyncConnection, name: str) -> None:
    """Hold ``name``'s lock until ``conn``'s transaction ends; a transaction asking for it meanwhile waits.

    Take it before reading what the transaction decides on. Several names in one transaction
    must be taken in one order everywhere (say sorted), or two transactions can deadlock. On
    SQLite this does nothing: call it inside :meth:`Database.write`, whose ``BEGIN IMMEDIATE``
    already admits one writer at a time.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(_XACT_LOCK, {"key": key(name)})


def serialise_in(conn: Connection, name: str) -> None:
    """:func:`serialise` inside a synchronous transaction (``Database.write_sync``)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_XACT_LOCK, {"key": key(name)})


async def try_serialise(conn: AsyncConnection, name: str) -> bool:
    """Take ``name``'s lock until ``conn``'s transaction ends if nobody holds it; return whether it was free.

    A free lock held by a :class:`Leadership` means its holder's connection is gone. On SQLite
    it is always free (see :func:`serialise`).
    """
    if conn.dialect.name != "postgresql":
        return True
    return bool((await conn.execute(_XACT_TRY, {"key": key(name)})).scalar())


class Leadership:
    """The one holder of ``name`` across processes, on a connection of its own.

    On PostgreSQL a session advisory lock, held on an autocommit connection kept out of the
    pool: it ends with :meth:`release` or with the connection (the process dies, the server
    restarts, the network drops it), and then another :class:`Leadership` of the same name
    takes it on its next :meth:`acquire`. Call :meth:`acquire` on every tick of the loop that
    needs the lead: it checks that a held lock still is, and after a loss tries again at once.
    On SQLite every :class:`Leadership` leads (see the module's docstring).
    """

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._conn: AsyncConnection | None = None
        self._driver: Any = None  # the asyncpg connection under _conn

    @property
    def is_leader(self) -> bool:
        """Return whether this object leads, as far as is known without asking the server."""
        if self.db.is_sqlite:
            return True
        return self._conn is not None and not self._driver.is_closed()

    async def acquire(self, *, wait: bool = False) -> bool:
        """Keep or take the lead; return whether this object leads now.

        With ``wait``, block until the lock is free: for a name only one process ever asks
        for (a worker's own liveness), where the wait is at most another's brief probe. If the
        database cannot be reached this raises what the driver raised; nothing is held then,
        and the next call tries again.
        """
        if self.db.is_sqlite:
            return True
        if self._conn is not None:
            try:
                if not self._driver.is_closed():
                    await self._conn.execute(_ALIVE)
                    return True
                reason = "ConnectionClosed"
            except Exception as exc:  # the lock went with its connection; take it again below
                reason = type(exc).__name__
            log.warning("storage.leadership_lost", extra={"lock": self.name, "reason": reason})
            await self.release()
        conn = await (await self.db.engine.connect()).execution_options(isolation_level="AUTOCOMMIT")
        try:
            held = bool((await conn.execute(_SESSION_LOCK if wait else _SESSION_TRY, {"key": key(self.name)})).scalar())
            driver = (await conn.get_raw_connection()).driver_connection if held else None
        except BaseException:
            await self.db.discard(conn)
            raise
        if not held:
            await conn.close()  # it holds nothing, so the pool may have it back
            return False
        self._conn, self._driver = conn, driver
        log.info("storage.leadership_taken", extra={"lock": self.name})
        return True

    async def release(self) -> None:
        """Give up the lead (if held): the lock's connection is closed for good, never pooled."""
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            await self.db.discard(conn)

    def __repr__(self) -> str:
        return f"Leadership({self.name!r}, leader={self.is_leader})"


def lock_file(db: Database, name: str) -> Path | None:
    """Return the file whose ``flock`` is ``name``'s lock on SQLite; None for an in-memory database."""
    if db.sqlite_path is None:
        return None
    return db.sqlite_path.with_name(db.sqlite_path.name + ".locks") / f"{key(name) & 0xFFFFFFFFFFFFFFFF:016x}.lock"


def file_lock_free(db: Database, name: str) -> bool:
    """Return whether no live process holds ``name``'s :class:`FileLock` (SQLite; never free in memory).

    A lock file that is missing, or that this call can lock, is free: its holder released it or
    died. The probe's own lock is let go at once.
    """
    path = lock_file(db, name)
    if path is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also lets go of the probe's lock, if it took it
    return True


class FileLock:
    """SQLite: ``name``'s lock as an ``flock`` on a file beside the database, held until release or death.

    The same surface as :class:`Leadership` (``acquire``, ``release``, ``is_leader``). In memory
    (no file) it always leads, as :class:`Leadership` does on SQLite.
    """

    def __init__(self, db: Database, name: str) -> None:
        self.name = name
        self.path = lock_file(db, name)
        self._fd: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.path is None or self._fd is not None

    async def acquire(self, *, wait: bool = False) -> bool:
        """Take the lock if free (with ``wait``, until it is); raise OSError if its file cannot be made."""
        if self.is_leader:
            return True
        assert self.path is not None
        files.private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, files.PRIVATE_FILE_MODE)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return False
                await asyncio.sleep(0.05)  # another's probe holds it for an instant
                continue
            self._fd = fd
            return True

    async def release(self) -> None:
        """Let go of the lock (if held) and remove its file."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still held: a probe that opened it sees it free only after close
        os.close(fd)

    def __repr__(self) -> str:
        return f"FileLock({self.name!r}, leader={self.is_leader})"
