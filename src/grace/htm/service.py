"""The task manager's front door: it wires the parts and delegates to them.

Each part gets only the collaborators it uses: the submitter (``submission.py``) routes and
enqueues, the recorder (``outcomes.py``) records what workers report, the worker pool
(``workers.py``) runs handlers, the SLA enforcer (``sla.py``) with its reporting
(``sla_stats.py``) and rescue task (``rescue.py``) watches deadlines, and ``stats.py`` reads
the routing figures. Reading, listing and cancelling tasks are the facade's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import errors
from grace.auth import Principal, Role
from grace.bus import Bus, PostgresBus
from grace.clock import Clock
from grace.htm import admission, dashboard, events, origins, rescue, rollups, sla, sla_stats, stats, submission
from grace.htm.config import HTMConfig
from grace.htm.outcomes import Recorder
from grace.htm.queue import Exchange, Finished, Outcome, Queue
from grace.htm.rebalance import rebalance as rebalance_origins
from grace.htm.submission import Enqueued, Submitted, Within
from grace.htm.tables import htm_tasks
from grace.htm.tasks import Status, Task, TaskRequest
from grace.htm.workers import HandlerRegistry, LocalWorkers, TaskContext, WorkerPool
from grace.shared_read import SharedRead
from grace.storage import Database

__all__ = ["HTM", "Enqueued", "Submitted"]

log = logging.getLogger("grace.htm")

MAX_SLA_WINDOW_SECONDS = 30 * 24 * 3600


class HTM:
    """Tasks for every origin of work: fair, durable, observable."""

    def __init__(self, db: Database, bus: Bus, clock: Clock, config: HTMConfig, *, outbox: bool = True) -> None:
        self.db = db
        self.bus = bus
        self.clock = clock
        self.config = config
        self.weights = origins.weights_from_shares(config.shares)
        # Task events go through the outbox where the bus is the database's (grace.htm.outbox);
        # ``outbox=False`` publishes them after commit instead, as before it (for the benchmarks).
        relayed = outbox and config.events and not db.is_sqlite and isinstance(bus, PostgresBus)
        self.queue = Queue(db, clock, self.weights, config.lease_seconds, config.capacity, outbox=relayed)
        self.handlers = HandlerRegistry()
        self.events = events.EventPublisher(bus, enabled=config.events, relay=relayed)
        self.local = LocalWorkers(config.concurrency)
        self.submitter = submission.Submitter(
            db,
            clock,
            config,
            weights=self.weights,
            queue=self.queue,
            events=self.events,
            local=self.local,
            handlers=self.handlers,
        )
        self.recorder = Recorder(self.queue, self.events)
        self.sla_report = sla_stats.SLAReport(db, clock, config)
        self.recent_finishes = stats.RecentFinishes()  # routing stats' last minute, kept per second
        self._routing_stats = SharedRead(self._read_routing_stats)
        self.sla = sla.SLAEnforcer(
            db, clock, config, submitter=self.submitter, publisher=self.events, report=self.sla_report
        )
        self.submitter.on_deadline = self.sla.nudge  # a short SLA submitted here wakes the loop in time
        self.rescuer = rescue.Rescuer(db, clock, self.recorder)
        self.rollups = rollups.RollUps(db, clock, config)
        self.dashboard = dashboard.Dashboard(
            db, clock, config, weights=self.weights, report=self.sla_report, local=self.local
        )
        self._pools: list[WorkerPool] = []
        register_builtin_handlers(self.handlers, clock)
        # Rescues report on anyone's task: only the SLA enforcer submits them.
        self.handlers.register(rescue.TASK_TYPE, self.rescuer.handle, submitters=admission.INTERNAL)

    @property
    def pool(self) -> WorkerPool | None:
        """Return the worker pool started in this process (:meth:`start_workers`), if any."""
        return self.local.pool

    # -- life cycle ------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the scheduling rows this configuration needs (idempotent)."""
        await self.submitter.prepare()

    def new_pool(self, *, concurrency: int | None = None, claim_batch: int | None = None) -> WorkerPool:
        """Return a worker pool for this process (not started)."""
        pool = WorkerPool(
            self.db,
            self.clock,
            self.config,
            self.queue,
            self.recorder,
            self.handlers,
            concurrency=concurrency or self.config.concurrency,
            claim_batch=claim_batch or self.config.claim_batch,
        )
        self._pools.append(pool)
        return pool

    async def start_workers(self, *, concurrency: int | None = None, claim_batch: int | None = None) -> WorkerPool:
        """Start this process's worker pool (the embedded one in ``grace serve``, or ``grace worker``)."""
        await self.prepare()
        self.events.start()  # with an outbox, its sweep publishes what a dead process left
        if self.local.pool is None:
            self.local.pool = self.new_pool(concurrency=concurrency, claim_batch=claim_batch)
            await self.local.pool.start()
        return self.local.pool

    async def stop_workers(self, grace: float | None = None) -> None:
        """Stop this process's worker pool gracefully (see :meth:`WorkerPool.stop`), if it runs."""
        pool = self.local.pool
        if pool is not None:
            await pool.stop(grace)
            self.local.pool = None

    def start_sla(self) -> bool:
        """Start the SLA enforcer's loop in this process when ``GRACE_HTM_SLA_ENABLED``; return whether it runs."""
        self.events.start()  # with an outbox, its sweep publishes what a dead process left
        if self.config.sla_enabled:
            self.sla.start()
        return self.sla.running

    async def upkeep(self) -> dict[str, int]:
        """Fold finished tasks into the dashboard's roll-ups, then delete finished rows past the retention."""
        folded = await self.rollups.run()
        deleted = await self.rollups.prune()
        return {"folded": folded, "deleted": deleted}

    async def close(self, *, grace: float | None = None) -> None:
        """Stop the SLA enforcer and the pool gracefully, then publish pending events."""
        await self.sla.stop()
        await self.stop_workers(grace)
        for pool in self._pools:
            await pool.release_liveness()
        self._pools = []
        await self.events.close()

    # -- submitting --------------------------------------------------------------

    def request(self, task_type: str, **fields: Any) -> TaskRequest:
        """Validate a submission against this configuration's limits."""
        return self.submitter.request(task_type, **fields)

    async def submit(
        self, request: TaskRequest, *, creator: Principal | None, within: Within | None = None
    ) -> Submitted:
        """Route one task and enqueue it; return its id, status and routing decision.

        Concurrent single submissions share a transaction (:meth:`Submitter.submit_one`).
        """
        return await self.submitter.submit_one(request, creator=creator, within=within)

    async def route_task(self, task_type: str, *, creator: Principal | None = None, **fields: Any) -> dict[str, Any]:
        """Tag, route and enqueue a task; return the routing decision with its task_id (the seed's call)."""
        submitted = await self.submit(self.request(task_type, **fields), creator=creator)
        return {"task_id": submitted.task_id, **submitted.decision.as_dict()}

    async def submit_many(
        self, requests: Sequence[TaskRequest], *, creator: Principal | None, within: Within | None = None
    ) -> list[Submitted]:
        """Route and enqueue several tasks in one transaction (in order); ``within`` runs inside it."""
        return await self.submitter.submit_many(requests, creator=creator, within=within)

    async def enqueue_in(
        self, conn: AsyncConnection, requests: Sequence[TaskRequest], *, creator: Principal | None
    ) -> Enqueued:
        """Route and insert tasks inside the caller's write transaction; call :meth:`announce_created` after commit."""
        return await self.submitter.enqueue_in(conn, requests, creator=creator)

    async def announce_created(self, enqueued: Enqueued) -> None:
        """Log and publish ``htm.task.created`` for committed tasks, and wake this process's pool."""
        await self.submitter.announce_created(enqueued)

    # -- reading and cancelling -----------------------------------------------------

    @staticmethod
    def _visible_to(principal: Principal | None) -> str | None:
        """Return whose tasks ``principal`` may see: None for everyone's (operators, admins, the CLI).

        An agent sees its own user's tasks only, whatever its user's role.
        """
        if principal is None or (principal.has_role(Role.OPERATOR) and not principal.is_agent):
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
        if self.queue.outbox:
            self.events.relay_soon()  # the cancel wrote its event in its transaction
        else:
            await self.events.emit(events.UPDATE, finished.event())
        self.local.stop_task(task_id)
        return await self.queue.get(task_id, visible_to=None)

    async def tasks_by_id(self, task_ids: Sequence[str]) -> dict[str, Task]:
        """Return the stored tasks among ``task_ids`` (everyone's: for Grace's own bookkeeping), by id."""
        if not task_ids:
            return {}
        async with self.db.read() as conn:
            rows = (await conn.execute(select(htm_tasks).where(htm_tasks.c.task_id.in_(list(task_ids))))).mappings()
            return {row["task_id"]: Task.from_row(row) for row in rows}

    async def unfinished_with_intent(self, *, task_type_prefix: str, limit: int = 1000) -> list[tuple[str, str]]:
        """Return (task_id, intent_id) of unfinished tasks of types under ``task_type_prefix`` naming an intent."""
        t = htm_tasks
        unfinished = [s.value for s in Status if not s.finished]
        query = (
            select(t.c.task_id, t.c.intent_id)
            .where(
                t.c.intent_id.is_not(None),
                t.c.status.in_(unfinished),
                t.c.task_type.startswith(task_type_prefix, autoescape=True),
            )
            .order_by(t.c.seq)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [(str(r[0]), str(r[1])) for r in (await conn.execute(query)).all()]

    async def late_completions(self, task_id: str, *, principal: Principal | None) -> list[dict[str, Any]]:
        await self.get(task_id, principal=principal)
        return await self.queue.late_completions(task_id)

    # -- what workers report -----------------------------------------------------------

    async def record(
        self, worker_id: str, outcomes: Sequence[Outcome], *, claim: int = 0, fallback_capacity: int = 1
    ) -> Exchange:
        """Record a worker's outcomes (and claim up to ``claim`` tasks in the same call); publish what changed."""
        return await self.recorder.record(worker_id, outcomes, claim=claim, fallback_capacity=fallback_capacity)

    async def reap(self) -> list[Finished]:
        """Return dead workers' expired leases to the queue (or fail them on their last attempt)."""
        return await self.recorder.reap()

    async def rebalance(self) -> dict[str, Any]:
        """Give starved origins the next free slots and reset fair-share credits (see :mod:`grace.htm.rebalance`).

        Returns ``changed`` (false when no origin was starved), the ``starved`` origins, the order
        they will be ``served_first`` in, and how many origins' credits were reset.
        """
        await self.prepare()
        result = await rebalance_origins(
            self.db, self.config, self.weights, fallback_capacity=self.local.fallback_capacity, now=self.clock.now()
        )
        if result["changed"]:
            log.warning("htm.rebalanced", extra={"starved": result["starved"]})
            self.local.wake()
        return result

    # -- stats ---------------------------------------------------------------------

    async def routing_stats(self) -> dict[str, Any]:
        """Per-origin figures in the seed's shape, plus delayed/deferred counts and throughput.

        Callers asking at the same time share one reading, begun after each of them asked
        (:class:`grace.shared_read.SharedRead`): a dashboard polled by many clients reads once.
        """
        return await self._routing_stats.get()

    async def _read_routing_stats(self) -> dict[str, Any]:
        await self.prepare()
        return await stats.routing_stats(
            self.db,
            self.config,
            self.weights,
            fallback_capacity=self.local.fallback_capacity,
            now=self.clock.now(),
            recent_finishes=self.recent_finishes,
        )

    async def sla_stats(self, *, window_seconds: float | None = None) -> dict[str, Any]:
        """The SLA enforcer's figures (see :meth:`grace.htm.sla_stats.SLAReport.get_statistics`)."""
        if window_seconds is not None and not 1 <= window_seconds <= MAX_SLA_WINDOW_SECONDS:
            raise errors.InvalidInput("window_seconds must be between 1 and 2592000 (30 days)")
        return await self.sla_report.get_statistics(window_seconds=window_seconds)

    async def sla_violations(
        self, *, principal: Principal | None, origin: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Unfinished tasks past their deadline, most overdue first: a member's own, or everyone's."""
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000")
        parsed = origins.parse_origin(origin) if origin else None
        return await self.sla_report.active_violations(
            visible_to=self._visible_to(principal), origin=parsed, limit=limit
        )

    # -- the dashboard -------------------------------------------------------------------

    async def dashboard_stats(self, *, principal: Principal | None, window_hours: int = 24) -> dict[str, Any]:
        """The seed's figures over the last ``window_hours`` hours: a member's own tasks', or everyone's."""
        return await self.dashboard.stats(visible_to=self._visible_to(principal), window_hours=window_hours)

    async def dashboard_hourly(self, *, principal: Principal | None, hours: int = 24) -> dict[str, Any]:
        """The last ``hours`` hourly buckets, oldest first."""
        return await self.dashboard.hourly(visible_to=self._visible_to(principal), hours=hours)

    async def dashboard_violations(self, *, principal: Principal | None, limit: int = 100) -> dict[str, Any]:
        """Unfinished tasks past their deadline, the most overdue first."""
        violations = await self.sla_violations(principal=principal, limit=limit)
        return {"violations": violations, "total": len(violations), "at": self.clock.now().isoformat()}

    async def dashboard_slow(self, *, principal: Principal | None, limit: int = 20) -> dict[str, Any]:
        """Running tasks, the longest running first."""
        _check_limit(limit)
        return await self.dashboard.slow_tasks(visible_to=self._visible_to(principal), limit=limit)

    async def dashboard_queued(self, *, principal: Principal | None, limit: int = 50) -> dict[str, Any]:
        """Waiting tasks with their wait so far, and the queue's depths."""
        _check_limit(limit)
        return await self.dashboard.queued_tasks(visible_to=self._visible_to(principal), limit=limit)

    async def dashboard_health(self, *, principal: Principal | None) -> dict[str, Any]:
        """``ok``, ``degraded`` or ``failing``, with each alert's figure and threshold."""
        return await self.dashboard.health(visible_to=self._visible_to(principal))

    async def metric_figures(self) -> dict[str, Any]:
        """Everyone's figures for Prometheus (all-time totals, depths, SLA counters), read from the database."""
        return await self.dashboard.metric_figures()


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 1000:
        raise errors.InvalidInput("limit must be between 1 and 1000")


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

    registry.register("htm.noop", noop, submitters=admission.ANYONE)
    registry.register("htm.echo", echo, submitters=admission.ANYONE)
    registry.register("htm.sleep", sleep, submitters=admission.ANYONE)
