"""No-op throughput end to end (submit -> claim -> run -> complete), HTM vs pgqueuer.

For each backend and claim batch size: a producer submits N no-op tasks in batches of 500 while
one worker pool (concurrency 64) runs them; the figure is N / (time from the first submit to the
last recorded completion). pgqueuer runs the same shape on the same PostgreSQL server (its own
fresh database): batched enqueue while a QueueManager with ``batch_size`` 1 or 10 drains it.
Events (htm.task.created/update/completed) are published as in production.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import htmkit
from grace.htm import HTM, TaskContext

SUBMIT_BATCH = 500
CONCURRENCY = 64
RUNS = [  # backend, claim batch, tasks, bus events on
    ("sqlite", 1, 2_000, True),
    ("sqlite", 50, 10_000, True),
    ("postgresql", 1, 4_000, True),
    ("postgresql", 10, 10_000, True),
    ("postgresql", 50, 10_000, True),
    ("postgresql", 1, 4_000, False),
    ("postgresql", 50, 10_000, False),
    ("sqlite", 50, 10_000, False),
]


async def htm_run(backend: str, batch: int, n: int, events: bool) -> dict[str, Any]:
    url = await htmkit.fresh(backend, f"tp_{batch}")
    try:
        async with htmkit.open_htm(
            url, concurrency=CONCURRENCY, claim_batch=batch, poll_seconds=0.05, events=events
        ) as htm:
            done = 0

            async def noop(ctx: TaskContext) -> None:
                nonlocal done
                done += 1

            htm.handlers.register("bench.noop", noop)
            pool = await htm.start_workers()
            started = time.perf_counter()
            await submit_all(htm, n)
            submitted = time.perf_counter()
            await htmkit.wait_until(lambda: pool.finished >= n, timeout=300, interval=0.005)
            elapsed = time.perf_counter() - started
            await htm.events.drain()
            return {
                "system": "htm",
                "backend": backend,
                "claim_batch": batch,
                "events": events,
                "tasks": n,
                "seconds": round(elapsed, 3),
                "tasks_per_second": round(n / elapsed),
                "submit_seconds": round(submitted - started, 3),
                "events_published": htm.events.published,
            }
    finally:
        if backend == "postgresql":
            await htmkit.drop_postgres(url)


async def submit_all(htm: HTM, n: int) -> None:
    origins = ["user_request", "intent", "scheduler", "internal"]
    for start in range(0, n, SUBMIT_BATCH):
        size = min(SUBMIT_BATCH, n - start)
        requests = [htm.request("bench.noop", origin=origins[(start + i) % 4]) for i in range(size)]
        await htm.submit_many(requests, creator=None)


async def pgqueuer_run(batch: int, n: int) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    url = await htmkit.fresh_postgres(f"pgq_{batch}")
    try:
        conn = await asyncpg.connect(htmkit.asyncpg_dsn(url))
        producer_conn = await asyncpg.connect(htmkit.asyncpg_dsn(url))
        try:
            await Queries(AsyncpgDriver(conn)).install()
            qm = QueueManager(Queries(AsyncpgDriver(conn)))
            producer = Queries(AsyncpgDriver(producer_conn))
            done = 0

            @qm.entrypoint("noop")
            async def noop(job: Any) -> None:
                nonlocal done
                done += 1
                if done >= n:
                    qm.shutdown.set()

            runner = asyncio.create_task(qm.run(batch_size=batch, max_concurrent_tasks=max(CONCURRENCY, 2 * batch)))
            await asyncio.sleep(0.5)  # let it start listening
            started = time.perf_counter()
            for start in range(0, n, SUBMIT_BATCH):
                size = min(SUBMIT_BATCH, n - start)
                await producer.enqueue(["noop"] * size, [None] * size, [0] * size)
            await asyncio.wait_for(runner, timeout=300)
            elapsed = time.perf_counter() - started
        finally:
            await conn.close()
            await producer_conn.close()
        return {
            "system": "pgqueuer",
            "backend": "postgresql",
            "claim_batch": batch,
            "tasks": n,
            "seconds": round(elapsed, 3),
            "tasks_per_second": round(n / elapsed),
        }
    finally:
        await htmkit.drop_postgres(url)


async def run() -> dict[str, Any]:
    results = []
    for backend, batch, n, events in RUNS:
        results.append(await htm_run(backend, batch, n, events))
        label = "" if events else " (bus events off)"
        print(f"   htm {backend} batch {batch}{label}: {results[-1]['tasks_per_second']}/s", flush=True)
    anchors = {}
    for batch, n in ((1, 3_000), (10, 10_000)):
        anchors[batch] = await pgqueuer_run(batch, n)
        print(f"   pgqueuer batch {batch}: {anchors[batch]['tasks_per_second']}/s", flush=True)
    summary: dict[str, Any] = {}
    for r in results:
        key = f"htm_{r['backend']}_batch{r['claim_batch']}{'' if r['events'] else '_no_events'}_per_s"
        summary[key] = r["tasks_per_second"]
    for batch, a in anchors.items():
        summary[f"pgqueuer_batch{batch}_per_s"] = a["tasks_per_second"]
    pg = {r["claim_batch"]: r["tasks_per_second"] for r in results if r["backend"] == "postgresql" and r["events"]}
    summary["ratio_htm_pg_batch1_vs_pgqueuer_batch1"] = round(pg[1] / anchors[1]["tasks_per_second"], 2)
    summary["ratio_htm_pg_batch10_vs_pgqueuer_batch10"] = round(pg[10] / anchors[10]["tasks_per_second"], 2)
    summary["ratio_htm_pg_batch50_vs_pgqueuer_batch10"] = round(pg[50] / anchors[10]["tasks_per_second"], 2)
    return {"summary": summary, "runs": results, "pgqueuer": list(anchors.values()), "concurrency": CONCURRENCY}
