"""What the playbooks pages say about runs and steps, checked without a browser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from grace.playbooks import RunRecord
from grace.web.playbook_views import duration, run_status, step_outcome, step_views


def record(steps: list[dict[str, Any]], *, dry_run: bool = False, status: str = "succeeded") -> RunRecord:
    at = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    return RunRecord(
        "pbr_1", "crypto_key_persistence", "manual", None, "olga", {}, status, None, dry_run, None, steps,
        at, at, at, 12.5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (None, ""),
        (0.25, "0.2 ms"),
        (12.4, "12 ms"),
        (999, "999 ms"),
        (2400, "2.4 s"),
        (185_000, "3 min 05 s"),
        (300_000, "5 min"),
        (3_600_000, "1 h"),
        (5_430_000, "1 h 30 min"),
    ],
)
def test_durations_read_as_a_person_would_say_them(ms: float | None, shown: str) -> None:
    assert duration(ms) == shown


def test_a_dry_runs_steps_say_would_run_skipped_unknown_and_a_called_read() -> None:
    shown = {
        s.id: s.outcome.words
        for s in step_views(
            record(
                [
                    {"id": "check_expiry", "phase": "main", "outcome": "run", "called": True, "attempts": []},
                    {"id": "warn", "phase": "main", "outcome": "skip", "attempts": []},
                    {"id": "rotate", "phase": "main", "outcome": "run", "called": False, "attempts": []},
                    {"id": "verify", "phase": "main", "outcome": "unknown", "reason": "depends", "attempts": []},
                ],
                dry_run=True,
            )
        )
    }
    assert shown == {
        "check_expiry": "ran (read only)",
        "warn": "skipped",
        "rotate": "would run",
        "verify": "unknown",
    }


def test_a_failed_step_shows_its_attempts_errors_and_the_rollback() -> None:
    views = step_views(
        record(
            [
                {"id": "monitor:sla_low", "phase": "monitor", "outcome": "firing", "metric": "sla_compliance",
                 "value": 0.87, "severity": "critical"},
                {"id": "verify", "phase": "main", "outcome": "failed", "reason": "failed_when is true",
                 "duration_ms": 3100.0, "attempts": [
                     {"attempt": 1, "outcome": "failed", "duration_ms": 40.0, "error": "boom", "retry_in_s": 1.5},
                     {"attempt": 2, "outcome": "failed", "duration_ms": 41.0, "error": "boom"}]},
                {"id": "distribute", "phase": "rollback", "outcome": "rolled_back", "duration_ms": 2.0},
            ],
            status="failed",
        )
    )  # fmt: skip
    monitor, verify, rollback = views
    assert (monitor.phase, monitor.outcome.words, monitor.facts[0]) == (
        "monitor",
        "firing",
        ("metric", "sla_compliance = 0.87"),
    )
    assert (verify.outcome.words, verify.outcome.tone, verify.duration, verify.reason) == (
        "failed", "bad", "3.1 s", "failed_when is true"
    )  # fmt: skip
    assert [(a.number, a.error, a.retry_in) for a in verify.attempts] == [
        (1, "boom", "retried after 1.5 s"),
        (2, "boom", ""),
    ]
    assert (rollback.phase, rollback.outcome.words) == ("rollback", "rolled back")


def test_a_status_this_page_does_not_know_is_shown_in_words_never_an_error() -> None:
    waiting = run_status("waiting_for_approval")
    assert (waiting.words, waiting.tone) == ("waiting for approval", "other")
    assert step_outcome({"outcome": "awaiting_approval"}, dry_run=False).words == "awaiting approval"
    assert step_outcome({}, dry_run=False).words == "not finished"
    assert step_views(record(["not a step", {"id": "x"}]))[0].outcome.words == "not finished"  # type: ignore[list-item]
