"""The task manager's dashboard: stats, violations, slow and queued tasks, hourly buckets, health."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from grace.api.schemas.common import Answer, Timestamp
from grace.api.schemas.tasks import SLAViolation
from grace.htm import Origin, Priority, Status

__all__ = [
    "DashboardHealth",
    "DashboardHourly",
    "DashboardQueued",
    "DashboardSlow",
    "DashboardStats",
    "DashboardViolations",
    "HealthAlert",
    "HealthFigures",
    "HourlyBucket",
    "OriginFigures",
    "QueueDepths",
    "QueuedTask",
    "SlowTask",
    "StatsWindow",
]

Scope = Literal["everyone", "own"]


class QueueDepths(Answer):
    """Waiting tasks (queued, delayed, deferred) by priority."""

    critical: int
    high: int
    normal: int
    low: int


class OriginFigures(Answer):
    """One scope's figures in the seed's names: counts over the window, the present, execution times."""

    total_tasks: int = Field(description="Tasks created in the window.")
    active_tasks: int = Field(description="Running now.")
    queued_tasks: int = Field(description="Waiting now: queued, delayed or deferred.")
    completed_tasks: int = Field(description="Completed in the window.")
    failed_tasks: int = Field(description="Failed or timed out in the window.")
    cancelled_tasks: int = Field(description="Cancelled in the window.")
    sla_compliance_rate: float | None = Field(
        description="Of tasks with a deadline that ran to an outcome in the window, the share that finished by it;"
        " null when there were none."
    )
    active_violations: int = Field(description="Unfinished tasks past their deadline now.")
    avg_execution_time_ms: float | None
    p50_execution_ms: float | None = Field(description="Read from the roll-ups' histogram (see docs/htm.md).")
    p95_execution_ms: float | None
    p99_execution_ms: float | None
    queue_depths: QueueDepths
    warnings_issued: int = Field(description="Tasks of the window (or unfinished) whose SLA reached 80%.")
    escalations_triggered: int = Field(description="… reached 100% (escalated to high).")
    sub_agents_spawned: int = Field(description="… reached 200% (a rescue task was sent).")


class StatsWindow(Answer):
    start: Timestamp = Field(description="The start of the oldest hourly bucket counted.")
    end: Timestamp
    hours: int


class DashboardStats(OriginFigures):
    """Everyone's figures (or a member's own), per origin too, and the workers' utilization."""

    worker_utilization: float = Field(description="Running tasks (everyone's) over the workers' capacity.")
    running_all: int
    capacity: int
    by_origin: dict[str, OriginFigures] = Field(description="Per origin, by its name.")
    scope: Scope
    window: StatsWindow
    at: Timestamp


class DashboardViolations(Answer):
    violations: list[SLAViolation]
    total: int
    at: Timestamp


class SlowTask(Answer):
    task_id: str
    task_type: str
    origin: Origin
    priority: Priority
    worker_id: str | None
    attempts: int
    max_attempts: int
    started_at: Timestamp
    elapsed_ms: float
    sla_ms: int | None
    deadline: Timestamp | None
    elapsed_ratio: float | None = Field(description="Share of its SLA used (1.0 at the deadline); null without one.")
    created_by_name: str


class DashboardSlow(Answer):
    tasks: list[SlowTask]
    at: Timestamp


class QueuedTask(Answer):
    task_id: str
    task_type: str
    origin: Origin
    priority: Priority
    status: Status
    created_at: Timestamp
    wait_ms: float = Field(description="Time since it was created.")
    claimable_in_ms: float = Field(description="Time until it may be claimed (a delayed retry, a deferral); 0 if now.")
    sla_ms: int | None
    deadline: Timestamp | None
    attempts: int
    created_by_name: str


class DashboardQueued(Answer):
    tasks: list[QueuedTask]
    queue_depths: QueueDepths
    by_origin: dict[str, QueueDepths] = Field(description="Per origin, by its name.")
    total: int
    oldest_wait_ms: float | None = Field(description="How long the oldest claimable task has waited to be claimed.")
    at: Timestamp


class HourlyBucket(Answer):
    hour: Timestamp = Field(description="The hour's start.")
    created: int
    completed: int
    failed: int = Field(description="Failed or timed out.")
    cancelled: int
    p50_execution_ms: float | None
    p95_execution_ms: float | None
    avg_execution_time_ms: float | None
    sla_compliance_rate: float | None
    throughput_tasks_per_second: float = Field(description="Completed tasks over the hour's seconds (so far).")
    throughput_mb_per_second: float = Field(description="Completed tasks' data_size_bytes, in MB, per second.")
    seconds: float = Field(description="Seconds of the hour counted: 3600, or so far for the current hour.")


class DashboardHourly(Answer):
    buckets: list[HourlyBucket]
    scope: Scope
    hours: int
    at: Timestamp


class HealthAlert(Answer):
    check: str
    level: Literal["degraded", "failing"]
    figure: float
    threshold: float
    message: str


class HealthFigures(Answer):
    sla_compliance_rate: float | None
    failure_rate: float | None
    active_violations: int
    queue_depth: int
    oldest_queued_seconds: float
    capacity: int


class DashboardHealth(Answer):
    status: Literal["ok", "degraded", "failing"]
    alerts: list[HealthAlert]
    figures: HealthFigures
    window_hours: int
    scope: Scope
    at: Timestamp
