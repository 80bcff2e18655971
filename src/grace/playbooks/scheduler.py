"""The scheduler: cron and bus-event firings become runs, executed as task-manager tasks.

One process leads (``grace.playbooks.scheduler``, a :class:`~grace.storage.Leadership`: an advisory
lock on PostgreSQL, always this process on SQLite). Each :meth:`Scheduler.tick` reads every valid
playbook's schedules, asks :func:`schedule.decide` what is due since the stored last firing, and
records each firing: a run, queued as the HTM task ``playbooks.run`` (origin ``scheduler``), or a
skipped record with its reason (misfired, coalesced, concurrency). A firing's ``trigger_key``
(``schedule:<time>``, ``event:<bus event id>``) is unique per playbook, so a repeated event or a
tick repeated on another node starts no second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from grace import background
from grace.auth import Principal
from grace.bus import Bus, Event
from grace.clock import Clock
from grace.htm import HTM, TaskContext
from grace.playbooks import schedule
from grace.playbooks.history import FINAL, RunRecord
from grace.playbooks.schema import Playbook
from grace.playbooks.service import RUN_TASK, Playbooks
from grace.storage import Leadership

__all__ = ["LEADER_LOCK", "Scheduler"]

log = logging.getLogger("grace.playbooks")

LEADER_LOCK = "grace.playbooks.scheduler"
APPROVAL_TOPIC = "secrets.consent.response"  # the vault's answers, approvals among them
TICK_SECONDS = 30.0


class Scheduler:
    """Fires playbooks on their schedules and events, one leader at a time."""

    def __init__(
        self,
        playbooks: Playbooks,
        htm: HTM,
        bus: Bus,
        clock: Clock,
        *,
        leadership: Leadership | None = None,
        tick_seconds: float = TICK_SECONDS,
        person: Callable[[str], Awaitable[Principal | None]] | None = None,
    ) -> None:
        self.playbooks = playbooks
        self.htm = htm
        self.bus = bus
        self.clock = clock
        self.leadership = leadership
        self.tick_seconds = tick_seconds
        # Who a queued manual run is for, read again when it runs (None: disabled or gone).
        self.person = person
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Scheduler(running={bool(self._tasks)})"

    # -- the HTM task --------------------------------------------------------------------------

    async def run_task(self, ctx: TaskContext) -> dict[str, Any]:
        """The ``playbooks.run`` handler: run the recorded run to its end."""
        run_id = str(ctx.payload.get("run_id", ""))
        record = await self.playbooks.history.get(run_id)
        if record.status != "queued":
            return {"run_id": run_id, "status": record.status, "skipped": "the run is not queued"}
        if record.task_id != ctx.task_id:
            # Before the run is marked running: a running run always names the task that runs it (what
            # a cancel stops), even when its submitter has not yet written the id it was given.
            await self.playbooks.history.update(run_id, task_id=ctx.task_id)
        playbook = self.playbooks.named(record.playbook)
        as_user = ctx.payload.get("as_user")
        principal = await self.person(str(as_user)) if as_user and self.person is not None else None
        failed = None
        if not as_user and record.parked is None:  # no one started it: the playbook's owner, if it names one
            principal, failed = await self.playbooks.owner_of(playbook)
        if record.parked is not None and record.approval_id is not None:
            answer = await self.playbooks.answer_of(record.approval_id)
            if answer is None:  # not answered after all: wait again
                await self.playbooks.history.update(run_id, status="waiting")
                return {"run_id": run_id, "status": "waiting"}
            result = await self.playbooks.engine.resume(playbook, run_id, answer, principal=principal)
        else:
            event = ctx.payload.get("event")
            inputs = ctx.payload.get("inputs")
            result = await self.playbooks.engine.run(
                playbook,
                inputs if isinstance(inputs, dict) else {},
                trigger=record.trigger,
                who=record.who,
                event=event if isinstance(event, dict) else None,
                run_id=run_id,
                principal=principal,
                failed=failed,
            )
        if result.status == "waiting":
            # An answer given before the run was recorded as waiting finds it here.
            await self.resume_answered(run_id=run_id)
        return {"run_id": run_id, "status": result.status}

    # -- approvals ----------------------------------------------------------------------------

    async def resume_answered(self, *, approval_id: str | None = None, run_id: str | None = None) -> list[str]:
        """Queue again each waiting run whose approval was answered or timed out; return their ids.

        The run goes on as a new ``playbooks.run`` task (it held no worker while it waited); moving
        it from ``waiting`` to ``queued`` is one conditional UPDATE, so an answer seen twice (the
        bus event and a tick) resumes it once.
        """
        resumed: list[str] = []
        for record in await self.playbooks.history.waiting(approval_id=approval_id):
            if run_id is not None and record.id != run_id:
                continue
            if record.approval_id is None or await self.playbooks.answer_of(record.approval_id) is None:
                continue
            if not await self.playbooks.history.requeue(record.id):
                continue
            as_user = (record.parked or {}).get("as_user")
            payload: dict[str, Any] = {"run_id": record.id, "resume": True}
            if as_user:
                payload["as_user"] = str(as_user)
            playbook = self.playbooks.named(record.playbook)
            decision = await self.htm.route_task(
                RUN_TASK,
                payload=payload,
                origin="user_request" if as_user else "scheduler",
                max_attempts=1,
                timeout_seconds=int(playbook.policy.timeout) + 60,
            )
            await self.playbooks.history.update(record.id, task_id=str(decision["task_id"]))
            log.info("playbooks.run_resumed", extra={"playbook": record.playbook, "run_id": record.id})
            resumed.append(record.id)
        return resumed

    async def _listen_approvals(self) -> None:
        async with self.bus.subscribe(APPROVAL_TOPIC, name="grace.playbooks.approvals") as subscription:
            while True:
                event = await subscription.get()
                if event is None:
                    return
                if event.payload.get("kind") != "approval":
                    continue
                try:
                    await self.resume_answered(approval_id=str(event.payload.get("consent_id", "")))
                except Exception as exc:  # the next tick tries again
                    background.stop_if_cancelled()
                    log.warning("playbooks.resume_failed", extra={"reason": type(exc).__name__})

    # -- firing ----------------------------------------------------------------------------------

    async def fire(
        self,
        playbook: Playbook,
        *,
        trigger: str,
        trigger_key: str | None,
        who: str,
        inputs: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
        origin: str = "scheduler",
        principal: Principal | None = None,
    ) -> str | None:
        """Record a firing and queue its run; return its id, or None when none was queued.

        None when the firing was skipped (recorded with its reason) or was already recorded.
        """
        history = self.playbooks.history
        given = dict(inputs or {})
        shown = {k: ("[redacted]" if k in playbook.secret_inputs() else v) for k, v in given.items()}
        active = await history.active(playbook.name)
        if active and playbook.policy.concurrency == "forbid":
            await history.create(
                playbook.name,
                digest=playbook.digest,
                trigger=trigger,
                trigger_key=trigger_key,
                who=who,
                inputs=shown,
                status="skipped",
                reason=f"concurrency forbid: run {active[0].id} is still {active[0].status}",
            )
            return None
        run_id = await history.create(
            playbook.name, digest=playbook.digest, trigger=trigger, trigger_key=trigger_key, who=who, inputs=shown
        )
        if run_id is None:
            log.info("playbooks.firing_repeated", extra={"playbook": playbook.name, "trigger_key": trigger_key})
            return None
        if active and playbook.policy.concurrency == "replace":
            for old in active:
                await self._cancel(old.id, old.task_id, reason=f"replaced by run {run_id}")
        payload: dict[str, Any] = {"run_id": run_id, "inputs": given}
        if principal is not None and not principal.is_agent:
            payload["as_user"] = principal.user_id
        if event is not None:
            payload["event"] = dict(event)
        decision = await self.htm.route_task(
            RUN_TASK,
            payload=payload,
            origin=origin,
            max_attempts=1,
            timeout_seconds=int(playbook.policy.timeout) + 60,
        )
        await history.update(run_id, task_id=str(decision["task_id"]))
        log.info("playbooks.fired", extra={"playbook": playbook.name, "run_id": run_id, "trigger": trigger})
        return run_id

    async def _cancel(self, run_id: str, task_id: str | None, *, reason: str) -> None:
        from grace import errors

        if task_id is not None:
            with contextlib.suppress(errors.Conflict, errors.NotFound):
                await self.htm.cancel(task_id, principal=None)
        record = await self.playbooks.history.get(run_id)
        if record.status == "queued":
            await self.playbooks.history.update(run_id, status="cancelled", reason=reason, finished_at=self.clock.now())

    async def cancel_run(self, run_id: str, *, by: str) -> RunRecord:
        """Cancel a queued, running or waiting run; return its record (NotFound; RunAlreadyFinished).

        - **queued** (its task not started): taken, its task cancelled, recorded ``cancelled``.
        - **waiting** for an approval (or queued again after the answer): taken, so neither the answer
          nor a worker goes on with it; its approval is withdrawn (the consent moves from pending to
          revoked and leaves the inbox); then the engine's cancel: the steps that completed roll back
          in reverse order, ``always`` runs, ``on_failure`` does not.
        - **running**: its task-manager task is cancelled (``HTM.cancel``); the handler stops at once
          when it runs in this process, else at its worker's next heartbeat, and the engine records
          ``cancelled`` after rolling back and running ``always``. The record returned may still say
          ``running`` until then. A run started by ``grace playbook execute`` runs in that command's
          process, not as a task: it is stopped there (Ctrl-C), and this is a 409.
        """
        from grace import errors

        history = self.playbooks.history
        reason = f"cancelled by {by}"
        for _ in range(5):  # a run that changes state meanwhile (starts, parks, resumes) is read again
            record = await history.get(run_id)
            if record.status in FINAL:
                raise errors.RunAlreadyFinished(
                    f"run {run_id} has already finished ({record.status}); only a queued, running or waiting"
                    " run can be cancelled"
                )
            if record.status == "running":
                if record.task_id is None:
                    raise errors.Conflict(
                        f"run {run_id} runs inside the 'grace playbook execute' command that started it, not as"
                        " a task: stop that command to cancel it"
                    )
                try:
                    await self.htm.cancel(record.task_id, principal=None)
                except (errors.TaskAlreadyFinished, errors.NotFound):
                    continue  # its task ended meanwhile (the run finished, or parked): read again
                log.info("playbooks.run_cancel_requested", extra={"run_id": run_id, "by": by})
                return await history.get(run_id)
            if not await history.take(run_id, ("queued", "waiting")):
                continue
            if record.task_id is not None:
                with contextlib.suppress(errors.Conflict, errors.NotFound):
                    await self.htm.cancel(record.task_id, principal=None)
            await self._withdraw(record, by=by)
            if record.parked is None:
                await history.update(run_id, status="cancelled", reason=reason, finished_at=self.clock.now())
            else:
                await self._cancel_waiting(record, reason)
            log.info("playbooks.run_cancelled", extra={"run_id": run_id, "by": by})
            return await history.get(run_id)
        raise errors.Conflict(f"run {run_id} kept changing state; try again")

    async def _withdraw(self, record: RunRecord, *, by: str) -> None:
        vault = self.playbooks.capabilities.vault
        if record.approval_id is None or vault is None:
            return
        await vault.withdraw_approval(
            record.approval_id, actor=by, reason=f"playbook {record.playbook} run {record.id} was cancelled"
        )

    async def _cancel_waiting(self, record: RunRecord, reason: str) -> None:
        """The engine's cancel for a run that had parked: rollback of what completed, always."""
        from grace import errors

        try:
            playbook = self.playbooks.named(record.playbook)
        except (errors.NotFound, errors.PlaybookInvalid):
            await self.playbooks.history.update(
                record.id,
                status="cancelled",
                reason=f"{reason}; its playbook no longer loads, so nothing was rolled back and always did not run",
                finished_at=self.clock.now(),
                parked=None,
            )
            return
        as_user = (record.parked or {}).get("as_user")
        principal = await self.person(str(as_user)) if as_user and self.person is not None else None
        await self.playbooks.engine.cancel_waiting(playbook, record.id, reason, principal=principal)

    async def queue_manual(
        self, playbook: Playbook, inputs: Mapping[str, Any], *, who: str, principal: Principal | None = None
    ) -> str:
        """Queue a manual run as a task-manager task (origin user_request); InvalidInput names a bad input."""
        from grace import errors
        from grace.playbooks.engine import parse_inputs

        try:
            parse_inputs(playbook, inputs)
        except ValueError as exc:
            raise errors.InvalidInput(str(exc)) from None
        run_id = await self.fire(
            playbook,
            trigger="manual",
            trigger_key=None,
            who=who,
            inputs=inputs,
            origin="user_request",
            principal=principal,
        )
        if run_id is None:
            active = await self.playbooks.history.active(playbook.name)
            raise errors.Conflict(
                f"playbook {playbook.name!r} forbids a second run while run {active[0].id if active else '?'} is active"
            )
        return run_id

    # -- schedules --------------------------------------------------------------------------------

    async def tick(self) -> list[str]:
        """Fire what is due on every schedule (when leading); return the runs queued."""
        if self.leadership is not None and not await self.leadership.acquire():
            return []
        now = self.clock.now()
        queued: list[str] = []
        for listed in self.playbooks.catalogue():
            playbook = listed.playbook
            if playbook is None or not playbook.schedules:
                continue
            for index, sched in enumerate(playbook.schedules):
                key = playbook.name if index == 0 else f"{playbook.name}#{index}"
                last = await self.playbooks.history.last_fire(key)
                decision = schedule.decide(
                    sched.cron,
                    sched.timezone,
                    last,
                    now,
                    misfire_grace=playbook.policy.misfire_grace,
                    coalesce=playbook.policy.coalesce,
                )
                for at, reason in decision.skipped:
                    await self.playbooks.history.create(
                        playbook.name,
                        digest=playbook.digest,
                        trigger="schedule",
                        trigger_key=f"schedule:{index}:{at.isoformat()}",
                        who="scheduler",
                        inputs={},
                        status="skipped",
                        reason=reason,
                    )
                for at in decision.run:
                    run_id = await self.fire(
                        playbook, trigger="schedule", trigger_key=f"schedule:{index}:{at.isoformat()}", who="scheduler"
                    )
                    if run_id is not None:
                        queued.append(run_id)
                if decision.last is not None:
                    await self.playbooks.history.set_last_fire(key, decision.last)
        # Approvals that timed out (or whose answer's event was missed) resume their runs here.
        try:
            await self.resume_answered()
        except Exception as exc:  # the firings above stand; the next tick tries again
            log.warning("playbooks.resume_failed", extra={"reason": type(exc).__name__})
        return queued

    # -- events -------------------------------------------------------------------------------------

    async def on_event(self, playbook: Playbook, event: Event) -> str | None:
        """Fire ``playbook`` for a bus event whose topic it names (once per event id)."""
        for trigger in playbook.events:
            if trigger.topic != event.topic:
                continue
            values: dict[str, Any] = {f"event.{k}": v for k, v in event.payload.items()}
            values.update({"run.id": "", "run.trigger": "event", "run.dry_run": False})
            if trigger.when is not None:
                try:
                    matched = bool(trigger.when.evaluate(values))
                except ValueError as exc:
                    await self.playbooks.history.create(
                        playbook.name,
                        digest=playbook.digest,
                        trigger="event",
                        trigger_key=f"event:{event.id}",
                        who=f"event:{event.topic}",
                        inputs={},
                        status="skipped",
                        reason=f"the event condition could not be evaluated: {exc}",
                    )
                    return None
                if not matched:
                    return None
            return await self.fire(
                playbook,
                trigger="event",
                trigger_key=f"event:{event.id}",
                who=f"event:{event.topic}",
                event=event.payload,
                origin="internal",
            )
        return None

    async def _listen(self, topic: str) -> None:
        async with self.bus.subscribe(topic, name=f"grace.playbooks.{topic}") as subscription:
            while True:
                event = await subscription.get()
                if event is None:
                    return
                for listed in self.playbooks.catalogue():
                    if listed.playbook is not None:
                        try:
                            await self.on_event(listed.playbook, event)
                        except Exception as exc:  # one playbook's failure does not stop the others' events
                            background.stop_if_cancelled()
                            log.warning(
                                "playbooks.event_failed", extra={"playbook": listed.name, "reason": type(exc).__name__}
                            )

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the next tick tries again
                background.stop_if_cancelled()
                log.warning("playbooks.tick_failed", extra={"reason": type(exc).__name__})
            await self.clock.sleep(self.tick_seconds)

    def start_approvals(self) -> None:
        """Resume waiting runs as their approvals are answered (the vault's ``secrets.consent.response``)."""
        if not any(t.get_name() == "grace-playbooks-approvals" for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._listen_approvals(), name="grace-playbooks-approvals"))

    def start(self) -> None:
        """Start the tick loop, the approvals' listener and one listener per event topic the playbooks name."""
        if any(t.get_name() == "grace-playbooks-scheduler" for t in self._tasks):
            return
        self._tasks.append(asyncio.create_task(self._loop(), name="grace-playbooks-scheduler"))
        self.start_approvals()
        topics = {t.topic for listed in self.playbooks.catalogue() if listed.playbook for t in listed.playbook.events}
        for topic in sorted(topics):
            self._tasks.append(asyncio.create_task(self._listen(topic), name=f"grace-playbooks-{topic}"))

    async def stop(self) -> None:
        await background.stop_all(self._tasks)
        self._tasks = []
        if self.leadership is not None:
            await self.leadership.release()
