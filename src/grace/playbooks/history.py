"""Run history: every run and every skipped firing, with each step's attempts, outcome and durations.

Inputs are stored with secret inputs redacted; a step's arguments are stored as written in the
playbook (a secret reference shows its key, never its value), and every error text is scrubbed of
the values the run resolved before it is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, desc, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from grace import errors, jsontext
from grace.clock import Clock, iso
from grace.playbooks.tables import playbook_runs, playbook_schedules
from grace.storage import Database, new_id

__all__ = ["FINAL", "RunPage", "RunRecord", "RunStore"]

FINAL = ("succeeded", "failed", "cancelled", "timed_out", "skipped")


@dataclass(frozen=True)
class RunRecord:
    id: str
    playbook: str
    trigger: str
    trigger_key: str | None
    who: str
    inputs: dict[str, Any]
    status: str
    reason: str | None
    dry_run: bool
    task_id: str | None
    steps: list[dict[str, Any]]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    approval_id: str | None = None  # the consent a waiting run asked (kind approval)
    parked: dict[str, Any] | None = None  # what a waiting run goes on from (values scrubbed of secrets)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "playbook": self.playbook,
            "trigger": self.trigger,
            "trigger_key": self.trigger_key,
            "who": self.who,
            "inputs": self.inputs,
            "status": self.status,
            "reason": self.reason,
            "dry_run": self.dry_run,
            "task_id": self.task_id,
            "steps": self.steps,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration_ms": self.duration_ms,
            "approval_id": self.approval_id,
        }


@dataclass(frozen=True)
class RunPage:
    """A page of runs, newest first; ``next_before`` is the id to pass as ``before`` for the next page."""

    runs: list[RunRecord]
    next_before: str | None


def _record(row: Any) -> RunRecord:
    return RunRecord(
        id=row["id"],
        playbook=row["playbook"],
        trigger=row["trigger"],
        trigger_key=row["trigger_key"],
        who=row["who"],
        inputs=jsontext.loads(row["inputs"]),
        status=row["status"],
        reason=row["reason"],
        dry_run=bool(row["dry_run"]),
        task_id=row["task_id"],
        steps=jsontext.loads(row["steps"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_ms=row["duration_ms"],
        approval_id=row["approval_id"],
        parked=jsontext.loads(row["parked"]) if row["parked"] else None,
    )


class RunStore:
    """Reads and writes ``playbook_runs`` and ``playbook_schedules``."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def __repr__(self) -> str:
        return f"RunStore(backend={self.db.backend!r})"

    async def create(
        self,
        playbook: str,
        *,
        digest: str,
        trigger: str,
        who: str,
        inputs: dict[str, Any],
        trigger_key: str | None = None,
        status: str = "queued",
        reason: str | None = None,
        dry_run: bool = False,
    ) -> str | None:
        """Insert a run (or a skipped firing); None when ``trigger_key`` was already recorded for the playbook."""
        run_id = new_id("pbr")
        now = self.clock.now()
        values = {
            "id": run_id,
            "playbook": playbook,
            "digest": digest,
            "trigger": trigger,
            "trigger_key": trigger_key,
            "who": who[:200],
            "inputs": jsontext.dumps(inputs),
            "status": status,
            "reason": reason,
            "dry_run": dry_run,
            "steps": "[]",
            "created_at": now,
            "finished_at": now if status in FINAL else None,
        }
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(playbook_runs).values(**values))
        except IntegrityError:
            if trigger_key is None:
                raise
            return None
        return run_id

    async def update(self, run_id: str, **values: Any) -> None:
        for name in ("steps", "inputs", "parked"):
            if name in values and values[name] is not None:
                values[name] = jsontext.dumps(values[name])
        async with self.db.write() as conn:
            await conn.execute(update(playbook_runs).where(playbook_runs.c.id == run_id).values(**values))

    async def start(self, run_id: str) -> bool:
        """Mark a queued run running; False when it was already started, finished or cancelled.

        A run resumed after an approval keeps the time it first started.
        """
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(playbook_runs)
                .where(playbook_runs.c.id == run_id, playbook_runs.c.status == "queued")
                .values(status="running", started_at=func.coalesce(playbook_runs.c.started_at, self.clock.now()))
            )
        return bool(changed.rowcount)

    async def take(self, run_id: str, statuses: tuple[str, ...]) -> bool:
        """Move a run in one of ``statuses`` to ``running`` (one conditional UPDATE); False if it was in none.

        What cancels a queued or waiting run takes it this way first, so a worker starting it, or an
        answer resuming it, finds it taken (and the other way round).
        """
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(playbook_runs)
                .where(playbook_runs.c.id == run_id, playbook_runs.c.status.in_(statuses))
                .values(status="running")
            )
        return bool(changed.rowcount)

    async def requeue(self, run_id: str) -> bool:
        """Move a waiting run back to ``queued`` (its approval was answered); False if it was not waiting."""
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(playbook_runs)
                .where(playbook_runs.c.id == run_id, playbook_runs.c.status == "waiting")
                .values(status="queued")
            )
        return bool(changed.rowcount)

    async def waiting(self, *, approval_id: str | None = None, limit: int = 500) -> list[RunRecord]:
        """Runs waiting for an approval (the one asked as ``approval_id``, when given), oldest first."""
        query = (
            select(playbook_runs)
            .where(playbook_runs.c.status == "waiting")
            .order_by(playbook_runs.c.created_at)
            .limit(limit)
        )
        if approval_id is not None:
            query = query.where(playbook_runs.c.approval_id == approval_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(r) for r in rows]

    async def get(self, run_id: str) -> RunRecord:
        async with self.db.read() as conn:
            row = (await conn.execute(select(playbook_runs).where(playbook_runs.c.id == run_id))).mappings().first()
        if row is None:
            raise errors.NotFound(f"no playbook run {run_id[:60]!r}")
        return _record(row)

    async def recent(self, *, playbook: str | None = None, limit: int = 50) -> list[RunRecord]:
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000")
        query = select(playbook_runs).order_by(desc(playbook_runs.c.created_at), desc(playbook_runs.c.id)).limit(limit)
        if playbook is not None:
            query = query.where(playbook_runs.c.playbook == playbook)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(r) for r in rows]

    async def page(
        self,
        *,
        playbook: str | None = None,
        statuses: tuple[str, ...] = (),
        before: str | None = None,
        limit: int = 50,
    ) -> RunPage:
        """Runs newest first (created, then id), only ``playbook``'s and in ``statuses`` when given.

        ``before`` is a run's id: the page starts after it (keyset paging, stable while runs are added).
        An id that names no run is InvalidInput naming ``before``.
        """
        if not 1 <= limit <= 1000:
            raise errors.InvalidInput("limit must be between 1 and 1000")
        runs = playbook_runs.c
        query = select(playbook_runs).order_by(desc(runs.created_at), desc(runs.id)).limit(limit + 1)
        if playbook is not None:
            query = query.where(runs.playbook == playbook)
        if statuses:
            query = query.where(runs.status.in_(statuses))
        async with self.db.read() as conn:
            if before is not None:
                at = (await conn.execute(select(runs.created_at).where(runs.id == before))).scalar_one_or_none()
                if at is None:
                    raise errors.InvalidInput(f"before: no playbook run {before[:60]!r}")
                query = query.where(or_(runs.created_at < at, and_(runs.created_at == at, runs.id < before)))
            rows = (await conn.execute(query)).mappings().all()
        found = [_record(r) for r in rows[:limit]]
        return RunPage(found, found[-1].id if len(rows) > limit else None)

    async def last(self, playbook: str, *, skipped: bool = False) -> RunRecord | None:
        """The newest run of ``playbook`` (skipped firings left out unless ``skipped``)."""
        query = select(playbook_runs).where(playbook_runs.c.playbook == playbook)
        if not skipped:
            query = query.where(playbook_runs.c.status != "skipped")
        query = query.order_by(desc(playbook_runs.c.created_at), desc(playbook_runs.c.id)).limit(1)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _record(row)

    async def recorded(self, playbook: str) -> bool:
        """Whether any run or firing of ``playbook`` is recorded."""
        query = select(playbook_runs.c.id).where(playbook_runs.c.playbook == playbook).limit(1)
        async with self.db.read() as conn:
            return (await conn.execute(query)).first() is not None

    async def active(self, playbook: str) -> list[RunRecord]:
        """Runs of ``playbook`` queued, running or waiting for an approval."""
        query = select(playbook_runs).where(
            playbook_runs.c.playbook == playbook, playbook_runs.c.status.in_(("queued", "running", "waiting"))
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(r) for r in rows]

    async def last_fire(self, playbook: str) -> datetime | None:
        async with self.db.read() as conn:
            found: datetime | None = (
                await conn.execute(
                    select(playbook_schedules.c.last_fire_at).where(playbook_schedules.c.playbook == playbook)
                )
            ).scalar_one_or_none()
        return found

    async def set_last_fire(self, playbook: str, at: datetime) -> None:
        now = self.clock.now()
        async with self.db.write() as conn:
            changed = await conn.execute(
                update(playbook_schedules)
                .where(playbook_schedules.c.playbook == playbook)
                .values(last_fire_at=at, updated_at=now)
            )
            if not changed.rowcount:
                await conn.execute(
                    insert(playbook_schedules).values(playbook=playbook, last_fire_at=at, updated_at=now)
                )
