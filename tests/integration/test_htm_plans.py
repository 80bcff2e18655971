"""Routing stats and task lists are served by indexes, whatever the history: the plans say so on both databases.

Every statement ``routing_stats`` and ``list_tasks`` send is captured as sent and explained. On
SQLite no step may read ``htm_tasks`` without an index (``SCAN htm_tasks`` alone); on PostgreSQL
sequential scans are switched off for the explanation, so a ``Seq Scan`` on ``htm_tasks`` left in the
plan means no index could serve the statement (with few rows the planner would pick one anyway).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from grace import storage
from grace.auth import Principal, Role
from grace.clock import ManualClock
from grace.htm import HTM
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
