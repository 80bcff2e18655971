"""``grace worker`` processes sharing one PostgreSQL queue, and the ``grace tasks`` commands.

The multi-process tests need PostgreSQL (several processes on one database); they are skipped
without it locally and fail under CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from grace import storage
from grace.bus import InProcessBus
from grace.clock import SystemClock
from grace.htm import HTM, Status, Task, load_config
from grace.htm.origins import ORDER
from tests.backends import PostgresTestDatabase

ROOT = Path(__file__).resolve().parents[2]
GRACE = str(Path(sys.executable).with_name("grace"))
LEASE = 2.0


def worker_env(database_url: str, data_dir: Path, log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GRACE_DATABASE_URL": database_url,
            "GRACE_DATA_DIR": str(data_dir),
            "GRACE_HTM_LEASE_SECONDS": str(LEASE),
            "GRACE_HTM_POLL_SECONDS": "0.2",
            "GRACE_HTM_BURST_PER_MINUTE": "0",
            "GRACE_HTM_SHUTDOWN_GRACE_SECONDS": "1",
            "GRACE_TEST_HTM_LOG": str(log),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            "GRACE_LOG_LEVEL": "WARNING",
        }
    )
    return env


@pytest.fixture
def pg_url(postgres_database: PostgresTestDatabase | None) -> str:
    if postgres_database is None:
        pytest.skip("needs PostgreSQL: several worker processes share one database")
    asyncio.run(postgres_database.truncate())
    return postgres_database.url


@pytest.fixture
async def htm(pg_url: str) -> AsyncIterator[HTM]:
    db = storage.Database(pg_url)
    htm = HTM(db, InProcessBus(), SystemClock(), load_config(burst_per_minute=0, lease_seconds=LEASE))
    await htm.prepare()
    yield htm
    await htm.close(grace=0)
    await db.dispose()


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], Path]]:
    log = tmp_path / "runs.log"
    env = worker_env(pg_url, tmp_path / "data", log)
    stderr = (tmp_path / "workers.err").open("wb")
    procs = [
        subprocess.Popen(
            [GRACE, "worker", "--concurrency", "4", "--claim-batch", "4", "--handlers", "tests.htm_handlers:register"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        for _ in range(2)
    ]
    yield procs, log
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    stderr.close()


HANG_GUARD = 600.0  # seconds: long enough for any busy machine, short of CI's own limit


async def wait_for(check, timeout: float = HANG_GUARD) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``check()`` holds; ``timeout`` only stops a hung run, it is no speed budget."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def all_tasks(htm: HTM) -> list[Task]:
    return await htm.list_tasks(principal=None, limit=1000)


@pytest.mark.slow
@pytest.mark.postgres_only
async def test_two_worker_processes_share_the_queue_with_global_caps_and_lose_nothing_when_one_is_killed(
    htm: HTM, workers: tuple[list[subprocess.Popen[bytes]], Path]
) -> None:
    procs, log = workers

    async def both_registered() -> bool:
        workers: int = (await htm.routing_stats())["workers"]
        return workers == 2

    await wait_for(both_registered)
    # Phase 1: every origin backlogged, capacity 8 across the two processes.
    requests = [htm.request("test.work", origin=o.value, payload={"seconds": 0.25}) for o in ORDER for _ in range(6)]
    await htm.submit_many(requests, creator=None)

    # While every origin still has work waiting, no origin runs more than its share of the 8 slots,
    # counted across both processes: read from the database's own running counts, sampled throughout.
    peak: Counter[str] = Counter()
    quotas: dict[str, int] = {}

    async def all_done() -> bool:
        stats = (await htm.routing_stats())["origins"]
        quotas.update({name: o["max_concurrent"] for name, o in stats.items()})
        if all(stats[o.value]["total_queued"] > 0 for o in ORDER):
            for name, o in stats.items():
                peak[name] = max(peak[name], o["current_count"])
        return all(t.status is Status.COMPLETED for t in await all_tasks(htm))

    await wait_for(all_done)
    tasks = await all_tasks(htm)
    assert len(tasks) == 48 and {t.worker_id.split(":")[1] for t in tasks if t.worker_id} == {str(p.pid) for p in procs}
    assert all(t.started_at is not None and t.finished_at is not None for t in tasks)  # every task completed
    assert quotas["user_request"] == 3 and quotas["internal"] == 1
    assert peak, "never saw every origin backlogged at once"
    for origin in ORDER:
        assert peak[origin.value] <= quotas[origin.value], (origin, dict(peak))

    # Phase 2: kill -9 one worker while it holds tasks.
    second = [htm.request("test.work", origin="intent", payload={"seconds": 1.0}) for _ in range(16)]
    ids = {s.task_id for s in await htm.submit_many(second, creator=None)}
    victim = procs[0]

    async def victim_busy() -> bool:
        running = await htm.list_tasks(principal=None, status="running", limit=100)
        return any(t.worker_id and t.worker_id.split(":")[1] == str(victim.pid) for t in running)

    await wait_for(victim_busy)
    held = {
        t.task_id
        for t in await htm.list_tasks(principal=None, status="running", limit=100)
        if t.worker_id and t.worker_id.split(":")[1] == str(victim.pid)
    }
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    await wait_for(all_done)
    final = {t.task_id: t for t in await all_tasks(htm) if t.task_id in ids}
    assert len(final) == 16 and all(t.status is Status.COMPLETED for t in final.values())  # nothing lost
    survivor = str(procs[1].pid)
    for task_id in held:
        assert final[task_id].attempts == 2 and final[task_id].worker_id.split(":")[1] == survivor  # type: ignore[union-attr]
    lines = log.read_text().split()
    done = Counter(lines[i + 1] for i in range(0, len(lines), 3) if lines[i] == "done")
    starts = Counter(lines[i + 1] for i in range(0, len(lines), 3) if lines[i] == "start")
    assert all(done[t] == 1 for t in ids)  # every task finished exactly once
    assert {t for t in ids if starts[t] > 1} <= held  # only the killed worker's tasks were started twice


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRACE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_the_tasks_commands(database_url: str, tmp_path: Path) -> None:
    env = worker_env(database_url, tmp_path / "data", tmp_path / "runs.log")
    r = run_cli("tasks", "submit", "htm.echo", "--payload", '{"from_scheduler": true}', "--json", env=env)
    assert r.returncode == 0, r.stderr
    submitted = json.loads(r.stdout)
    assert submitted["routing"]["origin"] == "scheduler" and submitted["status"] == "queued"
    task_id = submitted["task_id"]
    shown = json.loads(run_cli("tasks", "show", task_id, "--json", env=env).stdout)
    assert shown["origin_rule"] == "payload.from_scheduler" and shown["payload"] == {"from_scheduler": True}
    listed = json.loads(run_cli("tasks", "list", "--status", "queued", "--json", env=env).stdout)
    assert [t["task_id"] for t in listed] == [task_id]
    stats = json.loads(run_cli("tasks", "stats", "--json", env=env).stdout)
    assert stats["origins"]["scheduler"]["total_queued"] == 1
    r = run_cli("tasks", "cancel", task_id, env=env)
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = run_cli("tasks", "cancel", task_id, env=env)
    assert r.returncode == 1 and "already cancelled" in r.stderr
    r = run_cli("tasks", "submit", "htm.noop", "--priority", "urgent", env=env)
    assert r.returncode == 1 and "critical, high, normal, low" in r.stderr
    r = run_cli("tasks", "show", "task_missing", env=env)
    assert r.returncode == 1 and "no task" in r.stderr
