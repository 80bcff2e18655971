"""Rebalance: a fresh start for the fair pick, with every starved origin served first.

An origin is *starved* (``routing.Load.starved``) when the workers' capacity is fully held and it
has queued work below its guaranteed share. The fair pick (``fairness.py``) already prefers origins
under their quota when a slot frees, but among those it goes by accumulated credit and each
origin's wait bound: a small origin (the 2% ``internal``) may wait up to its bound (50 dispatches)
while bigger origins with more credit are served. :func:`rebalance` is what an operator does about
it, in one transaction serialised with claims:

- every origin's fair-share credit is reset to zero: no origin keeps a hoard or a debt run up while
  the others were busy;
- every starved origin is made *due*: its wait is set to its bound, so the next free slots go to the
  starved origins first (the smallest share first, as the pick orders due origins), one dispatch each;
- nothing else changes: shares, quotas, running tasks and queued work are as they were, and from the
  next dispatch on the fair pick runs as always.

When no origin is starved nothing is changed (an answer with ``changed`` false).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from grace.htm import fairness, routing
from grace.htm.config import HTMConfig
from grace.htm.origins import Origin
from grace.htm.tables import htm_origins, htm_scheduler
from grace.storage import Database

__all__ = ["rebalance"]


async def rebalance(
    db: Database, cfg: HTMConfig, weights: Mapping[Origin, int], *, fallback_capacity: int, now: datetime
) -> dict[str, Any]:
    """Reset the fair pick's credits and make the starved origins due; return what was done."""
    async with db.write() as conn:
        # The dispatch counter's row is what claims lock (PostgreSQL's htm_claim takes it FOR UPDATE;
        # SQLite's write transaction already holds the only write lock): no claim runs meanwhile.
        seq = int(
            (
                await conn.execute(select(htm_scheduler.c.dispatched).where(htm_scheduler.c.id == 1).with_for_update())
            ).scalar_one()
        )
        load = await routing.load(
            conn,
            weights,
            configured=cfg.capacity,
            fallback=fallback_capacity,
            live_after=now - timedelta(seconds=cfg.lease_seconds),
        )
        starved = load.starved()
        if not starved:
            return {"changed": False, "starved": [], "served_first": [], "credits_reset": 0}
        stored = {
            r.origin: int(r.weight) for r in await conn.execute(select(htm_origins.c.origin, htm_origins.c.weight))
        }
        total = sum(stored.values())
        reset = await conn.execute(update(htm_origins).where(htm_origins.c.credit != 0).values(credit=0))
        for origin in starved:
            # Due at dispatch ``seq`` when seq - since + 1 >= its bound (fairness.pick, step 3).
            since = seq + 1 - fairness.wait_bound(stored[origin.value], total)
            await conn.execute(update(htm_origins).where(htm_origins.c.origin == origin.value).values(since=since))
    order = sorted(starved, key=lambda o: (stored[o.value], o.position))
    return {
        "changed": True,
        "starved": [o.value for o in starved],
        "served_first": [o.value for o in order],
        "credits_reset": int(reset.rowcount or 0),
    }
