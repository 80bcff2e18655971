"""How an attempt of a task ends: what its worker reports (`Outcome`), what the queue recorded (`Finished`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grace.htm.tables import SUMMARY_COLUMNS, htm_tasks
from grace.htm.tasks import Status, Task, member_of
from grace.storage import utc_read

__all__ = ["MAX_ERROR_CHARS", "SUMMARY", "Exchange", "Finished", "Outcome", "backoff"]

MAX_ERROR_CHARS = 2000

# Columns handed back after a state change, for events and callers (read by Finished.from_row).
SUMMARY = tuple(htm_tasks.c[name] for name in SUMMARY_COLUMNS)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Return the wait before retry number ``attempt`` (1 after the first failure): capped exponential."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Outcome:
    """What a worker reports for one attempt of a task."""

    task_id: str
    attempt: int
    status: Status  # completed, failed, timed_out, delayed (retry), queued (released)
    at: datetime
    result: Any = None
    error: str | None = None
    retry_at: datetime | None = None


@dataclass(frozen=True)
class Exchange:
    """What :meth:`Queue.finish_and_claim` did: outcomes recorded, outcomes rejected as late, tasks claimed."""

    recorded: list[Finished]
    late: list[Outcome]
    claimed: list[Task]


@dataclass(frozen=True)
class Finished:
    """The recorded effect of an outcome (or of a lease expiry, or a cancel)."""

    task_id: str
    task_type: str
    origin: str
    priority: str
    intent_id: str | None
    status: Status
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_at: datetime
    deadline: datetime | None
    data_size_bytes: int
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Finished:
        # On the outcome path for every task: fields set straight into a new instance, as Task.from_row.
        finished = object.__new__(cls)
        finished.__dict__.update(
            task_id=row["task_id"],
            task_type=row["task_type"],
            origin=row["origin"],
            priority=row["priority"],
            intent_id=row["intent_id"],
            status=member_of(Status, row["status"]),
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            created_at=_utc(row["created_at"]),
            started_at=utc_read(row["started_at"]),
            finished_at=utc_read(row["finished_at"]),
            queued_at=_utc(row["queued_at"]),
            deadline=utc_read(row["deadline"]),
            data_size_bytes=int(row["data_size_bytes"]),
            error=row["error"],
        )
        return finished

    def event(self) -> dict[str, Any]:
        """Return the bus payload describing this change (never the payload or result)."""
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "origin": self.origin,
            "priority": self.priority,
            "intent_id": self.intent_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
        }
        if self.started_at is not None and self.finished_at is not None:
            out["duration_ms"] = round((self.finished_at - self.started_at).total_seconds() * 1000, 3)
        if self.finished_at is not None:
            out["total_ms"] = round((self.finished_at - self.created_at).total_seconds() * 1000, 3)
            if self.deadline is not None:
                out["sla_met"] = self.finished_at <= self.deadline
        if self.status in (Status.DELAYED, Status.QUEUED):
            out["queued_at"] = self.queued_at.isoformat()
        if self.error:
            out["error"] = self.error
        return out


def _utc(value: Any) -> datetime:
    out = utc_read(value)
    assert out is not None
    return out
