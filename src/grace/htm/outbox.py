"""Task events written with the change they describe (PostgreSQL), and the topic of each change.

On PostgreSQL, with task events on and the bus in the database (:class:`grace.bus.PostgresBus`),
every task event is a row of ``htm_outbox`` written in the transaction of the change it
describes: submissions in their insert's statement, claims and outcomes in the statement that
makes them (``pg_with_events`` in ``grace/htm/sql/queries.sql``), cancels and the reap in their
transactions. The relay (:meth:`grace.bus.PostgresBus.relay`, run by the event publisher after
each local commit and swept every ``SWEEP_SECONDS`` in every serving process) moves them into
the bus's ``events`` table, oldest first, one relay at a time. So a process killed right after a
commit loses no event, none is published twice, and each task's events keep their order.

On SQLite the bus is in memory, in the only process: events are published after commit by the
publisher (:mod:`grace.htm.events`) and die with the process, like everything else in its memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import jsontext
from grace.htm import events
from grace.htm.attempts import Finished
from grace.htm.tables import htm_outbox
from grace.htm.tasks import Status

__all__ = ["topic_of", "write"]


def topic_of(f: Finished) -> str:
    """Return the topic announcing the change ``f`` recorded."""
    if f.status is Status.COMPLETED:
        return events.COMPLETED
    if f.status in (Status.FAILED, Status.TIMED_OUT):
        return events.FAILED
    return events.UPDATE


async def write(conn: AsyncConnection, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Write events into the outbox as part of ``conn``'s transaction, in order."""
    if items:
        await conn.execute(
            insert(htm_outbox), [{"topic": topic, "payload": jsontext.dumps(payload)} for topic, payload in items]
        )
