"""SLA levels: the thresholds, when each level falls due, and the level a task has reached (pure).

=====  =========  =====
level  name       at
=====  =========  =====
1      warning    80%
2      violated   100%
3      critical   200%
=====  =========  =====

Measured on the injected clock from the task's ``created_at``; the enforcer (``sla.py``), its
reporting (``sla_stats.py``), the rescue task (``rescue.py``) and the submitter (the first due
time of a new task) share these definitions.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = [
    "CRITICAL",
    "LEVEL_NAMES",
    "NONE",
    "THRESHOLD_PERMILLE",
    "VIOLATED",
    "WARNING",
    "due_at",
    "elapsed_ratio",
    "first_due",
    "level_at",
    "ms",
]

NONE, WARNING, VIOLATED, CRITICAL = 0, 1, 2, 3
LEVEL_NAMES = {NONE: "none", WARNING: "warning", VIOLATED: "violated", CRITICAL: "critical"}
# Thousandths of the SLA at which each level falls due: the seed's 80%, 100% and 200%. With
# ``sla_ms`` in milliseconds, ``sla_ms * permille`` is the offset in microseconds, exactly.
THRESHOLD_PERMILLE = {WARNING: 800, VIOLATED: 1000, CRITICAL: 2000}


def due_at(created_at: datetime, sla_ms: int, level: int) -> datetime:
    """Return when ``level`` falls due for a task created at ``created_at`` with an SLA of ``sla_ms``."""
    return created_at + timedelta(microseconds=sla_ms * THRESHOLD_PERMILLE[level])


def first_due(created_at: datetime, sla_ms: int | None) -> datetime | None:
    """Return when a new task's first level (the warning) falls due; None without an SLA."""
    return due_at(created_at, sla_ms, WARNING) if sla_ms else None


def level_at(created_at: datetime, sla_ms: int, now: datetime) -> int:
    """Return the level a task created at ``created_at`` has reached at ``now``."""
    elapsed = now - created_at
    for level in (CRITICAL, VIOLATED, WARNING):
        if elapsed >= timedelta(microseconds=sla_ms * THRESHOLD_PERMILLE[level]):
            return level
    return NONE


def ms(delta: timedelta) -> float:
    """Return ``delta`` in milliseconds, to the microsecond."""
    return round(delta / timedelta(milliseconds=1), 3)


def elapsed_ratio(created_at: datetime, sla_ms: int, now: datetime) -> float:
    """Return how much of its SLA a task created at ``created_at`` has used at ``now`` (1.0 at the deadline)."""
    return round((now - created_at) / timedelta(milliseconds=sla_ms), 4)
