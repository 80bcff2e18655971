"""The event bus contract, on the in-process bus (SQLite deployments) and the PostgreSQL bus."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from grace import errors, storage
from grace.bus import Bus, Event, InProcessBus, PostgresBus
from grace.clock import ManualClock
from tests.backends import PostgresTestDatabase

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def bus(db: storage.Database, clock: ManualClock) -> AsyncIterator[Bus]:
    made: Bus = (
        InProcessBus(clock=clock, retention_seconds=3600)
        if db.is_sqlite
        else PostgresBus(db, clock=clock, retention_seconds=3600)
    )
    await made.start()
    yield made
    await made.close()


async def test_subscriber_receives_matching_topics_in_order(bus: Bus) -> None:
    async with bus.subscribe("htm.sla.*") as sub:
        await bus.publish("htm.sla.warning", {"task_id": "t1"})
        await bus.publish("htm.task.created", {"task_id": "t2"})
        await bus.publish("htm.sla.violated", {"task_id": "t3"})
        first = await sub.get(timeout=30)
        second = await sub.get(timeout=30)
        assert first is not None and second is not None
        assert [first.topic, second.topic] == ["htm.sla.warning", "htm.sla.violated"]
        assert first.payload == {"task_id": "t1"} and first.id < second.id
        assert first.published_at.tzinfo is not None
        assert await sub.get(timeout=0.2) is None


async def test_a_batch_arrives_in_order_as_subscribers_read_it_back_from_json(bus: Bus) -> None:
    flat = {"task_id": "t1", "attempts": 2, "ratio": 0.5, "ok": True, "error": None}
    nested = {"ids": ("a", "b"), "counts": {1: 2}}  # a tuple and a number key: JSON makes them a list and text
    async with bus.subscribe("htm.#") as sub:
        numbered = {7: "seven"}  # plain values under a number key: JSON makes the key text
        batch: list[tuple[str, Mapping[str, Any]]] = [
            ("htm.task.created", flat),
            ("htm.task.update", nested),
            ("htm.task.failed", numbered),  # type: ignore[list-item]  # a number key, outside the signature on purpose
        ]
        assert await bus.publish_batch(batch) == 3
        flat["attempts"] = 3  # the caller's dict changes after publishing: the event keeps what was sent
        first, second, third = await sub.get(timeout=30), await sub.get(timeout=30), await sub.get(timeout=30)
    assert first is not None and second is not None and first.id < second.id
    assert (first.topic, first.payload) == ("htm.task.created", {**flat, "attempts": 2})
    assert (second.topic, second.payload) == ("htm.task.update", {"ids": ["a", "b"], "counts": {"1": 2}})
    assert third is not None and third.payload == {"7": "seven"}
    assert await bus.publish_batch([]) == 0
    with pytest.raises(errors.InvalidInput):
        await bus.publish_batch([("htm.task.created", {"bad": object()})])


async def test_a_waiting_subscriber_wakes_on_publish(bus: Bus) -> None:
    async with bus.subscribe("secrets.#") as sub:
        waiter = asyncio.create_task(sub.get(timeout=60))
        await asyncio.sleep(0.05)
        await bus.publish("secrets.consent.request", {"consent_id": "c1"})
        event = await asyncio.wait_for(waiter, 60)
        assert event is not None and event.payload["consent_id"] == "c1"


async def test_replay_from_an_event_id(bus: Bus) -> None:
    published = [await bus.publish("a.b", {"n": n}) for n in range(5)]
    replayed = await bus.replay("a.*", since=published[1].id)
    assert [e.payload["n"] for e in replayed] == [2, 3, 4]
    async with bus.subscribe("a.b", since=published[2].id) as sub:
        got = [await sub.get(timeout=30) for _ in range(2)]
    assert [e.payload["n"] for e in got if e] == [3, 4]


async def test_named_subscriber_resumes_after_what_it_consumed(bus: Bus) -> None:
    async with bus.subscribe("jobs.*", name="worker-1") as sub:
        await bus.publish("jobs.one", {"n": 1})
        await bus.publish("jobs.two", {"n": 2})
        event = await sub.get(timeout=30)
        assert event is not None and event.payload["n"] == 1
    # Down for a while: events published meanwhile are caught up after restart, in order.
    await bus.publish("jobs.three", {"n": 3})
    async with bus.subscribe("jobs.*", name="worker-1") as sub:
        got = [await sub.get(timeout=30) for _ in range(2)]
        assert [e.payload["n"] for e in got if e] == [2, 3]
        assert await sub.get(timeout=0.2) is None


async def test_a_subscriber_to_a_rare_topic_gets_it_among_thousands_of_others_and_moves_past_them(bus: Bus) -> None:
    async with bus.subscribe("playbook.fired", name="rare-reader") as sub:
        await bus.publish_many([("htm.task.created", {"n": n}) for n in range(700)])
        assert await sub.get(timeout=0.2) is None
        await bus.publish("playbook.fired", {"n": "rare"})
        await bus.publish_many([("htm.task.created", {"n": n}) for n in range(300)])
        event = await sub.get(timeout=30)
        assert event is not None and event.payload == {"n": "rare"}
        assert await sub.get(timeout=0.2) is None
        # The cursor is past the unmatched events, so the next wake-up (and a restart) does not read them again.
        assert sub.cursor == await bus.latest_id()
    await bus.publish("playbook.fired", {"n": "after"})
    async with bus.subscribe("playbook.fired", name="rare-reader") as sub:
        event = await sub.get(timeout=30)
        assert event is not None and event.payload == {"n": "after"}
        assert await sub.get(timeout=0.2) is None


async def test_retention_prunes_old_events(bus: Bus, clock: ManualClock) -> None:
    await bus.publish("old.event", {})
    clock.advance(timedelta(hours=2).total_seconds())
    await bus.publish("new.event", {})
    assert await bus.prune() == 1
    assert [e.topic for e in await bus.replay("#")] == ["new.event"]


async def test_bad_publications_are_refused(bus: Bus) -> None:
    with pytest.raises(errors.InvalidInput):
        await bus.publish("bad topic", {})
    with pytest.raises(errors.InvalidInput):
        await bus.publish("ok.topic", {"x": object()})
    with pytest.raises(errors.PayloadTooLarge):
        await bus.publish("ok.topic", {"x": "y" * 300_000})
    assert await bus.replay("#") == []


def _peer(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bus_peer", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def _publish(url: str, topic: str, count: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, "-m", "tests.bus_peer", "publish", url, topic, str(count)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=60)


@pytest.mark.slow
@pytest.mark.postgres_only
async def test_two_processes_share_events_and_a_restarted_subscriber_replays(
    postgres_database: PostgresTestDatabase | None,
) -> None:
    if postgres_database is None:
        pytest.skip("needs PostgreSQL")
    await postgres_database.truncate()
    url = postgres_database.url

    # Process B subscribes (durably, as "audit-sink"); process A publishes; B receives.
    consumer = _peer("consume", url, "fleet.*", "audit-sink", "3")
    assert consumer.stdout is not None
    assert consumer.stdout.readline().strip() == "ready"
    _publish(url, "fleet.ping", 3)
    out, _ = consumer.communicate(timeout=60)
    received = [json.loads(line) for line in out.splitlines()]
    assert [e["payload"]["n"] for e in received] == [0, 1, 2]

    # B is down while A publishes five more; restarted, B replays exactly those, in order.
    _publish(url, "fleet.ping", 5)
    restarted = _peer("consume", url, "fleet.*", "audit-sink", "5")
    out, _ = restarted.communicate(timeout=60)
    replayed = [json.loads(line) for line in out.splitlines() if line != "ready"]
    assert [e["payload"]["n"] for e in replayed] == [0, 1, 2, 3, 4]
    assert [e["id"] for e in replayed] == sorted(e["id"] for e in replayed)
    assert min(e["id"] for e in replayed) > max(e["id"] for e in received)


class _RolledBack(Exception):
    """Raised inside a transaction to roll it back."""


async def test_events_published_within_a_transaction_arrive_when_it_commits_and_never_when_it_rolls_back(
    bus: Bus, db: storage.Database
) -> None:
    async def publish_then_fail() -> None:
        async with db.write() as conn:
            await bus.publish_within(db, conn, [("auth.tokens.revoked", {"token_ids": ["gone"]})])
            raise _RolledBack

    async with bus.subscribe("auth.#") as sub:
        with pytest.raises(_RolledBack):
            await publish_then_fail()
        async with db.write() as conn:
            await bus.publish_within(db, conn, [("auth.tokens.revoked", {"token_ids": ["kept"]})])
            assert await sub.get(timeout=0.2) is None  # not before the commit
        event = await sub.get(timeout=30)
        assert event is not None and event.payload == {"token_ids": ["kept"]}
        assert await sub.get(timeout=0.2) is None  # the rolled-back one never arrives
    assert [e.payload for e in await bus.replay("auth.#")] == [{"token_ids": ["kept"]}]


async def test_publish_many_keeps_order_and_wakes_once(bus: Bus) -> None:
    async with bus.subscribe("batch.*") as sub:
        published = await bus.publish_many([("batch.a", {"n": 1}), ("batch.b", {"n": 2}), ("other.c", {"n": 3})])
        assert [e.id for e in published] == sorted(e.id for e in published)
        got = [await sub.get(timeout=30) for _ in range(2)]
        assert [(e.topic, e.payload["n"]) for e in got if e] == [("batch.a", 1), ("batch.b", 2)]
    with pytest.raises(errors.InvalidInput):
        await bus.publish_many([("fine.topic", {}), ("bad topic", {})])
    assert [e.topic for e in await bus.replay("fine.#")] == []


async def test_a_subscriber_reading_during_concurrent_publishing_misses_nothing(
    db: storage.Database, clock: ManualClock
) -> None:
    # Eight publishers (eight buses on one database, as eight processes would be) append batches at
    # once while a subscriber reads. Ids are handed out before commit, so unless appends become
    # visible in id order the reader can see a later id first, move its cursor past an earlier one
    # that commits a moment after, and never deliver it.
    def new_bus() -> Bus:
        return InProcessBus(clock=clock) if db.is_sqlite else PostgresBus(db, clock=clock)

    buses = [new_bus() for _ in range(1 if db.is_sqlite else 8)]
    for b in buses:
        await b.start()
    try:
        async with buses[0].subscribe("load.#") as sub:

            async def publish(b: Bus, k: int) -> None:
                for round_ in range(10):
                    await b.publish_many([("load.event", {"k": k, "r": round_, "i": i}) for i in range(20)])

            expected = 20 * 10 * 8
            publishers = [asyncio.create_task(publish(buses[k % len(buses)], k)) for k in range(8)]
            received: list[Event] = []
            while len(received) < expected:
                event = await sub.get(timeout=60)
                assert event is not None, f"only {len(received)} of {expected} events were delivered"
                received.append(event)
            await asyncio.gather(*publishers)
            assert [e.id for e in received] == sorted(e.id for e in received)
            assert len({(e.payload["k"], e.payload["r"], e.payload["i"]) for e in received}) == expected
    finally:
        for b in buses:
            await b.close()


@pytest.mark.postgres_only
async def test_a_barrier_returns_once_every_listening_process_has_heard_what_committed_before_it(
    db: storage.Database, clock: ManualClock
) -> None:
    """What a process's hint does (the token cache emptied) is in force on every node when the barrier returns."""
    if db.is_sqlite:
        pytest.skip("one process: nothing to wait for")
    here, there = PostgresBus(db, clock=clock), PostgresBus(db, clock=clock)
    heard: list[str] = []
    there.on_published("fleet.", lambda: heard.append("fleet"))
    await here.start()
    await there.start()
    try:
        await here.publish("fleet.revoked", {"n": 1})
        assert await here.barrier() == 2  # both listening connections confirmed
        assert heard == ["fleet"]
    finally:
        await here.close()
        await there.close()


@pytest.mark.postgres_only
async def test_a_barrier_does_not_wait_forever_for_a_process_that_never_answers(
    db: storage.Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if db.is_sqlite:
        pytest.skip("one process: nothing to wait for")
    import asyncpg

    from grace.bus import postgres

    monkeypatch.setattr(postgres, "BARRIER_SECONDS", 1.0)
    bus = PostgresBus(db, clock=clock)
    await bus.start()
    # A session named like a bus's listener that listens and never answers: a process whose loop is stuck.
    stuck = await asyncpg.connect(db.driver_dsn, server_settings={"application_name": postgres.LISTENER_NAME})
    await stuck.execute(f"LISTEN {postgres.BARRIER}")
    try:
        with caplog.at_level("WARNING", logger="grace.bus"):
            assert await bus.barrier() == 1
        assert any(r.getMessage() == "bus.barrier_incomplete" for r in caplog.records)
        await stuck.close()
        assert await bus.barrier() == 1  # gone, so no longer waited for
    finally:
        await bus.close()
