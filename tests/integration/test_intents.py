"""Intents on both databases: the round trip through the task manager into the learning loop, failures,
time-outs, cancelling, and who sees what."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from grace.bus import Subscription
from grace.clock import ManualClock
from grace.config import Settings
from grace.intents import IntentContext, IntentStatus
from tests import canary
from tests.vaultkit import Cast, make_cast


@pytest.fixture
async def cast(settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cast]:
    """The vault's cast, with one attempt per task (a failure is final at once) and intent handlers for tests."""
    async with cast_of(settings, clock, monkeypatch) as built:
        yield built


@contextlib.asynccontextmanager
async def cast_of(
    settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, **env: str
) -> AsyncIterator[Cast]:
    """Build the cast with ``env`` (GRACE_* settings) set while the services are built."""
    monkeypatch.setenv("GRACE_HTM_MAX_ATTEMPTS", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    built = await make_cast(settings, clock)
    gate = asyncio.Event()

    async def ingest(ctx: IntentContext) -> dict[str, Any]:
        await gate.wait()
        return {"indexed": len(ctx.context.get("files", []))}

    async def broken(ctx: IntentContext) -> None:
        raise RuntimeError("the uploads folder is not there")

    async def slow(ctx: IntentContext) -> None:
        await asyncio.sleep(3600)

    intents = built.services.intents
    intents.handlers.register("ingestion_worker", ingest, domains=("ingestion",))
    intents.handlers.register("broken", broken, domains=("ingestion",))
    intents.handlers.register("slow", slow, domains=("general",))
    built.gate = gate  # type: ignore[attr-defined]
    try:
        yield built
        await canary.sweep(built.services)
    finally:
        await built.services.close()


async def wait_for(events: Subscription, topic: str, intent_id: str) -> dict[str, Any]:
    while True:
        event = await events.get(timeout=30)
        assert event is not None, f"no {topic} for {intent_id} within 30 s"
        if event.topic == topic and event.payload.get("intent_id") == intent_id:
            return dict(event.payload)


async def running(updates: Subscription, task_id: str) -> None:
    while True:
        event = await updates.get(timeout=30)
        assert event is not None, f"{task_id} did not start within 30 s"
        if event.payload.get("task_id") == task_id and event.payload.get("status") == "running":
            return


async def test_an_intent_runs_as_its_task_and_its_outcome_reaches_the_learning_loop(cast: Cast) -> None:
    services = cast.services
    intents = services.intents
    events = await services.bus.subscribe("agentic.intent.*").open()
    intent = await intents.submit(
        cast.agent,
        goal="Index new documents in uploads folder",
        expected_outcome="documents_indexed",
        handler="ingestion_worker",
        sla_ms=30000,
        priority="high",
        context={"folder": "/uploads", "format": "pdf", "files": ["a.pdf", "b.pdf"]},
        confidence=0.8,
    )
    created = await wait_for(events, "agentic.intent.created", intent.intent_id)
    assert created["htm_task_id"] == intent.htm_task_id and created["agent"] == "code_agent"
    assert intent.status is IntentStatus.QUEUED and intent.domain == "ingestion"

    # Both links, the context in the payload, origin intent, created as the agent's user.
    task = await services.htm.get(intent.htm_task_id or "", principal=cast.owner)
    assert task.intent_id == intent.intent_id
    assert task.origin.value == "intent" and task.task_type == "intent.ingestion_worker"
    assert task.payload["context"] == {"folder": "/uploads", "format": "pdf", "files": ["a.pdf", "b.pdf"]}
    assert task.payload["goal"] == "Index new documents in uploads folder"
    assert task.sla_ms == 30000 and task.priority.value == "high"

    updates = await services.bus.subscribe("htm.task.update").open()
    services.intents.start()
    await services.htm.start_workers()
    await running(updates, intent.htm_task_id or "")
    cast.gate.set()  # type: ignore[attr-defined]
    done = await wait_for(events, "agentic.intent.completed", intent.intent_id)
    assert done["sla_met"] is True and done["status"] == "completed"

    finished = await intents.get(intent.intent_id, principal=cast.agent)
    assert finished.status is IntentStatus.COMPLETED
    assert finished.result == {"indexed": 2}
    assert finished.learned and finished.sla_met is True

    [outcome] = await intents.list_outcomes(principal=cast.owner)
    assert outcome["action_type"] == "intent_ingestion"
    assert outcome["success"] is True and outcome["confidence_score"] == 0.8
    assert outcome["context"]["intent_id"] == intent.intent_id
    assert outcome["context"]["goal"] == "Index new documents in uploads folder"
    assert outcome["context"]["sla_met"] is True
    assert outcome["recorded_by"] == "code_agent@aaron"

    summary = await intents.summary(principal=cast.owner)
    group = summary["by_action_type"]["intent_ingestion"]
    assert group["count"] == 1 and group["success_rate"] == 1.0
    assert group["brier_score"] == pytest.approx(0.04)
    assert summary["by_domain"]["ingestion"]["count"] == 1
    [suggestion] = summary["sla_suggestions"]
    assert suggestion["task_type"] == "intent.ingestion_worker"
    assert suggestion["configured_sla_ms"] == 30000 and suggestion["configured_from"] == "requested"


async def test_the_summary_shows_the_default_sla_configured_for_the_task_type(
    settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"GRACE_HTM_DEFAULT_SLA_MS": "intent.ingestion_worker=45000,intent.slow:high=5000"}
    async with cast_of(settings, clock, monkeypatch, **env) as cast:
        services = cast.services
        events = await services.bus.subscribe("agentic.intent.*").open()
        intent = await services.intents.submit(cast.agent, goal="Index the uploads", handler="ingestion_worker")
        task = await services.htm.get(intent.htm_task_id or "", principal=cast.owner)
        assert intent.sla_ms is None and task.sla_ms == 45000  # the default applied to the task
        cast.gate.set()  # type: ignore[attr-defined]
        services.intents.start()
        await services.htm.start_workers()
        await wait_for(events, "agentic.intent.completed", intent.intent_id)

        summary = await services.intents.summary(principal=cast.owner)
        [suggestion] = summary["sla_suggestions"]
        assert suggestion["task_type"] == "intent.ingestion_worker"
        assert (suggestion["configured_sla_ms"], suggestion["configured_from"]) == (45000, "default")


async def test_a_failing_handler_fails_its_intent_and_counts_as_a_failure(cast: Cast) -> None:
    services = cast.services
    events = await services.bus.subscribe("agentic.intent.*").open()
    intent = await services.intents.submit(
        cast.agent, goal="Index the missing folder", handler="broken", confidence=0.9, sla_ms=60000
    )
    services.intents.start()
    await services.htm.start_workers()
    failed = await wait_for(events, "agentic.intent.failed", intent.intent_id)
    assert "the uploads folder is not there" in failed["reason"]
    after = await services.intents.get(intent.intent_id, principal=cast.owner)
    assert after.status is IntentStatus.FAILED and after.sla_met is True  # failed, but in time
    [outcome] = await services.intents.list_outcomes(principal=cast.owner, intent_id=intent.intent_id)
    assert outcome["success"] is False and outcome["context"]["sla_met"] is True
    summary = await services.intents.summary(principal=cast.owner)
    assert summary["by_action_type"]["intent_ingestion"]["brier_score"] == pytest.approx(0.81)


async def test_a_task_that_times_out_times_its_intent_out(cast: Cast, monkeypatch: pytest.MonkeyPatch) -> None:
    services = cast.services
    events = await services.bus.subscribe("agentic.intent.*").open()
    intent = await services.intents.submit(cast.owner, goal="Think for an hour", handler="slow")
    # The task manager times the attempt out against the injected clock.
    updates = await services.bus.subscribe("htm.task.update").open()
    services.intents.start()
    await services.htm.start_workers()
    await running(updates, intent.htm_task_id or "")
    assert (await services.intents.get(intent.intent_id, principal=cast.owner)).status is IntentStatus.RUNNING
    cast.clock.advance(services.htm.config.timeout_seconds + 1)
    timeout = await wait_for(events, "agentic.intent.timeout", intent.intent_id)
    assert timeout["status"] == "timed_out"
    [outcome] = await services.intents.list_outcomes(principal=cast.owner, intent_id=intent.intent_id)
    assert outcome["success"] is False


async def test_cancelling_an_intent_cancels_its_task_and_teaches_nothing(cast: Cast) -> None:
    services = cast.services
    events = await services.bus.subscribe("agentic.intent.*").open()
    intent = await services.intents.submit(cast.agent, goal="Index later", handler="ingestion_worker")
    cancelled = await services.intents.cancel(intent.intent_id, principal=cast.agent)
    assert cancelled.status is IntentStatus.CANCELLED and cancelled.reason == "cancelled by code_agent@aaron"
    await wait_for(events, "agentic.intent.cancelled", intent.intent_id)
    task = await services.htm.get(intent.htm_task_id or "", principal=None)
    assert task.status.value == "cancelled"
    assert await services.intents.list_outcomes(principal=cast.owner) == []
    with pytest.raises(Exception, match="already cancelled"):
        await services.intents.cancel(intent.intent_id, principal=cast.agent)


async def test_a_task_cancelled_in_the_task_manager_cancels_its_intent(cast: Cast) -> None:
    services = cast.services
    intent = await services.intents.submit(cast.owner, goal="Index later", handler="ingestion_worker")
    await services.htm.cancel(intent.htm_task_id or "", principal=cast.owner)
    assert (await services.intents.get(intent.intent_id, principal=cast.owner)).status is IntentStatus.CANCELLED


async def test_members_see_their_own_intents_and_operators_see_everyone_s(cast: Cast) -> None:
    intents = cast.services.intents
    mine = await intents.submit(cast.agent, goal="Mine", handler="echo")
    theirs = await intents.submit(cast.other, goal="Theirs", handler="echo")
    with pytest.raises(Exception, match="no intent"):
        await intents.get(theirs.intent_id, principal=cast.owner)
    with pytest.raises(Exception, match="no intent"):
        await intents.cancel(theirs.intent_id, principal=cast.agent)
    assert [i.intent_id for i in await intents.list_intents(principal=cast.owner)] == [mine.intent_id]
    assert {i.intent_id for i in await intents.list_intents(principal=cast.operator)} == {
        mine.intent_id,
        theirs.intent_id,
    }
    assert [i.intent_id for i in await intents.list_intents(principal=cast.owner, domain="general")] == [mine.intent_id]
    assert await intents.list_intents(principal=cast.owner, status="completed") == []


class DriverCleanupError(Exception):
    """What a database driver may raise while it cleans up after a cancelled call (a fake, for the test)."""


async def test_the_intents_loops_stop_when_a_cancelled_settle_surfaces_as_another_error(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing the service must not wait for ever on a loop whose cancellation the driver turned into an error."""
    intents = cast.services.intents
    entered: list[str] = []
    both_in = asyncio.Event()

    async def settle_that_hangs_until_cancelled(**_: Any) -> int:
        entered.append(asyncio.current_task().get_name())  # type: ignore[union-attr]
        if len(entered) == 2:
            both_in.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise DriverCleanupError("connection reset while rolling back") from None
        return 0

    monkeypatch.setattr(intents.bridge, "settle", settle_that_hangs_until_cancelled)
    intents.start()  # the sweep settles at once
    while not both_in.is_set():  # until the listener, subscribed in its own time, takes an event to settle
        await cast.services.bus.publish("htm.task.update", {"intent_id": "int_x", "task_id": "t", "status": "running"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(both_in.wait(), 0.2)
    assert sorted(entered) == ["grace-intents-listen", "grace-intents-sweep"]
    loops = list(intents._background)
    await intents.close()
    assert all(task.done() for task in loops)
