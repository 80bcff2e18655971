"""The durable queue on SQLite and PostgreSQL: fair claims, leases, retries, timeouts, cancel, late completions."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, storage
from grace.bus import InProcessBus, PostgresBus
from grace.clock import ManualClock
from grace.htm import HTM, Status, TaskContext, fairness, load_config, origins
from grace.htm.events import COMPLETED, UPDATE, EventPublisher
from grace.htm.origins import ORDER, Origin
from grace.htm.queue import Outcome
from grace.htm.queue_backend import liveness_lock
from grace.htm.workers import WorkerPool
from tests.backends import advisory_holder
from tests.htmkit import Gate, manual_htm, settle, submit


async def test_claims_follow_the_reference_fair_pick_on_every_backend(database_url: str, clock: ManualClock) -> None:
    counts = {Origin.USER_REQUEST: 40, Origin.HUNTER_ALERT: 30, Origin.REMEDIATION: 20, Origin.INTERNAL: 20}
    async with manual_htm(database_url, clock, capacity=1000) as htm:
        got, expected = await _claims_and_reference(htm, counts, (1, 1, 1, 5, 1, 7, 10, 2, 1, 22), capacity=1000)
        assert got == expected
        assert len(got) == 51 and got.count("internal") >= 1


@pytest.mark.parametrize("sizes", [(1,) * 46, (1, 3, 1, 1, 5, 1, 2, 1, 1, 4, 1, 1, 1, 6) + (1,) * 17])
async def test_single_task_claims_follow_the_reference_fair_pick_with_binding_quotas(
    database_url: str, clock: ManualClock, sizes: tuple[int, ...]
) -> None:
    # Claims of one task take their own path on PostgreSQL (one statement, no loop); with a
    # capacity of 10 the quotas bind, so the under-quota rule and lending both decide picks.
    counts = {Origin.USER_REQUEST: 20, Origin.INTENT: 12, Origin.SCHEDULER: 8, Origin.INTERNAL: 6}
    async with manual_htm(database_url, clock, capacity=10) as htm:
        got, expected = await _claims_and_reference(htm, counts, sizes, capacity=10)
        assert got == expected
        assert len(got) == sum(counts.values()) and set(got) == {o.value for o in counts}


async def _claims_and_reference(
    htm: HTM, counts: dict[Origin, int], sizes: tuple[int, ...], *, capacity: int
) -> tuple[list[str], list[str]]:
    """Submit ``counts``, claim in ``sizes``; return the origins claimed, and the pure reference's
    picks (grace.htm.fairness) from the same state."""
    for origin, n in counts.items():
        await submit(htm, origin, n)
    got: list[str] = []
    for size in sizes:
        got += [t.origin.value for t in await htm.queue.claim("w1", size, fallback_capacity=1)]
    weights = htm.weights
    total = sum(weights.values())
    slots = [
        fairness.OriginSlot(
            o.position, weights[o], ready=counts.get(o, 0), quota=origins.max_concurrent(weights[o], total, capacity)
        )
        for o in ORDER
    ]
    return got, [ORDER[i].value for i in fairness.pick(slots, len(got), 0)]


async def test_a_claim_that_finds_nothing_writes_nothing(database_url: str, clock: ManualClock) -> None:
    # Idle workers poll: on either backend a claim with nothing to take leaves the database as it
    # was (no new row versions on PostgreSQL, no commit another connection sees on SQLite).
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.INTENT)
        assert [t.task_id for t in await htm.queue.claim("w1", 1, fallback_capacity=4)] == [task_id]
        with _Writes(htm) as writes:
            before = await writes.mark()
            for n in (1, 5):
                assert await htm.queue.claim("w1", n, fallback_capacity=4) == []
            assert await writes.mark() == before
            await submit(htm, Origin.INTENT)
            after_submit = await writes.mark()
            assert after_submit != before  # the marks do see a write
            assert len(await htm.queue.claim("w1", 1, fallback_capacity=4)) == 1
            assert await writes.mark() != after_submit


class _Writes:
    """Marks that change when something is written: row versions on PostgreSQL, SQLite's data_version."""

    def __init__(self, htm: HTM) -> None:
        self.htm = htm
        self.other: sqlite3.Connection | None = None

    def __enter__(self) -> _Writes:
        if self.htm.db.is_sqlite:
            path = make_url(self.htm.db.url).database
            assert path is not None
            # data_version, read on one connection, changes when another connection commits a change.
            self.other = sqlite3.connect(path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.other is not None:
            self.other.close()

    async def mark(self) -> object:
        if self.other is not None:
            return self.other.execute("PRAGMA data_version").fetchone()[0]
        async with self.htm.db.read() as conn:
            rows = await conn.execute(
                text(
                    "SELECT xmin::text FROM htm_scheduler UNION ALL SELECT xmin::text FROM htm_origins "
                    "UNION ALL SELECT count(*)::text FROM htm_tasks"
                )
            )
            return sorted(r[0] for r in rows)


async def test_claims_and_outcomes_are_never_compiled_by_jit(database_url: str, clock: ManualClock) -> None:
    # The claim functions run with sequential scans off, which makes every plan's estimated cost
    # huge; with JIT on, PostgreSQL then compiled each statement (about a second a time) for work
    # that takes a fraction of a millisecond. Here JIT would compile anything at all
    # (jit_above_cost = 0), and auto_explain reports every statement the functions run.
    if not database_url.startswith("postgresql"):
        pytest.skip("JIT compilation is PostgreSQL's")
    async with manual_htm(database_url, clock, capacity=100) as htm:
        reports: list[str] = []
        async with htm.db.autocommit_driver() as conn:  # the connection the queue's calls reuse
            if not await conn.fetchval("SELECT pg_jit_available()"):
                pytest.skip("this PostgreSQL server has no JIT")
            conn.add_log_listener(lambda _conn, message: reports.append(message.message))
            try:
                await conn.execute("LOAD 'auto_explain'")
            except asyncpg.InsufficientPrivilegeError:
                pytest.skip("loading auto_explain needs a superuser")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_nested_statements = on",
                "auto_explain.log_analyze = on",
                "jit_above_cost = 0",
                "client_min_messages = log",
            ):
                await conn.execute(f"SET {setting}")
        await submit(htm, Origin.INTENT, 3)
        [one] = await htm.queue.claim("w1", 1, fallback_capacity=10)
        assert len(await htm.queue.claim("w1", 2, fallback_capacity=10)) == 2
        await submit(htm, Origin.SCHEDULER, 2)
        done = await htm.queue.finish_and_claim(
            "w1", [Outcome(one.task_id, one.attempts, Status.COMPLETED, clock.now())], 1, fallback_capacity=10
        )
        assert len(done.recorded) == 1 and len(done.claimed) == 1
        await asyncio.sleep(0.05)  # let the last notices arrive
        # The statements inside the functions (the calls themselves run under the session's settings).
        inside = [
            r
            for r in reports
            if "plan:" in r
            and "htm_" in r
            and not any(f"{name}($1" in r for name in ("FROM htm_claim", "htm_finish_claim", "FROM htm_submit"))
        ]
        assert len(inside) >= 8
        assert not [p for p in inside if "JIT:" in p]


async def test_within_an_origin_priority_then_age(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        low = await submit(htm, Origin.SCHEDULER, priority="low")
        normal = await submit(htm, Origin.SCHEDULER, 2)
        critical = await submit(htm, Origin.SCHEDULER, priority="critical")
        claimed = [t.task_id for t in await htm.queue.claim("w1", 4, fallback_capacity=4)]
        assert claimed == critical + normal + low


@pytest.mark.parametrize("sizes", [(7,), (1,) * 7, (2, 1, 4)])
async def test_within_an_origin_earliest_deadline_after_priority(
    database_url: str, clock: ManualClock, sizes: tuple[int, ...]
) -> None:
    # Deadlines out of submission order (deadline = submission time on the injected clock + sla_ms):
    # at one priority the earliest deadline goes first, tasks without a deadline after all that have
    # one (oldest first), and a higher priority still goes before any deadline.
    async with manual_htm(database_url, clock) as htm:
        none = await submit(htm, Origin.SCHEDULER)  # no deadline
        at_60 = await submit(htm, Origin.SCHEDULER, sla_ms=60_000)  # t0 + 60 s
        low_soon = await submit(htm, Origin.SCHEDULER, priority="low", sla_ms=1_000)  # t0 + 1 s, but low
        clock.advance(5)
        at_15 = await submit(htm, Origin.SCHEDULER, sla_ms=10_000)  # t5 + 10 s
        at_65 = await submit(htm, Origin.SCHEDULER, sla_ms=60_000)  # t5 + 60 s: after the t0 + 60 s one
        at_35 = await submit(htm, Origin.SCHEDULER, sla_ms=30_000)
        high_none = await submit(htm, Origin.SCHEDULER, priority="high")  # no deadline, but high
        claimed: list[str] = []
        for size in sizes:
            claimed += [t.task_id for t in await htm.queue.claim("w1", size, fallback_capacity=7)]
        assert claimed == high_none + at_15 + at_35 + at_60 + at_65 + none + low_soon
        deadlines = []
        for task_id in at_15 + at_35 + at_60 + at_65:
            deadline = (await htm.get(task_id, principal=None)).deadline
            assert deadline is not None
            deadlines.append(deadline)
        assert deadlines == sorted(deadlines)


@pytest.mark.parametrize("sizes", [(1,) * 30, (3, 1, 5, 1, 2, 7, 1, 10)])
async def test_deadlines_change_the_order_within_an_origin_but_not_the_fair_pick_between_origins(
    database_url: str, clock: ManualClock, sizes: tuple[int, ...]
) -> None:
    counts = {Origin.USER_REQUEST: 12, Origin.INTENT: 10, Origin.SCHEDULER: 8}
    async with manual_htm(database_url, clock, capacity=10) as htm:
        # The intent origin's tasks carry deadlines in the reverse of their submission order (and two
        # none); the others have none. The origins are picked as the reference fair pick says.
        submitted: dict[str, list[str]] = {}
        for origin, n in counts.items():
            for i in range(n):
                sla = None if origin is not Origin.INTENT or i < 2 else 1000 * (100 - i)
                submitted.setdefault(origin.value, []).extend(await submit(htm, origin, sla_ms=sla))
        got: list[tuple[str, str]] = []
        for size in sizes:
            got += [(t.origin.value, t.task_id) for t in await htm.queue.claim("w1", size, fallback_capacity=1)]
        weights = htm.weights
        total = sum(weights.values())
        slots = [
            fairness.OriginSlot(
                o.position, weights[o], ready=counts.get(o, 0), quota=origins.max_concurrent(weights[o], total, 10)
            )
            for o in ORDER
        ]
        assert [o for o, _ in got] == [ORDER[i].value for i in fairness.pick(slots, len(got), 0)]
        intents = [task_id for o, task_id in got if o == Origin.INTENT.value]
        expected = list(reversed(submitted["intent"][2:])) + submitted["intent"][:2]
        assert intents == expected[: len(intents)] and len(intents) >= 3
        for other in ("user_request", "scheduler"):
            mine = [task_id for o, task_id in got if o == other]
            assert mine == submitted[other][: len(mine)]


async def test_a_dead_workers_tasks_return_after_lease_expiry_and_its_late_completion_is_rejected(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, lease_seconds=30) as htm:
        [task_id] = await submit(htm, Origin.USER_REQUEST)
        [first] = await htm.queue.claim("dead-worker", 1, fallback_capacity=1)
        assert first.attempts == 1 and first.status is Status.RUNNING
        clock.advance(29)
        assert await htm.reap() == []  # still within its lease
        clock.advance(2)
        [returned] = await htm.reap()
        assert returned.task_id == task_id and returned.status is Status.QUEUED
        assert "lease expired on worker dead-worker" in (returned.error or "")
        [second] = await htm.queue.claim("live-worker", 1, fallback_capacity=1)
        assert second.task_id == task_id and second.attempts == 2
        # The first worker wakes up and reports: rejected, and recorded.
        done = await htm.record("dead-worker", [Outcome(task_id, 1, Status.COMPLETED, clock.now(), result=1)])
        recorded, late = done.recorded, done.late
        assert recorded == [] and [o.task_id for o in late] == [task_id]
        done = await htm.record("live-worker", [Outcome(task_id, 2, Status.COMPLETED, clock.now(), result=2)])
        recorded, late = done.recorded, done.late
        assert [f.status for f in recorded] == [Status.COMPLETED] and late == []
        task = await htm.get(task_id, principal=None)
        assert task.status is Status.COMPLETED and task.result == 2 and task.worker_id == "live-worker"
        [record] = await htm.late_completions(task_id, principal=None)
        assert record["worker_id"] == "dead-worker" and record["attempt"] == 1 and record["outcome"] == "completed"


async def test_a_reap_with_no_task_running_writes_nothing_and_still_removes_a_stale_worker(
    database_url: str, clock: ManualClock
) -> None:
    """Every maintenance tick reaps; with nothing running it only reads (on SQLite the one writer is not taken)."""
    async with manual_htm(database_url, clock, lease_seconds=30) as htm:
        await submit(htm, Origin.USER_REQUEST)  # queued, not running
        writes: list[str] = []

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            verb = statement.split(None, 1)[0].upper()
            if verb in ("INSERT", "UPDATE", "DELETE", "BEGIN"):
                writes.append(verb)

        event.listen(htm.db.engine.sync_engine, "before_cursor_execute", seen)
        try:
            for _ in range(3):
                assert await htm.reap() == []
            assert writes == []
            await htm.queue.register_worker("gone", host="h", pid=1, concurrency=1, task_types=[])
            clock.advance(301)  # ten leases without a heartbeat
            writes.clear()
            assert await htm.reap() == []
            assert "DELETE" in writes  # its record is removed
        finally:
            event.remove(htm.db.engine.sync_engine, "before_cursor_execute", seen)
        async with htm.db.read() as conn:
            left = (await conn.execute(text("SELECT count(*) FROM htm_workers WHERE worker_id = 'gone'"))).scalar()
        assert left == 0


async def test_completion_is_idempotent(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.INTENT)
        await htm.queue.claim("w", 1, fallback_capacity=1)
        done = Outcome(task_id, 1, Status.COMPLETED, clock.now(), result={"n": 1})
        assert len((await htm.record("w", [done])).recorded) == 1
        again = Outcome(task_id, 1, Status.FAILED, clock.now(), error="boom")
        exchange = await htm.record("w", [again])
        assert exchange.recorded == [] and exchange.late == [again]
        task = await htm.get(task_id, principal=None)
        assert task.status is Status.COMPLETED and task.result == {"n": 1} and task.error is None


async def test_heartbeats_keep_the_lease(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, lease_seconds=30) as htm:
        [task_id] = await submit(htm, Origin.INTENT)
        await htm.queue.claim("w1", 1, fallback_capacity=1)
        for _ in range(5):
            clock.advance(20)
            assert await htm.queue.heartbeat("w1", [task_id]) == {task_id}
            assert await htm.reap() == []
        clock.advance(31)
        assert [f.task_id for f in await htm.reap()] == [task_id]


async def test_a_lease_lost_on_the_last_attempt_fails_the_task(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, lease_seconds=10) as htm:
        [task_id] = await submit(htm, Origin.INTENT, max_attempts=1)
        await htm.queue.claim("w1", 1, fallback_capacity=1)
        clock.advance(11)
        [failed] = await htm.reap()
        assert failed.status is Status.FAILED and "last attempt" in (failed.error or "")
        assert (await htm.get(task_id, principal=None)).finished_at == clock.now()


async def test_failures_retry_with_capped_exponential_backoff_then_fail(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, retry_base_seconds=2, retry_max_seconds=5) as htm:
        gate = Gate()
        gate.fail_with = RuntimeError("disk unplugged")
        htm.handlers.register("test.gate", gate)
        [task_id] = await submit(htm, Origin.SCHEDULER, max_attempts=4)
        pool = htm.new_pool(concurrency=1, claim_batch=1)
        waits = []
        for attempt in range(1, 5):
            assert len(await pool.claim_once()) == 1
            await pool.wait_idle()
            task = await htm.get(task_id, principal=None)
            assert task.attempts == attempt and task.error == "RuntimeError: disk unplugged"
            if attempt < 4:
                assert task.status is Status.DELAYED
                waits.append((task.queued_at - clock.now()).total_seconds())
                clock.advance(waits[-1] - 0.5)
                assert await pool.claim_once() == []  # not before its time
                clock.advance(0.5)
        assert waits == [2.0, 4.0, 5.0]
        assert task.status is Status.FAILED and task.finished_at == clock.now()


async def test_a_handler_past_its_timeout_is_stopped_by_the_injected_clock(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, retry_base_seconds=1) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        [task_id] = await submit(htm, Origin.INTENT, timeout_seconds=60, max_attempts=2)
        pool = htm.new_pool(concurrency=2, claim_batch=2)
        await pool.claim_once()
        await settle()
        clock.advance(59)
        assert pool.check_timeouts() == 0
        clock.advance(1)
        assert pool.check_timeouts() == 1
        await pool.wait_idle()
        task = await htm.get(task_id, principal=None)
        assert task.status is Status.DELAYED and task.error == "timed out after 60s"  # one attempt left
        clock.advance(1)
        await pool.claim_once()
        await settle()
        clock.advance(60)
        pool.check_timeouts()
        await pool.wait_idle()
        task = await htm.get(task_id, principal=None)
        assert task.status is Status.TIMED_OUT and task.attempts == 2


async def test_a_task_type_without_a_handler_fails_with_a_clear_error(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.INTERNAL, task_type="voice.transcribe")
        pool = htm.new_pool(concurrency=1, claim_batch=1)
        await pool.claim_once()
        await pool.wait_idle()
        task = await htm.get(task_id, principal=None)
        assert task.status is Status.FAILED
        assert "no handler registered for task type 'voice.transcribe'" in (task.error or "")
        assert "htm.noop" in (task.error or "")


async def test_a_handler_that_is_not_async_fails_its_task_and_the_worker_goes_on(
    database_url: str, clock: ManualClock
) -> None:
    def not_async(ctx: TaskContext) -> int:  # registered by mistake: returns a value, not a coroutine
        return 1

    async with manual_htm(database_url, clock) as htm:
        htm.handlers.register("test.sync", not_async)  # type: ignore[arg-type]
        [broken] = await submit(htm, Origin.USER_REQUEST, task_type="test.sync", max_attempts=1)
        [fine] = await submit(htm, Origin.USER_REQUEST, task_type="htm.noop")
        pool = htm.new_pool(concurrency=2, claim_batch=2)
        assert len(await pool.claim_once()) == 2
        await pool.wait_idle()
        task = await htm.get(broken, principal=None)
        assert task.status is Status.FAILED and "TypeError" in (task.error or "")
        assert (await htm.get(fine, principal=None)).status is Status.COMPLETED
        assert pool.free_slots == 2


async def test_a_result_that_is_not_json_fails_its_task_and_the_others_are_recorded(
    database_url: str, clock: ManualClock
) -> None:
    async def returns_a_set(ctx: TaskContext) -> object:
        return {1, 2}

    async with manual_htm(database_url, clock) as htm:
        htm.handlers.register("test.set", returns_a_set)
        [broken] = await submit(htm, Origin.USER_REQUEST, task_type="test.set", max_attempts=1)
        [fine] = await submit(htm, Origin.USER_REQUEST, task_type="htm.noop")
        pool = htm.new_pool(concurrency=2, claim_batch=2)
        assert len(await pool.claim_once()) == 2
        await asyncio.wait_for(pool.wait_idle(), 10)
        task = await htm.get(broken, principal=None)
        assert task.status is Status.FAILED and "result is not JSON" in (task.error or "")
        assert (await htm.get(fine, principal=None)).status is Status.COMPLETED
        assert pool.free_slots == 2


async def test_cancel_waiting_running_and_finished_tasks(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, lease_seconds=30) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        waiting, running = await submit(htm, Origin.USER_REQUEST, 2)
        assert (await htm.cancel(waiting, principal=None)).status is Status.CANCELLED
        pool = htm.new_pool(concurrency=1, claim_batch=1)
        await pool.register()
        [claimed] = await pool.claim_once()
        assert claimed.task_id == running
        await settle()
        # Cancelled from "elsewhere" (straight in the queue, as another node would): the worker notices
        # at its next heartbeat and stops the handler; its outcome is never recorded over the cancel.
        await htm.queue.cancel(running, visible_to=None)
        await pool.heartbeat()
        await pool.wait_idle()
        task = await htm.get(running, principal=None)
        assert task.status is Status.CANCELLED and task.result is None
        with pytest.raises(errors.TaskAlreadyFinished, match="already cancelled"):
            await htm.cancel(running, principal=None)
        with pytest.raises(errors.NotFound):
            await htm.cancel("task_nope", principal=None)


async def test_per_origin_caps_are_global_across_workers_sharing_the_database(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        for origin in (Origin.USER_REQUEST, Origin.FILESYSTEM_TRIGGER, Origin.INTERNAL):
            await submit(htm, origin, 10)
        a = htm.new_pool(concurrency=2, claim_batch=2)
        b = htm.new_pool(concurrency=2, claim_batch=2)
        await a.register()
        await b.register()  # capacity is the sum of live workers: 4; quotas user_request 2, the others 1
        got = [t.origin for t in await a.claim_once()] + [t.origin for t in await b.claim_once()]
        # Counting per worker instead (capacity 2 each, every quota 1) would give each worker
        # user_request + filesystem, and internal nothing.
        assert Counter(got) == {Origin.USER_REQUEST: 2, Origin.FILESYSTEM_TRIGGER: 1, Origin.INTERNAL: 1}
        gate.release()
        await a.wait_idle()
        await b.wait_idle()


async def test_idle_capacity_is_lent_and_reclaimed(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, capacity=4) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        await submit(htm, Origin.USER_REQUEST, 10)
        pool = htm.new_pool(concurrency=4, claim_batch=4)
        first = await pool.claim_once()
        assert [t.origin for t in first] == [Origin.USER_REQUEST] * 4  # quota 2, borrowing 2 idle slots
        stats = await htm.routing_stats()
        assert stats["origins"]["user_request"]["borrowed"] == 2
        await submit(htm, Origin.INTERNAL, 2)
        await htm.cancel(first[0].task_id, principal=None)  # a slot frees up
        await pool.heartbeat()  # the worker learns of it and stops that handler
        await settle()
        [next_one] = await pool.claim_once()
        assert next_one.origin is Origin.INTERNAL  # reclaimed at once
        gate.release()
        await pool.wait_idle()


async def test_burst_limit_delays_exactly_until_the_window_frees(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, burst_per_minute=3) as htm:
        decisions = []
        for _ in range(3):
            decisions.append((await htm.submit(htm.request("htm.noop", origin="scheduler"), creator=None)).decision)
            clock.advance(10)
        fourth = await htm.submit(htm.request("htm.noop", origin="scheduler"), creator=None)
        assert [d.route for d in decisions] == ["accepted"] * 3
        assert fourth.status is Status.DELAYED and fourth.decision.delay_seconds == 30.0
        # Other origins have their own windows.
        other = await htm.submit(htm.request("htm.noop", origin="intent"), creator=None)
        assert other.decision.route == "accepted"
        pool = htm.new_pool(concurrency=10, claim_batch=10)
        assert {t.origin for t in await pool.claim_once()} == {Origin.SCHEDULER, Origin.INTENT}
        clock.advance(29.9)
        assert await pool.claim_once() == []
        clock.advance(0.1)
        assert [t.task_id for t in await pool.claim_once()] == [fourth.task_id]
        await pool.wait_idle()


async def test_new_over_share_work_is_deferred_while_an_origin_is_starved(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, capacity=2, defer_seconds=5) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        await submit(htm, Origin.USER_REQUEST, 2)
        pool = htm.new_pool(concurrency=2, claim_batch=2)
        await pool.claim_once()  # user_request now holds all capacity
        await submit(htm, Origin.FILESYSTEM_TRIGGER)
        stats = (await htm.routing_stats())["origins"]["filesystem"]
        assert stats["starved"] and stats["tasks_starved"] == 1
        deferred = await htm.submit(htm.request("test.gate", origin="user_request"), creator=None)
        assert deferred.status is Status.DEFERRED
        assert deferred.decision.as_dict()["route"] == "deferred"
        assert deferred.decision.delay_seconds == 5.0 and "filesystem starved" in deferred.decision.reasoning
        assert (await htm.routing_stats())["origins"]["user_request"]["deferred"] == 1
        gate.release()
        await pool.wait_idle()
        gate.open.clear()
        [nxt] = await pool.claim_once()
        assert nxt.origin is Origin.FILESYSTEM_TRIGGER  # the starved origin goes first
        clock.advance(5)
        [later] = await pool.claim_once()
        assert later.task_id == deferred.task_id
        gate.release()
        await pool.wait_idle()


async def test_graceful_shutdown_releases_unfinished_tasks(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        ids = await submit(htm, Origin.INTENT, 3)
        pool = htm.new_pool(concurrency=3, claim_batch=3)
        await pool.start()
        for _ in range(200):
            if len(gate.started) == 3:
                break
            await asyncio.sleep(0.01)
        await pool.stop(grace=0.05)
        for task_id in ids:
            task = await htm.get(task_id, principal=None)
            assert task.status is Status.QUEUED and task.attempts == 0 and task.worker_id is None


async def test_every_state_change_is_published_on_the_bus(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, retry_base_seconds=1) as htm:
        sub = await htm.bus.subscribe("htm.task.#", since=0).open()
        [ok] = await submit(htm, Origin.INTENT, task_type="htm.echo", payload={"secret": "do-not-log"})
        [bad] = await submit(htm, Origin.INTENT, task_type="nobody.handles", max_attempts=1)
        pool = htm.new_pool(concurrency=2, claim_batch=2)
        await pool.claim_once()
        await pool.wait_idle()
        await htm.events.drain()
        events = await htm.bus.replay("htm.task.#")
        seen = [(e.topic, e.payload["status"]) for e in events if e.payload["task_id"] == ok]
        assert seen == [
            ("htm.task.created", "queued"),
            ("htm.task.update", "running"),
            ("htm.task.completed", "completed"),
        ]
        seen = [(e.topic, e.payload["status"]) for e in events if e.payload["task_id"] == bad]
        assert seen == [("htm.task.created", "queued"), ("htm.task.update", "running"), ("htm.task.failed", "failed")]
        assert all("do-not-log" not in str(e.payload) for e in events)  # payloads stay out of events
        completed = next(e for e in events if e.topic == "htm.task.completed")
        assert completed.payload["duration_ms"] == 0.0 and completed.payload["origin"] == "intent"
        failed = next(e for e in events if e.topic == "htm.task.failed")
        assert "no handler registered" in failed.payload["error"]
        await sub.close()


async def test_routing_stats_have_the_seeds_shape(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, capacity=50) as htm:
        await submit(htm, Origin.FILESYSTEM_TRIGGER, 25, task_type="htm.noop", data_size_bytes=5_242_880)
        pool = htm.new_pool(concurrency=10, claim_batch=10)
        await pool.claim_once()
        await pool.wait_idle()
        stats = await htm.routing_stats()
        fs = stats["origins"]["filesystem"]
        assert set(fs) >= {"current_count", "max_concurrent", "total_queued", "tasks_starved", "utilization"}
        assert fs["max_concurrent"] == 3 and fs["current_count"] == 0 and fs["total_queued"] == 15
        assert fs["completed_last_minute"] == 10
        assert fs["throughput_mb_s"] == pytest.approx(10 * 5_242_880 / 60 / 1e6, rel=1e-3)
        assert stats["origins"]["user_request"]["max_concurrent"] == 15
        assert list(stats["origins"]) == [o.value for o in ORDER]
        clock.advance(61)
        assert (await htm.routing_stats())["origins"]["filesystem"]["completed_last_minute"] == 0


@contextlib.asynccontextmanager
async def _one_task_claimed_on_postgresql(
    database_url: str, clock: ManualClock
) -> AsyncIterator[tuple[HTM, Gate, WorkerPool, str]]:
    """A registered worker holding one gated task (lease 30 s), for the liveness tests."""
    if not database_url.startswith("postgresql"):
        pytest.skip("liveness locks are PostgreSQL's; on SQLite one process holds every worker")
    async with manual_htm(database_url, clock, lease_seconds=30) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        [task_id] = await submit(htm, Origin.INTENT)
        pool = htm.new_pool(concurrency=1, claim_batch=1)
        await pool.register()
        await pool.claim_once()
        yield htm, gate, pool, task_id


async def _drop_every_other_connection(admin: asyncpg.Connection) -> None:
    """Do to this database's other sessions what a server restart does: end them."""
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


async def test_on_postgresql_a_dead_workers_tasks_return_without_waiting_for_the_lease(
    database_url: str, clock: ManualClock
) -> None:
    async with _one_task_claimed_on_postgresql(database_url, clock) as (htm, gate, pool, task_id):
        assert await htm.reap() == []  # alive: its lock is held
        await pool.release_liveness()  # what the server sees when the worker's process dies
        confirm = htm.queue.liveness_confirm_seconds
        assert confirm == 3.0
        assert await htm.reap() == []  # free once is not dead yet: a restarted server frees every lock
        clock.advance(confirm - 0.001)
        assert await htm.reap() == []
        clock.advance(0.001)
        [returned] = await htm.reap()  # the lease still has 27 s left
        assert returned.task_id == task_id and returned.status is Status.QUEUED
        gate.release()
        await pool.wait_idle()
        assert len(await htm.late_completions(task_id, principal=None)) == 1  # its late outcome is refused


async def test_a_worker_whose_connection_dropped_takes_its_lock_again_and_keeps_its_tasks(
    database_url: str, clock: ManualClock
) -> None:
    # What a PostgreSQL restart does to a worker: the connection holding its liveness lock is gone.
    # It must not be taken for dead, nor its running tasks run again elsewhere.
    async with _one_task_claimed_on_postgresql(database_url, clock) as (htm, gate, pool, task_id):
        assert await pool.keep_alive() is False  # nothing lost yet
        lock = pool._liveness
        assert lock is not None
        async with htm.db.write() as conn:
            pid = await advisory_holder(conn, liveness_lock(pool.worker_id))
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        for _ in range(200):
            if not lock.is_leader:
                break
            await asyncio.sleep(0.01)
        assert await htm.reap() == []  # another worker's reaper looks before this one has its lock back
        async with htm.db.write() as conn:
            await conn.execute(text("DELETE FROM htm_workers"))  # as the clean-up after a long outage does
        assert await pool.keep_alive() is True
        clock.advance(htm.queue.liveness_confirm_seconds + 1)
        assert await htm.reap() == []  # its lock is held again
        async with htm.db.read() as conn:  # registered again, so counted in the capacity
            assert (await conn.execute(text("SELECT worker_id FROM htm_workers"))).scalars().all() == [pool.worker_id]
        gate.release()
        await pool.wait_idle()
        task = await htm.get(task_id, principal=None)
        assert task.status is Status.COMPLETED and task.attempts == 1
        assert await htm.late_completions(task_id, principal=None) == []


async def test_outcomes_a_dropped_connection_kept_from_the_database_are_recorded_on_the_next_try(
    database_url: str, clock: ManualClock
) -> None:
    # The server drops every connection (a restart) just before a worker records an outcome; the
    # outcome must be recorded when the database answers again, not wait for another task to end
    # (meanwhile its lease would run out and the task run again).
    if not database_url.startswith("postgresql"):
        pytest.skip("the server dropping connections is PostgreSQL's case")
    async with manual_htm(database_url, clock, poll_seconds=0.05) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        [task_id] = await submit(htm, Origin.INTENT)
        pool = htm.new_pool(concurrency=1, claim_batch=1)
        await pool.start()
        for _ in range(300):
            if gate.started:
                break
            await asyncio.sleep(0.01)
        dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        admin = await asyncpg.connect(dsn)
        try:
            await _drop_every_other_connection(admin)
            gate.release()
            status = None
            for _ in range(300):
                status = await admin.fetchval("SELECT status FROM htm_tasks WHERE task_id = $1", task_id)
                if status == "completed":
                    break
                await asyncio.sleep(0.02)
            assert status == "completed"
            assert await admin.fetchval("SELECT attempts FROM htm_tasks WHERE task_id = $1", task_id) == 1
        finally:
            await admin.close()
        await pool.stop(grace=1)


async def test_events_a_dropped_connection_kept_from_the_bus_are_published_on_the_next_try(
    database_url: str,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the server dropping connections is PostgreSQL's case")
    db = storage.Database(database_url)
    bus = PostgresBus(db)
    publisher = EventPublisher(bus)
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        await publisher.emit(UPDATE, {"task_id": "task_a", "status": "running"})
        await publisher.drain()
        await _drop_every_other_connection(admin)  # the bus's connections among them
        await publisher.emit(COMPLETED, {"task_id": "task_a", "status": "completed"})
        await publisher.drain()
        published = await bus.replay("htm.task.#")
        assert [(e.topic, e.payload["status"]) for e in published] == [
            (UPDATE, "running"),
            (COMPLETED, "completed"),
        ]
        assert (publisher.published, publisher.failed) == (2, 0)
    finally:
        await admin.close()
        await publisher.close()
        await db.dispose()


async def _until_waiting_on_a_lock(conn: AsyncConnection, count: int) -> None:
    """Poll until ``count`` other sessions of this database wait on a lock (a barrier between sessions)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(500):
        if (await conn.execute(query)).scalar_one() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} sessions came to wait on a lock")


async def test_claims_never_wait_for_task_rows_so_recording_outcomes_cannot_deadlock_with_other_changes(
    database_url: str, clock: ManualClock
) -> None:
    # X changes task rows (as SLA escalation or a cancel does) and holds a due retry's row; Y holds
    # the dispatch counter (a claim in progress). A claim skips the locked retry instead of waiting
    # for it; a worker records its outcome (locking its task) and then queues for the counter; X
    # touching that task waits for the worker. Nobody holding the counter ever waits for a task
    # row, so there is no cycle: when Y ends, everyone finishes, and the retry joins the queue
    # once X lets it go.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: no two transactions ever wait on each other")
    async with manual_htm(database_url, clock, capacity=100) as htm:
        await submit(htm, Origin.INTENT)
        [task] = await htm.queue.claim("w", 1, fallback_capacity=1)
        [retry_id] = await submit(htm, Origin.SCHEDULER)
        await submit(htm, Origin.INTENT, 2)
        async with htm.db.write() as conn:  # a retry that fell due a moment ago
            await conn.execute(
                text("UPDATE htm_tasks SET status = 'delayed', queued_at = :due WHERE task_id = :id"),
                {"due": clock.now() - timedelta(seconds=1), "id": retry_id},
            )
        async with (
            htm.db.engine.connect() as x,
            htm.db.engine.connect() as y,
            htm.db.engine.connect() as watch,
        ):
            await watch.execution_options(isolation_level="AUTOCOMMIT")
            await x.begin()
            await x.execute(text("SELECT 1 FROM htm_tasks WHERE task_id = :id FOR UPDATE"), {"id": retry_id})
            [claimed] = await asyncio.wait_for(htm.queue.claim("w2", 1, fallback_capacity=1), 10)
            assert claimed.task_id != retry_id and claimed.origin is Origin.INTENT
            await y.begin()
            await y.execute(text("SELECT 1 FROM htm_scheduler WHERE id = 1 FOR UPDATE"))
            outcome = Outcome(task.task_id, task.attempts, Status.COMPLETED, clock.now())
            record = asyncio.create_task(htm.queue.finish_and_claim("w", [outcome], 1, fallback_capacity=1))
            await _until_waiting_on_a_lock(watch, 1)
            change = asyncio.create_task(
                x.execute(text("UPDATE htm_tasks SET priority = 'high' WHERE task_id = :id"), {"id": task.task_id})
            )
            await _until_waiting_on_a_lock(watch, 2)
            await y.commit()
            exchange = await asyncio.wait_for(record, 60)
            await asyncio.wait_for(change, 60)
            await x.commit()
        assert [f.task_id for f in exchange.recorded] == [task.task_id]
        assert [t.origin for t in exchange.claimed] == [Origin.INTENT]
        assert (await htm.get(task.task_id, principal=None)).status is Status.COMPLETED
        assert [t.task_id for t in await htm.queue.claim("w2", 1, fallback_capacity=1)] == [retry_id]


async def test_the_queue_works_on_an_in_memory_sqlite_database(clock: ManualClock) -> None:
    # The claim's single-hand-off path keeps a connection of its own; an in-memory database is one
    # connection shared by everything, and must still work.
    db = storage.Database("sqlite:///:memory:")
    try:
        await storage.upgrade(db)
        htm = HTM(db, InProcessBus(clock=clock), clock, load_config(burst_per_minute=0))
        [task_id] = await submit(htm, Origin.INTENT)
        [task] = await htm.queue.claim("w", 5, fallback_capacity=5)
        done = await htm.record("w", [Outcome(task_id, task.attempts, Status.COMPLETED, clock.now(), result=7)])
        assert task.task_id == task_id and [f.status for f in done.recorded] == [Status.COMPLETED]
        assert (await htm.get(task_id, principal=None)).result == 7
        await htm.close(grace=0)
    finally:
        await db.dispose()


async def test_rebalance_serves_a_starved_origin_at_the_next_free_slot(database_url: str, clock: ManualClock) -> None:
    from sqlalchemy import select

    from grace.htm.tables import htm_origins

    async with manual_htm(database_url, clock, capacity=1) as htm:
        assert (await htm.rebalance())["changed"] is False  # nothing starved: nothing changes
        await submit(htm, Origin.USER_REQUEST, 4)
        await submit(htm, Origin.SCHEDULER, 1)
        [first] = await htm.queue.claim("w1", 1, fallback_capacity=1)
        assert first.origin is Origin.USER_REQUEST  # user_request now holds the only slot
        assert (await htm.routing_stats())["origins"]["scheduler"]["starved"]
        # What the fair pick would do when the slot frees, from the stored state: user_request again
        # (equal credit, the larger share wins), so the scheduler's task would wait.
        async with htm.db.read() as conn:
            stored = {r.origin: r for r in await conn.execute(select(htm_origins))}
        total = sum(r.weight for r in stored.values())
        slots = [
            fairness.OriginSlot(
                o.position,
                stored[o.value].weight,
                credit=stored[o.value].credit,
                since=stored[o.value].since,
                quota=origins.max_concurrent(stored[o.value].weight, total, 1),
                ready={Origin.USER_REQUEST: 3, Origin.SCHEDULER: 1}.get(o, 0),
            )
            for o in ORDER
        ]
        assert [ORDER[i] for i in fairness.pick(slots, 1, 1)] == [Origin.USER_REQUEST]

        result = await htm.rebalance()
        assert result == {
            "changed": True,
            "starved": ["scheduler"],
            "served_first": ["scheduler"],
            "credits_reset": result["credits_reset"],
        }
        assert result["credits_reset"] >= 1
        await htm.queue.finish("w1", [Outcome(first.task_id, first.attempts, Status.COMPLETED, clock.now())])
        [nxt] = await htm.queue.claim("w1", 1, fallback_capacity=1)
        assert nxt.origin is Origin.SCHEDULER  # the starved origin is served first
        await htm.queue.finish("w1", [Outcome(nxt.task_id, nxt.attempts, Status.COMPLETED, clock.now())])
        # Then the fair pick runs as always: user_request's remaining work goes on.
        assert [t.origin for t in await htm.queue.claim("w1", 1, fallback_capacity=1)] == [Origin.USER_REQUEST]
