"""An intent as stored and read back, its statuses, and how a task's status becomes an intent's."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grace import choices, clock
from grace.htm import Status as TaskStatus

__all__ = ["FINISHED", "OPEN", "TOPICS", "Intent", "IntentStatus", "status_of_task"]


class IntentStatus(enum.StrEnum):
    """Where an intent is: recorded, waiting for or running as its task, or finished."""

    PENDING = "pending"  # recorded; its task not created yet (or lost, until the sweep resubmits it)
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @classmethod
    def parse(cls, value: str) -> IntentStatus:
        return choices.parse(cls, value, noun="status", plural="statuses")


FINISHED = frozenset({IntentStatus.COMPLETED, IntentStatus.FAILED, IntentStatus.TIMED_OUT, IntentStatus.CANCELLED})
OPEN = frozenset({IntentStatus.PENDING, IntentStatus.QUEUED, IntentStatus.RUNNING})

_OF_TASK = {
    TaskStatus.QUEUED: IntentStatus.QUEUED,
    TaskStatus.DELAYED: IntentStatus.QUEUED,
    TaskStatus.DEFERRED: IntentStatus.QUEUED,
    TaskStatus.RUNNING: IntentStatus.RUNNING,
    TaskStatus.COMPLETED: IntentStatus.COMPLETED,
    TaskStatus.FAILED: IntentStatus.FAILED,
    TaskStatus.TIMED_OUT: IntentStatus.TIMED_OUT,
    TaskStatus.CANCELLED: IntentStatus.CANCELLED,
}

# What the bus hears when an intent finishes (the seed's names; ``cancelled`` is Grace's addition).
TOPICS = {
    IntentStatus.COMPLETED: "agentic.intent.completed",
    IntentStatus.FAILED: "agentic.intent.failed",
    IntentStatus.TIMED_OUT: "agentic.intent.timeout",
    IntentStatus.CANCELLED: "agentic.intent.cancelled",
}
CREATED = "agentic.intent.created"


def status_of_task(status: str) -> IntentStatus:
    """Return the intent status that follows a task in ``status``."""
    return _OF_TASK[TaskStatus(status)]


@dataclass(frozen=True)
class Intent:
    """An intent as stored."""

    intent_id: str
    goal: str
    expected_outcome: str | None
    sla_ms: int | None
    priority: str
    domain: str
    context: dict[str, Any]
    confidence: float | None
    status: IntentStatus
    handler: str
    task_type: str
    htm_task_id: str | None
    owner_id: str
    owner_name: str
    agent: str | None
    recoveries: int
    reason: str | None
    result: Any
    sla_met: bool | None
    execution_ms: float | None
    learned: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Intent:
        return cls(
            intent_id=row["intent_id"],
            goal=row["goal"],
            expected_outcome=row["expected_outcome"],
            sla_ms=row["sla_ms"],
            priority=row["priority"],
            domain=row["domain"],
            context=row["context"] or {},
            confidence=row["confidence"],
            status=IntentStatus(row["status"]),
            handler=row["handler"],
            task_type=row["task_type"],
            htm_task_id=row["htm_task_id"],
            owner_id=row["owner_id"],
            owner_name=row["owner_name"],
            agent=row["agent"],
            recoveries=int(row["recoveries"]),
            reason=row["reason"],
            result=row["result"],
            sla_met=row["sla_met"],
            execution_ms=row["execution_ms"],
            learned=bool(row["learned"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
        )

    def as_dict(self, *, include_context: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intent_id": self.intent_id,
            "goal": self.goal,
            "expected_outcome": self.expected_outcome,
            "sla_ms": self.sla_ms,
            "priority": self.priority,
            "domain": self.domain,
            "confidence": self.confidence,
            "status": self.status.value,
            "handler": self.handler,
            "task_type": self.task_type,
            "htm_task_id": self.htm_task_id,
            "owner": self.owner_name,
            "agent": self.agent,
            "recoveries": self.recoveries,
            "reason": self.reason,
            "result": self.result,
            "sla_met": self.sla_met,
            "execution_ms": self.execution_ms,
            "learned": self.learned,
            "created_at": clock.iso(self.created_at),
            "updated_at": clock.iso(self.updated_at),
            "finished_at": clock.iso(self.finished_at),
        }
        if include_context:
            out["context"] = self.context
        return out
