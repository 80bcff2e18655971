"""A backlog of ``htm.noop`` drained by the workers embedded in ``grace serve``, beside the engine alone.

For each database and each pool size in ``GRACE_BENCH_DRAIN_CONCURRENCY`` (default ``4,32``: the
default ``GRACE_HTM_CONCURRENCY`` and a larger pool), in one run:

- **engine**: an HTM on a fresh database (the backend's real bus, events on, no other capability), a
  backlog of ``GRACE_BENCH_DRAIN_TASKS`` (11,500) tasks submitted first, then one worker pool of that
  size and the default claim batch drains it;
- **serve**: the same backlog written into a fresh database, then ``grace serve`` started on it: its
  embedded pool (the same size, by ``GRACE_HTM_CONCURRENCY``) drains it while everything else a
  serving process runs (the playbooks' and intents' bus subscriptions, the SLA enforcer, roll-ups)
  runs beside it.

The drain's rate is read from the tasks themselves, the same way for both: tasks over the time from
the first one's start to the last one's finish (so the server's start-up is not counted). The engine
and the server alternate per configuration, so both meet the same machine (two cores shared with
other work); the load average is recorded before and after each.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench import htmkit
from grace import storage
from grace.htm.tables import htm_tasks

ROOT = Path(__file__).resolve().parents[1]
GRACE = str(Path(sys.executable).with_name("grace"))
TOKEN = "grc_bench_drain_admin_token_0123456789abcdef"
TASKS = int(os.environ.get("GRACE_BENCH_DRAIN_TASKS", "11500"))
POOLS = [int(x) for x in os.environ.get("GRACE_BENCH_DRAIN_CONCURRENCY", "4,32").split(",")]
BACKENDS = os.environ.get("GRACE_BENCH_DRAIN_BACKENDS", "sqlite,postgresql").split(",")
SUBMIT_BATCH = 500
ORIGINS = ("user_request", "intent", "scheduler", "internal")
TIMEOUT = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _backlog(url: str) -> None:
    """Migrate ``url`` and submit the backlog (no worker runs meanwhile)."""
    async with htmkit.open_htm(url) as htm:
        for start in range(0, TASKS, SUBMIT_BATCH):
            size = min(SUBMIT_BATCH, TASKS - start)
            requests = [htm.request("htm.noop", origin=ORIGINS[(start + i) % 4]) for i in range(size)]
            await htm.submit_many(requests, creator=None)


async def _drained(url: str) -> dict[str, Any]:
    """Read the drain's figures from the tasks: how many finished, and from first start to last finish."""
    db = storage.Database(url)
    try:
        async with db.read() as conn:
            t = htm_tasks
            row = (
                await conn.execute(
                    select(func.count(), func.min(t.c.started_at), func.max(t.c.finished_at)).where(
                        t.c.status == "completed"
                    )
                )
            ).one()
    finally:
        await db.dispose()
    done, first, last = int(row[0]), row[1], row[2]
    first, last = storage.utc_read(first), storage.utc_read(last)
    seconds = (last - first).total_seconds() if first and last else 0.0
    return {
        "completed": done,
        "drain_seconds": round(seconds, 3),
        "tasks_per_second": round(done / seconds) if seconds else None,
    }


async def _count_unfinished(url: str) -> int:
    db = storage.Database(url)
    try:
        async with db.read() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count()).where(htm_tasks.c.status.in_(["queued", "running", "delayed"]))
                    )
                ).scalar_one()
            )
    finally:
        await db.dispose()


async def engine(backend: str, concurrency: int) -> dict[str, Any]:
    url = await htmkit.fresh(backend, f"drain_engine_{concurrency}")
    try:
        await _backlog(url)
        load = os.getloadavg()[0]
        async with htmkit.open_htm(url, concurrency=concurrency) as htm:
            pool = await htm.start_workers()
            started = time.perf_counter()
            await htmkit.wait_until(lambda: pool.finished >= TASKS, timeout=TIMEOUT, interval=0.01)
            wall = time.perf_counter() - started
            await htm.events.drain()
        return {"wall_seconds": round(wall, 3), "load_1m_before": round(load, 2), **(await _drained(url))}
    finally:
        if backend == "postgresql":
            await htmkit.drop_postgres(url)


async def serve(backend: str, concurrency: int, work: Path) -> dict[str, Any]:
    data_dir = work / f"{backend}-serve-{concurrency}"
    data_dir.mkdir()
    # On SQLite the server's own data directory holds the database.
    url = (
        await htmkit.fresh_postgres(f"drain_serve_{concurrency}")
        if backend == "postgresql"
        else (f"sqlite:///{data_dir / 'grace.db'}")
    )
    try:
        await _backlog(url)
        load = os.getloadavg()[0]
        port = _free_port()
        env = dict(os.environ)
        env.update(
            {
                "GRACE_DATABASE_URL": url,
                "GRACE_DATA_DIR": str(data_dir),
                "GRACE_BOOTSTRAP_TOKEN": TOKEN,
                "GRACE_LOG_LEVEL": "WARNING",
                "GRACE_HTM_CONCURRENCY": str(concurrency),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            }
        )
        started = time.perf_counter()
        with (data_dir / "serve.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: ASYNC220 - started once, stopped below
                [GRACE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                    while True:
                        assert process.poll() is None, "grace serve stopped"
                        assert time.perf_counter() - started < TIMEOUT, "the backlog was not drained in time"
                        try:
                            answered = (await client.get("/health")).status_code == 200
                        except httpx.TransportError:
                            answered = False
                        if answered and await _count_unfinished(url) == 0:
                            break
                        await asyncio.sleep(0.25)
                wall = time.perf_counter() - started
            finally:
                process.terminate()
                await asyncio.to_thread(process.wait, 30)
        return {
            "wall_seconds_from_process_start": round(wall, 3),
            "load_1m_before": round(load, 2),
            **(await _drained(url)),
        }
    finally:
        if backend == "postgresql":
            await htmkit.drop_postgres(url)


async def run() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="grace-bench-drain-"))
    result: dict[str, Any] = {
        "tasks": TASKS,
        "cpus": os.cpu_count(),
        "note": "2 cores shared with other agents' work",
        "postgres_transport": htmkit.transport(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    summary: dict[str, Any] = {}
    turn = 0
    for backend in BACKENDS:
        for concurrency in POOLS:
            # Alternate which goes first, so neither always meets the machine as the other left it.
            order = ("engine", "serve") if turn % 2 == 0 else ("serve", "engine")
            turn += 1
            figures: dict[str, Any] = {}
            for system in order:
                print(f"   {backend} concurrency {concurrency}: {system}", file=sys.stderr, flush=True)
                figures[system] = (
                    await engine(backend, concurrency)
                    if system == "engine"
                    else await serve(backend, concurrency, work)
                )
            key = f"{backend}_concurrency_{concurrency}"
            result[key] = figures
            e, s = figures["engine"]["tasks_per_second"], figures["serve"]["tasks_per_second"]
            summary[key] = {"engine_tasks_per_s": e, "serve_tasks_per_s": s, "serve_vs_engine": round(s / e, 2)}
    result["summary"] = summary
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result
