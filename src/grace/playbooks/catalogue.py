"""The names a playbook may read besides its inputs and its steps' outputs: event fields and metrics.

Event topics list the payload fields their publishers send (the bus carries no schema, so this is
where a playbook's ``event.<field>`` is declared); metrics are figures read from a capability's
public API when a monitor names them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grace.playbooks.actions import Capabilities

__all__ = ["EVENTS", "METRICS", "Metric"]

_TASK = {
    "task_id": "string",
    "task_type": "string",
    "origin": "string",
    "priority": "any",
    "intent_id": "any",
    "status": "string",
    "attempts": "int",
    "max_attempts": "int",
    "duration_ms": "double",
    "total_ms": "double",
    "sla_met": "bool",
    "error": "string",
}

EVENTS: dict[str, dict[str, str]] = {
    "htm.task.completed": _TASK,
    "htm.task.failed": _TASK,
    "secrets.consent.request": {
        "consent_id": "string",
        "secret_key": "string",
        "secret_type": "string",
        "service": "string",
        "requested_by": "string",
        "requested_for": "string",
        "requested_action": "string",
        "user_id": "string",
        "risk_level": "string",
        "context": "map",
        "anomalies": "list",
        "second_approval_required": "bool",
        "expires_in_seconds": "int",
    },
    "secrets.anomaly": {
        "secret_key": "string",
        "service": "string",
        "requested_by": "string",
        "requested_action": "string",
        "user_id": "string",
        "anomalies": "list",
    },
    "secrets.rotation.due": {
        "secret_key": "string",
        "secret_type": "string",
        "service": "string",
        "user_id": "string",
        "due_at": "string",
    },
    "secrets.key.expiring": {"key_id": "string", "expires_at": "string"},
    "secrets.key.rotated": {"key_id": "string", "rewrapped": "int"},
    "voice.note.consented": {"note_id": "string", "user_id": "string", "scopes": "list", "processing": "bool"},
    "voice.note.uploaded": {
        "note_id": "string",
        "user_id": "string",
        "audio_format": "string",
        "duration_seconds": "double",
    },
}


@dataclass(frozen=True)
class Metric:
    """A figure a monitor may watch: its type and how it is read."""

    type: str
    description: str
    read: Callable[[Capabilities], Awaitable[Any]]


async def _sla(caps: Capabilities) -> dict[str, Any]:
    if caps.htm is None:
        raise LookupError("no task manager")
    stats: dict[str, Any] = await caps.htm.sla_stats()
    return stats


async def _routing(caps: Capabilities) -> dict[str, Any]:
    if caps.htm is None:
        raise LookupError("no task manager")
    stats: dict[str, Any] = await caps.htm.routing_stats()
    return stats


async def sla_compliance(caps: Capabilities) -> float:
    rate = (await _sla(caps)).get("sla_compliance_rate")
    return 1.0 if rate is None else float(rate)  # nothing finished with a deadline: nothing missed


async def sla_finished(caps: Capabilities) -> int:
    return int((await _sla(caps)).get("finished_with_sla") or 0)


async def slow_tasks(caps: Capabilities) -> int:
    return int((await _sla(caps)).get("active_violations") or 0)


async def throughput(caps: Capabilities) -> float:
    origins = (await _routing(caps))["origins"].values()
    return float(sum(o["throughput_mb_s"] for o in origins))


async def completed_last_minute(caps: Capabilities) -> int:
    return int(sum(o["completed_last_minute"] for o in (await _routing(caps))["origins"].values()))


async def starved_origins(caps: Capabilities) -> int:
    return sum(1 for o in (await _routing(caps))["origins"].values() if o["starved"])


async def queue_depth(caps: Capabilities) -> int:
    return int(sum(o["total_queued"] for o in (await _routing(caps))["origins"].values()))


async def key_expires_in_days(caps: Capabilities) -> float:
    if caps.vault is None:
        raise LookupError("no vault")
    status = await caps.vault.keys_status()
    if status["expires_at"] is None:
        return 0.0
    from datetime import datetime

    expires = datetime.fromisoformat(status["expires_at"])
    return round((expires - caps.clock.now()).total_seconds() / 86400, 3)


METRICS: dict[str, Metric] = {
    "sla_compliance": Metric(
        "double", "share of tasks with a deadline that finished in time (1.0 when none)", sla_compliance
    ),
    "sla_finished": Metric("int", "tasks with a deadline finished in the SLA window", sla_finished),
    "slow_tasks": Metric("int", "unfinished tasks past their deadline", slow_tasks),
    "throughput_mb_s": Metric("double", "megabytes per second completed over the last minute", throughput),
    "completed_last_minute": Metric("int", "tasks completed over the last minute", completed_last_minute),
    "starved_origins": Metric("int", "origins whose queued tasks are being starved", starved_origins),
    "queue_depth": Metric("int", "tasks queued, delayed or deferred", queue_depth),
    "key_expires_in_days": Metric("double", "days until the vault's active key expires", key_expires_in_days),
}
