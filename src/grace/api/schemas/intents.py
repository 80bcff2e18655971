"""Intents and the learning loop: an intent as answered, outcomes, and the learning summary."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from grace.api.schemas.common import Answer, Timestamp
from grace.htm import Priority
from grace.intents import IntentStatus

__all__ = [
    "CalibrationBin",
    "ExecutionTimes",
    "GroupSummary",
    "IntentAnswer",
    "IntentList",
    "IntentOut",
    "LearningSummary",
    "OutcomeList",
    "OutcomeOut",
    "SLASuggestion",
]


class IntentOut(Answer):
    intent_id: str
    goal: str
    expected_outcome: str | None
    sla_ms: int | None
    priority: Priority
    domain: str
    confidence: float | None
    status: IntentStatus
    handler: str
    task_type: str = Field(description="The task type its task runs as: intent.<handler>.")
    htm_task_id: str | None = Field(description="Its task; null while pending (not created yet, or lost).")
    owner: str
    agent: str | None
    recoveries: int = Field(description="How often the sweep resubmitted it (at most once).")
    reason: str | None = Field(description="Why it failed or was cancelled.")
    result: Any
    sla_met: bool | None
    execution_ms: float | None = Field(description="Its task's time from submission to finish.")
    learned: bool = Field(description="Whether its outcome is in the learning loop.")
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    context: dict[str, Any] | None = Field(default=None, description="Left out of lists.")


class IntentAnswer(Answer):
    intent: IntentOut


class IntentList(Answer):
    intents: list[IntentOut]


class OutcomeOut(Answer):
    outcome_id: str
    action_type: str
    success: bool
    confidence_score: float | None
    execution_time: float = Field(description="Seconds.")
    context: dict[str, Any]
    domain: str | None
    task_type: str | None
    intent_id: str | None
    sla_ms: int | None
    sla_met: bool | None
    recorded_by: str
    recorded_at: Timestamp


class OutcomeList(Answer):
    outcomes: list[OutcomeOut]


class ExecutionTimes(Answer):
    """Execution time in seconds (nearest-rank percentiles); null without outcomes."""

    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None


class CalibrationBin(Answer):
    """Outcomes whose confidence fell in [lower, upper): their mean confidence beside how often they succeeded."""

    lower: float
    upper: float
    count: int
    mean_confidence: float
    success_rate: float


class GroupSummary(Answer):
    count: int
    successes: int
    success_rate: float | None
    execution_time: ExecutionTimes
    with_confidence: int
    brier_score: float | None = Field(description="Mean (confidence - outcome)^2: 0 is perfect; null without one.")
    calibration: list[CalibrationBin]
    sla_met_rate: float | None


class SLASuggestion(Answer):
    task_type: str
    count: int
    successes: int
    observed_p95_ms: float | None = Field(description="p95 of successful runs, submission to finish.")
    suggested_sla_ms: int | None = Field(
        description="observed p95 + 20%, rounded up to 100 ms; null under 5 successes."
    )
    configured_sla_ms: int | None
    configured_from: str | None = Field(description="default (a configured default) or requested (most requested).")


class LearningSummary(Answer):
    total: GroupSummary
    by_action_type: dict[str, GroupSummary]
    by_domain: dict[str, GroupSummary]
    sla_suggestions: list[SLASuggestion]
    window_days: float | None
    since: Timestamp | None
    at: Timestamp
    truncated: bool = Field(description="True when the window held more outcomes than one summary reads.")
