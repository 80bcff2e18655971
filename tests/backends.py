"""Test databases: a migrated SQLite template copied per test, and a real PostgreSQL database.

PostgreSQL tests run against the server named by ``GRACE_TEST_DATABASE_URL``
(an admin connection; the suite creates and drops its own database there).
When it cannot be reached the PostgreSQL half is skipped locally, and fails the
run under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import storage

ADMIN_URL_ENV = "GRACE_TEST_DATABASE_URL"


def wanted_backends() -> list[str]:
    chosen = os.environ.get("GRACE_TEST_BACKENDS")
    if chosen:
        return [b.strip() for b in chosen.split(",") if b.strip()]
    return ["sqlite", "postgresql"] if os.environ.get(ADMIN_URL_ENV) else ["sqlite"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresTestDatabase:
    """A throwaway database on the real server, migrated once, truncated before each test."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"grace_test_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)
        self.tables: list[str] = []

    async def create(self) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(self.admin_url), timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        db = storage.Database(self.url)
        try:
            await storage.upgrade(db)
        finally:
            await db.dispose()
        conn = await asyncpg.connect(_asyncpg_dsn(self.url))
        try:
            rows = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
            self.tables = [r["tablename"] for r in rows]
        finally:
            await conn.close()

    async def truncate(self) -> None:
        if not self.tables:
            return
        conn = await asyncpg.connect(_asyncpg_dsn(self.url))
        try:
            names = ", ".join(f'"{t}"' for t in self.tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def empty_sibling(self, suffix: str) -> AsyncIterator[str]:
        """Create a database beside this one that no migration has touched; yield its URL, then drop it."""
        name = f"{self.name}_{suffix}"
        conn = await asyncpg.connect(_asyncpg_dsn(self.admin_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        try:
            yield make_url(self.url).set(database=name).render_as_string(hide_password=False)
        finally:
            conn = await asyncpg.connect(_asyncpg_dsn(self.admin_url))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(self.admin_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


class SqliteTemplate:
    """A migrated SQLite file that each test copies, so migrations run once per session."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "template.db"

    def create(self) -> None:
        async def _migrate() -> None:
            db = storage.Database(f"sqlite:///{self.path}")
            try:
                await storage.upgrade(db)
            finally:
                await db.dispose()

        asyncio.run(_migrate())

    def copy_to(self, directory: Path) -> str:
        target = directory / "grace.db"
        shutil.copyfile(self.path, target)
        return f"sqlite:///{target}"


async def advisory_holder(conn: AsyncConnection, name: str) -> int | None:
    """Return the process id of the session holding lock ``name`` in this PostgreSQL database, if any."""
    key = storage.lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows the key's two halves unsigned
    row = (
        await conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid::bigint = :high AND objid::bigint = :low"
            ),
            {"high": key >> 32, "low": key & 0xFFFF_FFFF},
        )
    ).first()
    return None if row is None else int(row[0])
