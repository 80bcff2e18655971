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
from typing import Any

import pytest
from sqlalchemy import event

from grace import storage
from grace.auth import Principal, Role
from grace.clock import ManualClock
from grace.htm import HTM, Status
from grace.htm.queue import Outcome
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


async def test_routing_stats_and_task_lists_read_htm_tasks_only_through_indexes(database_url: str) -> None:
    async with htmkit.manual_htm(database_url, ManualClock()) as htm:
        await _some_history(htm)
        db = htm.db
        member = Principal("usr_member", "member", Role.MEMBER)
        with captured(db) as statements:
            await htm.routing_stats()
            await htm.list_tasks(principal=None, status="failed", limit=50)
            await htm.list_tasks(principal=member, limit=50)
        assert len(statements) >= 5, statements
        bad = await unindexed_reads(db, statements)
        assert not bad, "\n\n".join(bad)


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
