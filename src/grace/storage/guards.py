"""A database refusing a value it cannot hold, told apart from an outage or a bug.

The edge bounds every input first (``grace.api.bounds``); this is the net under it, so a value that
slips past (a new field, a form part) is the client's error, a 422, not a 500: an integer SQLite
cannot bind (``OverflowError``), and PostgreSQL's data exceptions (SQLSTATE class 22: a NUL
character in text or JSON, a number out of range), whether SQLAlchemy wraps them or asyncpg raises
them itself on the hot paths.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

__all__ = ["VALUE_ERRORS", "refused_value"]

# The exception classes that may mean a refused value; refused_value() decides for an instance.
VALUE_ERRORS: tuple[type[Exception], ...] = (OverflowError, sa_exc.DBAPIError, asyncpg.exceptions.DataError)


def refused_value(exc: BaseException) -> bool:
    """Return whether ``exc`` is the database (or its driver) refusing a value it cannot hold."""
    if isinstance(exc, OverflowError | sa_exc.DataError | asyncpg.exceptions.DataError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith("22")
    return False
