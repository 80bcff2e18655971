"""Orphans on both sides of the intent ↔ task bridge, found and recovered by the sweep, on both databases.

The "never created" case kills a real process between the submission's two writes (the test hook
GRACE_INTENTS_TEST_EXIT_AFTER_RECORD makes it exit there).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete

from grace.clock import ManualClock
from grace.config import Settings
from grace.htm.tables import htm_tasks
from grace.intents import CRASH_AFTER_RECORD_ENV, IntentStatus
from grace.intents.recovery import VANISHED
from grace.intents.tables import intent_records
from tests import canary
from tests.vaultkit import Cast, make_cast

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def cast(settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cast]:
    """The vault's cast, with one attempt per task (a failure is final at once)."""
    monkeypatch.setenv("GRACE_HTM_MAX_ATTEMPTS", "1")
    built = await make_cast(settings, clock)
    yield built
    await canary.sweep(built.services)
    await built.services.close()


async def crash_between_the_two_writes(settings: Settings, database_url: str, goal: str) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.intents_crash_child",
        str(settings.data_dir),
        database_url,
        "aaron",
        goal,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={
            **os.environ,
            CRASH_AFTER_RECORD_ENV: "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        },
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=300)
    assert child.returncode == 75, (child.returncode, out.decode(), err.decode()[-2000:])
    assert out.decode().split() == ["SUBMITTING"]


async def vanish(cast: Cast, task_id: str) -> None:
    async with cast.services.db.write() as conn:
        await conn.execute(delete(htm_tasks).where(htm_tasks.c.task_id == task_id))


async def test_an_intent_whose_process_died_before_its_task_is_resubmitted_once_then_failed(
    cast: Cast, settings: Settings, database_url: str
) -> None:
    intents = cast.services.intents
    await crash_between_the_two_writes(settings, database_url, "Index the uploads")
    [lost] = await intents.list_intents(principal=cast.owner)
    assert lost.status is IntentStatus.PENDING and lost.htm_task_id is None and lost.goal == "Index the uploads"

    # The child ran on the system clock: this test's clock catches up with it first.
    cast.clock.advance(max(0.0, (datetime.now(UTC) - cast.clock.now()).total_seconds()))
    # Too young: it may still be in the middle of its submission in another process.
    assert (await intents.sweeper.sweep()).resubmitted == []

    cast.clock.advance(intents.config.recover_after_seconds + 1)
    events = await cast.services.bus.subscribe("agentic.intent.*").open()
    swept = await intents.sweeper.sweep()
    assert swept.resubmitted == [lost.intent_id]
    again = await intents.get(lost.intent_id, principal=cast.owner)
    assert again.status is IntentStatus.QUEUED and again.recoveries == 1 and again.htm_task_id
    task = await cast.services.htm.get(again.htm_task_id, principal=cast.owner)
    assert task.intent_id == lost.intent_id and task.origin.value == "intent"
    created = await events.get(timeout=60)
    assert created is not None and created.topic == "agentic.intent.created" and created.payload["recovered"] is True

    # Its task vanishes too: the one resubmission is spent, so the intent fails with the reason.
    await vanish(cast, again.htm_task_id)
    swept = await intents.sweeper.sweep()
    assert swept.failed == [lost.intent_id] and swept.resubmitted == []
    failed = await intents.get(lost.intent_id, principal=cast.owner)
    assert failed.status is IntentStatus.FAILED
    assert failed.reason == f"{VANISHED}, again after it was resubmitted once"
    [outcome] = await intents.list_outcomes(principal=cast.owner, intent_id=lost.intent_id)
    assert outcome["success"] is False and outcome["context"]["metrics"]["recoveries"] == 1
    event = await events.get(timeout=60)
    assert event is not None and event.topic == "agentic.intent.failed"


async def test_an_intent_whose_task_vanished_is_resubmitted(cast: Cast) -> None:
    intents = cast.services.intents
    intent = await intents.submit(cast.agent, goal="Say it back", handler="echo", context={"n": 1})
    assert intent.htm_task_id is not None
    await vanish(cast, intent.htm_task_id)
    swept = await intents.sweeper.sweep()
    assert swept.resubmitted == [intent.intent_id]
    again = await intents.get(intent.intent_id, principal=cast.agent)
    assert again.htm_task_id not in (None, intent.htm_task_id) and again.recoveries == 1
    task = await cast.services.htm.get(again.htm_task_id or "", principal=cast.owner)
    assert task.payload["context"] == {"n": 1} and task.created_by_name == "code_agent@aaron"
    # Nothing more to do on the next sweep.
    assert (await intents.sweeper.sweep()).as_dict() == {
        "settled": 0,
        "orphan_tasks_cancelled": [],
        "resubmitted": [],
        "failed": [],
    }


async def test_a_task_whose_intent_is_gone_is_cancelled(cast: Cast) -> None:
    intents = cast.services.intents
    intent = await intents.submit(cast.agent, goal="Say it back", handler="echo")
    async with cast.services.db.write() as conn:
        await conn.execute(delete(intent_records).where(intent_records.c.intent_id == intent.intent_id))
    swept = await intents.sweeper.sweep()
    assert swept.orphan_tasks_cancelled == [intent.htm_task_id]
    task = await cast.services.htm.get(intent.htm_task_id or "", principal=None)
    assert task.status.value == "cancelled"


async def test_a_task_whose_intent_is_gone_refuses_to_run(cast: Cast) -> None:
    intents = cast.services.intents
    events = await cast.services.bus.subscribe("htm.task.failed").open()
    intent = await intents.submit(cast.agent, goal="Say it back", handler="echo")
    async with cast.services.db.write() as conn:
        await conn.execute(delete(intent_records).where(intent_records.c.intent_id == intent.intent_id))
    await cast.services.htm.start_workers()
    event = await events.get(timeout=30)
    assert event is not None and event.payload["task_id"] == intent.htm_task_id
    assert "is gone: this task serves no one" in event.payload["error"]
