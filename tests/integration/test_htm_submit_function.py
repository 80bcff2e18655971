"""PostgreSQL routes and inserts a group of submissions in one statement (``htm_submit``), deciding
exactly as the Python router does (``grace/htm/routing.py``, which SQLite runs).

Each scenario is random but seeded: running, queued and recently admitted tasks of every origin,
live workers or a configured capacity, burst limits small enough to delay and capacity full enough to
defer, then groups of tasks of every origin and priority. The same groups are routed on the same
database state twice, once by the Python router and once by ``htm_submit``, each in a transaction
that is rolled back: the decisions, the rows and the ``htm.task.created`` events must be equal. And a
group of single submissions is one statement sent to the server, with no transaction around it, so
the routing locks are held only while PostgreSQL runs it, never across a round trip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import jsontext, storage
from grace.auth import Principal, Role
from grace.bus import InProcessBus, PostgresBus
from grace.clock import ManualClock
from grace.htm import HTM, load_config, postgres_queue
from grace.htm.origins import ORDER, Origin
from grace.htm.submission import Submitter
from grace.htm.tables import htm_outbox, htm_tasks, htm_workers
from grace.htm.tasks import Priority, TaskRequest

T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
AGENT = Principal("user_ops", "ops", Role.OPERATOR, agent="hunter")
ADMIN = Principal("user_admin", "admin", Role.ADMIN)


@pytest.fixture
def pg_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("htm_submit is PostgreSQL's: SQLite routes in Python, in its one writing process")
    return database_url


def _state_rows(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """Tasks already there: running ones, queued ones, and admissions inside the burst windows."""
    rows: list[dict[str, Any]] = []
    for origin in ORDER:
        running = rng.choice([0, 0, 1, 2, 3, 5])
        queued = rng.choice([0, 0, 1, 4])
        recent = rng.choice([0, 1, 3, 6])
        kinds = ["running"] * running + ["queued"] * queued + ["completed"] * recent
        for kind in kinds:
            # Admitted between 70 s ago and 20 s ahead (a delayed task's slot), to the microsecond.
            at = now + timedelta(microseconds=rng.randrange(-70_000_000, 20_000_000))
            rows.append(
                {
                    "task_id": f"task_{len(rows):05d}_{origin.value}"[:40],
                    "task_type": "htm.noop",
                    "priority": "normal",
                    "priority_rank": 2,
                    "origin": origin.value,
                    "origin_rule": "explicit",
                    "payload": {},
                    "data_size_bytes": 2,
                    "created_by_name": "grace",
                    "status": kind,
                    "route": "accepted",
                    "route_reason": "state",
                    "attempts": 1 if kind != "queued" else 0,
                    "max_attempts": 3,
                    "timeout_seconds": 30.0,
                    "created_at": at,
                    "admitted_at": at,
                    "queued_at": at,
                    "lease_expires_at": now + timedelta(seconds=30) if kind == "running" else None,
                    "worker_id": "w-state" if kind == "running" else None,
                }
            )
    return rows


def _requests(rng: random.Random, submitter: Submitter, n: int) -> tuple[list[TaskRequest], list[Principal | None]]:
    requests, creators = [], []
    for i in range(n):
        origin = rng.choice([o for o in ORDER if o is not Origin.INTERNAL])
        priority = rng.choice(list(Priority))
        fields: dict[str, Any] = {"origin": origin.value, "priority": priority.value, "payload": {"i": i}}
        if rng.random() < 0.3:
            fields["sla_ms"] = rng.choice([250, 1_000, 60_000])
        if rng.random() < 0.2:
            fields["intent_id"] = f"intent-{i}"
        if rng.random() < 0.2:
            fields.pop("origin")  # tagged by its creator or intent instead
        requests.append(submitter.request("htm.noop", **fields))
        creators.append(rng.choice([None, ADMIN, AGENT]) if "origin" in fields else rng.choice([None, AGENT]))
    return requests, creators


async def _route(
    conn: AsyncConnection, submitter: Submitter, groups: list[tuple[list[TaskRequest], list[Principal | None]]]
) -> list[Any]:
    """Route the groups one after another in ``conn``'s transaction (from T0); return what a user could see."""
    clock = ManualClock(T0)
    submitter = dataclasses.replace(submitter, clock=clock)
    seen: list[Any] = []
    for requests, creators in groups:
        enqueued = await submitter.enqueue_in(conn, requests, creator=None, creators=creators)
        ids = [s.task_id for s in enqueued.submitted]
        rows = {
            r["task_id"]: dict(r)
            for r in (await conn.execute(select(htm_tasks).where(htm_tasks.c.task_id.in_(ids)))).mappings()
        }
        for sub in enqueued.submitted:
            row = rows[sub.task_id]
            row.pop("seq")
            row.pop("task_id")
            seen.append((dataclasses.astuple(sub)[1:], sub.decision.as_dict(), row))
        clock.advance(0.4321)  # the next group a little later
    events = (await conn.execute(select(htm_outbox.c.topic, htm_outbox.c.payload).order_by(htm_outbox.c.id))).all()
    for topic, payload in events:
        parsed = jsontext.loads(payload)
        parsed.pop("task_id")
        seen.append((topic, parsed))
    return seen


async def test_htm_submit_decides_writes_and_announces_as_the_python_router_does(pg_url: str) -> None:
    clock = ManualClock(T0)
    db = storage.Database(pg_url)
    bus = PostgresBus(db, clock=clock)
    scenarios = 0
    routes: set[str] = set()
    try:
        for seed in range(24):
            rng = random.Random(seed)
            config = load_config(
                burst_per_minute=rng.choice([0, 4, 8, 600]),
                burst_overrides={o: rng.choice([1, 2, 3, 5]) for o in rng.sample(ORDER, 3)},
                capacity=rng.choice([0, 0, 4, 8, 30]),
                defer_seconds=rng.choice([5.0, 2.5, 0.75]),
            )
            htm = HTM(db, bus, clock, config)
            await htm.prepare()
            in_sql = htm.submitter
            assert in_sql.in_database and htm.queue.outbox
            in_python = dataclasses.replace(in_sql, in_database=False)
            groups = [_requests(rng, in_sql, rng.choice([1, 5, 30])) for _ in range(3)]
            async with db.engine.connect() as conn:
                setup = await conn.begin()
                await conn.execute(insert(htm_tasks), _state_rows(rng, clock.now()))
                if rng.random() < 0.7:  # live workers, else the fallback capacity
                    await conn.execute(
                        insert(htm_workers),
                        [
                            {
                                "worker_id": "w-state",
                                "host": "h",
                                "pid": 1,
                                "concurrency": rng.choice([2, 6, 12]),
                                "task_types": [],
                                "started_at": clock.now(),
                                "heartbeat_at": clock.now(),
                                "stopping": False,
                            }
                        ],
                    )
                savepoint = await conn.begin_nested()
                expected = await _route(conn, in_python, groups)
                await savepoint.rollback()
                savepoint = await conn.begin_nested()
                got = await _route(conn, in_sql, groups)
                await savepoint.rollback()
                await setup.rollback()
            assert got == expected, f"seed {seed}"
            routes.update(item[1]["route"] for item in expected if isinstance(item[1], dict) and "route" in item[1])
            scenarios += 1
            await htm.close(grace=0)
    finally:
        await bus.close()
        await db.dispose()
    assert scenarios == 24
    assert routes == {"accepted", "delayed", "deferred"}, "the scenarios should reach every route"


async def test_a_group_of_single_submissions_is_one_statement_outside_any_transaction(pg_url: str) -> None:
    clock = ManualClock(T0)
    db = storage.Database(pg_url)
    sent: list[str] = []

    def log_queries(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda q: sent.append(q.query))

    event.listen(db.engine.sync_engine, "connect", log_queries)
    bus = InProcessBus(clock=clock)  # nothing else sends statements meanwhile (no relay, no workers)
    htm = HTM(db, bus, clock, load_config(burst_per_minute=600))
    try:
        await htm.prepare()
        await htm.submit(htm.request("htm.noop", origin="intent"), creator=ADMIN)  # warm: schema, origins
        sent.clear()
        answers = await asyncio.gather(
            *(htm.submit(htm.request("htm.noop", origin=o), creator=ADMIN) for o in ("intent", "scheduler") * 10)
        )
        # Twenty submissions of two origins: one statement (no BEGIN, lock, load or COMMIT of its own).
        assert sent == [postgres_queue.SUBMIT]
        assert {a.decision.route for a in answers} == {"accepted"} and len({a.task_id for a in answers}) == 20
        async with db.read() as conn:  # and no routing lock outlives it
            held = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
            assert held.scalar() == 0
    finally:
        await htm.close(grace=0)
        await bus.close()
        await db.dispose()


async def test_a_burst_of_batches_leaves_the_pool_to_everyone_else(pg_url: str) -> None:
    # Each batch without an idempotency key is one call on an autocommit connection, one per request at
    # once. Every such connection used to be kept, checked out of the pool, once the burst was over:
    # twelve batches at once left a pool of 4 (and 4 more) none, and every other read waited for one
    # until it timed out.
    clock = ManualClock(T0)
    db = storage.Database(pg_url, pool_size=4)
    bus = InProcessBus(clock=clock)
    htm = HTM(db, bus, clock, load_config(burst_per_minute=0))
    try:
        await htm.prepare()
        gate = asyncio.Event()
        entered = 0

        async def hold() -> None:  # as many autocommit users at once as the pool's size lets in
            nonlocal entered
            async with db.autocommit_driver():
                entered += 1
                if entered == 4:
                    gate.set()
                await gate.wait()

        await asyncio.gather(*(hold() for _ in range(4)))
        batches = await asyncio.gather(
            *(htm.submit_many([htm.request("htm.noop", origin="intent")] * 5, creator=ADMIN) for _ in range(12))
        )
        assert sum(len(b) for b in batches) == 60

        async def read() -> int:
            async with db.read() as conn:
                await asyncio.sleep(0)
                return int((await conn.execute(text("SELECT count(*) FROM htm_tasks"))).scalar_one())

        assert await asyncio.gather(*(read() for _ in range(6))) == [60] * 6  # six at once: the pool has room
    finally:
        await htm.close(grace=0)
        await bus.close()
        await db.dispose()
