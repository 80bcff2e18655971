"""Single submissions arriving together share one transaction (one commit, so one flush to disk on
SQLite), yet each caller gets its own task, its own error and its own event, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, text

from grace import errors
from grace.auth import Principal, Role
from grace.bus import Event
from grace.clock import ManualClock
from grace.htm import HTM, Submitted, events
from grace.htm.tasks import Status
from tests.htmkit import manual_htm

MEMBER = Principal("user_member", "member", Role.MEMBER)


@contextmanager
def counting_commits(htm: HTM) -> Iterator[list[int]]:
    """Count the transactions committed on ``htm``'s database while the block runs."""
    commits: list[int] = []

    def count(_conn: Any) -> None:
        commits.append(1)

    engine = htm.db.engine.sync_engine
    event.listen(engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", count)


async def created_events(htm: HTM, n: int) -> list[Event]:
    got: list[Event] = []
    async with htm.bus.subscribe(events.CREATED, since=0) as sub:
        while len(got) < n:
            event = await sub.get(timeout=30)
            assert event is not None, f"only {len(got)} of {n} htm.task.created events arrived"
            got.append(event)
    return got


async def test_concurrent_submissions_commit_once_and_each_gets_its_own_task_and_event(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock) as htm:
        await htm.submit(htm.request("htm.noop", origin="intent"), creator=MEMBER)  # warm: schema, origins
        with counting_commits(htm) as commits:
            answers = await asyncio.gather(
                *(
                    htm.submit(htm.request("htm.noop", origin="intent", payload={"n": n}), creator=MEMBER)
                    for n in range(20)
                )
            )
        assert len({a.task_id for a in answers}) == 20
        if htm.db.is_sqlite:
            assert len(commits) == 1
        else:  # one htm_submit statement, committed on its own: every row written by one transaction
            assert len(commits) == 0
            async with htm.db.read() as conn:
                writers = await conn.execute(
                    text("SELECT count(DISTINCT xmin::text) FROM htm_tasks WHERE task_id = ANY(:ids)"),
                    {"ids": [a.task_id for a in answers]},
                )
                assert writers.scalar() == 1
        for n, answer in enumerate(answers):
            task = await htm.get(answer.task_id, principal=None)
            assert task.payload == {"n": n} and task.status is Status.QUEUED is answer.status
        published = await created_events(htm, 21)
        assert {e.payload["task_id"] for e in published} >= {a.task_id for a in answers}


async def test_a_refused_submission_in_a_group_fails_alone_and_the_others_are_enqueued(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock) as htm:
        await htm.submit(htm.request("htm.noop", origin="intent"), creator=MEMBER)
        sent = [htm.request("htm.noop", origin="intent", payload={"n": n}) for n in range(6)]
        # Submitted by Grace itself only: the member's request is refused, inside the group's transaction.
        sent.insert(3, htm.request("htm.sla.rescue", origin="intent"))
        answers = await asyncio.gather(*(htm.submit(r, creator=MEMBER) for r in sent), return_exceptions=True)
        refused = answers.pop(3)
        assert isinstance(refused, errors.PermissionDenied) and "Grace itself" in refused.message
        made: list[Submitted] = [a for a in answers if isinstance(a, Submitted)]
        assert len(made) == 6 and len({a.task_id for a in made}) == 6
        for n, answer in enumerate(made):
            assert (await htm.get(answer.task_id, principal=None)).payload == {"n": n}
        listed = await htm.list_tasks(principal=None, status=None, origin=None, limit=100)
        assert len(listed) == 7  # the warm-up and the six: nothing of the refused one
        assert len(await created_events(htm, 7)) == 7


async def test_submissions_arriving_while_the_database_is_busy_all_join_the_next_group(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock) as htm:
        if not htm.db.is_sqlite:
            pytest.skip("PostgreSQL has no in-process write lock for a test to hold the group back with")
        await htm.submit(htm.request("htm.noop", origin="intent"), creator=MEMBER)
        with counting_commits(htm) as commits:
            async with htm.db.write():  # another writer (a worker's claim, say) holds SQLite's write lock
                first = asyncio.ensure_future(htm.submit(htm.request("htm.noop", origin="intent"), creator=MEMBER))
                for _ in range(5):
                    await asyncio.sleep(0)  # the first submission's group waits for the lock
                later = [
                    asyncio.ensure_future(htm.submit(htm.request("htm.noop", origin="intent"), creator=MEMBER))
                    for _ in range(10)
                ]
                await asyncio.sleep(0)
            answers = await asyncio.gather(first, *later)
        assert len({a.task_id for a in answers}) == 11
        assert len(commits) == 2  # the other writer's, then one for all eleven submissions
