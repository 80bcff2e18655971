"""HTM: the task manager every long job in Grace runs through.

Tasks are tagged with an origin, routed (accepted, delayed by burst
protection, or deferred so a starved origin goes first), stored in a durable
queue, and claimed by workers in weighted-fair order across origins, then by
priority, deadline (earliest first) and age. Leases with heartbeats return a dead worker's tasks; retries
back off exponentially; timeouts, cancellation and late completions are handled
and recorded. See docs/htm.md.
"""

from __future__ import annotations

from grace.htm.admission import ADMINS, ANYONE, INTERNAL, Submitters, task_limits
from grace.htm.config import HTMConfig, load_config
from grace.htm.origins import DEFAULT_SHARES, Origin
from grace.htm.routing import RouteDecision
from grace.htm.service import HTM
from grace.htm.submission import Submitted, Within
from grace.htm.tasks import Priority, Status, Task, TaskRequest
from grace.htm.workers import Handler, HandlerRegistry, TaskContext, WorkerPool, load_handlers

__all__ = [
    "ADMINS",
    "ANYONE",
    "DEFAULT_SHARES",
    "HTM",
    "INTERNAL",
    "HTMConfig",
    "Handler",
    "HandlerRegistry",
    "Origin",
    "Priority",
    "RouteDecision",
    "Status",
    "Submitted",
    "Submitters",
    "Task",
    "TaskContext",
    "TaskRequest",
    "Within",
    "WorkerPool",
    "load_config",
    "load_handlers",
    "task_limits",
]
