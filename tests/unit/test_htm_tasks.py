"""Tasks and recorded outcomes read back from stored rows are whole, ordinary values."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from grace.htm import Origin, Priority, Status, Task, TaskRequest
from grace.htm.queue import Finished

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {f.name: None for f in dataclasses.fields(Task)}
    row.update(
        task_id="task_1",
        task_type="bench.noop",
        priority="high",
        payload={"a": 1},
        origin="intent",
        origin_rule="intent_id",
        created_by_name="grace",
        data_size_bytes=2,
        status="running",
        route="accepted",
        route_reason="within quota",
        attempts=1,
        max_attempts=3,
        timeout_seconds=300,
        created_at=NOW,
        queued_at=NOW,
        started_at=NOW,
    )
    row.update(changes)
    return row


def test_a_task_from_a_row_has_every_field_and_equals_one_built_by_its_constructor() -> None:
    # from_row fills the instance directly (it is on the claim path); a field added to Task and
    # forgotten there would be missing, and this would fail.
    task = Task.from_row(_row())
    built = Task(**{**_row(), "priority": Priority.HIGH, "origin": Origin.INTENT, "status": Status.RUNNING})
    assert set(vars(task)) == {f.name for f in dataclasses.fields(Task)}
    assert task == built
    assert task.priority is Priority.HIGH and task.origin is Origin.INTENT and task.status is Status.RUNNING
    assert isinstance(task.timeout_seconds, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.status = Status.COMPLETED  # type: ignore[misc]


def test_a_row_with_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="bogus"):
        Task.from_row(_row(status="bogus"))


def test_a_recorded_outcome_from_a_row_has_every_field_in_utc() -> None:
    naive = "2026-11-21 12:00:01.500000"  # as SQLite hands times back
    row: dict[str, Any] = {f.name: None for f in dataclasses.fields(Finished)}
    row.update(
        task_id="task_1",
        task_type="bench.noop",
        origin="intent",
        priority="normal",
        status="completed",
        attempts=1,
        max_attempts=3,
        created_at=NOW,
        started_at=naive,
        finished_at=NOW.astimezone(timezone(timedelta(hours=2))),
        queued_at=NOW,
        data_size_bytes=2,
    )
    finished = Finished.from_row(row)
    assert set(vars(finished)) == {f.name for f in dataclasses.fields(Finished)}
    assert finished.status is Status.COMPLETED and finished.deadline is None
    assert finished.started_at == datetime(2026, 11, 21, 12, 0, 1, 500000, tzinfo=UTC)
    assert finished.finished_at == NOW and finished.finished_at.tzinfo is UTC
    assert finished.event()["duration_ms"] == -1500.0
    with pytest.raises(ValueError, match="bogus"):
        Finished.from_row({**row, "status": "bogus"})


@pytest.mark.parametrize("payload", [None, {}, {"path": "/notes/a.wav", "n": 2}])
def test_a_checked_request_has_every_field_and_equals_one_built_by_its_constructor(
    payload: dict[str, Any] | None,
) -> None:
    request = TaskRequest.build(
        "voice.transcribe", payload=payload, priority="high", origin="intent", sla_ms=500, max_payload_bytes=1000
    )
    text = json.dumps(payload or {}, separators=(",", ":"))
    built = TaskRequest(
        task_type="voice.transcribe",
        priority=Priority.HIGH,
        payload=dict(payload or {}),
        payload_bytes=len(text),
        origin="intent",
        sla_ms=500,
        payload_json=text,
    )
    assert set(vars(request)) == {f.name for f in dataclasses.fields(TaskRequest)}
    assert request == built
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.sla_ms = 1  # type: ignore[misc]
