"""The task model: priorities, statuses, what a submission may contain, and a task as read back."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from grace import choices, clock, errors
from grace.htm import origins
from grace.htm.origins import Origin

__all__ = ["Priority", "Status", "Task", "TaskRequest", "member_of"]

E = TypeVar("E", bound=enum.Enum)

_TASK_TYPE = re.compile(r"^[a-z0-9][a-z0-9_.:\-]{0,99}$")
_INTENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
# Payloads are checked by the standard library, which refuses NaN and infinity (orjson would write
# them as null); one encoder, not one built per call.
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class Priority(enum.StrEnum):
    """How urgent a task is within its origin."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Return 0 for critical through 3 for low (claims take lower ranks first)."""
        return _PRIORITY_ORDER.index(self)

    @classmethod
    def parse(cls, value: str) -> Priority:
        """Return the priority named ``value``; 422 naming the valid values otherwise."""
        return choices.parse(cls, value, noun="priority", plural="priorities")


_PRIORITY_ORDER: tuple[Priority, ...] = tuple(Priority)


class Status(enum.StrEnum):
    """Where a task is in its life."""

    QUEUED = "queued"
    DELAYED = "delayed"
    DEFERRED = "deferred"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @classmethod
    def parse(cls, value: str) -> Status:
        return choices.parse(cls, value, noun="status", plural="statuses")


FINISHED = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})
WAITING = frozenset({Status.QUEUED, Status.DELAYED, Status.DEFERRED})


@dataclass(frozen=True)
class TaskRequest:
    """A validated submission, before routing."""

    task_type: str
    priority: Priority
    payload: dict[str, Any]
    payload_bytes: int
    origin: str | None = None
    data_size_bytes: int | None = None
    sla_ms: int | None = None
    intent_id: str | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    # The payload as the JSON text checked by build (stored as it is, not encoded again).
    payload_json: str | None = None

    @classmethod
    def build(
        cls,
        task_type: str,
        *,
        payload: Mapping[str, Any] | None = None,
        priority: str | Priority = Priority.NORMAL,
        origin: str | None = None,
        data_size_bytes: int | None = None,
        sla_ms: int | None = None,
        intent_id: str | None = None,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
        max_payload_bytes: int,
    ) -> TaskRequest:
        """Check a submission; raise InvalidInput (422) or PayloadTooLarge (413) naming the problem."""
        if not isinstance(task_type, str) or not _TASK_TYPE.match(task_type):
            raise errors.InvalidInput(
                "task_type must be 1 to 100 characters: lowercase letters, digits, '_', '.', ':' or '-'"
            )
        prio = priority if isinstance(priority, Priority) else Priority.parse(priority)
        if origin is not None:
            origin = origins.parse_origin(origin).value
        body = dict(payload or {})
        try:
            encoded = _PAYLOAD_ENCODER.encode(body) if body else "{}"
        except (TypeError, ValueError):
            raise errors.InvalidInput("payload must be a JSON object of JSON values") from None
        size = len(encoded.encode())
        if size > max_payload_bytes:
            raise errors.PayloadTooLarge(
                f"the task payload is {size} bytes; the limit is {max_payload_bytes}",
                details={"payload_bytes": size, "limit_bytes": max_payload_bytes},
            )
        if data_size_bytes is not None and data_size_bytes < 0:
            raise errors.InvalidInput("data_size_bytes must be zero or more")
        if sla_ms is not None and not 0 < sla_ms <= 30 * 24 * 3600 * 1000:
            raise errors.InvalidInput("sla_ms must be between 1 and 30 days in milliseconds")
        if intent_id is not None and not _INTENT_ID.match(intent_id):
            raise errors.InvalidInput("intent_id must be 1 to 100 letters, digits, '_', '.', ':' or '-'")
        if max_attempts is not None and not 1 <= max_attempts <= 100:
            raise errors.InvalidInput("max_attempts must be between 1 and 100")
        if timeout_seconds is not None and not 0 < timeout_seconds <= 7 * 24 * 3600:
            raise errors.InvalidInput("timeout_seconds must be more than 0 and at most 7 days")
        # Checked, so the fields are set straight in (as Task.from_row does): a batch may hold thousands.
        request = object.__new__(cls)
        request.__dict__.update(
            task_type=task_type,
            priority=prio,
            payload=body,
            payload_bytes=size,
            origin=origin,
            data_size_bytes=data_size_bytes,
            sla_ms=sla_ms,
            intent_id=intent_id,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            payload_json=encoded,
        )
        return request


def member_of(kind: type[E], value: Any) -> E:
    """Return the member of ``kind`` with ``value`` (a dictionary lookup; ValueError when there is none)."""
    member = kind._value2member_map_.get(value)
    return member if member is not None else kind(value)  # type: ignore[return-value]


@dataclass(frozen=True)
class Task:
    """A task as stored."""

    task_id: str
    task_type: str
    priority: Priority
    payload: dict[str, Any]
    origin: Origin
    origin_rule: str
    created_by: str | None
    created_by_name: str
    data_size_bytes: int
    sla_ms: int | None
    deadline: datetime | None
    intent_id: str | None
    status: Status
    route: str
    route_reason: str
    attempts: int
    max_attempts: int
    timeout_seconds: float
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None
    worker_id: str | None
    dispatch_seq: int | None
    result: Any
    error: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Task:
        # On the claim path for every task: the fields are set straight into a new instance (the
        # frozen dataclass's __init__ sets them one by one through object.__setattr__), and the
        # enums are looked up by value. The dataclass's fields are exactly these.
        task = object.__new__(cls)
        task.__dict__.update(
            task_id=row["task_id"],
            task_type=row["task_type"],
            priority=member_of(Priority, row["priority"]),
            payload=row["payload"] or {},
            origin=member_of(Origin, row["origin"]),
            origin_rule=row["origin_rule"],
            created_by=row["created_by"],
            created_by_name=row["created_by_name"],
            data_size_bytes=int(row["data_size_bytes"]),
            sla_ms=row["sla_ms"],
            deadline=row["deadline"],
            intent_id=row["intent_id"],
            status=member_of(Status, row["status"]),
            route=row["route"],
            route_reason=row["route_reason"],
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            timeout_seconds=float(row["timeout_seconds"]),
            created_at=row["created_at"],
            queued_at=row["queued_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            lease_expires_at=row["lease_expires_at"],
            worker_id=row["worker_id"],
            dispatch_seq=row["dispatch_seq"],
            result=row["result"],
            error=row["error"],
        )
        return task

    @property
    def sla_met(self) -> bool | None:
        """Return whether it finished by its deadline (None without an SLA or before it finishes)."""
        if self.deadline is None or self.finished_at is None:
            return None
        return self.finished_at <= self.deadline

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def as_dict(self, *, include_payload: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "priority": self.priority.value,
            "origin": self.origin.value,
            "origin_rule": self.origin_rule,
            "created_by": self.created_by,
            "created_by_name": self.created_by_name,
            "data_size_bytes": self.data_size_bytes,
            "sla_ms": self.sla_ms,
            "deadline": clock.iso(self.deadline),
            "intent_id": self.intent_id,
            "status": self.status.value,
            "route": self.route,
            "route_reason": self.route_reason,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "created_at": clock.iso(self.created_at),
            "queued_at": clock.iso(self.queued_at),
            "started_at": clock.iso(self.started_at),
            "finished_at": clock.iso(self.finished_at),
            "worker_id": self.worker_id,
            "sla_met": self.sla_met,
            "result": self.result,
            "error": self.error,
        }
        if include_payload:
            out["payload"] = self.payload
        return out
