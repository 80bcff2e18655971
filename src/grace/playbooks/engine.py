"""The engine: steps in order with their conditions, retries, timeouts, rollback, on_failure and always.

The rules (each tested in ``tests/unit/test_playbook_engine.py``):

- A step runs when its ``when`` is true; a condition that cannot be evaluated fails the step (it is
  never read as false). Its attempts are retried on the kinds ``retry.on`` names, waiting a capped
  exponential backoff with jitter (:func:`backoff_delay`) through the injected sleeper.
- A step's ``timeout`` cancels its action; the run's ``policy.timeout`` cancels the run.
- When a step fails, or the run times out or is cancelled, the steps that completed are rolled back
  in reverse order, each exactly once; then ``on_failure`` runs (not on cancel); ``always`` runs in
  every case.
- A dry run calls only actions without side effects, and reports each step as ``run``, ``skip`` or
  ``unknown`` (a condition that depends on what a side-effecting step would have returned).
- Secret references are resolved at the moment of the call; their values are given to the action
  and nowhere else: not to history, logs, errors or dry-run output (every text written is scrubbed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

from grace.playbooks import catalogue
from grace.playbooks.actions import ActionContext, ActionFailed, ActionRegistry, Capabilities
from grace.playbooks.history import RunStore
from grace.playbooks.schema import Arg, Call, Playbook, Retry, Step

__all__ = [
    "REDACTED",
    "Answer",
    "ApprovalAsker",
    "Engine",
    "RunResult",
    "SecretResolver",
    "backoff_delay",
    "parse_inputs",
]

log = logging.getLogger("grace.playbooks")

REDACTED = "[redacted]"
SecretResolver = Callable[[str, "RunState"], Awaitable[str]]
Sleeper = Callable[[float], Awaitable[None]]
# Asks the run's owner to approve a step; returns {"consent_id", "expires_at"} (ValueError: cannot ask).
ApprovalAsker = Callable[["Step", "RunState"], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class Answer:
    """The answer to an approval: ``approved``, ``denied`` or ``expired``, and in words."""

    status: str
    reason: str


def backoff_delay(retry: Retry, attempt: int, rand: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): capped exponential, half of it jittered.

    ``rand`` in [0, 1) picks the jitter: the wait is between half the capped delay and all of it.
    """
    if retry.backoff == "constant":
        base = min(retry.initial, retry.max)
    else:
        base = min(retry.max, retry.initial * (2 ** (attempt - 1)))
    return base / 2 + base / 2 * rand


def parse_inputs(playbook: Playbook, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check and type inputs (text from the CLI, or JSON values), fill defaults; ValueError names the input."""
    from grace import jsontext

    out: dict[str, Any] = {}
    for name in given:
        if name not in playbook.inputs:
            from grace.playbooks.actions import suggest

            raise ValueError(f"unknown input {name!r}{suggest(name, playbook.inputs)}")
    for name, spec in playbook.inputs.items():
        if name not in given:
            if spec.required and spec.default is None:
                raise ValueError(f"input {name!r} is required")
            out[name] = spec.default
            continue
        value = given[name]
        try:
            if isinstance(value, str) and spec.type not in ("string", "secret", "any"):
                if spec.type == "int":
                    value = int(value)
                elif spec.type == "double":
                    value = float(value)
                elif spec.type == "bool":
                    if value.lower() not in ("true", "false"):
                        raise ValueError
                    value = value.lower() == "true"
                else:
                    value = jsontext.loads(value)
            if spec.type == "double" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not _fits(spec.type, value):
                raise ValueError
        except ValueError:
            raise ValueError(f"input {name!r} must be a {spec.type}") from None
        out[name] = value
    return out


def _fits(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "double":
        return isinstance(value, float)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("string", "secret"):
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "map":
        return isinstance(value, dict)
    return True


@dataclass
class RunState:
    """One run in progress: the values conditions read, the secrets it resolved, its step records."""

    run_id: str
    playbook: Playbook
    trigger: str
    who: str
    dry_run: bool
    values: dict[str, Any] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)  # names a dry run could not know
    secrets: set[str] = field(default_factory=set)
    records: list[dict[str, Any]] = field(default_factory=list)
    completed: list[Step] = field(default_factory=list)
    rolled_back: set[str] = field(default_factory=set)
    principal: Any = None
    started_at: datetime | None = None  # when the run started (wall clock, for actions that report it)
    resume_from: int = 0  # the main step a resumed run goes on from
    worked: float = 0.0  # seconds the run worked before it waited (its timeout counts only working time)
    answers: dict[str, Answer] = field(default_factory=dict)  # approvals answered, by step id

    def scrub(self, value: Any) -> Any:
        """Return ``value`` with every secret value this run resolved replaced by ``[redacted]``."""
        if isinstance(value, str):
            for secret in self.secrets:
                if secret:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str  # succeeded, failed, cancelled, timed_out
    reason: str | None
    steps: list[dict[str, Any]]


class _StepFailed(Exception):
    def __init__(self, step: Step, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


class _Park(Exception):
    """The run waits for an approval: it is recorded as ``waiting`` and its task ends."""

    def __init__(self, step: Step, index: int, consent_id: str, expires_at: str) -> None:
        super().__init__(step.id)
        self.step = step
        self.index = index
        self.consent_id = consent_id
        self.expires_at = expires_at


class _Unknown(Exception):
    """A dry run cannot know this value: it depends on a side-effecting step's output."""


class Engine:
    """Runs playbooks against the capabilities, recording history in ``store``."""

    def __init__(
        self,
        registry: ActionRegistry,
        capabilities: Capabilities,
        store: RunStore,
        *,
        sleep: Sleeper | None = None,
        timer: Sleeper | None = None,
        rand: Callable[[], float] = random.random,
        resolve_secret: SecretResolver | None = None,
        ask_approval: ApprovalAsker | None = None,
    ) -> None:
        self.registry = registry
        self.capabilities = capabilities
        self.store = store
        self.sleep: Sleeper = sleep or capabilities.clock.sleep  # backoff waits
        self.timer: Sleeper = timer or capabilities.clock.sleep  # what a timeout waits for
        self.rand = rand
        self.resolve_secret = resolve_secret
        self.ask_approval = ask_approval

    def __repr__(self) -> str:
        return f"Engine(actions={len(self.registry.names())})"

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        playbook: Playbook,
        inputs: Mapping[str, Any],
        *,
        trigger: str = "manual",
        who: str = "cli",
        principal: Any = None,
        dry_run: bool = False,
        event: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        failed: str | None = None,
    ) -> RunResult:
        """Run ``playbook`` (a run already recorded as ``run_id``, or a new one) to its end.

        ``failed``: a reason the run cannot go on (its owner is not a user): it fails at its start,
        before any step, and runs on_failure and always as any failed run does.
        """
        typed = parse_inputs(playbook, inputs)
        shown = {k: (REDACTED if k in playbook.secret_inputs() else v) for k, v in typed.items()}
        if run_id is None:
            created = await self.store.create(
                playbook.name, digest=playbook.digest, trigger=trigger, who=who, inputs=shown, dry_run=dry_run
            )
            assert created is not None
            run_id = created
        else:
            await self.store.update(run_id, inputs=_json_safe(shown))
        if not await self.store.start(run_id):
            record = await self.store.get(run_id)
            return RunResult(run_id, record.status, record.reason or "the run was not queued", record.steps)
        state = RunState(
            run_id, playbook, trigger, who, dry_run, principal=principal, started_at=self.capabilities.clock.now()
        )
        state.values.update({f"inputs.{k}": v for k, v in typed.items()})
        state.values.update({"run.id": run_id, "run.trigger": trigger, "run.dry_run": dry_run})
        for key, value in (event or {}).items():
            state.values[f"event.{key}"] = value
        return await self._drive(state, failed=failed, failed_at="start")

    async def resume(self, playbook: Playbook, run_id: str, answer: Answer, *, principal: Any = None) -> RunResult:
        """Go on with a run that waited for an approval (requeued as ``queued``), with the owner's answer."""
        record = await self.store.get(run_id)
        parked = record.parked
        if parked is None:
            return RunResult(run_id, record.status, "the run is not waiting for an approval", record.steps)
        if not await self.store.start(run_id):
            record = await self.store.get(run_id)
            return RunResult(run_id, record.status, record.reason or "the run was not queued", record.steps)
        state = RunState(
            run_id, playbook, record.trigger, record.who, False, principal=principal, started_at=record.started_at
        )
        state.records = list(record.steps)
        state.values = dict(parked["values"])
        state.worked = float(parked["worked"])
        by_id = {s.id: s for s in playbook.steps}
        if parked.get("digest") != playbook.digest or any(i not in by_id for i in parked["completed"]):
            # The file changed while the run waited: its steps may not be the ones it stopped among.
            state.completed = [by_id[i] for i in parked["completed"] if i in by_id]
            state.resume_from = len(playbook.steps)
            return await self._drive(state, failed="the playbook changed while the run waited for an approval")
        state.completed = [by_id[i] for i in parked["completed"]]
        state.resume_from = int(parked["next"])
        state.answers[str(parked["step"])] = answer
        return await self._drive(state)

    async def cancel_waiting(self, playbook: Playbook, run_id: str, reason: str, *, principal: Any = None) -> RunResult:
        """End a run that waited for an approval (taken out of ``waiting`` by the caller) as cancelled.

        As for any cancelled run: the steps that completed before it waited roll back in reverse
        order, each once; ``on_failure`` does not run; ``always`` does. The step that waited is
        recorded ``cancelled``. The approval itself is the caller's to withdraw.
        """
        record = await self.store.get(run_id)
        parked = record.parked or {}
        state = RunState(
            run_id, playbook, record.trigger, record.who, False, principal=principal, started_at=record.started_at
        )
        state.records = list(record.steps)
        for step_record in state.records:
            if step_record.get("outcome") == "waiting":
                step_record["outcome"] = "cancelled"
                step_record["reason"] = "the run was cancelled while it waited for this approval"
        state.values = dict(parked.get("values") or {})
        state.worked = float(parked.get("worked") or 0.0)
        by_id = {s.id: s for s in playbook.steps}
        state.completed = [by_id[i] for i in parked.get("completed") or () if i in by_id]
        state.resume_from = len(playbook.steps)
        return await self._drive(state, cancelled_because=reason)

    async def _drive(
        self,
        state: RunState,
        *,
        failed: str | None = None,
        failed_at: str = "resume",
        cancelled_because: str | None = None,
    ) -> RunResult:
        """Run the main steps from ``state.resume_from``, then the ending; record the outcome (or the wait)."""
        playbook, run_id = state.playbook, state.run_id
        started = self.capabilities.clock.monotonic()
        status, reason = "succeeded", None
        cancelled = False
        timeout = playbook.policy.timeout
        try:
            try:
                if cancelled_because is not None:
                    raise asyncio.CancelledError
                if failed is not None:
                    raise _StepFailed(Step(failed_at, "main", Call(failed_at)), failed)
                remaining = max(0.001, timeout - state.worked)
                await self._with_timeout(self._main(state), remaining)
            except _Park as park:
                return await self._park(state, park, started)
            except TimeoutError:
                status, reason = "timed_out", f"the run passed its timeout of {timeout:g} s"
            except _StepFailed as exc:
                status, reason = "failed", f"step {exc.step.id!r}: {exc.reason}"
                state.values["run.failed_step"] = exc.step.id
        except asyncio.CancelledError:
            status, reason, cancelled = "cancelled", cancelled_because or "the run was cancelled", True
            if cancelled_because is not None:
                cancelled = False  # asked for, not a cancellation of this coroutine: nothing to raise again
        state.values["run.outcome"] = status
        state.values["run.error"] = reason or ""
        state.values.setdefault("run.failed_step", "")
        # The ending runs to completion even when the run was cancelled: it is what cleans up.
        ending = asyncio.ensure_future(self._end(state, status))
        try:
            await asyncio.shield(ending)
        except asyncio.CancelledError:
            await ending
            cancelled = True
        duration = round((state.worked + self.capabilities.clock.monotonic() - started) * 1000, 3)
        reason = state.scrub(reason)
        await self.store.update(
            run_id,
            status=status,
            reason=reason,
            steps=state.scrub(state.records),
            finished_at=self.capabilities.clock.now(),
            duration_ms=duration,
            parked=None,
        )
        log.info("playbooks.run_finished", extra={"playbook": playbook.name, "run_id": run_id, "status": status})
        if cancelled:
            raise asyncio.CancelledError
        return RunResult(run_id, status, reason, state.scrub(state.records))

    async def _park(self, state: RunState, park: _Park, started: float) -> RunResult:
        """Record the run as waiting for ``park``'s approval, with what it needs to go on; free the worker."""
        worked = state.worked + self.capabilities.clock.monotonic() - started
        parked = {
            "digest": state.playbook.digest,
            "next": park.index,
            "step": park.step.id,
            "completed": [s.id for s in state.completed],
            "values": _json_safe(state.scrub(state.values)),
            "worked": worked,
            "as_user": getattr(state.principal, "user_id", None),
        }
        reason = f"waiting for the owner to approve step {park.step.id!r} (until {park.expires_at})"
        await self.store.update(
            state.run_id,
            status="waiting",
            reason=reason,
            steps=state.scrub(state.records),
            approval_id=park.consent_id,
            parked=parked,
            duration_ms=round(worked * 1000, 3),
        )
        log.info(
            "playbooks.run_waiting",
            extra={"playbook": state.playbook.name, "run_id": state.run_id, "step": park.step.id},
        )
        return RunResult(state.run_id, "waiting", reason, state.scrub(state.records))

    async def _main(self, state: RunState) -> None:
        if state.resume_from == 0:
            await self._monitors(state)
        for index, step in enumerate(state.playbook.steps):
            if index >= state.resume_from:
                await self._step(state, step, "main", index)

    async def _end(self, state: RunState, status: str) -> None:
        if status != "succeeded":
            for step in reversed(state.completed):
                if step.rollback is not None and step.id not in state.rolled_back:
                    state.rolled_back.add(step.id)  # exactly once, whatever the rollback does
                    await self._rollback(state, step, step.rollback)
            if status != "cancelled":
                for step in state.playbook.on_failure:
                    with contextlib.suppress(_StepFailed):
                        await self._step(state, step, "on_failure")
        for step in state.playbook.always:
            with contextlib.suppress(_StepFailed):
                await self._step(state, step, "always")
        await self.store.update(state.run_id, steps=state.scrub(state.records))

    async def _monitors(self, state: RunState) -> None:
        # Every metric first: a monitor's condition may read any metric the playbook monitors.
        for monitor in state.playbook.monitors:
            name = f"metrics.{monitor.metric}"
            if name not in state.values:
                try:
                    state.values[name] = await catalogue.METRICS[monitor.metric].read(self.capabilities)
                except Exception as exc:  # a metric that cannot be read fails the run: the check did not happen
                    raise _StepFailed(
                        Step(f"monitor:{monitor.name}", "main", Call("monitor")),
                        f"metric {monitor.metric} could not be read: {type(exc).__name__}",
                    ) from None
        for monitor in state.playbook.monitors:
            name = f"metrics.{monitor.metric}"
            try:
                firing = bool(monitor.condition.evaluate(state.values))
            except ValueError as exc:
                raise _StepFailed(
                    Step(f"monitor:{monitor.name}", "main", Call("monitor")), f"condition error: {exc}"
                ) from None
            state.values[f"monitors.{monitor.name}.firing"] = firing
            state.values[f"monitors.{monitor.name}.severity"] = monitor.severity
            state.records.append(
                {
                    "id": f"monitor:{monitor.name}",
                    "phase": "monitor",
                    "outcome": "firing" if firing else "quiet",
                    "metric": monitor.metric,
                    "value": state.values[name],
                    "severity": monitor.severity,
                }
            )

    # -- one step ----------------------------------------------------------------------------

    async def _step(self, state: RunState, step: Step, phase: str, index: int = -1) -> None:
        record = self._waiting_record(state, step) if step.id in state.answers else None
        if record is None:
            record = {"id": step.id, "phase": phase, "action": step.call.action, "attempts": []}
            state.records.append(record)
        state.values[f"steps.{step.id}.status"] = "skipped"
        if step.when is not None:
            try:
                go = self._condition(state, step.when)
            except _Unknown:
                record["outcome"] = "unknown"
                record["reason"] = "the condition depends on a step a dry run does not call"
                state.unknown.add(f"steps.{step.id}")
                return
            except ValueError as exc:
                self._fail(state, step, record, f"condition error: {exc}")
            if not go:
                record["outcome"] = "skip"
                return
        action = self.registry.get(step.call.action)
        assert action is not None  # lint checked it
        if state.dry_run:
            try:
                record["with"] = {k: self._shown(state, a) for k, a in step.call.args.items()}
            except _Unknown:
                record["with"] = {k: a.shown() for k, a in step.call.args.items()}
            if action.side_effects or step.approval is not None:
                record["outcome"] = "run"
                record["called"] = False
                state.unknown.add(f"steps.{step.id}")
                state.values[f"steps.{step.id}.status"] = "succeeded"
                return
        else:
            record["with"] = {k: a.shown() for k, a in step.call.args.items()}
        if step.approval is not None and await self._approval(state, step, record, phase, index) == "skip":
            return
        attempt = 0
        started = self.capabilities.clock.monotonic()
        while True:
            attempt += 1
            kind, reason, output = await self._attempt(state, step, attempt, record)
            if kind is None:
                break
            if kind in step.retry.on and attempt < step.retry.max_attempts:
                delay = backoff_delay(step.retry, attempt, self.rand())
                record["attempts"][-1]["retry_in_s"] = round(delay, 3)
                await self.sleep(delay)
                continue
            record["duration_ms"] = round((self.capabilities.clock.monotonic() - started) * 1000, 3)
            self._fail(state, step, record, reason)
        record["duration_ms"] = round((self.capabilities.clock.monotonic() - started) * 1000, 3)
        record["outcome"] = "run" if state.dry_run else "succeeded"
        record["output"] = state.scrub(_json_safe(output))
        if state.dry_run:
            record["called"] = True
        state.values[f"steps.{step.id}.status"] = "succeeded"
        for key, value in output.items():
            state.values[f"steps.{step.id}.output.{key}"] = value
        if phase == "main":
            state.completed.append(step)

    @staticmethod
    def _waiting_record(state: RunState, step: Step) -> dict[str, Any] | None:
        """The record a resumed run left at the step it waited at (the answer is written into it)."""
        for record in reversed(state.records):
            if record.get("id") == step.id and record.get("outcome") == "waiting":
                del record["outcome"]
                found: dict[str, Any] = record
                return found
        return None

    async def _approval(
        self, state: RunState, step: Step, record: dict[str, Any], phase: str, index: int
    ) -> str | None:
        """Ask for the step's approval (the run parks), or act on its answer: go on, skip or fail."""
        assert step.approval is not None
        answer = state.answers.pop(step.id, None)
        if answer is None:
            if phase != "main" or index < 0:
                self._fail(state, step, record, "an approval step runs only among the main steps")
            if self.ask_approval is None:
                self._fail(state, step, record, "this Grace has no consent inbox to ask for the approval")
            try:
                asked = await self.ask_approval(step, state)
            except ValueError as exc:
                self._fail(state, step, record, f"approval: {exc}")
            record["approval"] = {
                "consent_id": asked["consent_id"],
                "message": step.approval.message,
                "asked_at": self.capabilities.clock.now().isoformat(),
                "expires_at": asked["expires_at"],
                "on_timeout": step.approval.on_timeout,
            }
            record["outcome"] = "waiting"
            raise _Park(step, index, asked["consent_id"], asked["expires_at"])
        shown = record.setdefault("approval", {})
        shown.update({"answer": answer.status, "answered": answer.reason})
        if answer.status == "approved":
            return None
        if answer.status == "expired" and step.approval.on_timeout == "continue":
            record["outcome"] = "skip"
            record["reason"] = "no answer before the approval's timeout (on_timeout: continue)"
            return "skip"
        self._fail(state, step, record, answer.reason)

    async def _attempt(
        self, state: RunState, step: Step, attempt: int, record: dict[str, Any]
    ) -> tuple[str | None, str, dict[str, Any]]:
        """Make one attempt; return (failure kind or None, reason, output)."""
        clock = self.capabilities.clock
        started = clock.monotonic()
        entry: dict[str, Any] = {"attempt": attempt, "started_at": clock.now().isoformat()}
        record["attempts"].append(entry)

        def done(outcome: str, reason: str = "") -> None:
            entry["outcome"] = outcome
            entry["duration_ms"] = round((clock.monotonic() - started) * 1000, 3)
            if reason:
                entry["error"] = state.scrub(reason)

        try:
            args = await self._resolve(state, step.call)
        except ValueError as exc:
            done("failed", f"arguments: {exc}")
            return "argument", f"arguments: {state.scrub(str(exc))}", {}
        action = self.registry.get(step.call.action)
        assert action is not None
        ctx = ActionContext(
            self.capabilities,
            state.run_id,
            state.playbook.name,
            step.id,
            attempt,
            state.who,
            state.principal,
            state.started_at,
        )
        try:
            output = dict(await self._with_timeout(action.fn(ctx, args), step.timeout) or {})
        except TimeoutError:
            done("timed_out", f"timed out after {step.timeout:g} s")
            return "timeout", f"timed out after {step.timeout:g} s", {}
        except asyncio.CancelledError:
            done("cancelled")
            raise
        except Exception as exc:  # an action's failure is the step's: recorded, retried, rolled back
            text = str(exc) if isinstance(exc, ActionFailed) else f"{type(exc).__name__}: {exc}"
            text = state.scrub(text)
            done("failed", text)
            log.warning(
                "playbooks.attempt_failed",
                extra={"playbook": state.playbook.name, "run_id": state.run_id, "step": step.id, "reason": text},
            )
            return "error", text, {}
        finally:
            args = {}  # the resolved values leave with the call
        if step.failed_when is not None:
            values = dict(state.values)
            values.update({f"steps.{step.id}.output.{k}": v for k, v in output.items()})
            try:
                failed = bool(step.failed_when.evaluate(values))
            except ValueError as exc:
                done("failed", f"failed_when error: {exc}")
                return "failed_when", f"failed_when error: {state.scrub(str(exc))}", {}
            if failed:
                done("failed", "failed_when is true")
                entry["output"] = state.scrub(_json_safe(output))
                return "failed_when", "failed_when is true", {}
        done("succeeded")
        return None, "", output

    async def _rollback(self, state: RunState, step: Step, call: Call) -> None:
        record: dict[str, Any] = {"id": step.id, "phase": "rollback", "action": call.action, "attempts": []}
        state.records.append(record)
        action = self.registry.get(call.action)
        assert action is not None
        record["with"] = {k: a.shown() for k, a in call.args.items()}
        if state.dry_run and action.side_effects:
            record["outcome"] = "run"
            record["called"] = False
            return
        clock = self.capabilities.clock
        started = clock.monotonic()
        try:
            args = await self._resolve(state, call)
            ctx = ActionContext(
                self.capabilities,
                state.run_id,
                state.playbook.name,
                step.id,
                1,
                state.who,
                state.principal,
                state.started_at,
            )
            await action.fn(ctx, args)
            record["outcome"] = "rolled_back"
        except Exception as exc:  # a failed rollback is recorded; the others still run
            record["outcome"] = "rollback_failed"
            record["error"] = state.scrub(f"{type(exc).__name__}: {exc}")
            log.error(
                "playbooks.rollback_failed",
                extra={"playbook": state.playbook.name, "run_id": state.run_id, "step": step.id},
            )
        record["duration_ms"] = round((clock.monotonic() - started) * 1000, 3)

    def _fail(self, state: RunState, step: Step, record: dict[str, Any], reason: str) -> NoReturn:
        record["outcome"] = "failed"
        record["reason"] = state.scrub(reason)
        state.values[f"steps.{step.id}.status"] = "failed"
        raise _StepFailed(step, state.scrub(reason))

    # -- values -------------------------------------------------------------------------------

    def _condition(self, state: RunState, compiled: Any) -> bool:
        if state.dry_run and any(compiled.source.find(u + ".") >= 0 for u in state.unknown):
            raise _Unknown
        return bool(compiled.evaluate(state.values))

    def _shown(self, state: RunState, arg: Arg) -> Any:
        if arg.secret or arg.expr is None:
            return arg.shown()
        if any(arg.expr.source.find(u + ".") >= 0 for u in state.unknown):
            raise _Unknown
        return _json_safe(arg.expr.evaluate(state.values))

    async def _resolve(self, state: RunState, call: Call) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name, param in (self.registry.get(call.action) or _NO_ACTION).params.items():
            if name not in call.args and param.default is not None:
                args[name] = param.default
        for name, arg in call.args.items():
            value = arg.literal if arg.expr is None else arg.expr.evaluate(state.values)
            if arg.secret:
                value = await self._secret(state, str(value))
            args[name] = value
        return args

    async def _secret(self, state: RunState, key: str) -> str:
        if self.resolve_secret is None:
            raise ValueError("no vault to resolve secrets")
        value = await self.resolve_secret(key, state)
        state.secrets.add(value)
        return value

    async def _with_timeout(self, work: Awaitable[Any], seconds: float | None) -> Any:
        """Await ``work``; cancel it and raise TimeoutError once the timer has slept ``seconds``."""
        task = asyncio.ensure_future(work)
        if seconds is None:
            return await task
        timer = asyncio.ensure_future(self.timer(seconds))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            timer.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        if task.done():
            timer.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise TimeoutError


class _NoAction:
    params: Mapping[str, Any] = {}


_NO_ACTION = _NoAction()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
