"""Shared set-up for the task manager's benchmarks: throwaway databases and an HTM on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from grace import storage
from grace.bus import Bus, InProcessBus, PostgresBus
from grace.clock import SystemClock
from grace.htm import HTM, load_config

ADMIN_URL = os.environ.get("GRACE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fresh_postgres(name: str) -> str:
    """Create (or recreate) database ``grace_bench_<name>``; return its URL."""
    db_name = f"grace_bench_{name}"
    conn = await asyncpg.connect(asyncpg_dsn(ADMIN_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        await conn.close()
    return make_url(ADMIN_URL).set(database=db_name).render_as_string(hide_password=False)


async def drop_postgres(url: str) -> None:
    name = make_url(url).database
    conn = await asyncpg.connect(asyncpg_dsn(ADMIN_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def fresh_sqlite(name: str) -> str:
    directory = Path(tempfile.mkdtemp(prefix=f"grace-bench-{name}-"))
    return f"sqlite:///{directory / 'grace.db'}"


async def fresh(backend: str, name: str) -> str:
    return await fresh_postgres(name) if backend == "postgresql" else fresh_sqlite(name)


@contextlib.asynccontextmanager
async def open_htm(url: str, **config: Any) -> AsyncIterator[HTM]:
    """Migrate ``url`` and yield an HTM on it with the backend's real bus."""
    db = storage.Database(url, pool_size=10)
    await storage.upgrade(db)
    clock = SystemClock()
    bus: Bus = InProcessBus(clock=clock) if db.is_sqlite else PostgresBus(db, clock=clock)
    await bus.start()
    htm = HTM(db, bus, clock, load_config(**{"burst_per_minute": 0, **config}))
    await htm.prepare()
    try:
        yield htm
    finally:
        await htm.close(grace=1)
        await bus.close()
        await db.dispose()


async def wait_until(check: Any, timeout: float, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(interval)
