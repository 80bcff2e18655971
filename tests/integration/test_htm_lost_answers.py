"""A claim or an outcome that committed, and whose answer the dropped connection lost.

The test kit's :class:`tests.faultkit.TcpProxy` stands between the task manager and PostgreSQL:
it lets a request reach the server and commit, throws the answer away, then cuts the connection.
The worker sends its outcome again and the queue knows it as its own (recorded, its event
published, no late completion); a claim whose answer was lost is found and run at once, not left
running for a whole lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from grace.clock import ManualClock
from grace.htm import HTM, WorkerPool
from grace.htm.origins import Origin
from tests.faultkit import TcpProxy
from tests.htmkit import Gate, manual_htm, settle, submit


@pytest.fixture
async def proxied(database_url: str) -> AsyncIterator[tuple[TcpProxy, str, asyncpg.Connection]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("a dropped connection is PostgreSQL's case: SQLite is a file in this process")
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), admin
    finally:
        await admin.close()
        proxy.close()


async def _until(admin: asyncpg.Connection, query: str, *args: object) -> None:
    for _ in range(1000):
        if await admin.fetchval(query, *args):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never true: {query}")


async def _warm(htm: HTM, gate: Gate) -> WorkerPool:
    """Return a registered pool that has claimed and finished one task.

    Its connection has then prepared the claim and the outcome statements, so a later claim or
    outcome is one message and one answer: the answer is what the proxy loses. (A statement sent
    for the first time waits for the server to describe it, which would be lost instead.)
    """
    [warm] = await submit(htm, Origin.INTENT)
    pool = htm.new_pool(concurrency=2, claim_batch=1)
    await pool.register()
    assert [t.task_id for t in await pool.claim_once()] == [warm]
    gate.release()
    await settle()
    assert await pool.flush(claim=True) == 1
    gate.open.clear()
    return pool


async def _completed_events(htm: HTM, task_id: str) -> int:
    await htm.events.drain()
    return sum(e.payload["task_id"] == task_id for e in await htm.bus.replay("htm.task.completed"))


async def test_an_outcome_sent_again_after_its_answer_was_lost_is_recorded_once_with_its_event(
    proxied: tuple[TcpProxy, str, asyncpg.Connection], clock: ManualClock
) -> None:
    proxy, url, admin = proxied
    async with manual_htm(url, clock) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        pool = await _warm(htm, gate)
        [task_id] = await submit(htm, Origin.INTENT)
        assert [t.task_id for t in await pool.claim_once()] == [task_id]
        gate.release()
        await settle()

        proxy.lose_answers()
        first = asyncio.create_task(pool.flush())
        await _until(admin, "SELECT status = 'completed' FROM htm_tasks WHERE task_id = $1", task_id)
        await asyncio.to_thread(proxy.cut)
        with pytest.raises(Exception):  # noqa: B017 - whichever error the driver raises for a cut connection
            await first
        await asyncio.sleep(0.1)  # as the flush loop waits before it tries again: the loop sees the cut

        assert await pool.flush() == 1  # sent again: recognised as this worker's own outcome
        assert await htm.late_completions(task_id, principal=None) == []
        assert await _completed_events(htm, task_id) == 1
        await pool.stop(grace=0)


async def test_a_claim_whose_answer_was_lost_runs_at_once_on_its_worker_not_after_the_lease(
    proxied: tuple[TcpProxy, str, asyncpg.Connection], clock: ManualClock
) -> None:
    proxy, url, admin = proxied
    async with manual_htm(url, clock) as htm:
        gate = Gate()
        htm.handlers.register("test.gate", gate)
        pool = await _warm(htm, gate)
        [task_id] = await submit(htm, Origin.INTENT)
        started = len(gate.started)

        proxy.lose_answers()
        lost = asyncio.create_task(pool.claim_once())
        await _until(
            admin,
            "SELECT status = 'running' AND worker_id = $2 FROM htm_tasks WHERE task_id = $1",
            task_id,
            pool.worker_id,
        )
        await asyncio.to_thread(proxy.cut)
        with pytest.raises(Exception):  # noqa: B017 - whichever error the driver raises for a cut connection
            await lost
        await asyncio.sleep(0.1)  # as the dispatch loop waits before it claims again
        assert len(gate.started) == started

        # The next claim first takes back what the lost one took; no time passes on the clock. As
        # the dispatch loop does, a try that meets another connection the cut left dead is repeated.
        for _ in range(5):
            try:
                await pool.claim_once()
                break
            except Exception:
                await asyncio.sleep(0.1)
        await settle()
        assert gate.started[started:] == [task_id]
        gate.release()
        await settle()
        assert await pool.flush() == 1
        row = await admin.fetchrow("SELECT status, attempts FROM htm_tasks WHERE task_id = $1", task_id)
        assert (row["status"], row["attempts"]) == ("completed", 1)
        assert await htm.late_completions(task_id, principal=None) == []
        assert await _completed_events(htm, task_id) == 1
        await pool.stop(grace=0)
