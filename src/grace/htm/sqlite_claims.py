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
from datetime import timedelta
from typing import Any

from grace import jsontext
from grace.htm import fairness, origins, sql
from grace.htm.origins import ORDER
from grace.htm.queue_backend import Claim, OutcomeRow
from grace.htm.tables import DATETIME_COLUMNS, JSON_COLUMNS, SUMMARY_COLUMNS, htm_tasks
from grace.storage import utc_from_text, utc_text

__all__ = ["claim", "finish"]

COLUMNS = [c.name for c in htm_tasks.c]


def _qualified(columns: Sequence[str]) -> str:
    return ", ".join(f"htm_tasks.{c}" for c in columns)


# The statements are in grace/htm/sql/queries.sql; the templates are filled from the origins and the
# table's column names (never from input).
_SQL = sql.queries()
_SEQ = _SQL["sqlite_dispatched"]
_RELEASE_WAITING = _SQL["sqlite_release_waiting"]
_LIVE_CAPACITY = _SQL["sqlite_live_capacity"]
_ORIGINS = _SQL["sqlite_origins"]
_RUNNING = _SQL["sqlite_running"]
_READY = "SELECT " + ", ".join(_SQL["sqlite_ready_origin"].format(origin=o.value) for o in ORDER)
_NEXT = _SQL["sqlite_next"]
_TAKE = _SQL["sqlite_take"].format(columns=_qualified(COLUMNS))
_SAVE_ORIGIN = _SQL["sqlite_save_origin"]
_SAVE_SEQ = _SQL["sqlite_save_dispatched"]
_FINISH = _SQL["sqlite_finish"].format(columns=_qualified(SUMMARY_COLUMNS))


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


def claim(db: sqlite3.Connection, req: Claim) -> list[dict[str, Any]]:
    """Claim up to ``req.n`` tasks by fair pick; return the claimed rows (runs on the database's thread)."""
    now = utc_text(req.now)
    lease = timedelta(seconds=req.lease_seconds)
    seq = int(db.execute(_SEQ).fetchone()[0])
    db.execute(_RELEASE_WAITING, (now,))
    capacity = req.capacity
    if capacity <= 0:
        capacity = int(db.execute(_LIVE_CAPACITY, (utc_text(req.now - lease),)).fetchone()[0]) or max(
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
        params = (req.worker_id, now, utc_text(req.now + lease), seq, jsontext.dumps(order))
        taken = [_row(COLUMNS, r) for r in db.execute(_TAKE, params)]
    db.executemany(_SAVE_ORIGIN, [(s.credit, s.since, took[s.index], ORDER[s.index].value) for s in slots])
    db.execute(_SAVE_SEQ, (seq + len(order),))
    return taken


def finish(db: sqlite3.Connection, worker_id: str, rows: Sequence[OutcomeRow]) -> list[dict[str, Any]]:
    """Record outcomes of ``worker_id``'s attempts; return the summary of each one recorded."""
    batch = [
        [r.task_id, r.attempt, r.status, utc_text(r.finished_at), utc_text(r.queued_at), r.result, r.error, r.give_back]
        for r in rows
    ]
    return [_row(SUMMARY_COLUMNS, r) for r in db.execute(_FINISH, (worker_id, jsontext.dumps(batch)))]
