"""The queue's hot path on SQLite: claims and outcomes as one call on the database's own thread.

aiosqlite runs every statement on a thread of its own and hands each result back
to the event loop. A claim is about ten statements, so doing them one by one
costs ten thread hand-offs plus SQLAlchemy building and compiling each
statement. Here the whole claim (and a whole batch of outcomes) is a plain
function run once on that thread, in one ``BEGIN IMMEDIATE`` transaction
(:meth:`grace.storage.Database.write_sqlite`), with fixed SQL that sqlite3
prepares once and caches. The event loop only waits for the answer.

The steps and their order are the same as PostgreSQL's ``htm_claim`` and the
fair pick is :func:`grace.htm.fairness.pick`, so both backends dispatch the same
sequence (a test checks that). Timestamps are written in the exact text form
SQLAlchemy uses for SQLite, because SQLite compares them as text.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grace import jsontext
from grace.htm import fairness, origins
from grace.htm.origins import ORDER
from grace.htm.tables import DATETIME_COLUMNS, JSON_COLUMNS, SUMMARY_COLUMNS, htm_tasks
from grace.storage.types import utc_from_text, utc_text

__all__ = ["ClaimRequest", "FinishRow", "claim", "finish"]

COLUMNS = [c.name for c in htm_tasks.c]
# The SQL below is built once from this module's constants and the table's column names (never from input).

_SEQ = "SELECT dispatched FROM htm_scheduler WHERE id = 1"
_RELEASE_WAITING = "UPDATE htm_tasks SET status = 'queued' WHERE status IN ('delayed', 'deferred') AND queued_at <= ?"
_LIVE_CAPACITY = "SELECT coalesce(sum(concurrency), 0) FROM htm_workers WHERE heartbeat_at >= ? AND stopping = 0"
_ORIGINS = "SELECT origin, weight, credit, since FROM htm_origins"
_RUNNING = "SELECT origin, count(*) FROM htm_tasks WHERE status = 'running' GROUP BY origin"
# How many claimable tasks each origin has, capped at the batch: eight indexed probes in one statement.
# The claim index is named: without statistics SQLite may pick the (origin, admitted_at) index instead
# and walk every task the origin ever had.
_READY = "SELECT " + ", ".join(  # noqa: S608
    "(SELECT count(*) FROM (SELECT 1 FROM htm_tasks INDEXED BY ix_htm_tasks_claim "  # noqa: S608
    f"WHERE status = 'queued' AND origin = '{o.value}' LIMIT ?))"
    for o in ORDER
)
_NEXT = (
    "SELECT seq FROM htm_tasks INDEXED BY ix_htm_tasks_claim "
    "WHERE status = 'queued' AND origin = ? ORDER BY priority_rank, seq LIMIT ?"
)


def _qualified(columns: Sequence[str]) -> str:
    return ", ".join(f"htm_tasks.{c}" for c in columns)


# Every picked task in one statement: ``?5`` is a JSON array of their seqs in dispatch order, and a
# task's dispatch number is the base plus its place in that array. Joined from the array (UPDATE ...
# FROM), so the array is read once, not searched again for every row taken.
_TAKE = (
    "UPDATE htm_tasks SET status = 'running', worker_id = ?1, attempts = attempts + 1, started_at = ?2, "  # noqa: S608
    "lease_expires_at = ?3, dispatch_seq = ?4 + j.key FROM json_each(?5) AS j "
    f"WHERE htm_tasks.seq = j.value AND htm_tasks.status = 'queued' RETURNING {_qualified(COLUMNS)}"
)
_SAVE_ORIGIN = "UPDATE htm_origins SET credit = ?, since = ?, dispatched = dispatched + ? WHERE origin = ?"
_SAVE_SEQ = "UPDATE htm_scheduler SET dispatched = ? WHERE id = 1"
# A batch of outcomes in one statement: ``?2`` is a JSON array of
# [task_id, attempt, status, finished_at, queued_at, result, error, give_back].
_FINISH = (
    "UPDATE htm_tasks SET status = v.status, finished_at = coalesce(v.finished_at, htm_tasks.finished_at), "  # noqa: S608
    "queued_at = coalesce(v.queued_at, htm_tasks.queued_at), result = v.result, error = v.error, "
    "lease_expires_at = NULL, attempts = htm_tasks.attempts - v.give_back, "
    "worker_id = CASE WHEN v.status IN ('delayed', 'queued') THEN NULL ELSE htm_tasks.worker_id END "
    "FROM (SELECT json_extract(value, '$[0]') AS task_id, json_extract(value, '$[1]') AS attempt, "
    "json_extract(value, '$[2]') AS status, json_extract(value, '$[3]') AS finished_at, "
    "json_extract(value, '$[4]') AS queued_at, json_extract(value, '$[5]') AS result, "
    "json_extract(value, '$[6]') AS error, json_extract(value, '$[7]') AS give_back FROM json_each(?2)) AS v "
    "WHERE htm_tasks.task_id = v.task_id AND htm_tasks.attempts = v.attempt AND htm_tasks.status = 'running' "
    f"AND htm_tasks.worker_id = ?1 RETURNING {_qualified(SUMMARY_COLUMNS)}"
)


def _row(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(names, values, strict=True))
    times, documents = _converted(tuple(names))
    for name in times:
        if out[name] is not None:
            out[name] = utc_from_text(out[name])
    for name in documents:
        if out[name] is not None:
            out[name] = jsontext.loads(out[name])
    return out


@functools.lru_cache(maxsize=8)
def _converted(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return which of ``names`` are stored as text and read back as times, and which as JSON."""
    return tuple(n for n in names if n in DATETIME_COLUMNS), tuple(n for n in names if n in JSON_COLUMNS)


@dataclass(frozen=True)
class ClaimRequest:
    """What one claim needs to know (times are written in SQLite's text form by :func:`claim`)."""

    worker_id: str
    n: int
    now: datetime
    lease_until: datetime
    live_after: datetime
    capacity: int  # configured capacity, or 0 to use the live workers' concurrency
    fallback_capacity: int
    total_weight: int


def claim(db: sqlite3.Connection, req: ClaimRequest) -> list[dict[str, Any]]:
    """Claim up to ``req.n`` tasks by fair pick; return the claimed rows (runs on the database's thread)."""
    now = utc_text(req.now)
    seq = int(db.execute(_SEQ).fetchone()[0])
    db.execute(_RELEASE_WAITING, (now,))
    capacity = req.capacity
    if capacity <= 0:
        capacity = int(db.execute(_LIVE_CAPACITY, (utc_text(req.live_after),)).fetchone()[0]) or max(
            1, req.fallback_capacity
        )
    state = {o: (int(w), int(c), int(s)) for o, w, c, s in db.execute(_ORIGINS)}
    running = dict(db.execute(_RUNNING).fetchall())
    ready = db.execute(_READY, (req.n,) * len(ORDER)).fetchone()
    slots = []
    for origin in ORDER:
        weight, credit, since = state[origin.value]
        slots.append(
            fairness.OriginSlot(
                index=origin.position,
                weight=weight,
                credit=credit,
                since=since,
                running=int(running.get(origin.value, 0)),
                quota=origins.max_concurrent(weight, req.total_weight, capacity),
                ready=int(ready[origin.position]),
            )
        )
    picks = fairness.pick(slots, req.n, seq)
    if not picks:
        return []  # nothing to take: the state is unchanged, so there is nothing to save
    wanted: dict[int, int] = {}
    for index in picks:
        wanted[index] = wanted.get(index, 0) + 1
    chosen = {index: [int(r[0]) for r in db.execute(_NEXT, (ORDER[index].value, k))] for index, k in wanted.items()}
    took = [0] * len(slots)
    order: list[int] = []
    for index in picks:
        queue = chosen[index]
        if queue:
            order.append(queue.pop(0))
            took[index] += 1
    taken: list[dict[str, Any]] = []
    if order:
        params = (req.worker_id, now, utc_text(req.lease_until), seq, jsontext.dumps(order))
        taken = [_row(COLUMNS, r) for r in db.execute(_TAKE, params)]
    db.executemany(_SAVE_ORIGIN, [(s.credit, s.since, took[s.index], ORDER[s.index].value) for s in slots])
    db.execute(_SAVE_SEQ, (seq + len(order),))
    return taken


@dataclass(frozen=True)
class FinishRow:
    """One outcome to record, in the form :func:`finish` writes it."""

    task_id: str
    attempt: int
    status: str
    finished_at: datetime | None
    queued_at: datetime | None
    result: str | None  # JSON text
    error: str | None
    give_back: int


def finish(db: sqlite3.Connection, worker_id: str, rows: Sequence[FinishRow]) -> list[dict[str, Any]]:
    """Record outcomes of ``worker_id``'s attempts; return the summary of each one recorded."""
    batch = [
        [r.task_id, r.attempt, r.status, utc_text(r.finished_at), utc_text(r.queued_at), r.result, r.error, r.give_back]
        for r in rows
    ]
    return [_row(SUMMARY_COLUMNS, r) for r in db.execute(_FINISH, (worker_id, jsontext.dumps(batch)))]
