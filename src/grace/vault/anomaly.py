"""Usage anomalies, judged against the agent's own history of releases.

- burst: ``burst_count`` or more releases of one secret to one agent within
  ``burst_window`` (0: not checked);
- first-time action: an agent with an established baseline (at least
  ``baseline_min`` releases of this owner's secrets) asks for an action it has
  never been given before;
- unusual hour: an agent with at least ``hour_min_history`` releases has
  never been given anything at this UTC hour or the hours beside it.

An anomaly forces a fresh consent (no reuse of a standing consent, no
self-approval) and is published as ``secrets.anomaly``. The history is read in
the one statement a request is decided on (``decision.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Exists, Label, ScalarSelect, bindparam, func, literal, select

from grace.vault.tables import vault_usage

__all__ = ["AnomalyPolicy", "columns", "judge", "parameters"]


@dataclass(frozen=True)
class AnomalyPolicy:
    burst_count: int = 10
    burst_window: timedelta = timedelta(seconds=60)
    baseline_min: int = 5
    hour_min_history: int = 20


def columns(policy: AnomalyPolicy, secret_id: ColumnElement[str]) -> list[Label[Any]]:
    """What :func:`judge` is given, as four columns for the statement a request is decided on.

    ``secret_id`` is the requested secret's id (an uncorrelated subquery there); the owner, the agent,
    the action and the times are bound from :func:`parameters`. The cost does not grow with the
    agent's history: each count stops at the threshold it is compared with, and "ever given this
    action" and "ever given anything at this hour" stop at the newest release that says so.
    """
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
            vault_usage.c.secret_id == secret_id,
            vault_usage.c.at > bindparam("since", type_=vault_usage.c.at.type),
        )
        if policy.burst_count > 0
        else literal(0)
    )
    return [
        recent.label("anomaly_recent"),
        at_most(max(policy.baseline_min, policy.hour_min_history)).label("anomaly_history"),
        ever(vault_usage.c.action == bindparam("action")).label("anomaly_seen_action"),
        ever(hours).label("anomaly_seen_hour"),
    ]


def parameters(policy: AnomalyPolicy, *, owner_id: str, agent: str, action: str, now: datetime) -> dict[str, Any]:
    """The values :func:`columns` binds."""
    return {
        "owner_id": owner_id,
        "agent": agent,
        "action": action,
        "since": now - policy.burst_window,
        "hour_before": (now.hour - 1) % 24,
        "hour": now.hour,
        "hour_after": (now.hour + 1) % 24,
    }


def judge(policy: AnomalyPolicy, row: Mapping[Any, Any]) -> list[str]:
    """Return the anomalies a request shows from :func:`columns`' values (empty: the agent's usual use)."""
    recent, history = int(row["anomaly_recent"]), int(row["anomaly_history"])
    seen_action, seen_hour = bool(row["anomaly_seen_action"]), bool(row["anomaly_seen_hour"])
    found: list[str] = []
    if policy.burst_count > 0 and recent >= policy.burst_count:
        found.append("burst")
    if history >= policy.baseline_min and not seen_action:
        found.append("first_time_action")
    if history >= policy.hour_min_history and not seen_hour:
        found.append("unusual_hour")
    return found
