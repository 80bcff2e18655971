"""Submitting tasks: validate, tag the origin, route, insert, and announce them once committed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors, storage
from grace.auth import Principal
from grace.clock import Clock
from grace.htm import admission, events, origins, routing, sla_levels
from grace.htm.config import HTMConfig
from grace.htm.postgres_queue import PostgresQueue
from grace.htm.queue import Queue
from grace.htm.routing import RouteDecision
from grace.htm.tasks import Status, TaskRequest
from grace.htm.workers import HandlerRegistry, LocalWorkers
from grace.jsontext import Encoded
from grace.storage import Database, new_ids

__all__ = ["SYSTEM_NAME", "Enqueued", "Submitted", "Submitter", "Within"]

log = logging.getLogger("grace.htm")

_STATUS_OF_ROUTE = {"accepted": Status.QUEUED, "delayed": Status.DELAYED, "deferred": Status.DEFERRED}

SYSTEM_NAME = "grace"

_ORDER_NAMES = tuple(o.value for o in origins.ORDER)


@dataclass(frozen=True)
class Submitted:
    """A submitted task's id, status and routing decision."""

    task_id: str
    status: Status
    decision: RouteDecision

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status.value, "routing": self.decision.as_dict()}


# Called inside a submission's transaction with what it submitted (see Submitter.submit_many).
Within = Callable[[AsyncConnection, list[Submitted]], Awaitable[None]]


# At most this many single submissions share a transaction (a batch's own limit is the edge's).
MAX_GROUP = 200


@dataclass(frozen=True)
class _Single:
    request: TaskRequest
    creator: Principal | None
    within: Within | None
    future: asyncio.Future[Submitted]


def _settle(future: asyncio.Future[Submitted], outcome: Submitted | BaseException) -> None:
    if future.done():  # its request was cancelled: the task stands, nobody is told
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


@dataclass(frozen=True)
class Enqueued:
    """Tasks inserted inside a caller's transaction, to announce once it commits."""

    rows: list[dict[str, Any]]
    submitted: list[Submitted]


@dataclass(eq=False)
class Submitter:
    """Route and enqueue tasks; what the facade and the SLA enforcer (for rescue tasks) submit through."""

    db: Database
    clock: Clock
    config: HTMConfig
    _: KW_ONLY
    weights: dict[origins.Origin, int]
    queue: Queue
    events: events.EventPublisher
    local: LocalWorkers  # woken by a submit; its capacity counts until a worker has a heartbeat
    handlers: HandlerRegistry  # who may submit each task type
    # Told, after commit, the soonest first SLA level among the tasks committed (the SLA enforcer's nudge).
    on_deadline: Callable[[datetime], None] | None = None
    # Route and insert through PostgreSQL's htm_submit (None: on PostgreSQL); False routes in Python,
    # as on SQLite (the reference the function follows; tests compare the two).
    in_database: bool | None = None
    _prepared: bool = field(default=False, init=False)
    _waiting: list[_Single] = field(default_factory=list, init=False)  # single submissions not yet in a group
    _drainer: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.in_database is None:
            self.in_database = not self.db.is_sqlite

    async def prepare(self) -> None:
        """Create the scheduling rows this configuration needs (once per process; idempotent)."""
        if not self._prepared:
            await self.queue.prepare()
            self._prepared = True

    def request(self, task_type: str, **fields: Any) -> TaskRequest:
        """Validate a submission against this configuration's limits."""
        return TaskRequest.build(task_type, max_payload_bytes=self.config.max_payload_bytes, **fields)

    async def submit_many(
        self, requests: Sequence[TaskRequest], *, creator: Principal | None, within: Within | None = None
    ) -> list[Submitted]:
        """Route and enqueue several tasks in one transaction (in order).

        ``within`` runs inside that transaction with what was submitted (the HTTP edge records an
        idempotency key's answer there, so the key and the tasks commit together or not at all).
        """
        await self.prepare()
        if self.in_database and within is None:  # one statement, its own transaction: one round trip
            done = await self._route_in_database(None, requests, [creator] * len(requests))
            await self.announce_created(done)
            return done.submitted
        async with self.db.write() as conn:
            enqueued = await self.enqueue_in(conn, requests, creator=creator)
            if within is not None:
                await within(conn, enqueued.submitted)
        await self.announce_created(enqueued)
        return enqueued.submitted

    async def submit_one(self, request: TaskRequest, *, creator: Principal | None, within: Within | None) -> Submitted:
        """Submit one task, in one transaction with whatever other single submissions are waiting.

        On a busy edge many requests each submit one task at once; what a transaction costs (the write
        lock, BEGIN and COMMIT with its flush to disk, the origins' load read once) is then paid once per
        group instead of once per task. The group is taken once its transaction has begun (on SQLite,
        once the write lock is held), so every submission that arrived while the previous transaction ran
        joins it. Each task is routed in arrival order, as in a batch. If the group's transaction fails,
        each of its submissions is tried again alone, so one request's error (a refused task type, an
        idempotency key taken meanwhile) reaches only that request.
        """
        await self.prepare()
        future: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Single(request, creator, within, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="grace-htm-submit-group")
        return await future

    async def _drain(self) -> None:
        group: list[_Single] = []
        try:
            while self._waiting:
                group = []
                try:
                    results = await self._submit_group(group)
                except Exception as exc:
                    if not group:  # no transaction could begin (the database is down): the next ones fail alike
                        group = self._waiting[:MAX_GROUP]
                        del self._waiting[:MAX_GROUP]
                        for single in group:
                            _settle(single.future, exc)
                        continue
                    if len(group) == 1 or storage.outage(exc) is not None:
                        # The database failing fails each of them alike: no point trying them one by one.
                        for single in group:
                            _settle(single.future, exc)
                        continue
                    for single in group:  # alone, so an error reaches only its own request
                        try:
                            (result,) = await self._submit_group([single])
                        except Exception as alone:
                            _settle(single.future, alone)
                        else:
                            _settle(single.future, result)
                    continue
                for single, result in zip(group, results, strict=True):
                    _settle(single.future, result)
        except BaseException as exc:  # stopped (shutdown): nobody waits for ever
            for single in [*group, *self._waiting]:
                _settle(single.future, exc if isinstance(exc, Exception) else errors.ServiceNotRunning())
            self._waiting = []
            raise

    async def _submit_group(self, group: list[_Single]) -> list[Submitted]:
        """Submit ``group`` in one transaction; an empty ``group`` is filled with the waiting submissions.

        It is filled in place once the transaction has begun, so the caller knows who was in a group
        that failed. On PostgreSQL a group without an idempotency key's record to write is one
        statement, its own transaction (``htm_submit``): one round trip, the routing locks held only
        while the server runs it.
        """
        if self.in_database:
            # No transaction to begin first: the group is taken now, and sent as one statement.
            if not group:
                group += self._waiting[:MAX_GROUP]
                del self._waiting[:MAX_GROUP]
            if all(s.within is None for s in group):
                done = await self._route_in_database(None, [s.request for s in group], [s.creator for s in group])
                await self.announce_created(done)
                return done.submitted
        async with self.db.write() as conn:
            if not group:
                group += self._waiting[:MAX_GROUP]
                del self._waiting[:MAX_GROUP]
            enqueued = await self.enqueue_in(
                conn, [s.request for s in group], creator=None, creators=[s.creator for s in group]
            )
            for single, submitted in zip(group, enqueued.submitted, strict=True):
                if single.within is not None:
                    await single.within(conn, [submitted])
        await self.announce_created(enqueued)
        return enqueued.submitted

    async def enqueue_in(
        self,
        conn: AsyncConnection,
        requests: Sequence[TaskRequest],
        *,
        creator: Principal | None,
        creators: Sequence[Principal | None] | None = None,
    ) -> Enqueued:
        """Route and insert tasks inside the caller's write transaction; call :meth:`announce_created` after commit.

        ``creators``, when given, is each request's own creator (a group of single submissions).
        """
        whose = list(creators) if creators is not None else [creator] * len(requests)
        if self.in_database:
            return await self._route_in_database(await storage.driver_in_transaction(conn), requests, whose)
        return await self._route_here(conn, requests, whose)

    def _tagged(
        self, requests: Sequence[TaskRequest], whose: Sequence[Principal | None]
    ) -> list[tuple[origins.Origin, str]]:
        """Tag each request's origin, and check its creator may submit it (403 otherwise)."""
        tagged = [
            origins.tag_origin(
                explicit=r.origin,
                payload=r.payload,
                intent_id=r.intent_id,
                creator_agent=c.agent if c else None,
                creator_is_user=c is not None,
            )
            for r, c in zip(requests, whose, strict=True)
        ]
        # Who may submit what is checked here, where every submission passes, so no edge can skip it.
        for request, (origin, _), c in zip(requests, tagged, whose, strict=True):
            admission.admit(c, request.task_type, origin, request.priority, self.handlers.submitters(request.task_type))
        return tagged

    def _row(
        self,
        task_id: str,
        request: TaskRequest,
        origin: origins.Origin,
        rule: str,
        creator: Principal | None,
        now: datetime,
    ) -> dict[str, Any]:
        """Return a new task's row, without what routing decides (status, route, reason, admission)."""
        cfg = self.config
        sla_ms = request.sla_ms or cfg.default_sla(request.task_type, request.priority.value)
        return {
            "task_id": task_id,
            "task_type": request.task_type,
            "priority": request.priority.value,
            "priority_rank": request.priority.rank,
            "origin": origin.value,
            "origin_rule": rule,
            "payload": request.payload if request.payload_json is None else Encoded(request.payload_json),
            "data_size_bytes": request.data_size_bytes
            if request.data_size_bytes is not None
            else request.payload_bytes,
            "created_by": creator.user_id if creator else None,
            "created_by_name": creator.name if creator else SYSTEM_NAME,
            "intent_id": request.intent_id,
            "sla_ms": sla_ms,
            "deadline": now + timedelta(milliseconds=sla_ms) if sla_ms else None,
            "status": None,
            "route": None,
            "route_reason": None,
            "attempts": 0,
            "max_attempts": request.max_attempts or cfg.max_attempts,
            "timeout_seconds": request.timeout_seconds or cfg.timeout_seconds,
            "created_at": now,
            "admitted_at": None,
            "queued_at": None,
            # started_at, finished_at, lease_expires_at, worker_id, dispatch_seq, result and
            # error start empty (NULL): they are not sent.
            "sla_level": 0,
            "sla_due_at": sla_levels.first_due(now, sla_ms),
        }

    async def _route_here(
        self, conn: AsyncConnection, requests: Sequence[TaskRequest], whose: Sequence[Principal | None]
    ) -> Enqueued:
        """Route in this process (SQLite; the reference ``htm_submit`` follows) and insert."""
        now = self.clock.now()
        cfg = self.config
        tagged = self._tagged(requests, whose)
        rows: list[dict[str, Any]] = []
        out: list[Submitted] = []
        chosen = sorted({o for o, _ in tagged})
        await routing.lock_origins(conn, chosen)
        load = await routing.load(
            conn,
            self.weights,
            configured=cfg.capacity,
            fallback=self.local.fallback_capacity,
            live_after=now - timedelta(seconds=cfg.lease_seconds),
        )
        windows = {o: await routing.BurstWindow.load(conn, o, cfg.burst_limit(o), now) for o in chosen}
        ids = new_ids("task", len(requests))
        for task_id, request, (origin, rule), creator in zip(ids, requests, tagged, whose, strict=True):
            decision = routing.decide(
                origin,
                request.priority,
                now=now,
                window=windows[origin],
                load=load,
                defer=timedelta(seconds=cfg.defer_seconds),
            )
            status = _STATUS_OF_ROUTE[decision.route]
            row = self._row(task_id, request, origin, rule, creator, now)
            row.update(
                status=status.value,
                route=decision.route,
                route_reason=decision.reasoning[:400],
                admitted_at=decision.admitted_at,
                queued_at=decision.admitted_at,
            )
            rows.append(row)
            out.append(Submitted(task_id, status, decision))
        created = _created(rows, out) if self.queue.outbox else None
        await self.queue.insert(conn, rows, created=created)
        return Enqueued(rows, out)

    async def _route_in_database(
        self, driver: Any | None, requests: Sequence[TaskRequest], whose: Sequence[Principal | None]
    ) -> Enqueued:
        """Route and insert through ``htm_submit`` (PostgreSQL), in one round trip.

        On ``driver`` (an asyncpg connection) inside its open transaction; without one, as a
        transaction of its own on an autocommit connection, taken only once the tasks were checked (a
        refused one never costs a connection).
        """
        now = self.clock.now()
        cfg = self.config
        tagged = self._tagged(requests, whose)
        ids = new_ids("task", len(requests))
        rows = [
            self._row(task_id, request, origin, rule, creator, now)
            for task_id, request, (origin, rule), creator in zip(ids, requests, tagged, whose, strict=True)
        ]
        defer = timedelta(seconds=cfg.defer_seconds)
        chosen = sorted({o for o, _ in tagged})
        backend = self.queue.backend
        assert isinstance(backend, PostgresQueue)
        answers = await backend.submit(
            self.db if driver is None else driver,
            rows,
            now=now,
            order=_ORDER_NAMES,
            weights=[self.weights[o] for o in origins.ORDER],
            bursts=[cfg.burst_limit(o) for o in origins.ORDER],
            lock_keys=[routing.lock_key(o) for o in chosen],
            capacity=cfg.capacity,
            fallback_capacity=self.local.fallback_capacity,
            live_after=now - timedelta(seconds=cfg.lease_seconds),
            defer=defer,
            defer_text=f"{defer.total_seconds():g}",
            event_topic=events.CREATED if self.queue.outbox else None,
        )
        out: list[Submitted] = []
        for row, (origin, _), request, answer in zip(rows, tagged, requests, answers, strict=True):
            route, quota_used, reasoning, admitted_at = answer
            if route == "accepted":
                delay = 0.0
            elif route == "deferred":
                delay = defer.total_seconds()
            else:
                delay = (admitted_at - now).total_seconds()
            decision = RouteDecision(
                origin, route, f"{request.priority.value}_queue", quota_used, reasoning, delay, admitted_at
            )
            status = _STATUS_OF_ROUTE[route]
            row.update(
                status=status.value,
                route=route,
                route_reason=reasoning[:400],
                admitted_at=admitted_at,
                queued_at=admitted_at,
            )
            out.append(Submitted(row["task_id"], status, decision))
        return Enqueued(rows, out)

    async def announce_created(self, enqueued: Enqueued) -> None:
        """Log and publish ``htm.task.created`` for committed tasks, and wake this process's pool.

        With an outbox (PostgreSQL) the events were written with the tasks: the relay is woken instead.
        """
        if log.isEnabledFor(logging.INFO):  # asked once: a batch may hold thousands
            for row, sub in zip(enqueued.rows, enqueued.submitted, strict=True):
                log.info(
                    "htm.task_created",
                    extra={
                        "task_id": sub.task_id,
                        "task_type": row["task_type"],
                        "origin": row["origin"],
                        "route": sub.decision.route,
                    },
                )
        if self.queue.outbox:
            self.events.relay_soon()
        else:
            await self.events.emit_many(_created(enqueued.rows, enqueued.submitted))
        self.local.wake()
        if self.on_deadline is not None:
            dues = [row["sla_due_at"] for row in enqueued.rows if row["sla_due_at"] is not None]
            if dues:
                self.on_deadline(min(dues))


def _created(rows: Sequence[dict[str, Any]], submitted: Sequence[Submitted]) -> list[tuple[str, dict[str, Any]]]:
    """Return the ``htm.task.created`` events of inserted tasks."""
    return [
        (
            events.CREATED,
            {
                "task_id": sub.task_id,
                "task_type": row["task_type"],
                "priority": row["priority"],
                "origin": row["origin"],
                "origin_rule": row["origin_rule"],
                "status": sub.status.value,
                "route": sub.decision.route,
                "delay_seconds": sub.decision.delay_seconds,
                "intent_id": row["intent_id"],
                "created_by": row["created_by_name"],
                "data_size_bytes": row["data_size_bytes"],
                "sla_ms": row["sla_ms"],
            },
        )
        for row, sub in zip(rows, submitted, strict=True)
    ]
