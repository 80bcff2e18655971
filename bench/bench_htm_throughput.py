"""No-op throughput end to end (submit -> claim -> run -> complete), HTM vs pgqueuer.

For each backend and claim batch size: a producer submits N no-op tasks in batches of 500 while
one worker pool (concurrency 64, or room for two claim batches if more: 100 at batch 50, the same for
pgqueuer) runs them; the figure is N / (time from the first submit to the
last recorded completion). pgqueuer runs the same shape on the same PostgreSQL server (its own
fresh database): batched enqueue while a QueueManager with ``batch_size`` 1, 10 or 50 drains it.
HTM on PostgreSQL and pgqueuer run at the same claim batch sizes, each pair back to back, and the
summary gives HTM's ratio at each size. Events (htm.task.created/update/completed) are published
as in production, and fairness is on (tasks come from four origins). SQLite runs with
``synchronous=FULL`` (Grace's setting) and, for the same batch sizes, ``NORMAL``: the difference
is what flushing each acknowledged commit costs. The load average before and after is recorded
(the machine is shared).

``GRACE_BENCH_SET=outbox`` runs HTM on PostgreSQL as in production (task events written with their
changes into the outbox, moved into the bus by the relay) beside the same HTM publishing them after
commit (``htm_after_commit``, as before the outbox) and pgqueuer, interleaved: what the outbox costs,
as ratios to the same pgqueuer figures.

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
from grace import storage
from grace.htm import HTM, TaskContext
from grace.storage.migrate import revision_module

SUBMIT_BATCH = 500
CONCURRENCY = 64
ROUNDS = int(os.environ.get("GRACE_BENCH_ROUNDS", "3"))
# A run during which the hypervisor stole more than this share of the CPUs is run again (at most
# STEAL_RETRIES more times) and the attempt with the least stolen time is kept: such a run measures
# the neighbours, not this code. Every system gets the same treatment; each run records its attempts.
STEAL_LIMIT_PCT = float(os.environ.get("GRACE_BENCH_STEAL_LIMIT_PCT", "10"))
STEAL_RETRIES = int(os.environ.get("GRACE_BENCH_STEAL_RETRIES", "2"))
# What one round runs, in order: (system, backend, claim batch, tasks, bus events on, SQLite synchronous).
# HTM on PostgreSQL and pgqueuer alternate at each batch size. GRACE_BENCH_SET picks "all",
# "equal" (the PostgreSQL pairs only) or "sqlite".
EQUAL = [
    ("htm", "postgresql", 1, 4_000, True, ""),
    ("pgqueuer", "postgresql", 1, 3_000, True, ""),
    ("htm", "postgresql", 10, 10_000, True, ""),
    ("pgqueuer", "postgresql", 10, 10_000, True, ""),
    ("htm", "postgresql", 50, 10_000, True, ""),
    ("pgqueuer", "postgresql", 50, 10_000, True, ""),
]
SQLITE = [
    ("htm", "sqlite", 1, 2_000, True, "FULL"),
    ("htm", "sqlite", 1, 2_000, True, "NORMAL"),
    ("htm", "sqlite", 16, 10_000, True, "FULL"),  # the default claim batch
    ("htm", "sqlite", 16, 10_000, True, "NORMAL"),
    ("htm", "sqlite", 50, 10_000, True, "FULL"),
]
# "order": HTM on PostgreSQL with the claim order within an origin of migration 0016 (priority, deadline,
# age) beside the one before it (priority, age: "htm_age_order") and pgqueuer, interleaved, so what the
# deadline order costs is measured in one run against the same pgqueuer figures.
ORDER = [
    (system, "postgresql", batch, n, True, "")
    for batch, n in ((1, 3_000), (10, 10_000), (50, 10_000))
    for system in ("htm", "htm_age_order", "pgqueuer")
]
# "outbox": HTM on PostgreSQL with its task events written with their changes (the outbox, as in
# production) beside the same HTM publishing them after commit ("htm_after_commit", as before the
# outbox) and pgqueuer, interleaved, so what the outbox costs is measured in one run.
OUTBOX = [
    (system, "postgresql", batch, n, True, "")
    for batch, n in ((1, 3_000), (10, 10_000), (50, 10_000))
    for system in ("htm", "htm_after_commit", "pgqueuer")
]
SETS = {"all": EQUAL + SQLITE, "equal": EQUAL, "sqlite": SQLITE, "order": ORDER, "outbox": OUTBOX}


def concurrency(batch: int) -> int:
    """Return how many tasks may run at once at claim batch ``batch``: the same for both systems.

    Room for two batches in flight (so a worker claims while the last batch finishes), at least 64.
    """
    return max(CONCURRENCY, 2 * batch)


async def htm_run(
    backend: str, batch: int, n: int, events: bool, *, age_order: bool = False, outbox: bool = True
) -> dict[str, Any]:
    url = await htmkit.fresh(backend, f"tp_{batch}")
    try:
        async with htmkit.open_htm(
            url, concurrency=concurrency(batch), claim_batch=batch, poll_seconds=0.05, events=events, outbox=outbox
        ) as htm:
            if age_order:
                await age_order_claims(htm)
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
                "system": "htm_age_order" if age_order else ("htm" if outbox else "htm_after_commit"),
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


async def age_order_claims(htm: HTM) -> None:
    """Put back the claim order of before migration 0016 (PostgreSQL): its claim index and function."""
    new = revision_module("0016_htm_deadline_order")
    old_function = revision_module("0007_htm_single_claim").CLAIM_FUNCTION
    async with htm.db.write() as conn:
        for statement in ("DROP INDEX ix_htm_tasks_claim", new.OLD_CLAIM_INDEX, old_function):
            await conn.exec_driver_sql(statement)


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

            runner = asyncio.create_task(qm.run(batch_size=batch, max_concurrent_tasks=concurrency(batch)))
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
    if r["system"] == "htm_age_order":
        return f"htm_{r['backend']}_batch{r['claim_batch']}_age_order"
    if r["system"] == "htm_after_commit":
        return f"htm_{r['backend']}_batch{r['claim_batch']}_after_commit"
    sync = "_sync_normal" if r.get("synchronous") == "NORMAL" else ""
    return f"htm_{r['backend']}_batch{r['claim_batch']}{'' if r['events'] else '_no_events'}{sync}"


async def one(system: str, backend: str, batch: int, n: int, events: bool, sync: str) -> dict[str, Any]:
    if system == "pgqueuer":
        return await pgqueuer_run(batch, n)
    if system == "htm_age_order":
        return await htm_run(backend, batch, n, events, age_order=True)
    if system == "htm_after_commit":
        return await htm_run(backend, batch, n, events, outbox=False)
    storage.database.SQLITE_SYNCHRONOUS = sync or "FULL"
    try:
        r = await htm_run(backend, batch, n, events)
    finally:
        storage.database.SQLITE_SYNCHRONOUS = "FULL"
    if backend == "sqlite":
        r["synchronous"] = sync
    return r


async def run() -> dict[str, Any]:
    # Rounds are interleaved (every configuration once, then again), so a slow stretch of the
    # machine affects every system alike; figures are the median of the rounds.
    plan = SETS[os.environ.get("GRACE_BENCH_SET", "all")]
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(1, ROUNDS + 1):
        for config in plan:
            r = await least_stolen(lambda: one(*config))  # noqa: B023 - awaited at once
            r["load_average"] = [round(x, 2) for x in os.getloadavg()]
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
    for batch in (1, 10, 50):  # HTM against pgqueuer at the same claim batch size
        htm_, pgq = median.get(f"htm_postgresql_batch{batch}"), median.get(f"pgqueuer_batch{batch}")
        if htm_ and pgq:
            summary[f"ratio_htm_pg_vs_pgqueuer_batch{batch}"] = round(htm_ / pgq, 2)
        aged = median.get(f"htm_postgresql_batch{batch}_age_order")
        if aged and pgq:
            summary[f"ratio_htm_pg_age_order_vs_pgqueuer_batch{batch}"] = round(aged / pgq, 2)
        after = median.get(f"htm_postgresql_batch{batch}_after_commit")
        if after and pgq:
            summary[f"ratio_htm_pg_after_commit_vs_pgqueuer_batch{batch}"] = round(after / pgq, 2)
    for batch in (1, 16):  # what synchronous=FULL costs on SQLite
        full, normal = median.get(f"htm_sqlite_batch{batch}"), median.get(f"htm_sqlite_batch{batch}_sync_normal")
        if full and normal:
            summary[f"sqlite_batch{batch}_full_vs_normal"] = round(full / normal, 2)
    summary["load_average_before_after"] = [[round(x, 2) for x in load_before], [round(x, 2) for x in os.getloadavg()]]
    summary["machine_note"] = f"{os.cpu_count()} CPUs shared with other agents' work; compare within one run"
    summary["postgresql_via"] = htmkit.transport()
    return {"summary": summary, "rounds": ROUNDS, "runs": runs, "concurrency": CONCURRENCY}
