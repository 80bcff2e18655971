"""Playbooks: the catalogue with each playbook's lint result, and runs with their steps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from grace.api.schemas.common import Answer, Timestamp

__all__ = [
    "InputOut",
    "PlaybookList",
    "PlaybookOut",
    "PolicyOut",
    "ProblemOut",
    "RunAnswer",
    "RunList",
    "RunOut",
    "ScheduleOut",
]


class ProblemOut(Answer):
    """One lint problem, at its place in the file."""

    file: str
    line: int
    column: int
    code: str
    message: str


class ScheduleOut(Answer):
    cron: str
    timezone: str
    next_at: Timestamp | None = Field(
        None, description="The schedule's next firing after now (UTC); null when it names none within 8 years."
    )


class InputOut(Answer):
    type: str
    default: Any = None
    required: bool
    description: str


class PolicyOut(Answer):
    concurrency: Literal["forbid", "allow", "replace"]
    misfire_grace: float
    coalesce: bool
    timeout: float


class PlaybookOut(Answer):
    """A playbook in the directory: valid ones with their triggers, inputs and steps; others with problems."""

    name: str
    path: str
    valid: bool
    description: str = ""
    problems: list[ProblemOut] = Field(default_factory=list)
    schedules: list[ScheduleOut] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, description="Bus topics that trigger it.")
    manual: bool = False
    policy: PolicyOut | None = None
    inputs: dict[str, InputOut] = Field(default_factory=dict)
    steps: list[str] = Field(default_factory=list, description="Step ids in order (main steps).")
    last_run: RunOut | None = Field(None, description="Its newest run (skipped firings left out), if any.")


class PlaybookList(Answer):
    playbooks: list[PlaybookOut]


class RunOut(Answer):
    """A run or a skipped firing. ``steps`` holds each step's phase, outcome, attempts and durations."""

    id: str
    playbook: str
    trigger: str
    trigger_key: str | None
    who: str
    inputs: dict[str, Any] = Field(description="Secret inputs are shown as [redacted].")
    status: Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled", "timed_out", "skipped"] = Field(
        description="waiting: for the owner's answer to an approval step (in the consent inbox); no worker is held."
    )
    reason: str | None
    dry_run: bool
    task_id: str | None
    steps: list[dict[str, Any]]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_ms: float | None
    approval_id: str | None = Field(
        default=None, description="The consent (kind approval) the run asked its owner, if it reached an approval step."
    )


class RunAnswer(Answer):
    run: RunOut


class RunList(Answer):
    """Runs and skipped firings, newest first."""

    runs: list[RunOut]
    next_before: str | None = Field(description="Pass as ``before`` for the next (older) page; null on the last page.")


PlaybookOut.model_rebuild()
