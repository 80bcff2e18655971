"""The intents' front door: submit an intent as a task, read, list and cancel intents; it wires the parts.

Submitting is two writes, on purpose: the intent is recorded first (``pending``), then its task is
created and linked both ways (``htm_tasks.intent_id`` and ``intent_records.htm_task_id``) in one
transaction. A request the task manager refuses (its admission rules) removes the record again and
answers the refusal; a process that dies between the two writes leaves a pending intent, which the
sweep (``recovery.py``) resubmits once. Reading and listing settle what they return first
(``bridge.py``), so an intent is never behind its task.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import background, errors
from grace.auth import Accounts, Principal, Role
from grace.bus import Bus
from grace.clock import Clock
from grace.htm import HTM, Priority, TaskRequest
from grace.intents import recovery
from grace.intents.bridge import Bridge
from grace.intents.config import IntentsConfig
from grace.intents.handlers import IntentHandlers, register_builtin
from grace.intents.model import CREATED, Intent, IntentStatus
from grace.intents.outcomes import LearningLoop
from grace.intents.tables import intent_records
from grace.storage import Database, new_id

__all__ = ["CRASH_AFTER_RECORD_ENV", "MAX_GOAL_CHARS", "Intents"]

log = logging.getLogger("grace.intents")

MAX_GOAL_CHARS = 2000
MAX_EXPECTED_CHARS = 500
MAX_SLA_MS = 30 * 24 * 3600 * 1000
_INTENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
# A test hook: when set to "1", the process exits between the intent's two writes, as a crash would
# (tests/integration/test_intents_recovery.py kills a real child process there).
CRASH_AFTER_RECORD_ENV = "GRACE_INTENTS_TEST_EXIT_AFTER_RECORD"
CRASH_EXIT_CODE = 75


class _Lost(Exception):
    """The intent changed under us (another process linked, recovered or finished it): roll back the task."""


class Intents:
    """The agent's intents, run as tasks, and the learning loop fed by their outcomes."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        bus: Bus,
        htm: HTM,
        accounts: Accounts,
        config: IntentsConfig,
        *,
        sla_defaults: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """``sla_defaults`` returns the default SLAs (``GRACE_HTM_DEFAULT_SLA_MS``) that summaries show."""
        self.db = db
        self.clock = clock
        self.bus = bus
        self.htm = htm
        self.accounts = accounts
        self.config = config
        self.handlers = IntentHandlers(htm.handlers, self.exists)
        self.learning = LearningLoop(db, clock, sla_defaults=sla_defaults)
        self.bridge = Bridge(db, clock, bus, htm, self.learning)
        self.sweeper = recovery.Sweeper(db, clock, config, htm=htm, bridge=self.bridge, resubmit=self._resubmit)
        self._background: list[asyncio.Task[None]] = []
        register_builtin(self.handlers, clock)

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the listener on task events and the periodic sweep (which also runs once now)."""
        if not self._background:
            self._background.append(asyncio.create_task(self.bridge.listen(), name="grace-intents-listen"))
            self._background.append(asyncio.create_task(self.sweeper.run(), name="grace-intents-sweep"))

    async def close(self) -> None:
        await background.stop_all(self._background)
        self._background = []

    # -- submitting ----------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        *,
        goal: str,
        handler: str,
        expected_outcome: str | None = None,
        sla_ms: int | None = None,
        priority: str = "normal",
        domain: str | None = None,
        context: Mapping[str, Any] | None = None,
        confidence: float | None = None,
        intent_id: str | None = None,
    ) -> Intent:
        """Record an intent and submit it as a task for ``handler``; 422 naming the field for bad input."""
        spec = self.handlers.get(handler)
        goal = goal.strip() if isinstance(goal, str) else ""
        if not goal:
            raise errors.InvalidInput("goal must not be empty", details={"field": "goal"})
        if len(goal) > MAX_GOAL_CHARS:
            raise errors.InvalidInput(f"goal must be at most {MAX_GOAL_CHARS} characters", details={"field": "goal"})
        if expected_outcome is not None and len(expected_outcome) > MAX_EXPECTED_CHARS:
            raise errors.InvalidInput(
                f"expected_outcome must be at most {MAX_EXPECTED_CHARS} characters",
                details={"field": "expected_outcome"},
            )
        if sla_ms is not None and (isinstance(sla_ms, bool) or not 0 < sla_ms <= MAX_SLA_MS):
            raise errors.InvalidInput(
                f"sla_ms must be between 1 and {MAX_SLA_MS} (30 days in milliseconds)", details={"field": "sla_ms"}
            )
        if confidence is not None and (not math.isfinite(confidence) or not 0 <= confidence <= 1):
            raise errors.InvalidInput("confidence must be between 0 and 1", details={"field": "confidence"})
        chosen = self.handlers.parse_domain(domain, among=spec.domains) if domain is not None else spec.domains[0]
        prio = Priority.parse(priority)
        if intent_id is not None and not _INTENT_ID.match(intent_id):
            raise errors.InvalidInput(
                "intent_id must be 1 to 100 letters, digits, '_', '.', ':' or '-'", details={"field": "intent_id"}
            )
        now = self.clock.now()
        row: dict[str, Any] = {
            "intent_id": intent_id or new_id("int"),
            "owner_id": principal.user_id,
            "owner_name": principal.username,
            "agent": principal.agent,
            "handler": spec.name,
            "task_type": spec.task_type,
            "goal": goal,
            "expected_outcome": expected_outcome,
            "sla_ms": sla_ms,
            "priority": prio.value,
            "domain": chosen,
            "context": dict(context or {}),
            "confidence": confidence,
            "status": IntentStatus.PENDING.value,
            "htm_task_id": None,
            "recoveries": 0,
            "reason": None,
            "result": None,
            "sla_met": None,
            "execution_ms": None,
            "learned": False,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
        }
        # Checked before anything is written: the payload's size and shape, the SLA, the intent id.
        self._task_request(row)
        # Write 1: the intent.
        try:
            async with self.db.write() as conn:
                taken = (
                    await conn.execute(
                        select(intent_records.c.intent_id).where(intent_records.c.intent_id == row["intent_id"])
                    )
                ).first()
                if taken is not None:
                    raise errors.Conflict(
                        f"intent_id {row['intent_id']!r} is already taken", details={"field": "intent_id"}
                    )
                await conn.execute(insert(intent_records).values(**row))
        except IntegrityError:
            raise errors.Conflict(
                f"intent_id {row['intent_id']!r} is already taken", details={"field": "intent_id"}
            ) from None
        if os.environ.get(CRASH_AFTER_RECORD_ENV) == "1":
            os._exit(CRASH_EXIT_CODE)
        # Write 2: the task, and both links.
        try:
            await self._create_task(Intent.from_row(row), principal, recoveries=0)
        except errors.GraceError:
            # Refused by the task manager (who may submit what, the payload's size): nothing is kept.
            async with self.db.write() as conn:
                await conn.execute(
                    delete(intent_records).where(
                        intent_records.c.intent_id == row["intent_id"], intent_records.c.htm_task_id.is_(None)
                    )
                )
            raise
        except _Lost:
            pass
        return await self._read(row["intent_id"], visible_to=None)

    def _task_request(self, row: Mapping[str, Any]) -> TaskRequest:
        payload = {
            "intent_id": row["intent_id"],
            "goal": row["goal"],
            "expected_outcome": row["expected_outcome"],
            "domain": row["domain"],
            "context": row["context"],
        }
        return self.htm.request(
            row["task_type"],
            payload=payload,
            priority=row["priority"],
            origin="intent",
            sla_ms=row["sla_ms"],
            intent_id=row["intent_id"],
        )

    async def _create_task(self, intent: Intent, creator: Principal | None, *, recoveries: int) -> str:
        """Create the intent's task and link both ways in one transaction, if the intent is still as read.

        Raises _Lost (and rolls the task back) when another process got there first.
        """
        i = intent_records
        request = self._task_request(
            {
                "intent_id": intent.intent_id,
                "goal": intent.goal,
                "expected_outcome": intent.expected_outcome,
                "domain": intent.domain,
                "context": intent.context,
                "task_type": intent.task_type,
                "priority": intent.priority,
                "sla_ms": intent.sla_ms,
            }
        )
        await self.htm.prepare()
        linked = i.c.htm_task_id.is_(None) if intent.htm_task_id is None else i.c.htm_task_id == intent.htm_task_id
        async with self.db.write() as conn:
            enqueued = await self.htm.enqueue_in(conn, [request], creator=creator)
            task_id = enqueued.submitted[0].task_id
            result = await conn.execute(
                update(i)
                .where(
                    i.c.intent_id == intent.intent_id,
                    i.c.status == intent.status.value,
                    i.c.recoveries == intent.recoveries,
                    linked,
                )
                .values(
                    htm_task_id=task_id,
                    status=IntentStatus.QUEUED.value,
                    recoveries=recoveries,
                    updated_at=self.clock.now(),
                )
            )
            if result.rowcount != 1:
                raise _Lost
        await self.htm.announce_created(enqueued)
        log.info("intents.submitted", extra={"intent_id": intent.intent_id, "task_id": task_id})
        await self._publish(
            CREATED,
            {
                "intent_id": intent.intent_id,
                "htm_task_id": task_id,
                "goal": intent.goal,
                "domain": intent.domain,
                "handler": intent.handler,
                "priority": intent.priority,
                "sla_ms": intent.sla_ms,
                "owner": intent.owner_name,
                "agent": intent.agent,
                "recovered": recoveries > intent.recoveries,
            },
        )
        return task_id

    async def _resubmit(self, intent: Intent) -> str | None:
        """Create the task of a lost intent again, as its owner (the sweep's one recovery); None if refused or raced."""
        try:
            user = await self.accounts.get_user(intent.owner_id)
        except errors.NotFound:
            return None
        creator = Principal(user.id, user.username, user.role, agent=intent.agent)
        try:
            return await self._create_task(intent, creator, recoveries=intent.recoveries + 1)
        except _Lost:
            return None
        except errors.GraceError as exc:  # refused now (the owner's role changed, the handler is gone)
            log.info("intents.resubmit_refused", extra={"intent_id": intent.intent_id, "reason": exc.code})
            return None

    async def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        try:
            await self.bus.publish(topic, payload)
        except Exception as exc:
            log.warning("intents.publish_failed", extra={"topic": topic, "reason": type(exc).__name__})

    # -- reading, listing, cancelling ---------------------------------------------------

    @staticmethod
    def visible_to(principal: Principal | None) -> str | None:
        """Return whose intents ``principal`` sees: None for everyone's (operators, admins, the CLI).

        A member and every agent (whatever its user's role) see their own user's intents only.
        """
        if principal is None or (principal.has_role(Role.OPERATOR) and not principal.is_agent):
            return None
        return principal.user_id

    async def exists(self, intent_id: str) -> bool:
        """Return whether the intent ``intent_id`` is stored."""
        async with self.db.read() as conn:
            return await self._stored(conn, intent_id)

    @staticmethod
    async def _stored(conn: AsyncConnection, intent_id: str) -> bool:
        query = select(intent_records.c.intent_id).where(intent_records.c.intent_id == intent_id)
        return (await conn.execute(query)).first() is not None

    async def _read(self, intent_id: str, *, visible_to: str | None) -> Intent:
        query = select(intent_records).where(intent_records.c.intent_id == intent_id)
        if visible_to is not None:
            query = query.where(intent_records.c.owner_id == visible_to)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise errors.NotFound(f"no intent {intent_id[:100]!r}")
        return Intent.from_row(row)

    async def get(self, intent_id: str, *, principal: Principal | None) -> Intent:
        """Return an intent, in step with its task; 404 when it does not exist or is another member's."""
        seen = self.visible_to(principal)
        intent = await self._read(intent_id, visible_to=seen)
        if not intent.status.finished and intent.htm_task_id is not None:
            # Read again whoever settled it: this call, or the listener a moment before.
            await self.bridge.settle(intent_ids=[intent_id])
            intent = await self._read(intent_id, visible_to=seen)
        return intent

    async def list_intents(
        self,
        *,
        principal: Principal | None,
        status: str | None = None,
        domain: str | None = None,
        limit: int = 50,
    ) -> list[Intent]:
        """List intents newest first (a member's own, or everyone's); 422 for an unknown status or domain."""
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000", details={"field": "limit"})
        wanted = IntentStatus.parse(status) if status else None
        chosen = self.handlers.parse_domain(domain) if domain else None
        seen = self.visible_to(principal)
        await self.bridge.settle(owner_id=seen)
        i = intent_records
        query = select(i).order_by(i.c.created_at.desc(), i.c.intent_id.desc()).limit(limit)
        if seen is not None:
            query = query.where(i.c.owner_id == seen)
        if wanted is not None:
            query = query.where(i.c.status == wanted.value)
        if chosen is not None:
            query = query.where(i.c.domain == chosen)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [Intent.from_row(r) for r in rows]

    async def cancel(self, intent_id: str, *, principal: Principal | None) -> Intent:
        """Cancel an open intent and its task; 409 if it has finished."""
        intent = await self.get(intent_id, principal=principal)
        if intent.status.finished:
            raise errors.Conflict(
                f"intent {intent_id} is already {intent.status.value}; only open intents can be cancelled"
            )
        reason = f"cancelled by {principal.name if principal else 'grace'}"
        task = None
        if intent.htm_task_id is not None:
            try:
                await self.htm.cancel(intent.htm_task_id, principal=None)
            except errors.TaskAlreadyFinished:
                pass  # it finished meanwhile: settle tells how
            except errors.NotFound:
                pass  # it vanished: the intent is cancelled all the same
            task = (await self.htm.tasks_by_id([intent.htm_task_id])).get(intent.htm_task_id)
        if task is not None and task.status.value != "cancelled":
            await self.bridge.settle(intent_ids=[intent_id])
        else:
            row = await self._row(intent_id)
            await self.bridge.finish(row, IntentStatus.CANCELLED, task=task, reason=reason)
        intent = await self._read(intent_id, visible_to=None)
        if intent.status is not IntentStatus.CANCELLED:
            raise errors.Conflict(f"intent {intent_id} is already {intent.status.value}; it finished before the cancel")
        return intent

    async def _row(self, intent_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(select(intent_records).where(intent_records.c.intent_id == intent_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise errors.NotFound(f"no intent {intent_id[:100]!r}")
        return dict(row)

    # -- the learning loop ------------------------------------------------------------

    async def record_outcome(self, principal: Principal | None, **fields: Any) -> dict[str, Any]:
        """Record an outcome for ``principal`` (None: Grace itself); see :meth:`LearningLoop.record_outcome`."""
        return await self.learning.record_outcome(
            owner_id=principal.user_id if principal else fields.pop("owner_id", None),
            recorded_by=principal.name if principal else "grace",
            **fields,
        )

    async def list_outcomes(self, *, principal: Principal | None, **filters: Any) -> list[dict[str, Any]]:
        return await self.learning.list_outcomes(visible_to=self.visible_to(principal), **filters)

    async def summary(self, *, principal: Principal | None, **filters: Any) -> dict[str, Any]:
        return await self.learning.summary(visible_to=self.visible_to(principal), **filters)
