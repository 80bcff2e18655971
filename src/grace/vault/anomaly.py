"""Usage anomalies, judged against the agent's own history of releases.

- burst: more than ``burst_count`` releases of one secret to one agent within
  ``burst_window``;
- first-time action: an agent with an established baseline (at least
  ``baseline_min`` releases of this owner's secrets) asks for an action it has
  never been given before;
- unusual hour: an agent with at least ``hour_min_history`` releases has
  never been given anything at this UTC hour or the hours beside it.

An anomaly forces a fresh consent (no reuse of a standing consent, no
self-approval) and is published as ``secrets.anomaly``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grace.vault.tables import vault_usage

__all__ = ["AnomalyPolicy", "detect"]


@dataclass(frozen=True)
class AnomalyPolicy:
    burst_count: int = 10
    burst_window: timedelta = timedelta(seconds=60)
    baseline_min: int = 5
    hour_min_history: int = 20


async def detect(
    conn: AsyncConnection,
    policy: AnomalyPolicy,
    *,
    owner_id: str,
    secret_id: str,
    agent: str,
    action: str,
    now: datetime,
) -> list[str]:
    """Return the anomalies this request shows (empty when it looks like the agent's usual use)."""
    found: list[str] = []
    recent = (
        await conn.execute(
            select(func.count()).where(
                vault_usage.c.secret_id == secret_id,
                vault_usage.c.agent == agent,
                vault_usage.c.at > now - policy.burst_window,
            )
        )
    ).scalar_one()
    if recent >= policy.burst_count:
        found.append("burst")
    history = (
        await conn.execute(select(func.count()).where(vault_usage.c.owner_id == owner_id, vault_usage.c.agent == agent))
    ).scalar_one()
    if history >= policy.baseline_min:
        seen_action = (
            await conn.execute(
                select(func.count()).where(
                    vault_usage.c.owner_id == owner_id, vault_usage.c.agent == agent, vault_usage.c.action == action
                )
            )
        ).scalar_one()
        if seen_action == 0:
            found.append("first_time_action")
    if history >= policy.hour_min_history:
        hours = {(now.hour - 1) % 24, now.hour, (now.hour + 1) % 24}
        at_this_hour = (
            await conn.execute(
                select(func.count()).where(
                    vault_usage.c.owner_id == owner_id, vault_usage.c.agent == agent, vault_usage.c.hour.in_(hours)
                )
            )
        ).scalar_one()
        if at_this_hour == 0:
            found.append("unusual_hour")
    return found
