"""The learning loop's store: outcomes recorded (by the intent bridge, or by any caller) and summarised."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import clock as clocks
from grace import errors
from grace.clock import Clock
from grace.intents import learning
from grace.intents.tables import learning_outcomes
from grace.storage import Database, new_id

__all__ = ["MAX_CONTEXT_BYTES", "LearningLoop"]

_ACTION = re.compile(r"^[A-Za-z0-9_.:\-]{1,100}$")
_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,39}$")
MAX_CONTEXT_BYTES = 16 * 1024
MAX_EXECUTION_SECONDS = 30 * 24 * 3600.0
MAX_SUMMARY_ROWS = 200_000


def check_outcome(
    *,
    action_type: str,
    success: bool,
    confidence_score: float | None,
    execution_time: float,
    context: Mapping[str, Any] | None,
    domain: str | None,
) -> dict[str, Any]:
    """Validate an outcome's fields; 422 naming the field. Return the context as a plain dict."""
    if not isinstance(action_type, str) or not _ACTION.match(action_type):
        raise errors.InvalidInput("action_type must be 1 to 100 letters, digits, '_', '.', ':' or '-'")
    if not isinstance(success, bool):
        raise errors.InvalidInput("success must be true or false")
    if confidence_score is not None and (not math.isfinite(confidence_score) or not 0 <= confidence_score <= 1):
        raise errors.InvalidInput("confidence_score must be between 0 and 1")
    if not math.isfinite(execution_time) or not 0 <= execution_time <= MAX_EXECUTION_SECONDS:
        raise errors.InvalidInput("execution_time must be between 0 and 2592000 seconds (30 days)")
    if domain is not None and not _DOMAIN.match(domain):
        raise errors.InvalidInput("domain must be 1 to 40 lowercase letters, digits, '_' or '-'")
    body = dict(context or {})
    try:
        size = len(json.dumps(body, allow_nan=False, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        raise errors.InvalidInput("context must be a JSON object of JSON values") from None
    if size > MAX_CONTEXT_BYTES:
        raise errors.InvalidInput(f"context is {size} bytes; the limit is {MAX_CONTEXT_BYTES}")
    return body


class LearningLoop:
    """Record outcomes and summarise them (per action type, domain and task type)."""

    def __init__(self, db: Database, clock: Clock, *, sla_defaults: Callable[[], Mapping[str, int]] | None = None):
        self.db = db
        self.clock = clock
        self._sla_defaults = sla_defaults or dict

    async def record_outcome(
        self,
        *,
        action_type: str,
        success: bool,
        execution_time: float,
        confidence_score: float | None = None,
        context: Mapping[str, Any] | None = None,
        owner_id: str | None = None,
        recorded_by: str = "grace",
        domain: str | None = None,
        task_type: str | None = None,
        intent_id: str | None = None,
        sla_ms: int | None = None,
        sla_met: bool | None = None,
        conn: AsyncConnection | None = None,
    ) -> dict[str, Any]:
        """Record one outcome (inside ``conn``'s transaction when given); return it as stored.

        The learning loop's feed: the intent bridge calls it for every finished intent, and any
        capability (the voice pipeline's learn step) or caller (``POST /api/learning/outcomes``) may.
        """
        body = check_outcome(
            action_type=action_type,
            success=success,
            confidence_score=confidence_score,
            execution_time=execution_time,
            context=context,
            domain=domain,
        )
        row = {
            "outcome_id": new_id("out"),
            "owner_id": owner_id,
            "recorded_by": recorded_by[:140],
            "action_type": action_type,
            "domain": domain,
            "task_type": task_type,
            "intent_id": intent_id,
            "success": success,
            "confidence_score": confidence_score,
            "execution_time": float(execution_time),
            "sla_ms": sla_ms,
            "sla_met": sla_met,
            "context": body,
            "recorded_at": self.clock.now(),
        }
        if conn is not None:
            await conn.execute(insert(learning_outcomes).values(**row))
        else:
            async with self.db.write() as own:
                await own.execute(insert(learning_outcomes).values(**row))
        return _out(row)

    async def list_outcomes(
        self,
        *,
        visible_to: str | None,
        action_type: str | None = None,
        domain: str | None = None,
        intent_id: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Return outcomes newest first: one user's (``visible_to``) or everyone's (None)."""
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000")
        t = learning_outcomes
        query = select(t).order_by(t.c.recorded_at.desc(), t.c.outcome_id.desc()).limit(limit)
        if visible_to is not None:
            query = query.where(t.c.owner_id == visible_to)
        if action_type is not None:
            query = query.where(t.c.action_type == action_type)
        if domain is not None:
            query = query.where(t.c.domain == domain)
        if intent_id is not None:
            query = query.where(t.c.intent_id == intent_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_out(dict(r)) for r in rows]

    async def summary(
        self,
        *,
        visible_to: str | None,
        action_type: str | None = None,
        domain: str | None = None,
        window_days: float | None = None,
    ) -> dict[str, Any]:
        """Return the learning loop's figures (see :mod:`grace.intents.learning`) over the window."""
        if window_days is not None and not 0 < window_days <= 3650:
            raise errors.InvalidInput("window_days must be more than 0 and at most 3650")
        now = self.clock.now()
        since: datetime | None = now - timedelta(days=window_days) if window_days is not None else None
        t = learning_outcomes
        query = (
            select(
                t.c.action_type,
                t.c.domain,
                t.c.task_type,
                t.c.success,
                t.c.confidence_score,
                t.c.execution_time,
                t.c.sla_ms,
                t.c.sla_met,
            )
            .order_by(t.c.recorded_at.desc())
            .limit(MAX_SUMMARY_ROWS)
        )
        if visible_to is not None:
            query = query.where(t.c.owner_id == visible_to)
        if action_type is not None:
            query = query.where(t.c.action_type == action_type)
        if domain is not None:
            query = query.where(t.c.domain == domain)
        if since is not None:
            query = query.where(t.c.recorded_at >= since)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        facts = [
            learning.OutcomeFacts(
                action_type=r[0],
                domain=r[1],
                task_type=r[2],
                success=bool(r[3]),
                confidence=r[4],
                execution_time=float(r[5]),
                sla_ms=r[6],
                sla_met=r[7],
            )
            for r in rows
        ]
        figures = learning.summarise(facts, learning.configured_from(self._sla_defaults()))
        return {
            **figures,
            "window_days": window_days,
            "since": clocks.iso(since),
            "at": clocks.iso(now),
            "truncated": len(rows) >= MAX_SUMMARY_ROWS,
        }


def _out(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "outcome_id": row["outcome_id"],
        "action_type": row["action_type"],
        "success": bool(row["success"]),
        "confidence_score": row["confidence_score"],
        "execution_time": float(row["execution_time"]),
        "context": row["context"] or {},
        "domain": row["domain"],
        "task_type": row["task_type"],
        "intent_id": row["intent_id"],
        "sla_ms": row["sla_ms"],
        "sla_met": row["sla_met"],
        "recorded_by": row["recorded_by"],
        "recorded_at": clocks.iso(row["recorded_at"]),
    }
