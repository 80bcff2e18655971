"""Crash: kill -9 a ``grace worker`` holding tasks; measure when they run again, and count lost and duplicated.

Two worker processes (concurrency 4, lease 5 s) share a PostgreSQL queue of 2-second tasks. Once
the victim holds tasks, it is killed with SIGKILL. Reported: for each task it held, the time from
the kill until another worker started it again; tasks never completed (lost); tasks whose handler
ran to completion more than once (duplicated) and tasks started more than once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import htmkit
from grace.htm import Status

ROOT = Path(__file__).resolve().parents[1]
GRACE = str(Path(sys.executable).with_name("grace"))
LEASE = 5.0
TASKS = 24


async def run() -> dict[str, Any]:
    url = await htmkit.fresh_postgres("crash")
    work = Path(tempfile.mkdtemp(prefix="grace-bench-crash-"))
    log = work / "runs.log"
    env = dict(os.environ)
    env.update(
        {
            "GRACE_DATABASE_URL": url,
            "GRACE_DATA_DIR": str(work / "data"),
            "GRACE_HTM_LEASE_SECONDS": str(LEASE),
            "GRACE_HTM_POLL_SECONDS": "0.2",
            "GRACE_HTM_BURST_PER_MINUTE": "0",
            "GRACE_BENCH_HTM_LOG": str(log),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "GRACE_LOG_LEVEL": "WARNING",
        }
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with htmkit.open_htm(url, lease_seconds=LEASE) as htm:
            for _ in range(2):
                procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
                        [GRACE, "worker", "-c", "4", "--handlers", "bench.htm_handlers:register"],
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            deadline = time.monotonic() + 60
            while (await htm.routing_stats())["workers"] < 2:
                assert time.monotonic() < deadline, "workers did not start"
                await asyncio.sleep(0.2)
            requests = [htm.request("bench.sleep", origin="intent", payload={"seconds": 2.0}) for _ in range(TASKS)]
            ids = {s.task_id for s in await htm.submit_many(requests, creator=None)}
            victim = procs[0]
            held: set[str] = set()
            while not held:
                running = await htm.list_tasks(principal=None, status="running", limit=100)
                held = {t.task_id for t in running if t.worker_id and t.worker_id.split(":")[1] == str(victim.pid)}
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # mid-task
            running = await htm.list_tasks(principal=None, status="running", limit=100)
            held = {t.task_id for t in running if t.worker_id and t.worker_id.split(":")[1] == str(victim.pid)}
            killed_at = time.time()
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            deadline = time.monotonic() + 90
            while True:
                tasks = {t.task_id: t for t in await htm.list_tasks(principal=None, limit=1000) if t.task_id in ids}
                if all(t.status is Status.COMPLETED for t in tasks.values()):
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        rerun = sorted(
            round(tasks[i].started_at.timestamp() - killed_at, 3)  # type: ignore[union-attr]
            for i in held
            if tasks[i].started_at
        )
        lines = log.read_text().split() if log.exists() else []
        starts = Counter(lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "start")
        dones = Counter(lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "done")
        lost = sorted(i for i in ids if tasks[i].status is not Status.COMPLETED)
        summary = {
            "lease_seconds": LEASE,
            "tasks_held_by_killed_worker": len(held),
            "rerun_after_kill_seconds_max": max(rerun) if rerun else None,
            "rerun_after_kill_seconds_min": min(rerun) if rerun else None,
            "within_one_lease": bool(rerun) and max(rerun) <= LEASE,
            "tasks_lost": len(lost),
            "tasks_completed_twice": sum(1 for i in ids if dones[i] > 1),
            "tasks_started_twice": sum(1 for i in ids if starts[i] > 1),
        }
        return {"summary": summary, "rerun_seconds": rerun, "tasks": TASKS}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        await htmkit.drop_postgres(url)
