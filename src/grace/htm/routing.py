"""The router: tag a task's origin and decide whether it is accepted, delayed or deferred.

- Burst protection is a sliding log per origin: at most N tasks are admitted in
  any 60 seconds; the next one is delayed exactly until the oldest admission in
  the window is a minute old. Admission times live in ``htm_tasks.admitted_at``,
  so every API node shares the window (each origin's routing is serialised by a
  named lock, ``grace.htm.route.<origin>``: see :func:`grace.storage.serialise`).
- Anti-starvation: when the workers' capacity is fully held and some origin has
  queued work below its guaranteed share (it is *starved*), new work of origins
  at or over their share is deferred, so the starved origin goes first.
  Critical tasks are never deferred.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import storage
from grace.htm import origins
from grace.htm.origins import ORDER, Origin
from grace.htm.tables import IS_QUEUED, IS_RUNNING, htm_tasks, htm_workers
from grace.htm.tasks import Priority

__all__ = [
    "BURST_WINDOW",
    "BurstWindow",
    "Load",
    "RouteDecision",
    "capacity",
    "decide",
    "load",
    "lock_key",
    "lock_origins",
    "seconds_text",
]

BURST_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class RouteDecision:
    """The router's answer, in the seed's shape."""

    origin: Origin
    route: str  # accepted, delayed or deferred
    queue_name: str
    quota_used: str
    reasoning: str
    delay_seconds: float
    admitted_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin.value,
            "route": self.route,
            "queue_name": self.queue_name,
            "quota_used": self.quota_used,
            "reasoning": self.reasoning,
            "delay_seconds": round(self.delay_seconds, 6),
        }


@dataclass
class Load:
    """A snapshot of how busy each origin is, for routing decisions and stats."""

    capacity: int
    weights: Mapping[Origin, int]
    running: dict[Origin, int]
    waiting: set[Origin]
    _starved: list[Origin] = field(default_factory=list, repr=False)
    _starved_at: int = field(default=-1, repr=False)

    @functools.cached_property
    def total_weight(self) -> int:
        return sum(self.weights.values())

    # A snapshot: capacity, weights and running counts do not change once read, so quotas and
    # fullness are worked out once (routing a batch asks for them for every task).
    @functools.cached_property
    def quotas(self) -> dict[Origin, int]:
        return {o: origins.max_concurrent(w, self.total_weight, self.capacity) for o, w in self.weights.items()}

    def quota(self, origin: Origin) -> int:
        return self.quotas[origin]

    @functools.cached_property
    def full(self) -> bool:
        return sum(self.running.values()) >= self.capacity

    def starved(self) -> list[Origin]:
        """Return origins with queued work below their share while others hold all capacity."""
        if not self.full:
            return []
        # Only ``waiting`` changes in a snapshot, and it only grows (routing adds the origins it
        # accepts work for), so the answer is kept until it has grown.
        if self._starved_at != len(self.waiting):
            quotas = self.quotas
            self._starved = [o for o in ORDER if o in self.waiting and self.running.get(o, 0) < quotas[o]]
            self._starved_at = len(self.waiting)
        return list(self._starved)


@dataclass
class BurstWindow:
    """The latest admissions of one origin inside the window (at most ``limit`` of them); 0 means no limit."""

    limit: int
    times: list[datetime] = field(default_factory=list)

    def next_slot(self, now: datetime) -> datetime:
        """Return the earliest time the next task may be admitted (``now`` when the window has room)."""
        if self.limit <= 0 or len(self.times) < self.limit:
            return now
        return max(now, self.times[-self.limit] + BURST_WINDOW)

    def admit(self, at: datetime) -> None:
        if self.limit > 0:
            bisect.insort(self.times, at)

    @classmethod
    async def load(cls, conn: AsyncConnection, origin: Origin, limit: int, now: datetime) -> BurstWindow:
        """Read the origin's latest ``limit`` admissions still inside the window (including future ones)."""
        if limit <= 0:
            return cls(0)
        rows = (
            await conn.execute(
                select(htm_tasks.c.admitted_at)
                .where(htm_tasks.c.origin == origin.value, htm_tasks.c.admitted_at > now - BURST_WINDOW)
                .order_by(htm_tasks.c.admitted_at.desc())
                .limit(limit)
            )
        ).scalars()
        return cls(limit, sorted(rows))


def lock_name(origin: Origin) -> str:
    """Return the name of the lock that serialises ``origin``'s routing across processes."""
    return f"grace.htm.route.{origin}"


@functools.cache
def lock_key(origin: Origin) -> int:
    """Return ``origin``'s routing lock as PostgreSQL's advisory lock key (what ``htm_submit`` takes)."""
    return storage.lock_key(lock_name(origin))


async def lock_origins(conn: AsyncConnection, chosen: Sequence[Origin]) -> None:
    """Serialise routing per origin across processes, for the rest of ``conn``'s transaction.

    ``htm_submit`` (PostgreSQL) takes the same locks in the same order: by name.
    """
    for origin in sorted(set(chosen)):  # one order everywhere, so two routers never deadlock
        await storage.serialise(conn, lock_name(origin))


def seconds_text(delta: timedelta) -> str:
    """Return a positive ``delta`` in seconds to three decimals, halves rounded up, from its microseconds.

    Exact decimal arithmetic (not a float's formatting), so ``htm_submit`` writes the same text.
    """
    ms = (delta // timedelta(microseconds=1) + 500) // 1000
    return f"{ms // 1000}.{ms % 1000:03d}"


# The origins' load in one statement, built once: each origin's running count (off the running
# tasks' partial index, by origin), whether it has queued work (an indexed probe), and the live
# workers' capacity. One statement rather than three: a submission group on PostgreSQL pays a round
# trip per statement, and on a loaded machine each waits for the server's process to be scheduled.
_LOAD = select(
    *(select(func.count()).where(IS_RUNNING, htm_tasks.c.origin == origin.value).scalar_subquery() for origin in ORDER),
    *(exists().where(IS_QUEUED, htm_tasks.c.origin == origin.value) for origin in ORDER),
    select(func.coalesce(func.sum(htm_workers.c.concurrency), 0))
    .where(htm_workers.c.heartbeat_at >= bindparam("live_after"), htm_workers.c.stopping.is_(False))
    .scalar_subquery(),
)


async def load(
    conn: AsyncConnection, weights: Mapping[Origin, int], *, configured: int, fallback: int, live_after: datetime
) -> Load:
    """Read running counts, which origins have queued work, and the capacity."""
    row = (await conn.execute(_LOAD, {"live_after": live_after})).one()
    n = len(ORDER)
    running = {origin: int(count) for origin, count in zip(ORDER, row[:n], strict=True) if count}
    waiting = {origin for origin, flag in zip(ORDER, row[n : 2 * n], strict=True) if flag}
    return Load(
        capacity=capacity(configured, int(row[2 * n]), fallback), weights=weights, running=running, waiting=waiting
    )


def capacity(configured: int, live: int, fallback: int) -> int:
    """Return the slots routing counts with: as configured, else the live workers' concurrency, else ``fallback``."""
    if configured > 0:
        return configured
    return live or max(1, fallback)


def decide(
    origin: Origin,
    priority: Priority,
    *,
    now: datetime,
    window: BurstWindow,
    load: Load,
    defer: timedelta,
) -> RouteDecision:
    """Decide one task's route and admit it to its origin's window (and to ``load``)."""
    running = load.running.get(origin, 0)
    quota = load.quota(origin)
    quota_used = f"{running}/{quota}"
    queue_name = f"{priority.value}_queue"
    slot = window.next_slot(now)
    # Only an origin at or over its quota can be deferred, so only then is the starved list needed.
    starved = [o for o in load.starved() if o is not origin] if running >= quota else []
    if slot > now:
        delay = (slot - now).total_seconds()
        decision = RouteDecision(
            origin,
            "delayed",
            queue_name,
            quota_used,
            f"Burst limit of {window.limit} {origin.value} tasks per minute reached; delayed "
            f"{seconds_text(slot - now)}s until the window frees",
            delay,
            slot,
        )
    elif starved and running >= quota and priority is not Priority.CRITICAL:
        at = now + defer
        decision = RouteDecision(
            origin,
            "deferred",
            queue_name,
            quota_used,
            f"Deferred {defer.total_seconds():g}s: {', '.join(o.value for o in starved)} starved while "
            f"{origin.value} holds {running}/{quota} of its share",
            defer.total_seconds(),
            at,
        )
    else:
        decision = RouteDecision(
            origin,
            "accepted",
            queue_name,
            quota_used,
            f"Routed to {priority.value} queue ({origin.value} {quota_used} running)",
            0.0,
            now,
        )
    window.admit(decision.admitted_at)
    if decision.route == "accepted":
        load.waiting.add(origin)
    return decision
