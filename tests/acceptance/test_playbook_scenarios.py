"""The four playbooks against the real capabilities on both databases: lint, dry run, and a scenario each."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from grace.auth import Principal, Role
from grace.bus import Event
from grace.htm.tables import htm_tasks
from grace.playbooks import ALERT_TOPIC, Playbook, RunResult
from grace.services import Services
from tests import canary
from tests.playbookkit import RecordingSleeper
from tests.vaultkit import reprotect_audit, unprotect_audit

PLAYBOOKS = Path(__file__).parent.parent.parent / "playbooks"


def playbook(services: Services, name: str) -> Playbook:
    return services.playbooks.load(PLAYBOOKS / f"{name}.yaml")


async def admin(services: Services) -> Principal:
    assert services.bootstrap is not None
    user = await services.accounts.get_user(services.bootstrap.username)
    return Principal(user.id, user.username, Role.ADMIN)


def outcomes(result: RunResult) -> dict[str, str]:
    return {s["id"]: s.get("outcome", "?") for s in result.steps if s["phase"] in ("main", "monitor")}


async def finished_tasks(services: Services, on_time: int, late: int) -> None:
    """Tasks with a deadline that finished within the SLA window, ``late`` of them after their deadline.

    They finished over a minute ago: outside the throughput window, so only the SLA monitor reads them.
    """
    now = services.clock.now()
    rows = []
    for i in range(on_time + late):
        deadline = now - timedelta(seconds=150)
        finished = deadline - timedelta(seconds=5) if i < on_time else deadline + timedelta(seconds=5)
        rows.append(
            {
                "task_id": f"task_sla_{i:04d}",
                "task_type": "htm.noop",
                "priority": "normal",
                "priority_rank": 2,
                "origin": "user_request",
                "origin_rule": "explicit",
                "payload": {},
                "data_size_bytes": 2,
                "created_by_name": "grace",
                "sla_ms": 60_000,
                "deadline": deadline,
                "status": "completed",
                "route": "accepted",
                "route_reason": "test",
                "attempts": 1,
                "max_attempts": 1,
                "timeout_seconds": 60.0,
                "created_at": deadline - timedelta(seconds=60),
                "admitted_at": deadline - timedelta(seconds=60),
                "queued_at": deadline - timedelta(seconds=60),
                "started_at": deadline - timedelta(seconds=50),
                "finished_at": finished,
            }
        )
    async with services.db.write() as conn:
        await conn.execute(insert(htm_tasks), rows)


async def investigation_tasks(services: Services) -> int:
    async with services.db.read() as conn:
        found: int = (
            await conn.execute(select(func.count()).select_from(htm_tasks).where(htm_tasks.c.origin == "scheduler"))
        ).scalar_one()
    return found


async def alerts(services: Services) -> list[Event]:
    return await services.bus.replay(ALERT_TOPIC, since=0)


@pytest.mark.parametrize("name", [p.stem for p in sorted(PLAYBOOKS.glob("*.yaml"))])
async def test_each_playbook_dry_runs_without_side_effects(services: Services, name: str) -> None:
    before = await investigation_tasks(services)
    keys = (await services.vault.keys_status())["active_key"]
    result = await services.playbooks.execute(
        playbook(services, name), {}, who="test", dry_run=True, principal=await admin(services)
    )
    # recording_to_learning needs a note to follow: with none given, its first read fails, and says so
    assert result.status == ("failed" if name == "recording_to_learning" else "succeeded"), result.reason
    assert all(s.get("outcome") in ("run", "skip", "unknown", "firing", "quiet", "failed") for s in result.steps)
    side_effecting = {a.name for a in services.playbooks.registry if a.side_effects}
    ran = [s for s in result.steps if s.get("outcome") == "run" and s["phase"] == "main"]
    assert all(not s["called"] for s in ran if s["action"] in side_effecting)
    assert await investigation_tasks(services) == before
    assert (await services.vault.keys_status())["active_key"] == keys
    assert await alerts(services) == []


async def test_sla_compliance_087_creates_an_investigation_task_and_alerts(services: Services) -> None:
    await finished_tasks(services, on_time=87, late=13)
    result = await services.playbooks.execute(playbook(services, "htm_timing_and_sizing"), {}, who="test")
    assert result.status == "succeeded", result.reason
    steps = outcomes(result)
    assert steps["monitor:sla_low"] == "firing" and steps["investigate"] == "succeeded"
    assert steps["alert"] == "succeeded"
    assert await investigation_tasks(services) == 1
    [alert] = await alerts(services)
    assert alert.payload["severity"] == "critical" and "0.87" in alert.payload["message"]


async def test_sla_compliance_095_does_nothing(services: Services) -> None:
    await finished_tasks(services, on_time=95, late=5)
    result = await services.playbooks.execute(playbook(services, "htm_timing_and_sizing"), {}, who="test")
    assert result.status == "succeeded"
    steps = outcomes(result)
    assert steps["monitor:sla_low"] == "quiet"
    assert (steps["investigate"], steps["alert"], steps["remediate"]) == ("skip", "skip", "skip")
    assert await investigation_tasks(services) == 0 and await alerts(services) == []


async def test_a_key_rotation_that_verifies_is_audited(services: Services) -> None:
    before = (await services.vault.keys_status())["active_key"]["id"]
    result = await services.playbooks.execute(
        playbook(services, "crypto_key_persistence"), {"force": "true"}, who="test"
    )
    assert result.status == "succeeded", result.reason
    status = await services.vault.keys_status()
    assert status["active_key"]["id"] != before
    assert any(k["id"] == before and k["status"] == "archived" for k in status["keys"])
    assert [e.topic for e in await services.bus.replay("playbooks.key.#", since=0)] == ["playbooks.key.distributed"]
    entries = await services.vault.audit_entries(await admin(services), "*", limit=50)
    assert any(e.event == "playbook.key_rotation_verified" for e in entries)


async def test_a_rotation_whose_verification_fails_rolls_back_and_alerts(services: Services) -> None:
    # Someone edited an audit entry: verification of the rotation must fail, not pass quietly.
    await unprotect_audit(services.db)
    try:
        async with services.db.write() as conn:
            await conn.execute(text("UPDATE vault_audit SET actor = 'mallory' WHERE seq = 1"))
        result = await services.playbooks.execute(
            playbook(services, "crypto_key_persistence"), {"force": "true"}, who="test"
        )
    finally:
        await reprotect_audit(services.db)
    assert result.status == "failed" and "verify" in (result.reason or "")
    topics = [e.topic for e in await services.bus.replay("playbooks.key.#", since=0)]
    assert topics == ["playbooks.key.distributed", "playbooks.key.withdrawn"]  # rolled back once
    rollbacks = [s for s in result.steps if s["phase"] == "rollback"]
    assert [(s["id"], s["outcome"]) for s in rollbacks] == [("distribute", "rolled_back")]
    [alert] = await alerts(services)
    assert alert.payload["severity"] == "critical" and "verify" in alert.payload["message"]


async def test_secrets_capture_checks_a_consent_request_it_is_fired_for(services: Services) -> None:
    owner = await admin(services)
    asked = asyncio.create_task(
        services.vault.access(owner, canary.CANARY_KEY, action="read", purpose="test", wait_seconds=0)
    )
    access = await asked
    assert access.status == "pending" and access.consent_id
    [request] = await services.bus.replay("secrets.consent.request", since=0)
    result = await services.playbooks.engine.run(
        playbook(services, "secrets_capture_and_consent"), {}, trigger="event", who="test", event=request.payload
    )
    assert result.status == "succeeded", result.reason
    steps = outcomes(result)
    assert steps["classify"] == "succeeded" and steps["governance_checked"] == "skip"  # an api_key is medium
    classify = next(s for s in result.steps if s["id"] == "classify")
    assert classify["output"]["risk_level"] == "medium" and classify["output"]["status"] == "pending"


async def test_recording_to_learning_follows_a_note_and_alerts_on_a_missing_one(services: Services) -> None:
    owner = await admin(services)
    services.playbooks.engine.sleep = RecordingSleeper()  # the retries' backoff, without waiting
    note = await services.voice.start(owner, title="standup")
    run = services.playbooks.execute
    result = await run(
        playbook(services, "recording_to_learning"), {"note_id": note["session_id"]}, who="t", principal=owner
    )
    assert result.status == "succeeded", result.reason
    assert outcomes(result) == {"note": "succeeded", "resume": "skip", "learn": "skip"}
    missing = await run(playbook(services, "recording_to_learning"), {"note_id": "vn_nope"}, who="t", principal=owner)
    assert missing.status == "failed"
    note_step = next(s for s in missing.steps if s["id"] == "note")
    assert len(note_step["attempts"]) == 3  # retried as the playbook says
    [alert] = await alerts(services)
    assert "note" in alert.payload["message"]


async def test_a_secret_resolved_through_the_vault_never_reaches_history(services: Services) -> None:
    from grace.playbooks import check_text

    owner = await admin(services)
    text_ = f"""
version: 1
name: canary_check
steps:
  - id: use
    action: secret.check
    with: {{secret: {{secret: {canary.CANARY_KEY}}}}}
"""
    checked, problems = check_text(text_, "canary.yaml", services.playbooks.registry)
    assert checked is not None, problems
    run = asyncio.create_task(services.playbooks.execute(checked, {}, who="test", principal=owner))
    consent_id = None
    while consent_id is None:  # the step asks the owner through the vault's consent inbox
        pending = await services.vault.pending(owner)
        consent_id = pending[0].consent_id if pending else None
        if consent_id is None:
            await asyncio.sleep(0.05)
    await services.vault.respond(owner, consent_id, True)
    result = await run
    assert result.status == "succeeded", result.reason
    record = await services.playbooks.run_record(result.run_id)
    assert canary.CANARY_VALUE not in repr(record.as_dict())
    assert record.steps[0]["with"] == {"secret": f"<secret {canary.CANARY_KEY}>"}
    assert record.steps[0]["output"] == {"resolved": True}


async def test_recording_to_learning_records_a_consented_note_in_the_learning_loop(services: Services) -> None:
    from grace.voice.tables import voice_notes

    owner = await admin(services)
    note = await services.voice.start(owner, title="standup")
    note_id = note["session_id"]
    # The voice pipeline finished the note and its owner consented to learning.
    async with services.db.write() as conn:
        await conn.execute(
            voice_notes.update()
            .where(voice_notes.c.id == note_id)
            .values(status="completed", stage=None, consent_learning=True)
        )
    result = await services.playbooks.execute(
        playbook(services, "recording_to_learning"), {"note_id": note_id}, who="t", principal=owner
    )
    assert result.status == "succeeded", result.reason
    assert outcomes(result) == {"note": "succeeded", "resume": "skip", "learn": "succeeded"}
    learn = next(s for s in result.steps if s["id"] == "learn")
    summary = await services.intents.learning.summary(visible_to=owner.user_id)
    assert summary["by_action_type"]["recording_to_learning"]["count"] == 1
    assert summary["by_domain"]["voice"]["count"] == 1
    [recorded] = await services.intents.learning.list_outcomes(
        visible_to=owner.user_id, action_type="recording_to_learning"
    )
    assert recorded["outcome_id"] == learn["output"]["id"]
    assert recorded["context"]["note_id"] == note_id and recorded["success"] is True


async def test_recording_to_learning_records_nothing_without_consent_to_learning(services: Services) -> None:
    from grace.voice.tables import voice_notes

    owner = await admin(services)
    note = await services.voice.start(owner, title="private")
    async with services.db.write() as conn:
        await conn.execute(
            voice_notes.update().where(voice_notes.c.id == note["session_id"]).values(status="completed", stage=None)
        )
    result = await services.playbooks.execute(
        playbook(services, "recording_to_learning"), {"note_id": note["session_id"]}, who="t", principal=owner
    )
    assert result.status == "succeeded", result.reason
    assert outcomes(result)["learn"] == "skip"
    assert await services.intents.learning.list_outcomes(visible_to=owner.user_id) == []


async def test_a_starved_origin_is_served_after_the_playbook_rebalances(services: Services) -> None:
    from grace.htm import Origin, Status
    from grace.htm.queue import Outcome

    htm = services.htm

    async def queue(origin: str, n: int) -> None:
        await htm.submit_many([htm.request("htm.noop", origin=origin) for _ in range(n)], creator=None)

    capacity = htm.local.fallback_capacity
    assert capacity == 4  # the test's settings; quotas: user_request 2, every other origin 1
    await queue("user_request", 2)
    await queue("intent", 1)
    await queue("hunter_alert", 1)
    running = await htm.queue.claim("w1", capacity, fallback_capacity=capacity)
    assert sorted(t.origin.value for t in running) == ["hunter_alert", "intent", "user_request", "user_request"]
    await queue("user_request", 2)
    await queue("intent", 2)
    await queue("scheduler", 1)  # below its share while the others hold every slot: starved
    assert (await htm.routing_stats())["origins"]["scheduler"]["starved"]

    result = await services.playbooks.execute(playbook(services, "htm_timing_and_sizing"), {}, who="test")
    assert result.status == "succeeded", result.reason
    steps = outcomes(result)
    assert steps["monitor:starvation"] == "firing"
    assert (steps["investigate"], steps["alert"], steps["remediate"], steps["rebalance"]) == ("succeeded",) * 4
    rebalance = next(s for s in result.steps if s["id"] == "rebalance")
    assert rebalance["output"]["changed"] and rebalance["output"]["starved"] == ["scheduler"]

    # A user_request slot frees: user_request (more work, the largest share and the most credit)
    # and scheduler are both under their quota; without the rebalance user_request would be
    # picked again, but the rebalance made the starved scheduler due, so it is served first.
    freed = next(t for t in running if t.origin is Origin.USER_REQUEST)
    await htm.queue.finish("w1", [Outcome(freed.task_id, freed.attempts, Status.COMPLETED, services.clock.now())])
    [nxt] = await htm.queue.claim("w1", 1, fallback_capacity=capacity)
    assert nxt.origin is Origin.SCHEDULER
    assert not (await htm.routing_stats())["origins"]["scheduler"]["starved"]
