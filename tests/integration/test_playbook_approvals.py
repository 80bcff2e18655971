"""Approval steps on both databases with the injected clock: a run asks its owner in the consent inbox,
waits without holding a worker, and goes on (or fails, rolled back) when the owner answers or time runs out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from grace.htm.tables import htm_tasks
from grace.playbooks import RUN_TASK, Playbook
from grace.playbooks.history import RunRecord
from grace.services import Services
from tests.playbookkit import FakeTimer
from tests.vaultkit import Cast

GUARDED = """
version: 1
name: guarded
description: a step that waits for its owner's approval
policy: {concurrency: forbid, timeout: 600}
steps:
  - id: prepare
    action: bus.publish
    with: {topic: playbooks.test.prepared}
    rollback: {action: bus.publish, with: {topic: playbooks.test.undone}}
  - id: act
    action: bus.publish
    with: {topic: playbooks.test.acted}
    approval: {message: "Publish the test event? A real playbook would remediate here.", timeout: 600}
  - id: after
    action: bus.publish
    with: {topic: playbooks.test.after}
on_failure:
  - id: tell
    action: operator.alert
    with: {severity: critical, message: "${'guarded failed at ' + run.failed_step + ': ' + run.error}"}
always:
  - id: done
    action: bus.publish
    with: {topic: playbooks.test.always}
"""


@pytest.fixture
async def guarded(cast: Cast, tmp_path: Path) -> AsyncIterator[Playbook]:
    """The playbook above, one worker, timeouts that never fire by themselves, the approvals' listener."""
    services = cast.services
    directory = tmp_path / "playbooks"
    directory.mkdir()
    (directory / "guarded.yaml").write_text(GUARDED)
    services.playbooks.directory = directory
    services.playbooks.engine.timer = FakeTimer()
    await services.htm.start_workers(concurrency=1)
    services.scheduler.start_approvals()
    yield services.playbooks.named("guarded")
    await services.scheduler.stop()


async def until(services: Services, run_id: str, *statuses: str) -> RunRecord:
    """Wait for the run to reach one of ``statuses`` (checked again at each task-manager event)."""
    async with services.bus.subscribe("htm.task.#") as events:
        while True:
            record = await services.playbooks.run_record(run_id)
            if record.status in statuses:
                return record
            await asyncio.wait_for(events.get(), 60)


async def published(services: Services) -> list[str]:
    return [e.topic.removeprefix("playbooks.test.") for e in await services.bus.replay("playbooks.test.#", since=0)]


def step(record: RunRecord, step_id: str, phase: str = "main") -> dict[str, object]:
    return next(s for s in record.steps if s["id"] == step_id and s["phase"] == phase)


async def run_tasks(services: Services, run_id: str) -> list[str]:
    async with services.db.read() as conn:
        rows = (await conn.execute(select(htm_tasks).where(htm_tasks.c.task_type == RUN_TASK))).mappings().all()
    return [r["status"] for r in rows if r["payload"].get("run_id") == run_id]


async def settled_run_tasks(services: Services, run_id: str) -> list[str]:
    """The run's tasks' statuses once none is waiting or running: a run's record is written by its
    task, so the run can read as finished a moment before its task's outcome commits."""
    async with services.bus.subscribe("htm.task.#") as events:
        while True:
            statuses = await run_tasks(services, run_id)
            if not {"queued", "delayed", "deferred", "running"} & set(statuses):
                return statuses
            await asyncio.wait_for(events.get(), 60)


async def test_a_run_waits_without_a_worker_and_goes_on_when_its_owner_approves(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed", "succeeded")
    assert waiting.status == "waiting", waiting.reason
    assert "approve step 'act'" in (waiting.reason or "") and waiting.approval_id
    assert step(waiting, "act")["outcome"] == "waiting"
    assert await published(services) == ["prepared"]  # nothing past the approval ran

    # The one worker is free: another task runs while the run waits.
    other = await services.htm.route_task("htm.echo", payload={"hello": "world"}, origin="user_request")
    async with services.bus.subscribe("htm.task.completed") as done:
        while (await services.htm.get(other["task_id"], principal=None)).status.value != "completed":
            await asyncio.wait_for(done.get(), 60)
    assert await run_tasks(services, run_id) == ["completed"]  # the run's first task ended

    # The owner sees it in the consent inbox, with who, what and why.
    [asked] = await services.vault.pending(cast.owner)
    assert asked.consent_id == waiting.approval_id and asked.kind == "approval" and asked.secret_id is None
    assert asked.requested_by == "playbook.guarded" and asked.requested_action == "bus.publish"
    assert asked.requested_for.startswith("Publish the test event?")
    assert asked.context["run_id"] == run_id and asked.context["step"] == "act"

    answered = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": asked.consent_id, "approved": True},
        headers=cast.headers("owner"),
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["consent"]["kind"] == "approval"
    done_run = await until(services, run_id, "succeeded", "failed", "timed_out")
    assert done_run.status == "succeeded", done_run.reason
    assert await published(services) == ["prepared", "acted", "after", "always"]
    act = step(done_run, "act")
    assert act["outcome"] == "succeeded" and act["approval"]["answer"] == "approved"  # type: ignore[index]
    assert [s["id"] for s in done_run.steps] == ["prepare", "act", "after", "done"]
    assert await settled_run_tasks(services, run_id) == ["completed", "completed"]  # resumed as a new task
    assert done_run.finished_at is not None and done_run.started_at is not None


async def test_a_denied_approval_fails_the_run_with_the_reason_and_rolls_back(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    denied = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": waiting.approval_id, "approved": False, "denial_reason": "not during the demo"},
        headers=cast.headers("owner"),
    )
    assert denied.status_code == 200, denied.text
    record = await until(services, run_id, "failed", "succeeded")
    assert record.status == "failed" and "not during the demo" in (record.reason or "")
    assert "step 'act'" in (record.reason or "")
    assert step(record, "prepare", "rollback")["outcome"] == "rolled_back"
    assert step(record, "tell", "on_failure")["outcome"] == "succeeded"
    assert await published(services) == ["prepared", "undone", "always"]
    [alert] = await services.bus.replay("playbooks.alert", since=0)
    assert "not during the demo" in alert.payload["message"]


async def test_no_answer_before_the_timeout_fails_the_run(cast: Cast, guarded: Playbook) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    assert await services.scheduler.resume_answered() == []  # still within its 600 s
    cast.clock.advance(601)
    assert await services.scheduler.tick() == []  # the tick finds the timed-out approval...
    record = await until(services, run_id, "failed", "succeeded")
    assert record.status == "failed" and "no answer before the approval's timeout" in (record.reason or "")
    assert (await services.vault.get_consent(waiting.approval_id or "")).status == "expired"
    assert await published(services) == ["prepared", "undone", "always"]


async def test_on_timeout_continue_skips_the_step_and_goes_on(cast: Cast, guarded: Playbook) -> None:
    services = cast.services
    (services.playbooks.directory / "guarded.yaml").write_text(
        GUARDED.replace(
            'A real playbook would remediate here.", timeout: 600}',
            'A real playbook would remediate here.", timeout: 600, on_timeout: continue}',
        )
    )
    playbook = services.playbooks.named("guarded")
    run_id = await services.scheduler.queue_manual(playbook, {}, who="aaron", principal=cast.owner)
    await until(services, run_id, "waiting", "failed")
    cast.clock.advance(601)
    await services.scheduler.tick()
    record = await until(services, run_id, "succeeded", "failed")
    assert record.status == "succeeded", record.reason
    assert step(record, "act")["outcome"] == "skip"
    assert await published(services) == ["prepared", "after", "always"]


async def test_only_the_owner_or_an_admin_answers_never_an_agent_or_another_member(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    body = {"consent_id": waiting.approval_id, "approved": True}
    for who in ("agent", "other", "operator"):
        refused = await http.post("/api/secrets/consent/respond", json=body, headers=cast.headers(who))
        assert refused.status_code == 403, (who, refused.text)
    assert (await services.vault.get_consent(waiting.approval_id or "")).status == "pending"
    assert (await services.playbooks.run_record(run_id)).status == "waiting"
    # Another member does not even see it in their inbox.
    assert [c.consent_id for c in await services.vault.pending(cast.other)] == []
    approved = await http.post("/api/secrets/consent/respond", json=body, headers=cast.headers("admin2"))
    assert approved.status_code == 200, approved.text
    assert (await until(services, run_id, "succeeded", "failed")).status == "succeeded"


async def test_a_run_without_a_person_cannot_ask_and_fails_saying_so(cast: Cast, guarded: Playbook) -> None:
    services = cast.services
    run_id = await services.scheduler.fire(guarded, trigger="schedule", trigger_key="schedule:0:test", who="scheduler")
    assert run_id is not None
    record = await until(services, run_id, "failed", "waiting", "succeeded")
    assert record.status == "failed" and "the person the run is for" in (record.reason or "")
    assert await services.vault.pending(cast.admin) == []


async def test_an_approval_never_releases_a_secret(cast: Cast, guarded: Playbook) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    await services.vault.respond(cast.owner, waiting.approval_id or "", True)
    # An agent that knows the approval's id gets nothing with it.
    redeemed = await services.vault.redeem(cast.agent, waiting.approval_id or "")
    assert not redeemed.approved and redeemed.value is None
    await until(services, run_id, "succeeded", "failed")


async def test_a_secret_a_step_resolved_is_not_kept_while_the_run_waits(cast: Cast, guarded: Playbook) -> None:
    from grace import jsontext
    from grace.auth import Principal, Role
    from tests import canary

    services = cast.services
    assert services.bootstrap is not None
    user = await services.accounts.get_user(services.bootstrap.username)
    admin = Principal(user.id, user.username, Role.ADMIN)  # the canary secret's owner
    use = f"  - id: use\n    action: secret.check\n    with: {{secret: {{secret: {canary.CANARY_KEY}}}}}\n"
    (services.playbooks.directory / "guarded.yaml").write_text(GUARDED.replace("  - id: act\n", use + "  - id: act\n"))
    playbook = services.playbooks.named("guarded")
    async with services.bus.subscribe("secrets.consent.request") as requests:
        run_id = await services.scheduler.queue_manual(playbook, {}, who=admin.username, principal=admin)
        event = await asyncio.wait_for(requests.get(), 60)  # the step asks the secret's owner first
    assert event is not None
    await services.vault.respond(admin, event.payload["consent_id"], True)
    waiting = await until(services, run_id, "waiting", "failed")
    assert waiting.status == "waiting", waiting.reason
    assert step(waiting, "use")["output"] == {"resolved": True}
    assert canary.CANARY_VALUE not in jsontext.dumps(waiting.parked)
    assert canary.CANARY_VALUE not in repr(waiting.as_dict())
    await services.vault.respond(admin, waiting.approval_id or "", False, reason="no")
    failed = await until(services, run_id, "failed", "succeeded")
    assert failed.status == "failed" and canary.CANARY_VALUE not in repr(failed.as_dict())


async def test_a_playbook_changed_while_its_run_waited_fails_the_run_and_rolls_back(
    cast: Cast, guarded: Playbook
) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    (services.playbooks.directory / "guarded.yaml").write_text(GUARDED.replace("  - id: after\n", "  - id: later\n"))
    await services.vault.respond(cast.owner, waiting.approval_id or "", True)
    record = await until(services, run_id, "failed", "succeeded")
    assert record.status == "failed" and "changed while the run waited" in (record.reason or "")
    assert await published(services) == ["prepared", "undone", "always"]  # nothing past the approval ran


def owned(owner: str) -> str:
    """GUARDED on a schedule every 5 minutes, for ``owner``."""
    return GUARDED.replace(
        "policy: {", f'owner: {owner}\ntriggers:\n  - schedule: {{cron: "*/5 * * * *", timezone: UTC}}\npolicy: {{'
    )


async def scheduled_run(cast: Cast) -> str:
    """Let the schedule fire once (the injected clock moves 5 minutes); return its run."""
    services = cast.services
    assert await services.scheduler.tick() == []  # a new schedule starts from now
    cast.clock.advance(300)
    [run_id] = await services.scheduler.tick()
    return run_id


async def test_a_scheduled_run_of_a_playbook_with_an_owner_asks_that_owner_and_goes_on_when_approved(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    (services.playbooks.directory / "guarded.yaml").write_text(owned("aaron"))
    run_id = await scheduled_run(cast)
    waiting = await until(services, run_id, "waiting", "failed", "succeeded")
    assert waiting.status == "waiting", waiting.reason
    assert waiting.trigger == "schedule" and waiting.who == "scheduler"
    # It waits in the owner's inbox, nobody else's.
    [asked] = await services.vault.pending(cast.owner)
    assert asked.consent_id == waiting.approval_id and asked.requested_by == "playbook.guarded"
    assert await services.vault.pending(cast.other) == []
    answered = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": asked.consent_id, "approved": True},
        headers=cast.headers("owner"),
    )
    assert answered.status_code == 200, answered.text
    done = await until(services, run_id, "succeeded", "failed", "timed_out")
    assert done.status == "succeeded", done.reason
    assert await published(services) == ["prepared", "acted", "after", "always"]
    assert step(done, "act")["approval"]["answer"] == "approved"  # type: ignore[index]


async def test_a_scheduled_run_without_an_owner_still_fails_saying_it_has_no_person(
    cast: Cast, guarded: Playbook
) -> None:
    services = cast.services
    (services.playbooks.directory / "guarded.yaml").write_text(owned("aaron").replace("owner: aaron\n", ""))
    run_id = await scheduled_run(cast)
    record = await until(services, run_id, "failed", "waiting", "succeeded")
    assert record.status == "failed" and "the person the run is for" in (record.reason or "")
    assert "owner" in (record.reason or "")  # and says how to give it one
    assert await services.vault.pending(cast.owner) == []


async def test_an_owner_who_is_not_a_user_fails_the_run_at_its_start_and_alerts(cast: Cast, guarded: Playbook) -> None:
    services = cast.services
    (services.playbooks.directory / "guarded.yaml").write_text(owned("nobody.here"))
    run_id = await scheduled_run(cast)
    record = await until(services, run_id, "failed", "waiting", "succeeded")
    assert record.status == "failed"
    assert "owner 'nobody.here' is not an active user" in (record.reason or "")
    assert await published(services) == ["always"]  # no step ran; always did
    [alert] = await services.bus.replay("playbooks.alert", since=0)  # on_failure told the operator
    assert "nobody.here" in alert.payload["message"]


async def test_an_owner_does_not_replace_the_person_who_started_a_run(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    (services.playbooks.directory / "guarded.yaml").write_text(owned("bella"))
    playbook = services.playbooks.named("guarded")
    run_id = await services.scheduler.queue_manual(playbook, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    assert [c.consent_id for c in await services.vault.pending(cast.owner)] == [waiting.approval_id]
    assert await services.vault.pending(cast.other) == []  # bella, the owner, is not asked
    await services.vault.respond(cast.owner, waiting.approval_id or "", False, reason="no")
    await until(services, run_id, "failed", "succeeded")


# -- cancelling a run ------------------------------------------------------------------------------


async def test_cancelling_a_waiting_run_withdraws_its_approval_rolls_back_and_runs_always(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    assert [c.consent_id for c in await services.vault.pending(cast.owner)] == [waiting.approval_id]

    r = await http.post(f"/api/playbooks/runs/{run_id}/cancel", headers=cast.headers("operator"))
    assert r.status_code == 200, r.text
    run = r.json()["run"]
    assert run["status"] == "cancelled" and run["reason"] == "cancelled by olga"
    # The approval left the owner's inbox: withdrawn, no longer answerable.
    assert await services.vault.pending(cast.owner) == []
    assert (await services.vault.get_consent(waiting.approval_id or "")).status == "revoked"
    late = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": waiting.approval_id, "approved": True},
        headers=cast.headers("owner"),
    )
    assert late.status_code == 409, late.text
    # The engine's cancel: the completed step rolled back, always ran, on_failure did not.
    record = await services.playbooks.run_record(run_id)
    assert step(record, "act")["outcome"] == "cancelled"
    assert step(record, "prepare", "rollback")["outcome"] == "rolled_back"
    assert step(record, "done", "always")["outcome"] == "succeeded"
    assert not [s for s in record.steps if s["phase"] == "on_failure"]
    assert await published(services) == ["prepared", "undone", "always"]
    assert await services.bus.replay("playbooks.alert", since=0) == []
    # Nothing resumes it later: not the tick, not the answer's timeout.
    cast.clock.advance(601)
    await services.scheduler.tick()
    assert (await services.playbooks.run_record(run_id)).status == "cancelled"
    assert await published(services) == ["prepared", "undone", "always"]


async def test_cancelling_a_finished_run_is_a_409_and_only_operators_and_admins_cancel(
    cast: Cast, guarded: Playbook, http: httpx.AsyncClient
) -> None:
    services = cast.services
    run_id = await services.scheduler.queue_manual(guarded, {}, who="aaron", principal=cast.owner)
    waiting = await until(services, run_id, "waiting", "failed")
    for who in ("agent", "owner", "other"):  # an agent never; a member neither
        refused = await http.post(f"/api/playbooks/runs/{run_id}/cancel", headers=cast.headers(who))
        assert refused.status_code == 403, (who, refused.text)
    assert (await services.playbooks.run_record(run_id)).status == "waiting"
    unknown = await http.post("/api/playbooks/runs/pbr_nope/cancel", headers=cast.headers("operator"))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    await services.vault.respond(cast.owner, waiting.approval_id or "", True)
    assert (await until(services, run_id, "succeeded", "failed")).status == "succeeded"
    finished = await http.post(f"/api/playbooks/runs/{run_id}/cancel", headers=cast.headers("admin2"))
    assert finished.status_code == 409, finished.text
    error = finished.json()["error"]
    assert error["code"] == "run_already_finished" and "already finished (succeeded)" in error["message"]
    assert await published(services) == ["prepared", "acted", "after", "always"]  # nothing rolled back


async def test_cancelling_a_queued_run_cancels_its_task_and_nothing_runs(cast: Cast, tmp_path: Path) -> None:
    services = cast.services
    directory = tmp_path / "playbooks"
    directory.mkdir()
    (directory / "guarded.yaml").write_text(GUARDED)
    services.playbooks.directory = directory
    run_id = await services.scheduler.queue_manual(
        services.playbooks.named("guarded"), {}, who="aaron", principal=cast.owner
    )
    record = await services.scheduler.cancel_run(run_id, by="olga")
    assert record.status == "cancelled" and record.reason == "cancelled by olga"
    assert (await services.htm.get(record.task_id or "", principal=None)).status.value == "cancelled"
    assert await published(services) == []  # no step ran, so nothing to roll back or clean up


async def test_cancelling_a_running_run_stops_it_through_its_task_and_runs_always(
    cast: Cast, guarded: Playbook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grace.playbooks.actions import Action
    from tests.playbookkit import FakeActions

    services = cast.services
    fake = FakeActions(hang_expires=False)
    services.playbooks.registry.register(Action("test.hang", "wait until cancelled", fake.hang))
    (services.playbooks.directory / "guarded.yaml").write_text(
        GUARDED.replace("    action: bus.publish\n    with: {topic: playbooks.test.acted}\n", "    action: test.hang\n")
    )
    playbook = services.playbooks.named("guarded")
    run_id = await services.scheduler.queue_manual(playbook, {}, who="aaron", principal=cast.owner)
    await until(services, run_id, "waiting")
    await services.vault.respond(cast.owner, (await services.playbooks.run_record(run_id)).approval_id or "", True)
    await asyncio.wait_for(fake.hanging.wait(), 60)  # the approved step is running now
    # The engine records the run's end after rolling back and running always, with no task event of
    # its own (the task's cancel event came first): notice that write.
    ended = asyncio.Event()
    store = services.playbooks.history
    write = store.update

    async def noticed(run: str, **values: Any) -> None:
        await write(run, **values)
        if run == run_id and values.get("status") is not None:
            ended.set()

    monkeypatch.setattr(store, "update", noticed)
    await services.scheduler.cancel_run(run_id, by="olga")
    await asyncio.wait_for(ended.wait(), 60)
    record = await services.playbooks.run_record(run_id)
    assert record.status == "cancelled", record.reason
    assert step(record, "prepare", "rollback")["outcome"] == "rolled_back"
    assert await published(services) == ["prepared", "undone", "always"]
