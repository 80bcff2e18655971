"""Usage anomalies, judged against the agent's own history of releases.

- burst: ``burst_count`` or more releases of one secret to one agent within
  ``burst_window`` (0: not checked);
- first-time action: an agent with an established baseline (at least
  ``baseline_min`` releases of this owner's secrets) asks for an action it has
  never been given before;
- unusual hour: an agent with at least ``hour_min_history`` releases has
  never been given anything at this UTC hour or the hours beside it.

An anomaly forces a fresh consent (no reuse of a standing consent, no
self-approval) and is published as ``secrets.anomaly``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Exists, ScalarSelect, Select, bindparam, func, literal, select

from grace.vault.tables import vault_usage

__all__ = ["AnomalyPolicy", "detect"]


@dataclass(frozen=True)
class AnomalyPolicy:
    burst_count: int = 10
    burst_window: timedelta = timedelta(seconds=60)
    baseline_min: int = 5
    hour_min_history: int = 20


@functools.cache
def _statement(policy: AnomalyPolicy) -> Select[int, int, bool, bool]:
    """The one statement :func:`detect` runs, built once per policy (its parameters bound at each call)."""
    mine = (vault_usage.c.owner_id == bindparam("owner_id")) & (vault_usage.c.agent == bindparam("agent"))

    def at_most(limit: int, *where: ColumnElement[bool]) -> ScalarSelect[int]:
        rows = select(vault_usage.c.id).where(mine, *where).limit(limit).subquery()
        return select(func.count()).select_from(rows).scalar_subquery()

    def ever(*where: ColumnElement[bool]) -> Exists:
        return select(vault_usage.c.id).where(mine, *where).order_by(vault_usage.c.at.desc()).limit(1).exists()

    hours = vault_usage.c.hour.in_([bindparam("hour_before"), bindparam("hour"), bindparam("hour_after")])
    # A secret's releases carry its owner (never changed): naming it lets the count use the (owner, agent, at) index.
    recent: ColumnElement[int] | ScalarSelect[int] = (
        at_most(
            policy.burst_count,
            vault_usage.c.secret_id == bindparam("secret_id"),
            vault_usage.c.at > bindparam("since", type_=vault_usage.c.at.type),
        )
        if policy.burst_count > 0
        else literal(0)
    )
    return select(
        recent,
        at_most(max(policy.baseline_min, policy.hour_min_history)),
        ever(vault_usage.c.action == bindparam("action")),
        ever(hours),
    )


def detect(
    conn: Connection,
    policy: AnomalyPolicy,
    *,
    owner_id: str,
    secret_id: str,
    agent: str,
    action: str,
    now: datetime,
) -> list[str]:
    """Return the anomalies this request shows (empty when it looks like the agent's usual use).

    One statement, whose cost does not grow with the agent's history: each count stops at the
    threshold it is compared with, and "ever given this action" and "ever given anything at this
    hour" stop at the newest release that says so.
    """
    row = conn.execute(
        _statement(policy),
        {
            "owner_id": owner_id,
            "agent": agent,
            "secret_id": secret_id,
            "since": now - policy.burst_window,
            "action": action,
            "hour_before": (now.hour - 1) % 24,
            "hour": now.hour,
            "hour_after": (now.hour + 1) % 24,
        },
    ).one()
    recent, history, seen_action, seen_hour = int(row[0]), int(row[1]), bool(row[2]), bool(row[3])
    found: list[str] = []
    if policy.burst_count > 0 and recent >= policy.burst_count:
        found.append("burst")
    if history >= policy.baseline_min and not seen_action:
        found.append("first_time_action")
    if history >= policy.hour_min_history and not seen_hour:
        found.append("unusual_hour")
    return found
