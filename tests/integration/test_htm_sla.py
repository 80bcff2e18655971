"""The SLA enforcer on SQLite and PostgreSQL: thresholds, exactly-once levels, escalation, rescue tasks, stats.

Time moves only when a test moves the ManualClock, and every tick is driven directly.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from grace import storage
from grace.bus import Event
from grace.clock import ManualClock
from grace.htm import HTM, Status
from grace.htm.origins import Origin
from grace.htm.queue import Outcome
from grace.htm.sla import SLAEnforcer
from grace.htm.tables import htm_tasks
from grace.storage import migrate
from tests.htmkit import manual_htm, submit

SLA_TOPICS = "htm.sla.*"


async def sla_events(htm: HTM, topic: str = SLA_TOPICS) -> list[Event]:
    await htm.events.drain()
    return await htm.bus.replay(topic)


def unguarded_enforcer(htm: HTM) -> SLAEnforcer:
    """An enforcer on ``htm``'s parts that acts without the leader lock."""
    return SLAEnforcer(
        htm.db,
        htm.clock,
        htm.config,
        submitter=htm.submitter,
        publisher=htm.events,
        report=htm.sla_report,
        singleton=False,
    )


def fired(events: list[Event]) -> list[tuple[str, str]]:
    """(topic, task_id) for every level event, leaving out the periodic stats."""
    return [(e.topic, e.payload["task_id"]) for e in events if e.topic != "htm.sla.stats"]


async def column(htm: HTM, task_id: str, name: str) -> Any:
    async with htm.db.read() as conn:
        return (await conn.execute(select(htm_tasks.c[name]).where(htm_tasks.c.task_id == task_id))).scalar_one()


async def finish(htm: HTM, task_id: str, worker: str = "w1") -> None:
    """Claim ``task_id`` (the only queued task) and record it completed now."""
    [task] = await htm.queue.claim(worker, 1, fallback_capacity=1)
    assert task.task_id == task_id
    await htm.record(worker, [Outcome(task_id, task.attempts, Status.COMPLETED, htm.clock.now())])


async def test_each_level_fires_at_its_threshold_and_not_before(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.INTENT, sla_ms=10_000)
        steps = [
            (7.999, []),
            (0.001, ["htm.sla.warning"]),  # 8.000 s: 80%
            (1.999, []),
            (0.001, ["htm.sla.violated"]),  # 10.000 s: 100%
            (9.999, []),
            (0.001, ["htm.sla.critical"]),  # 20.000 s: 200%
            (3600, []),
        ]
        for seconds, expected in steps:
            clock.advance(seconds)
            before = len(fired(await sla_events(htm)))
            tick = await htm.sla.tick()
            assert tick.leader
            events = fired(await sla_events(htm))[before:]
            assert events == [(topic, task_id) for topic in expected], f"after {seconds}s"
        assert await column(htm, task_id, "sla_level") == 3

        by_topic = {e.topic: e.payload for e in await sla_events(htm)}
        warning, violated, critical = (by_topic[f"htm.sla.{n}"] for n in ("warning", "violated", "critical"))
        assert warning["level"] == "warning" and warning["elapsed_ratio"] == 0.8 and warning["remaining_ms"] == 2000
        assert warning["origin"] == "intent" and warning["sla_ms"] == 10_000 and warning["status"] == "queued"
        assert violated["overdue_ms"] == 0 and violated["escalated"] is True
        assert violated["previous_priority"] == "normal" and violated["priority"] == "high"
        assert critical["elapsed_ratio"] == 2.0 and critical["overdue_ms"] == 10_000
        rescue = await htm.get(critical["rescue_task_id"], principal=None)
        assert rescue.task_type == "htm.sla.rescue" and rescue.origin is Origin.REMEDIATION
        assert rescue.payload["task_id"] == task_id and rescue.sla_ms is None
        assert all("payload" not in e.payload for e in await sla_events(htm))


async def test_sla_events_are_published_when_task_events_are_switched_off(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, events=False) as htm:
        [task_id] = await submit(htm, Origin.INTENT, sla_ms=1000)
        clock.advance(1.0)
        await htm.sla.tick()
        assert fired(await sla_events(htm)) == [("htm.sla.warning", task_id), ("htm.sla.violated", task_id)]
        assert await sla_events(htm, "htm.sla.stats")  # the first tick's statistics
        assert await htm.bus.replay("htm.task.#") == []  # the task events stayed off


async def test_a_late_first_look_fires_every_level_passed_in_order(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.SCHEDULER, sla_ms=1000)
        clock.advance(2.5)  # no tick ran meanwhile (say, no enforcer was up)
        tick = await htm.sla.tick()
        assert tick.fired == [(task_id, "warning"), (task_id, "violated"), (task_id, "critical")]
        assert fired(await sla_events(htm)) == [
            ("htm.sla.warning", task_id),
            ("htm.sla.violated", task_id),
            ("htm.sla.critical", task_id),
        ]
        assert list(tick.rescues) == [task_id]


async def test_each_level_fires_once_across_ticks_restarts_and_concurrent_enforcers(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock) as first:
        ids = await submit(first, Origin.USER_REQUEST, 30, sla_ms=1000)
        clock.advance(0.8)
        assert sorted((await first.sla.tick()).tasks_at("warning")) == sorted(ids)
        for _ in range(3):
            assert (await first.sla.tick()).fired == []
        first_events = fired(await sla_events(first))

    # A restart: a new process on the same database, at the same instant, fires nothing again.
    async with manual_htm(database_url, clock) as restarted:
        assert (await restarted.sla.tick()).fired == []

    # Two enforcers racing on the same due tasks, without the leader lock: the guarded UPDATE alone
    # lets exactly one transaction make each transition.
    async with manual_htm(database_url, clock) as a, manual_htm(database_url, clock) as b:
        clock.advance(0.5)  # 130%
        one, two = unguarded_enforcer(a), unguarded_enforcer(b)
        ticks = await asyncio.gather(one.tick(), two.tick(), one.tick(), two.tick())
        violated = [t for tick in ticks for t in tick.tasks_at("violated")]
        assert sorted(violated) == sorted(ids)
        clock.advance(0.7)  # 200%
        ticks = await asyncio.gather(one.tick(), two.tick(), one.tick(), two.tick())
        critical = [t for tick in ticks for t in tick.tasks_at("critical")]
        assert sorted(critical) == sorted(ids)
        rescues = [r for tick in ticks for r in tick.rescues.values()]
        assert len(set(rescues)) == 30
        events = first_events + fired(await sla_events(a)) + fired(await sla_events(b))
        for topic in ("htm.sla.warning", "htm.sla.violated", "htm.sla.critical"):
            assert sorted(t for top, t in events if top == topic) == sorted(ids), topic
        queued_rescues = await a.list_tasks(principal=None, origin="remediation", limit=100)
        assert len(queued_rescues) == 30
        stats = await a.sla_stats()
        assert stats["warnings_issued"] == stats["total_violations"] == stats["sub_agents_spawned"] == 30


async def test_a_violated_task_is_claimed_before_an_older_task_of_its_origin(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock) as htm:
        [older] = await submit(htm, Origin.FILESYSTEM_TRIGGER)
        [critical] = await submit(htm, Origin.HUNTER_ALERT, priority="critical", sla_ms=1000)
        [low] = await submit(htm, Origin.INTERNAL, priority="low", sla_ms=1000)
        clock.advance(0.5)
        [younger] = await submit(htm, Origin.FILESYSTEM_TRIGGER, sla_ms=1000)
        clock.advance(0.9)  # critical and low are past 100%; younger is at 90%
        await htm.sla.tick()
        assert (await htm.get(younger, principal=None)).priority.value == "normal"
        clock.advance(0.1)  # younger reaches 100%
        tick = await htm.sla.tick()
        assert tick.tasks_at("violated") == [younger]
        assert await column(htm, younger, "priority_rank") == 1
        assert (await htm.get(younger, principal=None)).priority.value == "high"
        assert (await htm.get(critical, principal=None)).priority.value == "critical"  # never lowered
        assert (await htm.get(low, principal=None)).priority.value == "high"
        # The fair pick chooses origins; within filesystem the escalated, younger task now goes first.
        async with htm.db.write() as conn:  # leave only filesystem's tasks claimable for now
            await conn.execute(
                update(htm_tasks)
                .where(htm_tasks.c.task_id.in_([critical, low]))
                .values(status="delayed", queued_at=clock.now() + timedelta(hours=1))
            )
        claimed = [t.task_id for t in await htm.queue.claim("w1", 2, fallback_capacity=4)]
        assert claimed == [younger, older]


async def test_a_rescue_task_runs_on_a_real_worker_and_returns_a_task_whose_lease_expired(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, lease_seconds=1) as htm:
        [stuck] = await submit(htm, Origin.INTENT, sla_ms=1000, task_type="test.never_runs")
        [taken] = await htm.queue.claim("vanished-worker", 1, fallback_capacity=1)  # then it never reports
        assert taken.task_id == stuck and taken.started_at is not None
        clock.advance(2)
        tick = await htm.sla.tick()
        rescue_id = tick.rescues[stuck]
        pool = htm.new_pool(concurrency=1, claim_batch=1)
        [claimed] = await pool.claim_once()
        assert claimed.task_id == rescue_id
        await pool.wait_idle()
        rescue = await htm.get(rescue_id, principal=None)
        assert rescue.status is Status.COMPLETED, rescue.error
        result = rescue.result
        assert result["task_id"] == stuck and result["status"] == "running"
        assert result["worker_id"] == "vanished-worker" and result["lease_expired"] is True
        assert result["lease_expires_at"] == (taken.started_at + timedelta(seconds=1)).isoformat()
        assert result["overdue_ms"] == 1000 and result["elapsed_ratio"] == 2.0
        assert result["action"] == "returned_to_queue" and result["status_after"] == "queued"
        assert "vanished-worker" in result["summary"] and "returned it to the queue" in result["summary"]
        returned = await htm.get(stuck, principal=None)
        assert returned.status is Status.QUEUED and returned.worker_id is None
        assert returned.priority.value == "high"  # escalated at 100%, so it goes first when claimed again


async def test_a_rescue_of_a_queued_task_reports_what_is_ahead_of_it(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        ahead = await submit(htm, Origin.SCHEDULER, 3, priority="critical")
        await submit(htm, Origin.SCHEDULER, 2, priority="low")  # behind it
        [late] = await submit(htm, Origin.SCHEDULER, sla_ms=1000)
        clock.advance(2)
        assert late in (await htm.sla.tick()).rescues
        await htm.cancel(ahead[0], principal=None)  # no longer ahead
        # What the rescue handler runs (the worker-driven run is the lease test above).
        result = await htm.rescuer.inspect_overdue(late)
        assert result["status"] == "queued" and result["priority"] == "high"
        assert result["queued_ahead"] == 2  # the two critical tasks left; the low ones are behind it
        assert result["action"] == "none" and result["lease_expired"] is None and result["overdue_ms"] == 1000
        assert "2 scheduler task(s) ahead" in result["summary"]
        gone = await htm.rescuer.inspect_overdue("task_missing")
        assert gone["found"] is False and gone["action"] == "none"


async def test_a_rescue_counts_ahead_only_what_a_claim_takes_first(database_url: str, clock: ManualClock) -> None:
    # Within an origin a claim goes by priority, then earliest deadline (none last), then age.
    async with manual_htm(database_url, clock) as htm:
        await submit(htm, Origin.SCHEDULER, priority="high")  # high, but no deadline: behind
        [sooner] = await submit(htm, Origin.SCHEDULER, priority="high", sla_ms=800)  # ahead
        await submit(htm, Origin.SCHEDULER, priority="high", sla_ms=60_000)  # a later deadline: behind
        [late] = await submit(htm, Origin.SCHEDULER, sla_ms=1000)  # escalated to high at 100%
        clock.advance(2)
        assert late in (await htm.sla.tick()).rescues
        result = await htm.rescuer.inspect_overdue(late)
        assert result["priority"] == "high" and result["queued_ahead"] == 1
        claimed = await htm.queue.claim("w1", 10, fallback_capacity=10)  # with the rescue tasks (remediation)
        assert [t.task_id for t in claimed if t.origin is Origin.SCHEDULER][:2] == [sooner, late]


async def test_the_enforcer_sleeps_until_the_next_level_falls_due_at_most_a_tick(
    database_url: str, clock: ManualClock
) -> None:
    async with manual_htm(database_url, clock, sla_tick_seconds=1.0) as htm:
        enforcer = htm.sla
        assert await enforcer.next_due() is None
        assert await enforcer.pause_after(await enforcer.tick()) == 1.0  # nothing open: a whole tick
        start = clock.now()
        await submit(htm, Origin.INTENT)  # no SLA: never due
        [slow] = await submit(htm, Origin.INTENT, sla_ms=60_000)
        [quick] = await submit(htm, Origin.INTENT, sla_ms=1000)  # warning at 0.8 s
        assert await enforcer.next_due() == start + timedelta(milliseconds=800)
        clock.advance(0.5)
        assert await enforcer.pause_after(await enforcer.tick()) == pytest.approx(0.3, abs=0.01)
        clock.advance(0.3)
        tick = await enforcer.tick()
        assert tick.tasks_at("warning") == [quick]
        # Its violation is next (at 1 s), then the other's warning (48 s): never more than a tick away.
        assert await enforcer.next_due() == start + timedelta(seconds=1)
        assert await enforcer.pause_after(tick) == pytest.approx(0.2, abs=0.01)
        clock.advance(0.2)
        assert (await enforcer.tick()).tasks_at("violated") == [quick]
        assert await enforcer.next_due() == start + timedelta(seconds=2)  # quick's critical level
        clock.advance(0.7)
        tick = await enforcer.tick()
        assert await enforcer.pause_after(tick) == pytest.approx(0.3, abs=0.01)
        await htm.cancel(quick, principal=None)
        assert await enforcer.next_due() == start + timedelta(seconds=48)  # slow's warning
        assert await enforcer.pause_after(tick) == 1.0
        assert slow


async def test_a_short_sla_submitted_while_the_enforcer_sleeps_wakes_it_in_time(
    database_url: str, clock: ManualClock
) -> None:
    # The loop may sleep a whole tick (an hour here) when nothing is due; a task submitted in this
    # process whose warning falls due sooner wakes it (the submitter nudges it after commit).
    async with manual_htm(database_url, clock, sla_tick_seconds=3600) as htm:
        stats = await htm.bus.subscribe("htm.sla.stats").open()
        warnings = await htm.bus.subscribe("htm.sla.warning").open()
        htm.sla.start()
        assert await stats.get(timeout=30) is not None  # the first tick ran; the loop now sleeps
        [task_id] = await submit(htm, Origin.INTENT, sla_ms=100)  # warning at 80 ms
        clock.advance(0.1)
        warning = await warnings.get(timeout=30)
        assert warning is not None and warning.payload["task_id"] == task_id


async def test_tasks_finished_before_their_deadline_never_escalate(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.USER_REQUEST, sla_ms=1000)
        clock.advance(0.5)
        await finish(htm, task_id)
        clock.advance(60)
        assert (await htm.sla.tick()).fired == []
        assert fired(await sla_events(htm)) == []
        assert await column(htm, task_id, "sla_level") == 0
        task = await htm.get(task_id, principal=None)
        assert task.sla_met is True and task.priority.value == "normal"


async def test_a_task_without_an_sla_is_never_touched(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock) as htm:
        [task_id] = await submit(htm, Origin.USER_REQUEST, priority="low")
        before = await htm.get(task_id, principal=None)
        for _ in range(3):
            clock.advance(30 * 24 * 3600)
            assert (await htm.sla.tick()).fired == []
        assert await column(htm, task_id, "sla_level") == 0 and await column(htm, task_id, "sla_due_at") is None
        assert await htm.get(task_id, principal=None) == before
        assert (await htm.sla_stats())["active_violations"] == 0


async def test_statistics_match_the_scenario_and_survive_a_restart(database_url: str, clock: ManualClock) -> None:
    async with manual_htm(database_url, clock, sla_window_seconds=3600, sla_stats_seconds=0.25) as htm:
        [in_time] = await submit(htm, Origin.INTENT, sla_ms=1000)
        [late] = await submit(htm, Origin.USER_REQUEST, sla_ms=1000)
        [stuck] = await submit(htm, Origin.HUNTER_ALERT, sla_ms=1000, priority="high")
        [no_sla] = await submit(htm, Origin.INTENT)
        [warned] = await submit(htm, Origin.SCHEDULER, sla_ms=2500)
        [cancelled] = await submit(htm, Origin.EXTERNAL_API, sla_ms=1000)
        assert len(await htm.queue.claim("w1", 10, fallback_capacity=10)) == 6  # all running, attempt 1
        first = await htm.sla.tick()
        assert first.stats is not None and first.stats["sla_compliance_rate"] is None
        clock.advance(0.5)
        await htm.record("w1", [Outcome(in_time, 1, Status.COMPLETED, clock.now())])  # met, at 50%
        clock.advance(0.5)
        await htm.sla.tick()  # late, stuck and cancelled reach 100%
        await htm.cancel(cancelled, principal=None)  # a cancelled task does not count for compliance
        clock.advance(0.5)
        done = [Outcome(t, 1, Status.COMPLETED, clock.now()) for t in (late, no_sla)]  # late by 500 ms
        await htm.record("w1", done)
        clock.advance(0.5)  # 2 s: stuck reaches 200%, warned 80%
        tick = await htm.sla.tick()
        assert tick.tasks_at("critical") == [stuck] and tick.tasks_at("warning") == [warned]
        expected = {
            "warnings_issued": 4,  # late, stuck, cancelled, warned
            "total_violations": 3,  # late, stuck, cancelled
            "escalations_triggered": 2,  # late and cancelled were normal; stuck was already high
            "sub_agents_spawned": 1,  # stuck's rescue
            "sla_compliance_rate": 0.5,  # in_time met, late missed; cancelled and unfinished left out
            "active_violations": 1,  # stuck
            "finished_with_sla": 2,
            "finished_late": 1,
        }
        assert tick.stats is not None and {k: tick.stats[k] for k in expected} == expected
        stats = await htm.sla_stats()
        assert {k: stats[k] for k in expected} == expected and stats["window_seconds"] == 3600
        violations = await htm.sla_violations(principal=None)
        assert [(v["task_id"], v["sla_level"], v["overdue_ms"], v["priority"]) for v in violations] == [
            (stuck, "critical", 1000.0, "high")
        ]

        # htm.sla.stats: published on the leader's first tick, then whenever the interval has passed.
        clock.advance(0.2)
        assert (await htm.sla.tick()).stats is None
        clock.advance(0.05)
        published = (await htm.sla.tick()).stats
        assert published is not None and {k: published[k] for k in expected} == expected
        stats_events = await sla_events(htm, "htm.sla.stats")
        assert len(stats_events) == 4 and stats_events[-1].payload == published

    async with manual_htm(database_url, clock, sla_window_seconds=3600) as restarted:
        again = await restarted.sla_stats()
        assert {k: again[k] for k in expected} == expected
        clock.advance(3600)  # the finished ones leave the window; the counts are all-time
        later = await restarted.sla_stats()
        assert later["sla_compliance_rate"] is None and later["finished_with_sla"] == 0
        assert later["warnings_issued"] == 4 and later["sub_agents_spawned"] == 1
        assert later["active_violations"] == 2  # warned is past its deadline now too, counted before any tick


async def test_only_the_leader_enforces_on_postgresql(database_url: str, clock: ManualClock) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("on SQLite the serving process is the only enforcer; there is no lock to hold")
    async with manual_htm(database_url, clock) as a, manual_htm(database_url, clock) as b:
        assert (await a.sla.tick()).leader and a.sla.is_leader
        [task_id] = await submit(a, Origin.INTENT, sla_ms=1000)
        clock.advance(0.8)
        follower = await b.sla.tick()
        assert not follower.leader and not b.sla.is_leader and follower.fired == []
        assert await column(a, task_id, "sla_level") == 0  # the follower did nothing
        assert (await a.sla.tick()).tasks_at("warning") == [task_id]
        await a.sla.stop()  # the leader goes away (its lock connection closes)
        clock.advance(0.2)
        took_over = await b.sla.tick()
        assert took_over.leader and took_over.tasks_at("violated") == [task_id]
        assert not (await a.sla.tick()).leader  # and the old leader comes back as a follower
        assert fired(await sla_events(a)) == [("htm.sla.warning", task_id)]
        assert fired(await sla_events(b)) == [("htm.sla.violated", task_id)]


async def _alembic(db: storage.Database, action: str, revision: str) -> None:
    def run(connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(migrate.__file__).parent / "migrations"))
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


def _old_task(task_id: str, clock: ManualClock, *, sla_ms: int | None, status: str = "queued") -> dict[str, Any]:
    """A task row as the schema before 0004_htm_sla had it."""
    now = clock.now()
    return {
        "task_id": task_id,
        "task_type": "test.gate",
        "priority": "normal",
        "priority_rank": 2,
        "origin": "intent",
        "origin_rule": "explicit",
        "payload": {},
        "data_size_bytes": 2,
        "created_by": None,
        "created_by_name": "grace",
        "sla_ms": sla_ms,
        "deadline": now + timedelta(milliseconds=sla_ms) if sla_ms else None,
        "status": status,
        "route": "accepted",
        "route_reason": "test",
        "attempts": 0,
        "max_attempts": 3,
        "timeout_seconds": 600.0,
        "created_at": now,
        "admitted_at": now,
        "queued_at": now,
        "finished_at": now if status == "completed" else None,
    }


async def test_unfinished_tasks_from_before_the_upgrade_are_enforced(
    empty_database_url: str, clock: ManualClock
) -> None:
    db = storage.Database(empty_database_url)
    try:
        await storage.upgrade(db, "0003_vault")
        async with db.write() as conn:
            for row in (
                _old_task("task_old_short", clock, sla_ms=1000),
                _old_task("task_old_long", clock, sla_ms=10_000),
                _old_task("task_old_done", clock, sla_ms=1000, status="completed"),
            ):
                await conn.execute(insert(htm_tasks).values(**row))
        clock.advance(1.5)
        await storage.upgrade(db)
        # Downgrading and upgrading again is lossless for the tasks themselves.
        await _alembic(db, "downgrade", "0003_vault")
        await _alembic(db, "upgrade", "head")
    finally:
        await db.dispose()
    async with manual_htm(empty_database_url, clock) as htm:
        assert await column(htm, "task_old_short", "sla_due_at") == clock.now() - timedelta(seconds=1.5)
        assert await column(htm, "task_old_done", "sla_due_at") is None
        tick = await htm.sla.tick()
        assert tick.fired == [("task_old_short", "warning"), ("task_old_short", "violated")]
        assert await column(htm, "task_old_long", "sla_level") == 0  # at 15%: only its due time moved
        assert await column(htm, "task_old_long", "sla_due_at") == clock.now() + timedelta(seconds=6.5)
        clock.advance(6.5)
        assert (await htm.sla.tick()).tasks_at("warning") == ["task_old_long"]
