"""The database failing, told apart from a bug: unreachable (refused, cut, restarting) or out of disk.

A request that meets a failing database gets the driver's own exception: SQLAlchemy's
``DBAPIError`` around it, or, on the hot paths that talk to asyncpg and sqlite3 directly, the
driver's exception itself, or an ``OSError`` from the socket. :func:`outage` reads which it is
and returns the :class:`grace.errors.StorageUnavailable` leaf to answer with (a 503 with
``Retry-After``), or None for anything else (a bug stays a 500). :func:`driver_message` is what
the log may say: the driver's own first line (``database or disk is full``, ``connection was
closed in the middle of operation``), never SQLAlchemy's text, which carries the statement.
"""

from __future__ import annotations

import errno
import socket
import sqlite3

import asyncpg
from sqlalchemy import exc as sa_exc

from grace import errors

__all__ = ["OUTAGE_ERRORS", "driver_error", "driver_message", "outage"]

# The exception classes that may mean an outage; outage() decides for an instance.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,  # ConnectionRefusedError, ConnectionResetError, TimeoutError, socket.gaierror, ENOSPC
)

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full" (the primary code; extended codes add high bits)
_SQLITE_IOERR = 10
_SQLITE_CANTOPEN = 14
_PG_DISK_FULL = "53100"
# Connection exceptions (class 08), the server shutting down or starting (57P01-57P03), too many
# connections (53300) and out of memory (53200): each passes once the server is back.
_PG_UNREACHABLE_PREFIXES = ("08", "57P01", "57P02", "57P03", "53300", "53200")


def driver_error(exc: BaseException) -> BaseException:
    """Return the driver's exception under SQLAlchemy's wrapping (``exc`` itself if unwrapped)."""
    cause: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        cause = exc.orig
    # SQLAlchemy's asyncpg adapter raises its own DBAPI class with asyncpg's exception as the cause.
    inner = cause.__cause__
    if isinstance(inner, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
        cause = inner
    return cause


def driver_message(exc: BaseException) -> str:
    """Return the driver's message for the log: its first line, or the exception's class name.

    PostgreSQL's message names the condition; the values it may concern are in its DETAIL, which
    is left out, and SQLAlchemy's statement and parameters are never included.
    """
    cause = driver_error(exc)
    text = str(getattr(cause, "message", "") or "") if isinstance(cause, asyncpg.PostgresError) else str(cause)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(cause).__name__}: {first[:300]}" if first else type(cause).__name__


def outage(exc: BaseException) -> errors.StorageUnavailable | None:
    """Return the error to answer ``exc`` with if it is the database failing, else None."""
    if isinstance(exc, errors.StorageUnavailable):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):
        return errors.DatabaseUnreachable(
            "no database connection came free in time (the database is slow or unreachable); try again shortly"
        )
    cause = driver_error(exc)
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary == _SQLITE_FULL:
            return errors.DiskFull()
        if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
            return errors.DiskFull(
                "the database's disk failed a read or write (full, or failing), so nothing was written; "
                "try again once it has space"
            )
        return None
    if isinstance(cause, asyncpg.PostgresError):
        state = str(getattr(cause, "sqlstate", "") or "")
        if state == _PG_DISK_FULL:
            return errors.DiskFull()
        if state.startswith(_PG_UNREACHABLE_PREFIXES) or isinstance(cause, asyncpg.PostgresConnectionError):
            return errors.DatabaseUnreachable()
        return None
    if isinstance(cause, asyncpg.InterfaceError):
        # "connection is closed", "the connection pool is closing": the connection, not the request.
        return errors.DatabaseUnreachable() if "clos" in str(cause) else None
    if isinstance(cause, OSError):
        if cause.errno == errno.ENOSPC:
            return errors.DiskFull()
        if isinstance(cause, ConnectionError | TimeoutError | socket.gaierror) or cause.errno in (
            errno.ECONNREFUSED,
            errno.ECONNRESET,
            errno.EHOSTUNREACH,
            errno.ENETUNREACH,
            errno.ETIMEDOUT,
        ):
            return errors.DatabaseUnreachable()
        return None
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return errors.DatabaseUnreachable()
    return None
