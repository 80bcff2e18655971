"""Tasks: submit, read, list, cancel, the routing stats, SLA enforcement's figures and violations, the dashboard."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from grace import errors
from grace.api import contract, policy
from grace.api.bounds import INT64_MAX
from grace.api.deps import CurrentPrincipal, ServicesDep
from grace.api.idempotency import IdempotencyDep, Record
from grace.api.schemas.dashboard import (
    DashboardHealth,
    DashboardHourly,
    DashboardQueued,
    DashboardSlow,
    DashboardStats,
    DashboardViolations,
)
from grace.api.schemas.tasks import (
    RoutingStats,
    SLAStats,
    SLAViolations,
    SubmittedBatch,
    SubmittedTask,
    TaskAnswer,
    TaskDetail,
    TaskList,
)
from grace.htm import HTM, Submitted, TaskRequest

router = APIRouter(prefix="/api/htm", tags=["htm"])


class NewTask(BaseModel):
    task_type: Annotated[str, Field(min_length=1, max_length=100)]
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Annotated[str, Field(max_length=40)] = "normal"
    origin: Annotated[str | None, Field(max_length=40)] = None
    data_size_bytes: Annotated[int | None, Field(ge=0, le=INT64_MAX)] = None
    sla_ms: Annotated[int | None, Field(gt=0, le=30 * 24 * 3600 * 1000, description="At most 30 days.")] = None
    intent_id: Annotated[str | None, Field(max_length=100)] = None
    max_attempts: Annotated[int | None, Field(ge=1, le=100)] = None
    timeout_seconds: Annotated[float | None, Field(gt=0, le=7 * 24 * 3600, description="At most 7 days.")] = None

    def build(self, htm: HTM) -> TaskRequest:
        return htm.request(
            self.task_type,
            payload=self.payload,
            priority=self.priority,
            origin=self.origin,
            data_size_bytes=self.data_size_bytes,
            sla_ms=self.sla_ms,
            intent_id=self.intent_id,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
        )


MAX_BATCH = 1000


class NewTasks(BaseModel):
    tasks: Annotated[
        list[NewTask],
        Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} tasks, submitted in this order."),
    ]


@router.post("/tasks", status_code=201, dependencies=[policy.TASKS], response_model=SubmittedTask)
async def submit_task(body: NewTask, idem: IdempotencyDep) -> Any:
    """Submit a task; returns its task_id, status and the routing decision (accepted, delayed or deferred)."""
    # The principal and the services come with the key (one dependency where there were three: each is a
    # walk of FastAPI's resolver on every request).
    principal, htm = idem.principal, idem.services.htm
    request = body.build(htm)

    async def work(record: Record | None) -> dict[str, Any]:
        async def within(conn: Any, submitted: list[Submitted]) -> None:
            assert record is not None
            await record(conn, submitted[0].as_dict())

        submitted = await htm.submit(request, creator=principal, within=within if record else None)
        return submitted.as_dict()

    return await idem.answer(work, SubmittedTask, status_code=201, transactional=True)


@router.post(
    "/tasks/batch",
    status_code=201,
    dependencies=[policy.TASKS],
    response_model=SubmittedBatch,
    responses=contract.errors(
        **{
            "413": f"The body is larger than GRACE_MAX_REQUEST_BYTES (code payload_too_large); send at most {MAX_BATCH}"
            " tasks per batch."
        }
    ),
)
async def submit_batch(body: NewTasks, idem: IdempotencyDep) -> Any:
    """Submit 1 to 1,000 tasks in one transaction: all are enqueued or none (a task refused, e.g. a type the
    caller may not submit, refuses the batch naming its index). Returns each task's id, status and routing
    decision, in the order sent."""
    principal, htm = idem.principal, idem.services.htm
    requests = []
    for index, task in enumerate(body.tasks):
        try:
            requests.append(task.build(htm))
        except errors.GraceError as exc:
            exc.message = f"tasks[{index}]: {exc.message}"
            raise

    async def work(record: Record | None) -> dict[str, Any]:
        if record is None:  # nothing else to write with the tasks: on PostgreSQL, one statement
            return {"tasks": [s.as_dict() for s in await htm.submit_many(requests, creator=principal)]}
        answer: dict[str, Any] = {}

        async def within(conn: Any, submitted: list[Submitted]) -> None:
            answer["tasks"] = [s.as_dict() for s in submitted]
            await record(conn, answer)

        await htm.submit_many(requests, creator=principal, within=within)
        return answer

    return await idem.answer(work, SubmittedBatch, status_code=201, transactional=True)


@router.get("/tasks", dependencies=[policy.TASKS], response_model=TaskList, response_model_exclude_unset=True)
async def list_tasks(
    principal: CurrentPrincipal,
    services: ServicesDep,
    status: Annotated[str | None, Query(max_length=40, description="Only tasks in this status.")] = None,
    origin: Annotated[str | None, Query(max_length=40, description="Only tasks from this origin.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 50,
) -> dict[str, Any]:
    """List tasks newest first (payloads left out): members see their own, operators and admins see all."""
    tasks = await services.htm.list_tasks(principal=principal, status=status, origin=origin, limit=limit)
    return {"tasks": [t.as_dict(include_payload=False) for t in tasks]}


@router.get(
    "/tasks/{task_id}", dependencies=[policy.TASKS], response_model=TaskDetail, response_model_exclude_unset=True
)
async def get_task(task_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Show one task with its payload, result or error, and any rejected late completions."""
    htm = services.htm
    task = await htm.get(task_id, principal=principal)
    return {"task": task.as_dict(), "late_completions": await htm.late_completions(task_id, principal=principal)}


@router.post(
    "/tasks/{task_id}/cancel",
    dependencies=[policy.TASKS],
    response_model=TaskAnswer,
    response_model_exclude_unset=True,
    responses=contract.errors(**{"409": "The task has already finished (code task_already_finished)."}),
)
async def cancel_task(task_id: str, principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Cancel a waiting or running task; 409 if it already finished."""
    task = await services.htm.cancel(task_id, principal=principal)
    return {"task": task.as_dict(include_payload=False)}


@router.get("/routing/stats", dependencies=[policy.TASKS], response_model=RoutingStats)
async def routing_stats(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """Per-origin load against its share: current_count, max_concurrent, total_queued, tasks_starved,
    utilization, delayed and deferred counts, and throughput over the last minute."""
    return await services.htm.routing_stats()


@router.get("/sla/stats", dependencies=[policy.TASKS], response_model=SLAStats)
async def sla_stats(
    principal: CurrentPrincipal,
    services: ServicesDep,
    window_seconds: Annotated[
        float | None,
        Query(
            ge=1, le=30 * 24 * 3600, description="Compliance window in seconds (default GRACE_HTM_SLA_WINDOW_SECONDS)."
        ),
    ] = None,
) -> dict[str, Any]:
    """SLA figures: total_violations, warnings_issued, escalations_triggered and sub_agents_spawned (all-time),
    sla_compliance_rate over the window (null when no task with an SLA finished in it), and active_violations."""
    return await services.htm.sla_stats(window_seconds=window_seconds)


@router.get("/sla/violations", dependencies=[policy.TASKS], response_model=SLAViolations)
async def sla_violations(
    principal: CurrentPrincipal,
    services: ServicesDep,
    origin: Annotated[str | None, Query(max_length=40, description="Only tasks from this origin.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, the most overdue first.")] = 100,
) -> dict[str, Any]:
    """Unfinished tasks past their deadline, the most overdue first, with how late each is: members see
    their own tasks, operators and admins see all."""
    htm = services.htm
    violations = await htm.sla_violations(principal=principal, origin=origin, limit=limit)
    return {"violations": violations, "at": htm.clock.now().isoformat()}


# -- the dashboard (grace.htm.dashboard): members see their own tasks' figures, operators and admins everyone's --

WindowHours = Annotated[
    int, Query(ge=1, le=720, description="Hourly buckets counted, the current one included (at most 720: 30 days).")
]


@router.get("/dashboard/stats", dependencies=[policy.TASKS], response_model=DashboardStats)
async def dashboard_stats(
    principal: CurrentPrincipal, services: ServicesDep, window_hours: WindowHours = 24
) -> dict[str, Any]:
    """The seed's figures (task counts, SLA compliance, active violations, execution-time percentiles, queue
    depths by priority, worker utilization, warnings, escalations, rescues), everyone's and per origin, over
    the last ``window_hours`` hourly buckets: a member's own tasks, everyone's for operators and admins."""
    return await services.htm.dashboard_stats(principal=principal, window_hours=window_hours)


@router.get("/dashboard/violations", dependencies=[policy.TASKS], response_model=DashboardViolations)
async def dashboard_violations(
    principal: CurrentPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, the most overdue first.")] = 100,
) -> dict[str, Any]:
    """Active SLA violations: unfinished tasks past their deadline, the most overdue first."""
    return await services.htm.dashboard_violations(principal=principal, limit=limit)


@router.get("/dashboard/tasks/slow", dependencies=[policy.TASKS], response_model=DashboardSlow)
async def dashboard_slow_tasks(
    principal: CurrentPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, the longest running first.")] = 20,
) -> dict[str, Any]:
    """Running tasks, the longest running first, with elapsed time, SLA and how much of it is used."""
    return await services.htm.dashboard_slow(principal=principal, limit=limit)


@router.get("/dashboard/tasks/queued", dependencies=[policy.TASKS], response_model=DashboardQueued)
async def dashboard_queued_tasks(
    principal: CurrentPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, by priority, deadline, then age.")] = 50,
) -> dict[str, Any]:
    """The queue: waiting tasks with each one's wait so far, and the depths by priority and origin."""
    return await services.htm.dashboard_queued(principal=principal, limit=limit)


@router.get("/dashboard/metrics/hourly", dependencies=[policy.TASKS], response_model=DashboardHourly)
async def dashboard_hourly(
    principal: CurrentPrincipal, services: ServicesDep, hours: WindowHours = 24
) -> dict[str, Any]:
    """The last ``hours`` hourly buckets (24 by default), oldest first: created, completed, failed, p50/p95
    execution, SLA compliance, throughput in tasks/s and MB/s."""
    return await services.htm.dashboard_hourly(principal=principal, hours=hours)


@router.get("/dashboard/health", dependencies=[policy.TASKS], response_model=DashboardHealth)
async def dashboard_health(principal: CurrentPrincipal, services: ServicesDep) -> dict[str, Any]:
    """``ok``, ``degraded`` or ``failing``, with each alert's figure and the threshold that decided it
    (the thresholds are GRACE_HTM_HEALTH_* settings)."""
    return await services.htm.dashboard_health(principal=principal)
