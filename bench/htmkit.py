"""Shared set-up for the task manager's benchmarks: throwaway databases and an HTM on them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from grace import memory, storage
from grace.bus import Bus, InProcessBus, PostgresBus
from grace.clock import SystemClock
from grace.htm import HTM, load_config

# The server the benchmarks create their databases on: GRACE_BENCH_DATABASE_URL, else the test suite's.
# On one machine, the local socket (``postgresql://postgres@/postgres?host=/var/run/postgresql``) is
# cheaper per round trip than TCP on 127.0.0.1; every system in a run uses the same one.
ADMIN_URL = os.environ.get("GRACE_BENCH_DATABASE_URL") or os.environ.get(
    "GRACE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def transport(url: str = ADMIN_URL) -> str:
    """Return how the benchmarks reach PostgreSQL: "unix socket" or "tcp <host>"."""
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or ""
    host = host[0] if isinstance(host, tuple) else host
    return "unix socket" if not host or host.startswith("/") else f"tcp {host}"


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
async def open_htm(url: str, *, outbox: bool = True, **config: Any) -> AsyncIterator[HTM]:
    """Migrate ``url`` and yield an HTM on it with the backend's real bus.

    ``outbox=False`` publishes task events after commit (as before the outbox) rather than writing
    them with their changes: what the outbox costs is measured against it.
    """
    db = storage.Database(url, pool_size=10)
    await storage.upgrade(db)
    clock = SystemClock()
    bus: Bus = InProcessBus(clock=clock) if db.is_sqlite else PostgresBus(db, clock=clock)
    await bus.start()
    htm = HTM(db, bus, clock, load_config(**{"burst_per_minute": 0, **config}), outbox=outbox)
    await htm.prepare()
    thresholds = gc.get_threshold()
    memory.settle()  # as ``grace serve`` and ``grace worker`` do once started
    try:
        yield htm
    finally:
        await htm.close(grace=1)
        await bus.close()
        await db.dispose()
        gc.unfreeze()  # the next run starts from the same state
        gc.set_threshold(*thresholds)


def cpu_ticks() -> list[int] | None:
    """Return the machine's CPU time counters (Linux ``/proc/stat``), or None where there are none."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def cpu_share(before: list[int] | None, after: list[int] | None) -> dict[str, float] | None:
    """Return what the machine's CPUs did between two readings: busy and stolen, in percent.

    "Stolen" is time the hypervisor gave to other machines while this one wanted to run: when it is
    high, every figure measured over the same stretch is low.
    """
    if before is None or after is None:
        return None
    delta = [a - b for a, b in zip(after, before, strict=False)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]  # idle, iowait
    steal = delta[7] if len(delta) > 7 else 0
    return {"busy_pct": round(100 * (total - idle - steal) / total, 1), "steal_pct": round(100 * steal / total, 1)}


async def wait_until(check: Any, timeout: float, interval: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        await asyncio.sleep(interval)
