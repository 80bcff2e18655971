"""Routing stats and task lists are served by indexes, whatever the history: the plans say so on both databases.

Every statement ``routing_stats`` and ``list_tasks`` send is captured as sent and explained. On
SQLite no step may read ``htm_tasks`` without an index (``SCAN htm_tasks`` alone); on PostgreSQL
sequential scans are switched off for the explanation, so a ``Seq Scan`` on ``htm_tasks`` left in the
plan means no index could serve the statement (with few rows the planner would pick one anyway).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select

from grace import storage
from grace.auth import Principal, Role
from grace.clock import ManualClock
from grace.htm import HTM, Status
from grace.htm.queue import Outcome
from grace.htm.tables import htm_tasks
from tests import htmkit


@contextmanager
def captured(db: storage.Database) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "htm_tasks" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", listen)
    try:
        yield statements
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", listen)


async def unindexed_reads(db: storage.Database, statements: list[tuple[str, Any]]) -> list[str]:
    """Return each statement whose plan reads htm_tasks without an index, with the plan."""
    bad: list[str] = []
    async with db.read() as conn:
        if not db.is_sqlite:
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        for statement, parameters in statements:
            if db.is_sqlite:
                rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
                steps = [str(r[-1]) for r in rows]
                if any(s.startswith("SCAN htm_tasks") and "INDEX" not in s for s in steps):
                    bad.append(f"{statement}\n  " + "\n  ".join(steps))
            else:
                plan = (await conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)).scalar_one()
                plan = json.loads(plan) if isinstance(plan, str) else plan
                if _seq_scans(plan[0]["Plan"]):
                    bad.append(f"{statement}\n  {json.dumps(plan[0]['Plan'])[:2000]}")
    return bad


def _seq_scans(node: dict[str, Any]) -> bool:
    if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == "htm_tasks":
        return True
    return any(_seq_scans(child) for child in node.get("Plans", []))


# Finished tasks a day old: a statement that read them would read at least this many rows.
HISTORY = 3000
# What routing stats may read htm_tasks through on SQLite: the partial indexes of unfinished tasks, and
# the last minute's finished tasks by finished_at. Not ix_htm_tasks_status_seq, nor a scan.
_STATS_ACCESS = (
    "INDEX ix_htm_tasks_running",
    "INDEX ix_htm_tasks_claim",
    "INDEX ix_htm_tasks_waiting",
    "INDEX ix_htm_tasks_finished_at (finished_at",
)


async def test_routing_stats_and_task_lists_read_htm_tasks_only_through_indexes(database_url: str) -> None:
    """With a history of finished tasks (on PostgreSQL analysed before the queue filled, so its statistics
    know of no queued task), routing stats and task lists read no finished task but the last minute's:
    on SQLite their plans say so, on PostgreSQL the rows they read are counted."""
    clock = ManualClock()
    async with htmkit.manual_htm(database_url, clock) as htm:
        db = htm.db
        await _finished_history(htm, HISTORY)
        await _some_history(htm)
        member = Principal("usr_member", "member", Role.MEMBER)
        with captured(db) as statements:
            stats = await htm.routing_stats()
            await htm.list_tasks(principal=None, status="failed", limit=50)
            await htm.list_tasks(principal=member, limit=50)
        assert stats["origins"]["intent"]["queued"] == 20 and stats["origins"]["scheduler"]["queued"] == 1
        # The stats: the last minute's settled seconds (read once a second at most), then the rest.
        assert len(statements) == 4, statements
        bad = await unindexed_reads(db, statements)
        assert not bad, "\n\n".join(bad)
        if db.is_sqlite:
            async with db.read() as conn:
                for statement, parameters in statements[:2]:
                    plan = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                    steps = [str(r[-1]) for r in plan.all()]
                    assert all(any(a in s for a in _STATS_ACCESS) for s in steps if " htm_tasks " in f"{s} "), steps
        else:
            *stats_read, list_read, member_read = await rows_read(db, statements)
            lists_read = [list_read, member_read]
            assert all(n <= 21 for n in stats_read), f"routing stats read {stats_read} rows of htm_tasks"
            # A list walks the newest tasks until it has its 50: PostgreSQL may walk them by seq alone when
            # the status is common (50 failed tasks are 1,000 back at 5%), but never the whole history.
            assert all(n < HISTORY // 2 for n in lists_read), lists_read


async def rows_read(db: storage.Database, statements: list[tuple[str, Any]]) -> list[int]:
    """Return how many rows of htm_tasks each statement read (PostgreSQL's counters for the transaction)."""
    counted = (
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
        " WHERE relname = 'htm_tasks'"
    )
    out = []
    async with db.read() as conn:
        for statement, parameters in statements:
            before = (await conn.exec_driver_sql(counted)).scalar_one()
            await conn.exec_driver_sql(statement, parameters)
            out.append(int((await conn.exec_driver_sql(counted)).scalar_one()) - int(before))
    return out


async def _finished_history(htm: HTM, n: int) -> None:
    """Write ``n`` tasks that finished a day ago (5% failed, a tenth the member's), then analyse the table."""
    day_ago = htm.clock.now() - timedelta(days=1)
    rows: list[dict[str, Any]] = [
        {
            "task_id": f"task_old_{i}",
            "task_type": "htm.noop",
            "priority": "normal",
            "priority_rank": 2,
            "origin": ("intent", "scheduler", "internal", "user_request")[i % 4],
            "origin_rule": "explicit",
            "payload": {},
            "data_size_bytes": 100,
            "created_by": "usr_member" if i % 10 == 0 else None,
            "created_by_name": "grace",
            "status": "failed" if i % 20 == 0 else "completed",
            "route": "accepted",
            "route_reason": "",
            "attempts": 1,
            "max_attempts": 3,
            "timeout_seconds": 600.0,
            "created_at": day_ago,
            "admitted_at": day_ago,
            "queued_at": day_ago,
            "started_at": day_ago,
            "finished_at": day_ago + timedelta(milliseconds=i),
        }
        for i in range(n)
    ]
    async with htm.db.write() as conn:
        await conn.execute(insert(htm_tasks), rows)
    if not htm.db.is_sqlite:
        async with htm.db.read() as conn:
            await conn.exec_driver_sql("ANALYZE htm_tasks")


async def _some_history(htm: HTM) -> None:
    """A few tasks in every state the stats count: queued, deferred, finished."""
    requests = [htm.request("htm.noop", origin="intent") for _ in range(20)]
    await htm.submit_many(requests, creator=None)
    await htm.submit_many([htm.request("htm.noop", origin="scheduler", priority="low")], creator=None)


# What a claim, an outcome or a due waiting task may read htm_tasks through on SQLite: a task by its seq
# (the rowid) or its id, or an index holding only unfinished tasks. Never every queued (running,
# waiting) task through ix_htm_tasks_status_seq, nor a scan.
_HOT_PATH_ACCESS = (
    "USING INTEGER PRIMARY KEY",
    "USING INDEX sqlite_autoindex_htm_tasks_1 (task_id=?)",
    "USING INDEX ix_htm_tasks_claim (origin=?)",
    "USING INDEX ix_htm_tasks_waiting (queued_at<?)",
    "USING INDEX ix_htm_tasks_running",
    "USING COVERING INDEX ix_htm_tasks_running",
)


async def test_a_claim_and_its_outcomes_read_only_the_tasks_they_take_however_long_the_queue(
    database_url: str,
) -> None:
    """On SQLite without statistics the planner once chose ix_htm_tasks_status_seq (status = 'queued')
    as the outer loop of the claim's take, reading every queued task at each claim: the embedded workers
    drained a backlog of 11,500 tasks at 150 a second. Every statement of a claim, an outcome and the
    release of due waiting tasks, captured as sent on SQLite's own connection, is explained."""
    if not database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL claims in htm_claim(), whose statements the client does not see")
    clock = ManualClock()
    async with htmkit.manual_htm(database_url, clock) as htm:
        await _some_history(htm)
        await htm.submit_many([htm.request("htm.noop", origin="scheduler") for _ in range(200)], creator=None)
        sent: list[str] = []

        def trace(raw: sqlite3.Connection) -> None:
            raw.set_trace_callback(sent.append)

        await htm.db.write_sqlite(trace)
        try:
            claimed = await htm.queue.claim("w1", 4, fallback_capacity=8)
            outcomes = [Outcome(t.task_id, t.attempts, Status.COMPLETED, clock.now()) for t in claimed]
            done = await htm.queue.finish_and_claim("w1", outcomes, 4, fallback_capacity=8)
        finally:
            await htm.db.write_sqlite(lambda raw: raw.set_trace_callback(None))
        assert len(claimed) == 4 and len(done.recorded) == 4 and len(done.claimed) == 4
        reads = [s for s in sent if "htm_tasks" in s and not s.lstrip().upper().startswith("INSERT")]
        assert len(reads) >= 6, sent
        bad = []
        async with htm.db.read() as conn:
            for statement in reads:
                steps = [str(r[-1]) for r in (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement)).all()]
                for step in steps:
                    if " htm_tasks " in f"{step} " and not any(a in step for a in _HOT_PATH_ACCESS):
                        bad.append(f"{statement}\n  " + "\n  ".join(steps))
        assert not bad, "\n\n".join(bad)


async def test_the_last_minutes_figures_kept_per_second_equal_a_direct_count_as_the_clock_moves(
    database_url: str,
) -> None:
    """Routing stats keep the last minute's finished tasks per settled second between calls and read only
    what is new: their figures still equal a count of the rows, call after call, while tasks finish and
    the window moves past the seconds kept."""
    clock = ManualClock()
    async with htmkit.manual_htm(database_url, clock) as htm:
        origins = ("intent", "scheduler", "internal")
        made = 0
        for step in range(150):
            rows = []
            for k in range(step % 4):  # a few tasks finish at each step, some failed
                made += 1
                at = clock.now() - timedelta(milliseconds=(step * 37 + k * 211) % 900)
                rows.append(
                    _finished_row(made, origins[(step + k) % 3], "failed" if made % 7 == 0 else "completed", at)
                )
            if step % 5 == 0:  # an outcome committed 4.5 s after its finishing time (within SETTLE): counted
                made += 1
                rows.append(_finished_row(made, "intent", "completed", clock.now() - timedelta(seconds=4.5)))
            if rows:
                async with htm.db.write() as conn:
                    await conn.execute(insert(htm_tasks), rows)
            stats = (await htm.routing_stats())["origins"]
            since = clock.now() - timedelta(seconds=60)
            async with htm.db.read() as conn:
                counted = {
                    (o, s): int(n)
                    for o, s, n in (
                        await conn.execute(
                            select(htm_tasks.c.origin, htm_tasks.c.status, func.count())
                            .where(htm_tasks.c.finished_at > since)
                            .group_by(htm_tasks.c.origin, htm_tasks.c.status)
                        )
                    )
                }
            for origin in origins:
                assert stats[origin]["completed_last_minute"] == counted.get((origin, "completed"), 0), (step, origin)
                assert stats[origin]["failed_last_minute"] == counted.get((origin, "failed"), 0), (step, origin)
            clock.advance(0.7 if step < 120 else 3.1)
        assert made > 200
        assert sum(stats[o]["completed_last_minute"] for o in origins) < made  # the window moved past the first


def _finished_row(i: int, origin: str, status: str, at: datetime) -> dict[str, Any]:
    return {
        "task_id": f"task_done_{i}",
        "task_type": "htm.noop",
        "priority": "normal",
        "priority_rank": 2,
        "origin": origin,
        "origin_rule": "explicit",
        "payload": {},
        "data_size_bytes": 10,
        "created_by_name": "grace",
        "status": status,
        "route": "accepted",
        "route_reason": "",
        "attempts": 1,
        "max_attempts": 3,
        "timeout_seconds": 600.0,
        "created_at": at,
        "admitted_at": at,
        "queued_at": at,
        "started_at": at,
        "finished_at": at,
    }


async def test_routing_stats_right_after_many_tasks_finished_read_only_the_last_seconds(database_url: str) -> None:
    """Thousands of tasks finished within the minute on a table never analysed (autovacuum has not come
    round yet, or is off): a stats call after the first reads the last seconds' finished tasks through
    finished_at's index, not every row of the table (on PostgreSQL the rows read are counted)."""
    clock = ManualClock()
    async with htmkit.manual_htm(database_url, clock) as htm:
        db = htm.db
        now = clock.now()
        ages = [timedelta(seconds=10) + timedelta(milliseconds=15 * i) for i in range(RECENT)]
        ages += [timedelta(milliseconds=500 * i) for i in range(1, 6)]  # five in the last five seconds
        await _insert_finished(htm, [now - age for age in ages])
        first = await htm.routing_stats()  # reads the settled seconds once
        assert first["origins"]["intent"]["completed_last_minute"] == RECENT + 5
        with captured(db) as statements:
            stats = await htm.routing_stats()
        assert stats["origins"]["intent"]["completed_last_minute"] == RECENT + 5
        assert len(statements) == 1, statements  # no second settled since: only the figures
        assert not await unindexed_reads(db, statements)
        if not db.is_sqlite:
            [read] = await rows_read(db, statements)
            assert read <= 50, f"routing stats read {read} rows of htm_tasks"


# Tasks finished within the minute, for the stats right after a burst of work.
RECENT = 3000


async def _insert_finished(htm: HTM, finished: list[datetime]) -> None:
    rows: list[dict[str, Any]] = [
        {
            "task_id": f"task_recent_{i}",
            "task_type": "htm.noop",
            "priority": "normal",
            "priority_rank": 2,
            "origin": "intent",
            "origin_rule": "explicit",
            "payload": {},
            "data_size_bytes": 100,
            "created_by_name": "grace",
            "status": "completed",
            "route": "accepted",
            "route_reason": "",
            "attempts": 1,
            "max_attempts": 3,
            "timeout_seconds": 600.0,
            "created_at": at - timedelta(seconds=1),
            "admitted_at": at - timedelta(seconds=1),
            "queued_at": at - timedelta(seconds=1),
            "started_at": at - timedelta(milliseconds=10),
            "finished_at": at,
        }
        for i, at in enumerate(finished)
    ]
    async with htm.db.write() as conn:
        await conn.execute(insert(htm_tasks), rows)
