"""No-op throughput end to end (submit -> claim -> run -> complete), HTM vs pgqueuer.

For each backend and claim batch size: a producer submits N no-op tasks in batches of 500 while
one worker pool (concurrency 64) runs them; the figure is N / (time from the first submit to the
last recorded completion). pgqueuer runs the same shape on the same PostgreSQL server (its own
fresh database): batched enqueue while a QueueManager with ``batch_size`` 1 or 10 drains it.
Events (htm.task.created/update/completed) are published as in production.

Every configuration runs ``GRACE_BENCH_ROUNDS`` times (3), interleaved; the summary gives the
median and the range. A run during which the hypervisor stole more than
``GRACE_BENCH_STEAL_LIMIT_PCT`` (10%) of the CPUs is run again, at most twice more, keeping the
attempt with the least stolen time. ``GRACE_BENCH_DATABASE_URL`` picks the PostgreSQL server and
how to reach it (the local socket is cheaper than TCP); pgqueuer uses the same. Throughput on
this kind of shared machine varies by a third from run to run, so compare systems within one run
(the ratios), not across runs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import htmkit
from grace.htm import HTM, TaskContext

SUBMIT_BATCH = 500
CONCURRENCY = 64
ROUNDS = int(os.environ.get("GRACE_BENCH_ROUNDS", "3"))
# A run during which the hypervisor stole more than this share of the CPUs is run again (at most
# STEAL_RETRIES more times) and the attempt with the least stolen time is kept: such a run measures
# the neighbours, not this code. Every system gets the same treatment; each run records its attempts.
STEAL_LIMIT_PCT = float(os.environ.get("GRACE_BENCH_STEAL_LIMIT_PCT", "10"))
STEAL_RETRIES = int(os.environ.get("GRACE_BENCH_STEAL_RETRIES", "2"))
ANCHORS = [(1, 3_000), (10, 10_000)]  # pgqueuer: batch size, jobs
RUNS = [  # backend, claim batch, tasks, bus events on
    ("sqlite", 1, 2_000, True),
    ("sqlite", 16, 10_000, True),  # the default claim batch
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
            ticks = htmkit.cpu_ticks()
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
                "machine": htmkit.cpu_share(ticks, htmkit.cpu_ticks()),
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
            ticks = htmkit.cpu_ticks()
            started = time.perf_counter()
            for start in range(0, n, SUBMIT_BATCH):
                size = min(SUBMIT_BATCH, n - start)
                await producer.enqueue(["noop"] * size, [None] * size, [0] * size)
            await asyncio.wait_for(runner, timeout=300)
            elapsed = time.perf_counter() - started
            machine = htmkit.cpu_share(ticks, htmkit.cpu_ticks())
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
            "machine": machine,
        }
    finally:
        await htmkit.drop_postgres(url)


async def least_stolen(run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run ``run``; again while the hypervisor stole over STEAL_LIMIT_PCT; keep the least-stolen attempt."""
    best: dict[str, Any] | None = None
    for attempt in range(1, STEAL_RETRIES + 2):
        r = await run()
        r["attempts"] = attempt
        stolen = (r.get("machine") or {}).get("steal_pct", 0.0)
        if best is None or stolen < (best.get("machine") or {}).get("steal_pct", 0.0):
            best = r
        if stolen <= STEAL_LIMIT_PCT:
            break
    assert best is not None
    return best


def _machine(r: dict[str, Any]) -> str:
    m = r.get("machine")
    tries = f", attempt {r['attempts']}" if r.get("attempts", 1) > 1 else ""
    return f"(CPUs busy {m['busy_pct']}%, stolen {m['steal_pct']}%{tries})" if m else ""


def _key(r: dict[str, Any]) -> str:
    if r["system"] == "pgqueuer":
        return f"pgqueuer_batch{r['claim_batch']}"
    return f"htm_{r['backend']}_batch{r['claim_batch']}{'' if r['events'] else '_no_events'}"


async def run() -> dict[str, Any]:
    # Rounds are interleaved (every configuration once, then again), so a slow stretch of the
    # machine affects every system alike; figures are the median of the rounds.
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(1, ROUNDS + 1):
        for backend, batch, n, events in RUNS:
            r = await least_stolen(lambda: htm_run(backend, batch, n, events))  # noqa: B023 - awaited at once
            runs.setdefault(_key(r), []).append(r)
            print(f"   round {round_}: {_key(r)}: {r['tasks_per_second']}/s {_machine(r)}", flush=True)
        for batch, n in ANCHORS:
            r = await least_stolen(lambda: pgqueuer_run(batch, n))  # noqa: B023 - awaited at once
            runs.setdefault(_key(r), []).append(r)
            print(f"   round {round_}: {_key(r)}: {r['tasks_per_second']}/s {_machine(r)}", flush=True)
    median = {k: round(statistics.median(r["tasks_per_second"] for r in rs)) for k, rs in runs.items()}
    stolen = [r["machine"]["steal_pct"] for rs in runs.values() for r in rs if r.get("machine")]
    summary: dict[str, Any] = {f"{k}_per_s": v for k, v in median.items()}
    summary["range_per_s"] = {
        k: [min(r["tasks_per_second"] for r in rs), max(r["tasks_per_second"] for r in rs)] for k, rs in runs.items()
    }
    if stolen:
        summary["cpu_stolen_pct_median_max"] = [statistics.median(stolen), max(stolen)]
    pq1, pq10 = median["pgqueuer_batch1"], median["pgqueuer_batch10"]
    summary["ratio_htm_pg_batch1_vs_pgqueuer_batch1"] = round(median["htm_postgresql_batch1"] / pq1, 2)
    summary["ratio_htm_pg_batch10_vs_pgqueuer_batch10"] = round(median["htm_postgresql_batch10"] / pq10, 2)
    summary["ratio_htm_pg_batch50_vs_pgqueuer_batch10"] = round(median["htm_postgresql_batch50"] / pq10, 2)
    summary["postgresql_via"] = htmkit.transport()
    return {"summary": summary, "rounds": ROUNDS, "runs": runs, "concurrency": CONCURRENCY}
