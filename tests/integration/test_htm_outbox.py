"""Task events written with the change they describe (PostgreSQL's outbox), and moved into the bus once.

On PostgreSQL, with the bus in the database, every task event is a row of ``htm_outbox`` written in
the transaction (for claims and outcomes, the statement) of its change; a relay in any process moves
the rows into ``events``. These tests show that a worker killed right after an outcome committed
still gets its ``htm.task.completed`` published by another process, that no event is published
twice, that each task's events keep their order, that the events built in SQL are the ones the
Python builds (what subscribers read), and that ``GRACE_HTM_EVENTS=false`` writes none. SQLite has
no outbox (its bus lives in the one process's memory): there the events are published after commit
as before, which the other HTM tests cover.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from grace import jsontext, storage
from grace.bus import Event, PostgresBus
from grace.clock import Clock, ManualClock, SystemClock
from grace.htm import HTM, load_config
from grace.htm import outbox as task_outbox
from grace.htm.outcomes import claimed_event
from grace.htm.queue import Outcome
from grace.htm.tables import htm_outbox, htm_tasks
from grace.htm.tasks import Status
from tests.integration import htm_outbox_crash_child

ROOT = Path(__file__).resolve().parents[2]
TASK_TOPICS = "htm.task.#"


@pytest.fixture
def pg_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("the outbox is PostgreSQL's: on SQLite the bus is in the one process's memory")
    return database_url


@contextlib.asynccontextmanager
async def relayed_htm(url: str, clock: Clock, **overrides: Any) -> AsyncIterator[HTM]:
    """An HTM whose bus is PostgreSQL's, as in ``grace serve`` and ``grace worker`` on PostgreSQL."""
    db = storage.Database(url)
    bus = PostgresBus(db, clock=clock)
    await bus.start()
    htm = HTM(db, bus, clock, load_config(**{"burst_per_minute": 0, **overrides}))
    await htm.prepare()
    try:
        yield htm
    finally:
        await htm.close(grace=0)
        await bus.close()
        await db.dispose()


async def task_events(htm: HTM) -> list[Event]:
    return await htm.bus.replay(TASK_TOPICS, limit=100_000)


async def outbox_rows(htm: HTM) -> int:
    async with htm.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(htm_outbox))).scalar_one())


async def test_the_events_written_in_sql_are_the_ones_the_python_builds(pg_url: str) -> None:
    clock = ManualClock()
    async with relayed_htm(pg_url, clock) as htm:
        worker = "payload-worker"
        requests = [
            htm.request("htm.noop", origin="intent", sla_ms=5000, intent_id="intent-1"),
            htm.request("htm.noop", origin="intent", max_attempts=1),
            htm.request("htm.noop", origin="intent", max_attempts=3, sla_ms=1000),
            htm.request("htm.noop", origin="intent"),
        ]
        submitted = await htm.submit_many(requests, creator=None)
        expected: list[tuple[str, dict[str, Any]]] = []
        async with htm.db.read() as conn:
            rows = (await conn.execute(select(htm_tasks).order_by(htm_tasks.c.seq))).mappings().all()
        for row, sub in zip(rows, submitted, strict=True):
            expected.append(
                (
                    "htm.task.created",
                    {
                        "task_id": sub.task_id,
                        "task_type": row["task_type"],
                        "priority": row["priority"],
                        "origin": row["origin"],
                        "origin_rule": row["origin_rule"],
                        "status": sub.status.value,
                        "route": sub.decision.route,
                        "delay_seconds": sub.decision.delay_seconds,
                        "intent_id": row["intent_id"],
                        "created_by": row["created_by_name"],
                        "data_size_bytes": row["data_size_bytes"],
                        "sla_ms": row["sla_ms"],
                    },
                )
            )

        def exchanged(done: Any) -> None:
            expected.extend((task_outbox.topic_of(f), f.event()) for f in done.recorded)
            expected.extend(("htm.task.update", claimed_event(worker, t)) for t in done.claimed)

        clock.advance(0.123457)
        done = await htm.queue.finish_and_claim(worker, [], 4, fallback_capacity=4)
        exchanged(done)
        a, b, c, d = sorted(done.claimed, key=lambda t: [s.task_id for s in submitted].index(t.task_id))
        clock.advance(1.5)  # a finishes late for nothing: its SLA is 5 s (sla_met true); c's 1 s is past
        outcomes = [
            Outcome(a.task_id, a.attempts, Status.COMPLETED, clock.now(), result={"ok": 1}),
            Outcome(b.task_id, b.attempts, Status.FAILED, clock.now(), error="it broke"),
            # A retry at a whole second: its queued_at has no fraction in Python's isoformat.
            Outcome(
                c.task_id,
                c.attempts,
                Status.DELAYED,
                clock.now(),
                error="try again",
                retry_at=clock.now().replace(microsecond=0) + timedelta(seconds=3),
            ),
            Outcome(d.task_id, d.attempts, Status.QUEUED, clock.now()),  # released unused
        ]
        # The release hands d back and the claim in the same statement takes it again.
        exchanged(await htm.queue.finish_and_claim(worker, outcomes, 1, fallback_capacity=4))
        clock.advance(0.25)
        again = await htm.queue.claim(worker, 1, fallback_capacity=4)  # d, unless the exchange took it
        assert [t.task_id for t in again] in ([], [d.task_id])
        expected.extend(("htm.task.update", claimed_event(worker, t)) for t in again)
        # The cancel and the reap write theirs in their own transactions.
        cancelled = await htm.cancel(c.task_id, principal=None)  # while it waits for its retry
        assert cancelled.status is Status.CANCELLED
        expected.append(("htm.task.update", (await _finished(htm, c.task_id)).event()))
        clock.advance(htm.config.lease_seconds + 1)
        reaped = await htm.reap()
        expected.extend((task_outbox.topic_of(f), f.event()) for f in reaped)
        assert reaped, "d's lease should have expired"

        await htm.events.drain()
        published = [(e.topic, e.payload) for e in await task_events(htm)]
        assert await outbox_rows(htm) == 0

    by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for topic, payload in expected:
        by_task.setdefault(payload["task_id"], []).append((topic, payload))
    got: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for topic, payload in published:
        got.setdefault(payload["task_id"], []).append((topic, payload))
    assert got == by_task
    # What the SQL adds or leaves out, as Finished.event does:
    [completed] = [p for t, p in published if t == "htm.task.completed"]
    assert completed["sla_met"] is True and completed["duration_ms"] == 1500.0 and "error" not in completed
    [failed] = [p for t, p in published if t == "htm.task.failed"]
    assert failed["error"] == "it broke" and "sla_met" not in failed
    [retry] = [p for t, p in published if t == "htm.task.update" and p["status"] == "delayed"]
    assert retry["queued_at"].endswith("+00:00") and "." not in retry["queued_at"]


async def _finished(htm: HTM, task_id: str) -> Any:
    from grace.htm.attempts import SUMMARY, Finished

    async with htm.db.read() as conn:
        row = (await conn.execute(select(*SUMMARY).where(htm_tasks.c.task_id == task_id))).mappings().one()
    return Finished.from_row(row)


async def test_a_worker_killed_right_after_its_outcome_committed_still_gets_its_completed_event_once(
    pg_url: str,
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.htm_outbox_crash_child",
        pg_url,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])},
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=300)
    assert child.returncode == htm_outbox_crash_child.EXIT_CODE, (child.returncode, err.decode()[-2000:])
    [task_id] = out.decode().split()

    async with relayed_htm(pg_url, SystemClock()) as htm:
        # The dead worker published nothing after the outcome's commit: its event waits in the outbox.
        async with htm.db.read() as conn:
            waiting = (await conn.execute(select(htm_outbox.c.topic, htm_outbox.c.payload))).all()
            status = (await conn.execute(select(htm_tasks.c.status).where(htm_tasks.c.task_id == task_id))).scalar()
        assert status == "completed"
        assert ("htm.task.completed", task_id) in [(t, jsontext.loads(p)["task_id"]) for t, p in waiting]
        assert not [e for e in await htm.bus.replay("htm.task.completed") if e.payload["task_id"] == task_id]

        # Another process's relay (its periodic sweep: nothing woke it) publishes it.
        async with htm.bus.subscribe("htm.task.completed", since=0) as sub:
            htm.events.start()
            event = await sub.get(timeout=60)
        assert event is not None and event.payload["task_id"] == task_id
        await htm.events.drain()

        mine = [e for e in await task_events(htm) if e.payload["task_id"] == task_id]
        assert [(e.topic, e.payload["status"]) for e in mine] == [
            ("htm.task.created", "queued"),
            ("htm.task.update", "running"),
            ("htm.task.completed", "completed"),
        ]
        assert mine[2].payload["duration_ms"] >= 0 and mine[1].payload["worker_id"] == "crash-worker"
        assert await outbox_rows(htm) == 0


async def test_relays_running_at_once_publish_each_event_once_in_the_order_written(pg_url: str) -> None:
    db = storage.Database(pg_url)
    buses = [PostgresBus(db), PostgresBus(db)]
    try:
        written = [("htm.task.update", {"task_id": f"task-{i // 3}", "n": i}) for i in range(3000)]
        async with db.write() as conn:
            await conn.execute(insert(htm_outbox), [{"topic": t, "payload": jsontext.dumps(p)} for t, p in written])

        async def drain(bus: PostgresBus) -> int:
            moved = 0
            while n := await bus.relay(htm_outbox.name, limit=100):
                moved += n
                await asyncio.sleep(0)
            return moved

        moved = await asyncio.gather(*(drain(b) for b in buses), drain(buses[0]), drain(buses[1]))
        assert sum(moved) == len(written)
        events = await buses[0].replay(TASK_TOPICS, limit=10_000)
        assert [e.payload["n"] for e in events] == list(range(3000))  # once each, in the order written
    finally:
        for bus in buses:
            await bus.close()
        await db.dispose()


async def test_with_task_events_off_no_outbox_row_is_written_and_none_published(pg_url: str) -> None:
    async with relayed_htm(pg_url, ManualClock(), events=False) as htm:
        [task_id] = [s.task_id for s in await htm.submit_many([htm.request("htm.noop")], creator=None)]
        [task] = await htm.queue.claim("off-worker", 1, fallback_capacity=1)
        await htm.recorder.record(
            "off-worker", [Outcome(task_id, task.attempts, Status.COMPLETED, htm.clock.now())], claim=0
        )
        await htm.events.drain()
        assert await outbox_rows(htm) == 0
        assert await task_events(htm) == []


async def test_the_tidy_vacuums_the_emptied_outbox_without_giving_its_pages_back(pg_url: str) -> None:
    # Giving the emptied pages back needs the outbox's exclusive lock: the tidy's vacuum waited up to
    # 5 s for it (holding up the worker's heartbeats and reaps, run by the same loop) and, holding
    # it, every claim, outcome and submission writing an event.
    async with relayed_htm(pg_url, ManualClock()) as htm:
        rows = [{"topic": "htm.task.update", "payload": jsontext.dumps({"n": i})} for i in range(3000)]
        async with htm.db.write() as conn:
            await conn.execute(insert(htm_outbox), rows)
        assert isinstance(htm.bus, PostgresBus)
        while await htm.bus.relay(htm_outbox.name, limit=1000):
            pass
        assert await outbox_rows(htm) == 0

        async def pages() -> int:
            async with htm.db.read() as conn:
                return int((await conn.execute(select(func.pg_relation_size("htm_outbox")))).scalar_one())

        before = await pages()
        await htm.queue.tidy()
        assert before > 0
        assert await pages() == before
