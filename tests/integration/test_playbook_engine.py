"""The engine on both databases: order, conditions, retries, timeouts, rollback, always, dry run, secrets."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from typing import Any

import pytest
from sqlalchemy import select

from grace import storage
from grace.clock import ManualClock
from grace.playbooks import Capabilities, Engine, Playbook, RunStore, backoff_delay, check_text
from grace.playbooks.schema import Retry
from grace.playbooks.tables import playbook_runs
from tests.playbookkit import FakeActions, RecordingSleeper

CANARY = "canary-" + "7f3a9c1e5b2d"


def load(text: str, actions: FakeActions) -> Playbook:
    playbook, problems = check_text(textwrap.dedent(text), "test.yaml", actions.registry())
    assert not problems, [str(p) for p in problems]
    assert playbook is not None
    return playbook


def engine(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper, **kw: Any
) -> Engine:
    return Engine(
        actions.registry(),
        Capabilities(clock),
        RunStore(db, clock),
        sleep=sleeper,
        timer=actions.timer,
        rand=lambda: 0.5,
        **kw,
    )


@pytest.fixture
def actions() -> FakeActions:
    return FakeActions()


@pytest.fixture
def sleeper() -> RecordingSleeper:
    return RecordingSleeper()


FOUR = """
version: 1
name: four
inputs: {go: {type: bool, default: true}}
steps:
  - id: a
    action: test.do
    with: {value: 1}
    rollback: {action: test.undo, with: {of: a}}
  - id: b
    action: test.do
    when: inputs.go
    with: {value: "${steps.a.output.count}"}
    rollback: {action: test.undo, with: {of: b}}
  - id: c
    action: test.do
    rollback: {action: test.undo, with: {of: c}}
  - id: d
    action: test.do
on_failure:
  - id: f
    action: test.do
    with: {value: "${run.failed_step}"}
always:
  - id: z
    action: test.do
    with: {value: "${run.outcome}"}
"""


async def test_steps_run_in_order_and_read_earlier_outputs(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    result = await engine(db, clock, actions, sleeper).run(load(FOUR, actions), {})
    assert result.status == "succeeded"
    assert [c[0] for c in actions.calls] == ["a", "b", "c", "d", "z"]
    assert actions.calls[1][1]["value"] == 1  # b got a's count
    assert actions.calls[-1][1]["value"] == "succeeded"


async def test_a_false_when_skips_the_step(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    result = await engine(db, clock, actions, sleeper).run(load(FOUR, actions), {"go": "false"})
    assert [c[0] for c in actions.calls] == ["a", "c", "d", "z"]
    assert {s["id"]: s["outcome"] for s in result.steps}["b"] == "skip"


@pytest.mark.parametrize("failing", ["a", "b", "c", "d"])
async def test_a_failure_rolls_back_completed_steps_in_reverse_exactly_once_then_on_failure_then_always(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper, failing: str
) -> None:
    actions.fail = {failing}
    actions.fail_rollback = {"b"}  # a rollback that fails does not stop the others, and is not retried
    result = await engine(db, clock, actions, sleeper).run(load(FOUR, actions), {})
    assert result.status == "failed" and f"step {failing!r}" in (result.reason or "")
    order = ["a", "b", "c", "d"]
    done = order[: order.index(failing)]
    expected = [*order[: order.index(failing) + 1], *[f"undo:{s}" for s in reversed(done)], "f", "z"]
    assert [c[0] for c in actions.calls] == expected
    assert actions.calls[-2][1]["value"] == failing  # on_failure knows the failed step
    assert actions.calls[-1][1]["value"] == "failed"
    stored = await RunStore(db, clock).get(result.run_id)
    rollbacks = [s for s in stored.steps if s["phase"] == "rollback"]
    assert [s["id"] for s in rollbacks] == list(reversed(done))
    assert all(s["outcome"] == ("rollback_failed" if s["id"] == "b" else "rolled_back") for s in rollbacks)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    retry = Retry(max_attempts=10, initial=1.0, max=8.0)
    assert [backoff_delay(retry, n, 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [backoff_delay(retry, n, 0.999999) for n in range(1, 7)] == pytest.approx([1, 2, 4, 8, 8, 8], rel=1e-5)
    for n in range(1, 20):
        for r in (0.0, 0.3, 0.9):
            assert 0 <= backoff_delay(retry, n, r) <= retry.max


async def test_retries_wait_the_backoff_on_the_injected_sleeper_then_succeed(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: retrying
        steps:
          - id: flaky
            action: test.do
            retry: {max_attempts: 4, initial: 2, max: 3}
        """,
        actions,
    )
    actions.failures = {"flaky": 3}
    result = await engine(db, clock, actions, sleeper).run(playbook, {})
    assert result.status == "succeeded"
    assert sleeper.waits == [1.5, 2.25, 2.25]  # 2, 3 (capped), 3 (capped); rand 0.5 keeps 3/4 of each
    step = result.steps[0]
    assert [a["outcome"] for a in step["attempts"]] == ["failed", "failed", "failed", "succeeded"]


async def test_retries_stop_at_max_attempts_and_the_run_fails(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: retrying
        steps:
          - id: flaky
            action: test.do
            retry: {max_attempts: 2, on: [timeout]}
        """,
        actions,
    )
    actions.failures = {"flaky": 1}
    result = await engine(db, clock, actions, sleeper).run(playbook, {})
    assert result.status == "failed"  # an error is not in retry.on: one attempt only
    assert len(result.steps[0]["attempts"]) == 1 and sleeper.waits == []


async def test_a_step_timeout_cancels_the_action_and_is_retried(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: hanging
        steps:
          - id: slow
            action: test.hang
            timeout: 30
            retry: {max_attempts: 2, initial: 1, max: 1, on: [timeout]}
        always:
          - id: z
            action: test.do
        """,
        actions,
    )
    result = await engine(db, clock, actions, sleeper).run(playbook, {})
    assert result.status == "failed"
    assert actions.cancelled == ["slow", "slow"]  # each attempt's action was cancelled
    assert [a["outcome"] for a in result.steps[0]["attempts"]] == ["timed_out", "timed_out"]
    assert actions.timer.asked.count(30) == 2 and sleeper.waits == [0.75]
    assert actions.calls[-1][0] == "z"


async def test_the_run_timeout_rolls_back_runs_on_failure_and_always(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: slow_run
        policy: {timeout: 60}
        steps:
          - id: a
            action: test.do
            rollback: {action: test.undo}
          - id: slow
            action: test.hang
        on_failure:
          - id: f
            action: test.do
        always:
          - id: z
            action: test.do
        """,
        actions,
    )
    result = await engine(db, clock, actions, sleeper).run(playbook, {})
    assert result.status == "timed_out"
    assert [c[0] for c in actions.calls] == ["a", "slow", "undo:a", "f", "z"]


async def test_a_cancelled_run_rolls_back_and_runs_always_but_not_on_failure(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: cancelled
        steps:
          - id: a
            action: test.do
            rollback: {action: test.undo}
          - id: slow
            action: test.hang
        on_failure:
          - id: f
            action: test.do
        always:
          - id: z
            action: test.do
        """,
        actions,
    )
    store = RunStore(db, clock)
    actions.hang_expires = False
    run = asyncio.create_task(engine(db, clock, actions, sleeper).run(playbook, {}))
    await actions.hanging.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert [c[0] for c in actions.calls] == ["a", "slow", "undo:a", "z"]
    [record] = await store.recent(playbook="cancelled")
    assert record.status == "cancelled"


async def test_a_condition_that_cannot_be_evaluated_fails_the_step_never_reads_false(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: guarded
        inputs: {limit: {type: int, default: 0}}
        steps:
          - id: a
            action: test.do
            when: 10 / inputs.limit > 1
        """,
        actions,
    )
    result = await engine(db, clock, actions, sleeper).run(playbook, {})
    assert result.status == "failed" and "condition error" in (result.reason or "")
    assert actions.calls == []


async def test_failed_when_fails_a_step_that_returned(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: checked
        steps:
          - id: a
            action: test.do
            with: {value: 3}
            failed_when: steps.a.output.count > 0
        """,
        actions,
    )
    result = await engine(db, clock, actions, sleeper).run(playbook, {})
    assert result.status == "failed" and "failed_when" in (result.reason or "")


async def test_a_dry_run_calls_no_side_effecting_action_and_reports_run_skip_unknown(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    playbook = load(
        """
        version: 1
        name: dry
        steps:
          - id: look
            action: test.read
          - id: act
            action: test.do
            when: steps.look.output.count > 5
          - id: quiet
            action: test.do
            when: steps.look.output.count > 50
          - id: after
            action: test.do
            when: steps.act.output.count > 0
        """,
        actions,
    )
    result = await engine(db, clock, actions, sleeper).run(playbook, {}, dry_run=True)
    assert [c[0] for c in actions.calls] == ["look"]  # only the read
    assert {s["id"]: s["outcome"] for s in result.steps} == {
        "look": "run",
        "act": "run",
        "quiet": "skip",
        "after": "unknown",
    }
    assert (await RunStore(db, clock).get(result.run_id)).dry_run


async def test_history_keeps_trigger_who_inputs_attempts_outcome_and_durations(
    db: storage.Database, clock: ManualClock, actions: FakeActions, sleeper: RecordingSleeper
) -> None:
    result = await engine(db, clock, actions, sleeper).run(load(FOUR, actions), {"go": "true"}, who="alice")
    record = await RunStore(db, clock).get(result.run_id)
    assert (record.trigger, record.who, record.inputs, record.status) == ("manual", "alice", {"go": True}, "succeeded")
    assert record.duration_ms is not None and record.finished_at is not None
    step = record.steps[0]
    assert step["id"] == "a" and step["attempts"][0]["outcome"] == "succeeded" and "duration_ms" in step


SECRET = """
version: 1
name: secretive
inputs: {key: {type: secret, default: api_key}}
steps:
  - id: use
    action: test.do
    with: {secret: {secret: "${inputs.key}"}}
"""


async def test_a_secret_never_reaches_history_logs_or_dry_run_output(
    db: storage.Database,
    clock: ManualClock,
    actions: FakeActions,
    sleeper: RecordingSleeper,
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolved: list[str] = []

    async def resolve(key: str, state: Any) -> str:
        resolved.append(key)
        return CANARY

    actions.leak = CANARY  # the action puts the value in its error text
    caplog.set_level(logging.DEBUG)
    run = engine(db, clock, actions, sleeper, resolve_secret=resolve)
    result = await run.run(load(SECRET, actions), {"key": "api_key"})
    dry = await run.run(load(SECRET, actions), {"key": "api_key"}, dry_run=True)
    assert resolved == ["api_key"]  # resolved at run time, once; never in a dry run
    assert actions.calls[0][1]["secret"] == CANARY  # the action got it
    assert result.status == "failed" and "[redacted]" in (result.reason or "")
    async with db.read() as conn:
        rows = (await conn.execute(select(playbook_runs))).mappings().all()
    stored = str([dict(r) for r in rows])
    assert CANARY not in stored
    assert CANARY not in str(result) and CANARY not in str(dry)
    assert CANARY not in caplog.text and all(CANARY not in str(r.__dict__) for r in caplog.records)
    assert dry.steps[0]["with"] == {"secret": "<secret ${inputs.key}>"}
    assert (await RunStore(db, clock).get(result.run_id)).inputs == {"key": "[redacted]"}
