"""The task manager's front door: submit, read, cancel, stats, and the worker pool it runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.auth import Principal, Role
from grace.bus import Bus
from grace.clock import Clock
from grace.htm import events, origins, routing, sla, stats
from grace.htm.config import HTMConfig
from grace.htm.queue import Exchange, Finished, Outcome, Queue
from grace.htm.routing import RouteDecision
from grace.htm.tasks import Status, Task, TaskRequest
from grace.htm.workers import HandlerRegistry, TaskContext, WorkerPool
from grace.jsontext import Encoded
from grace.storage import Database, new_ids

__all__ = ["HTM", "Enqueued", "Submitted"]

log = logging.getLogger("grace.htm")

_STATUS_OF_ROUTE = {"accepted": Status.QUEUED, "delayed": Status.DELAYED, "deferred": Status.DEFERRED}

SYSTEM_NAME = "grace"
MAX_SLA_WINDOW_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class Submitted:
    """A submitted task's id, status and routing decision."""

    task_id: str
    status: Status
    decision: RouteDecision

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status.value, "routing": self.decision.as_dict()}


@dataclass(frozen=True)
class Enqueued:
    """Tasks inserted inside a caller's transaction, to announce once it commits."""

    rows: list[dict[str, Any]]
    submitted: list[Submitted]


class HTM:
    """Tasks for every origin of work: fair, durable, observable."""

    def __init__(self, db: Database, bus: Bus, clock: Clock, config: HTMConfig) -> None:
        self.db = db
        self.bus = bus
        self.clock = clock
        self.config = config
        self.weights = origins.weights_from_shares(config.shares)
        self.queue = Queue(db, clock, self.weights, config.lease_seconds, config.capacity)
        self.handlers = HandlerRegistry()
        self.events = events.EventPublisher(bus, enabled=config.events)
        self.pool: WorkerPool | None = None
        self._pools: list[WorkerPool] = []
        self._prepared = False
        self.sla = sla.SLAEnforcer(self)
        register_builtin_handlers(self.handlers, clock)
        self.handlers.register(sla.RESCUE_TASK, sla.rescue_handler(self))

    # -- life cycle ------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the scheduling rows this configuration needs (idempotent)."""
        if not self._prepared:
            await self.queue.prepare()
            self._prepared = True

    def new_pool(self, *, concurrency: int | None = None, claim_batch: int | None = None) -> WorkerPool:
        """Return a worker pool for this process (not started)."""
        pool = WorkerPool(
            self,
            concurrency=concurrency or self.config.concurrency,
            claim_batch=claim_batch or self.config.claim_batch,
        )
        self._pools.append(pool)
        return pool

    async def start_workers(self, *, concurrency: int | None = None, claim_batch: int | None = None) -> WorkerPool:
        """Start this process's worker pool (the embedded one in ``grace serve``, or ``grace worker``)."""
        await self.prepare()
        if self.pool is None:
            self.pool = self.new_pool(concurrency=concurrency, claim_batch=claim_batch)
            await self.pool.start()
        return self.pool

    def start_sla(self) -> bool:
        """Start the SLA enforcer's loop in this process when ``GRACE_HTM_SLA_ENABLED``; return whether it runs."""
        if self.config.sla_enabled:
            self.sla.start()
        return self.sla.running

    async def close(self, *, grace: float | None = None) -> None:
        """Stop the SLA enforcer and the pool gracefully, then publish pending events."""
        await self.sla.stop()
        if self.pool is not None:
            await self.pool.stop(grace)
            self.pool = None
        for pool in self._pools:
            await pool.release_liveness()
        self._pools = []
        await self.events.close()

    # -- submitting --------------------------------------------------------------

    def request(self, task_type: str, **fields: Any) -> TaskRequest:
        """Validate a submission against this configuration's limits."""
        return TaskRequest.build(task_type, max_payload_bytes=self.config.max_payload_bytes, **fields)

    async def submit(self, request: TaskRequest, *, creator: Principal | None) -> Submitted:
        """Route one task and enqueue it; return its id, status and routing decision."""
        return (await self.submit_many([request], creator=creator))[0]

    async def route_task(self, task_type: str, *, creator: Principal | None = None, **fields: Any) -> dict[str, Any]:
        """Tag, route and enqueue a task; return the routing decision with its task_id (the seed's call)."""
        submitted = await self.submit(self.request(task_type, **fields), creator=creator)
        return {"task_id": submitted.task_id, **submitted.decision.as_dict()}

    async def submit_many(self, requests: Sequence[TaskRequest], *, creator: Principal | None) -> list[Submitted]:
        """Route and enqueue several tasks in one transaction (in order)."""
        await self.prepare()
        async with self.db.write() as conn:
            enqueued = await self.enqueue_in(conn, requests, creator=creator)
        await self.announce_created(enqueued)
        return enqueued.submitted

    async def enqueue_in(
        self, conn: AsyncConnection, requests: Sequence[TaskRequest], *, creator: Principal | None
    ) -> Enqueued:
        """Route and insert tasks inside the caller's write transaction; call :meth:`announce_created` after commit."""
        now = self.clock.now()
        cfg = self.config
        tagged = [
            origins.tag_origin(
                explicit=r.origin,
                payload=r.payload,
                intent_id=r.intent_id,
                creator_agent=creator.agent if creator else None,
                creator_is_user=creator is not None,
            )
            for r in requests
        ]
        rows: list[dict[str, Any]] = []
        out: list[Submitted] = []
        chosen = sorted({o for o, _ in tagged})
        await routing.lock_origins(conn, chosen)
        load = await routing.load(
            conn,
            self.weights,
            configured=cfg.capacity,
            fallback=self._fallback_capacity(),
            live_after=now - timedelta(seconds=cfg.lease_seconds),
        )
        windows = {o: await routing.BurstWindow.load(conn, o, cfg.burst_limit(o), now) for o in chosen}
        ids = new_ids("task", len(requests))
        for task_id, request, (origin, rule) in zip(ids, requests, tagged, strict=True):
            decision = routing.decide(
                origin,
                request.priority,
                now=now,
                window=windows[origin],
                load=load,
                defer=timedelta(seconds=cfg.defer_seconds),
            )
            status = _STATUS_OF_ROUTE[decision.route]
            rows.append(
                {
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
                    "sla_ms": request.sla_ms,
                    "deadline": now + timedelta(milliseconds=request.sla_ms) if request.sla_ms else None,
                    "status": status.value,
                    "route": decision.route,
                    "route_reason": decision.reasoning[:400],
                    "attempts": 0,
                    "max_attempts": request.max_attempts or cfg.max_attempts,
                    "timeout_seconds": request.timeout_seconds or cfg.timeout_seconds,
                    "created_at": now,
                    "admitted_at": decision.admitted_at,
                    "queued_at": decision.admitted_at,
                    # started_at, finished_at, lease_expires_at, worker_id, dispatch_seq, result and
                    # error start empty (NULL): they are not sent.
                    "sla_level": 0,
                    "sla_due_at": sla.first_due(now, request.sla_ms),
                }
            )
            out.append(Submitted(task_id, status, decision))
        await self.queue.insert(conn, rows)
        return Enqueued(rows, out)

    async def announce_created(self, enqueued: Enqueued) -> None:
        """Log and publish ``htm.task.created`` for committed tasks, and wake this process's pool."""
        created: list[tuple[str, dict[str, Any]]] = []
        logging_each = log.isEnabledFor(logging.INFO)  # asked once: a batch may hold thousands
        for row, sub in zip(enqueued.rows, enqueued.submitted, strict=True):
            if logging_each:
                log.info(
                    "htm.task_created",
                    extra={
                        "task_id": sub.task_id,
                        "task_type": row["task_type"],
                        "origin": row["origin"],
                        "route": sub.decision.route,
                    },
                )
            created.append(
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
            )
        await self.events.emit_many(created)
        if self.pool is not None:
            self.pool.wake()

    def _fallback_capacity(self) -> int:
        return self.pool.concurrency if self.pool is not None else self.config.concurrency

    # -- reading and cancelling -----------------------------------------------------

    @staticmethod
    def _visible_to(principal: Principal | None) -> str | None:
        """Return whose tasks ``principal`` may see: None for everyone's (operators, admins, the CLI)."""
        if principal is None or principal.has_role(Role.OPERATOR):
            return None
        return principal.user_id

    async def get(self, task_id: str, *, principal: Principal | None) -> Task:
        """Return a task; 404 when it does not exist or belongs to another member."""
        return await self.queue.get(task_id, visible_to=self._visible_to(principal))

    async def list_tasks(
        self,
        *,
        principal: Principal | None,
        status: str | None = None,
        origin: str | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """List tasks, newest first: a member's own, or everyone's for operators and admins."""
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000")
        return await self.queue.list_tasks(
            visible_to=self._visible_to(principal),
            status=Status.parse(status) if status else None,
            origin=origins.parse_origin(origin) if origin else None,
            limit=limit,
        )

    async def cancel(self, task_id: str, *, principal: Principal | None) -> Task:
        """Cancel a waiting or running task (a running handler is stopped at its worker's next heartbeat)."""
        finished = await self.queue.cancel(task_id, visible_to=self._visible_to(principal))
        log.info("htm.task_cancelled", extra={"task_id": task_id})
        await self.events.emit(events.UPDATE, finished.event())
        if self.pool is not None:
            self.pool.stop_task(task_id)
        return await self.queue.get(task_id, visible_to=None)

    async def late_completions(self, task_id: str, *, principal: Principal | None) -> list[dict[str, Any]]:
        await self.get(task_id, principal=principal)
        return await self.queue.late_completions(task_id)

    # -- what workers report -----------------------------------------------------------

    async def on_claimed(self, worker_id: str, tasks: Sequence[Task]) -> None:
        running = Status.RUNNING.value
        await self.events.emit_many(
            [
                (
                    events.UPDATE,
                    {
                        "task_id": task.task_id,
                        "task_type": task.task_type,
                        "origin": task.origin.value,
                        "priority": task.priority.value,
                        "intent_id": task.intent_id,
                        "status": running,
                        "attempts": task.attempts,
                        "max_attempts": task.max_attempts,
                        "worker_id": worker_id,
                    },
                )
                for task in tasks
            ]
        )

    async def record(
        self, worker_id: str, outcomes: Sequence[Outcome], *, claim: int = 0, fallback_capacity: int = 1
    ) -> Exchange:
        """Record a worker's outcomes (and claim up to ``claim`` tasks in the same call); publish what changed."""
        done = await self.queue.finish_and_claim(worker_id, outcomes, claim, fallback_capacity=fallback_capacity)
        await self._announce(done.recorded)
        return done

    async def reap(self) -> list[Finished]:
        """Return dead workers' expired leases to the queue (or fail them on their last attempt)."""
        changed = await self.queue.reap()
        await self._announce(changed)
        return changed

    async def _announce(self, changes: Sequence[Finished]) -> None:
        changed: list[tuple[str, dict[str, Any]]] = []
        for f in changes:
            if f.status is Status.COMPLETED:
                topic = events.COMPLETED
            elif f.status in (Status.FAILED, Status.TIMED_OUT):
                topic = events.FAILED
                log.info("htm.task_failed", extra={"task_id": f.task_id, "status": f.status.value})
            else:
                topic = events.UPDATE
            changed.append((topic, f.event()))
        await self.events.emit_many(changed)

    # -- stats ---------------------------------------------------------------------

    async def routing_stats(self) -> dict[str, Any]:
        """Per-origin figures in the seed's shape, plus delayed/deferred counts and throughput."""
        await self.prepare()
        return await stats.routing_stats(self, now=self.clock.now())

    async def sla_stats(self, *, window_seconds: float | None = None) -> dict[str, Any]:
        """The SLA enforcer's figures (see :meth:`grace.htm.sla.SLAEnforcer.get_statistics`)."""
        if window_seconds is not None and not 1 <= window_seconds <= MAX_SLA_WINDOW_SECONDS:
            raise errors.InvalidInput("window_seconds must be between 1 and 2592000 (30 days)")
        return await self.sla.get_statistics(window_seconds=window_seconds)

    async def sla_violations(
        self, *, principal: Principal | None, origin: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Unfinished tasks past their deadline, most overdue first: a member's own, or everyone's."""
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000")
        parsed = origins.parse_origin(origin) if origin else None
        return await self.sla.active_violations(visible_to=self._visible_to(principal), origin=parsed, limit=limit)


def register_builtin_handlers(registry: HandlerRegistry, clock: Clock) -> None:
    """Register the task manager's own diagnostic task types."""

    async def noop(ctx: TaskContext) -> None:
        return None

    async def echo(ctx: TaskContext) -> Mapping[str, Any]:
        return ctx.payload

    async def sleep(ctx: TaskContext) -> dict[str, float]:
        seconds = ctx.payload.get("seconds", 1.0)
        if not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
            raise ValueError("payload.seconds must be a number from 0 to 3600")
        await clock.sleep(float(seconds))
        return {"slept": float(seconds)}

    registry.register("htm.noop", noop)
    registry.register("htm.echo", echo)
    registry.register("htm.sleep", sleep)
