"""The task manager: tasks, routing decisions and stats, SLA figures and violations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from grace.api.schemas.common import Answer, Timestamp
from grace.htm import Origin, Priority, Status

__all__ = [
    "LateCompletion",
    "OriginLoad",
    "Routing",
    "RoutingStats",
    "SLAStats",
    "SLAViolation",
    "SLAViolations",
    "SubmittedBatch",
    "SubmittedTask",
    "TaskAnswer",
    "TaskDetail",
    "TaskList",
    "TaskOut",
]


class Routing(Answer):
    """The router's decision for a submitted task."""

    origin: Origin
    route: Literal["accepted", "delayed", "deferred"]
    queue_name: str
    quota_used: str
    reasoning: str
    delay_seconds: float


class SubmittedTask(Answer):
    task_id: str
    status: Status
    routing: Routing


class SubmittedBatch(Answer):
    tasks: list[SubmittedTask] = Field(
        description="One per submitted task, in the order sent, each with its routing decision."
    )


class TaskOut(Answer):
    task_id: str
    task_type: str
    priority: Priority
    origin: Origin
    origin_rule: str
    created_by: str | None
    created_by_name: str
    data_size_bytes: int
    sla_ms: int | None
    deadline: Timestamp | None
    intent_id: str | None
    status: Status
    route: str
    route_reason: str
    attempts: int
    max_attempts: int
    timeout_seconds: float
    created_at: Timestamp
    queued_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    worker_id: str | None
    sla_met: bool | None
    result: Any
    error: str | None
    payload: dict[str, Any] | None = Field(default=None, description="Left out of lists.")


class LateCompletion(Answer):
    """An outcome a worker reported after its lease had passed, recorded and refused."""

    worker_id: str
    attempt: int
    outcome: str
    reason: str
    at: Timestamp


class TaskDetail(Answer):
    task: TaskOut
    late_completions: list[LateCompletion]


class TaskAnswer(Answer):
    task: TaskOut


class TaskList(Answer):
    tasks: list[TaskOut]


class OriginLoad(Answer):
    share: float
    current_count: int
    max_concurrent: int
    total_queued: int
    queued: int
    delayed: int
    deferred: int
    tasks_starved: int
    starved: bool
    utilization: float
    borrowed: int
    completed_last_minute: int
    failed_last_minute: int
    throughput_mb_s: float
    tasks_per_second: float
    dispatched: int


class RoutingStats(Answer):
    origins: dict[str, OriginLoad] = Field(description="Per origin, by its name.")
    capacity: int
    running: int
    workers: int
    window_seconds: int
    at: Timestamp


class SLAStats(Answer):
    warnings_issued: int
    total_violations: int
    escalations_triggered: int
    sub_agents_spawned: int
    sla_compliance_rate: float | None = Field(description="null when no task with an SLA finished in the window.")
    active_violations: int
    finished_with_sla: int
    finished_late: int
    window_seconds: float
    at: Timestamp


class SLAViolation(Answer):
    task_id: str
    task_type: str
    origin: Origin
    priority: Priority
    status: Status
    sla_level: str
    sla_ms: int
    deadline: Timestamp
    overdue_ms: float
    elapsed_ratio: float
    worker_id: str | None
    attempts: int
    max_attempts: int
    created_by_name: str


class SLAViolations(Answer):
    violations: list[SLAViolation]
    at: Timestamp
