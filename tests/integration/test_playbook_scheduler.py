"""The scheduler on both databases with a fake clock: catch-up under coalesce, concurrency, events, HTM tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from grace.bus import Event
from grace.clock import ManualClock
from grace.config import Settings
from grace.htm.tables import htm_tasks
from grace.playbooks import RUN_TASK
from grace.services import Services, build

PLAYBOOK = """
version: 1
name: every_five
triggers:
  - schedule: {cron: "*/5 * * * *", timezone: UTC}
  - event: {topic: htm.task.failed, when: "event.status == 'timed_out'"}
policy: {concurrency: forbid, misfire_grace: 300, coalesce: true}
steps:
  - id: stats
    action: htm.stats
"""


@pytest.fixture
async def scheduled(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Services, ManualClock]]:
    clock = ManualClock(datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
    directory = tmp_path / "playbooks"
    directory.mkdir()
    (directory / "every_five.yaml").write_text(PLAYBOOK)
    services = await build(settings.model_copy(update={"playbooks_dir": directory}), clock=clock, migrate=False)
    try:
        yield services, clock
    finally:
        await services.close()


async def queued_run_tasks(services: Services) -> list[dict[str, object]]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(htm_tasks).where(htm_tasks.c.task_type == RUN_TASK))).mappings().all()
    return [dict(r) for r in rows]


async def test_three_hours_of_downtime_give_exactly_one_catch_up_run_under_coalesce(
    scheduled: tuple[Services, ManualClock],
) -> None:
    services, clock = scheduled
    assert await services.scheduler.tick() == []  # a new schedule starts from now
    clock.advance(3 * 3600)
    queued = await services.scheduler.tick()
    assert len(queued) == 1
    runs = await services.playbooks.runs(playbook="every_five", limit=100)
    assert len([r for r in runs if r.status == "queued"]) == 1
    skipped = [r for r in runs if r.status == "skipped"]
    assert len(skipped) == 35 and all("coalesced" in (r.reason or "") for r in skipped)
    [task] = await queued_run_tasks(services)
    assert task["origin"] == "scheduler" and task["payload"]["run_id"] == queued[0]  # type: ignore[index]
    assert await services.scheduler.tick() == []  # nothing more is due


async def test_forbid_records_a_skip_while_a_run_is_still_queued(scheduled: tuple[Services, ManualClock]) -> None:
    services, clock = scheduled
    await services.scheduler.tick()
    clock.advance(300)
    [first] = await services.scheduler.tick()
    clock.advance(300)
    assert await services.scheduler.tick() == []
    runs = await services.playbooks.runs(playbook="every_five")
    skipped = [r for r in runs if r.status == "skipped"]
    assert len(skipped) == 1 and f"run {first} is still queued" in (skipped[0].reason or "")


async def test_a_repeated_event_id_starts_no_second_run(scheduled: tuple[Services, ManualClock]) -> None:
    services, clock = scheduled
    playbook = services.playbooks.named("every_five")
    event = Event(41, "htm.task.failed", {"task_id": "t", "status": "timed_out"}, clock.now())
    first = await services.scheduler.on_event(playbook, event)
    assert first is not None
    await services.playbooks.history.update(first, status="succeeded")  # finished, so forbid allows another
    assert await services.scheduler.on_event(playbook, event) is None
    other = Event(42, "htm.task.failed", {"task_id": "t", "status": "failed"}, clock.now())
    assert await services.scheduler.on_event(playbook, other) is None  # its condition is false
    assert len(await services.playbooks.runs(playbook="every_five")) == 1


async def test_a_fired_run_executes_as_a_task_manager_task(services: Services, tmp_path: Path) -> None:
    directory = tmp_path / "playbooks"
    directory.mkdir()
    (directory / "every_five.yaml").write_text(PLAYBOOK)
    services.playbooks.directory = directory
    playbook = services.playbooks.named("every_five")
    async with services.bus.subscribe("htm.task.*") as completed:
        run_id = await services.scheduler.on_event(
            playbook, Event(7, "htm.task.failed", {"status": "timed_out"}, services.clock.now())
        )
        assert run_id is not None
        await services.htm.start_workers()
        event = await asyncio.wait_for(completed.get(), 60)
        while event is not None and event.topic not in ("htm.task.completed", "htm.task.failed"):
            event = await asyncio.wait_for(completed.get(), 60)
    assert event is not None and event.payload["task_type"] == RUN_TASK
    assert event.topic == "htm.task.completed", event.payload.get("error")
    record = await services.playbooks.run_record(run_id)
    assert (record.status, record.trigger) == ("succeeded", "event")
    assert [s["id"] for s in record.steps] == ["stats"]


async def test_two_schedulers_on_one_database_fire_a_due_schedule_once(
    scheduled: tuple[Services, ManualClock], settings: Settings, tmp_path: Path
) -> None:
    services, clock = scheduled
    from grace import storage
    from grace.playbooks import LEADER_LOCK, Scheduler

    other = Scheduler(
        services.playbooks,
        services.htm,
        services.bus,
        clock,
        leadership=storage.Leadership(services.db, LEADER_LOCK),
    )
    try:
        await services.scheduler.tick()
        await other.tick()
        clock.advance(300)
        fired = await asyncio.gather(services.scheduler.tick(), other.tick())
        # On PostgreSQL only the leader ticks; on SQLite both lead, and the firing's key admits one run.
        assert sum(len(f) for f in fired) == 1
        assert len([r for r in await services.playbooks.runs(playbook="every_five") if r.status == "queued"]) == 1
    finally:
        await other.stop()


async def test_replace_cancels_the_active_run_and_queues_the_new_one(scheduled: tuple[Services, ManualClock]) -> None:
    services, _ = scheduled
    (services.playbooks.directory / "every_five.yaml").write_text(
        PLAYBOOK.replace("concurrency: forbid", "concurrency: replace")
    )
    playbook = services.playbooks.named("every_five")
    first = await services.scheduler.queue_manual(playbook, {}, who="alice")
    second = await services.scheduler.queue_manual(playbook, {}, who="alice")
    old = await services.playbooks.run_record(first)
    assert old.status == "cancelled" and second in (old.reason or "")
    assert (await services.htm.get(old.task_id or "", principal=None)).status.value == "cancelled"
    assert (await services.playbooks.run_record(second)).status == "queued"
