"""What the playbooks pages say about a run and its steps: outcomes in words, durations, triggers.

Pure functions of the history's records (``grace.playbooks.RunRecord`` and its step dicts), tested
without a browser. A status or outcome this module does not know (a later engine's, such as a run
waiting for an approval) is shown as its own words with a neutral look, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from grace.playbooks import RunRecord

__all__ = [
    "FINAL",
    "RUN_WORDS",
    "STEP_WORDS",
    "Attempt",
    "Shown",
    "StepView",
    "duration",
    "run_status",
    "step_outcome",
    "step_views",
    "trigger_words",
    "when",
]

# A run that has reached one of these will not change: the page stops refreshing it.
FINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "skipped"})

# Run status -> (words, tone). Tones map to colours in app.css (ok, bad, warn, busy, quiet, other).
RUN_WORDS: dict[str, tuple[str, str]] = {
    "queued": ("queued", "busy"),
    "running": ("running", "busy"),
    "waiting": ("waiting for approval", "warn"),  # the owner answers in the consent inbox
    "succeeded": ("succeeded", "ok"),
    "failed": ("failed", "bad"),
    "cancelled": ("cancelled", "warn"),
    "timed_out": ("timed out", "bad"),
    "skipped": ("skipped", "quiet"),
}

# Step outcome -> (words, tone). ``run`` is a dry run's "would run" (or "ran", for a read it called).
STEP_WORDS: dict[str, tuple[str, str]] = {
    "succeeded": ("ran", "ok"),
    "failed": ("failed", "bad"),
    "skip": ("skipped", "quiet"),
    "unknown": ("unknown", "warn"),
    "rolled_back": ("rolled back", "warn"),
    "rollback_failed": ("rollback failed", "bad"),
    "firing": ("firing", "warn"),
    "quiet": ("quiet", "ok"),
    "timed_out": ("timed out", "bad"),
    "cancelled": ("cancelled", "warn"),
    "waiting": ("waiting for approval", "warn"),
}

PHASES = {"monitor": "monitor", "main": "step", "rollback": "rollback", "on_failure": "on failure", "always": "always"}


@dataclass(frozen=True)
class Shown:
    """A status as the page shows it: the words, the tone (a CSS class) and the raw value (for tests)."""

    value: str
    words: str
    tone: str


def _other(value: str) -> Shown:
    text = (value or "unknown").replace("_", " ")[:40]
    return Shown(value, text, "other")


def run_status(status: str) -> Shown:
    known = RUN_WORDS.get(status)
    return Shown(status, *known) if known else _other(status)


def step_outcome(step: dict[str, Any], *, dry_run: bool) -> Shown:
    """A step's outcome: a dry run's ``run`` is "would run" unless the step was a read it called."""
    outcome = str(step.get("outcome") or "")
    if outcome == "run":
        if dry_run and step.get("called") is True:
            return Shown(outcome, "ran (read only)", "ok")
        return Shown(outcome, "would run" if dry_run else "run", "busy")
    if not outcome:
        return Shown("", "not finished", "other")
    known = STEP_WORDS.get(outcome)
    return Shown(outcome, *known) if known else _other(outcome)


def duration(ms: float | None) -> str:
    """``850 ms``, ``2.4 s``, ``3 min 05 s``, ``5 min``, ``1 h 30 min``; empty for None."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 1 else f"{ms:.1f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes >= 60:
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    return f"{minutes} min {rest:02d} s" if rest else f"{minutes} min"


@dataclass(frozen=True)
class Attempt:
    number: int
    outcome: Shown
    duration: str
    error: str
    retry_in: str


@dataclass(frozen=True)
class StepView:
    """One line of a run: a monitor, a step, a rollback, an on_failure or always step."""

    id: str
    phase: str
    action: str
    outcome: Shown
    duration: str
    reason: str
    attempts: list[Attempt] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)


def _text(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def step_views(record: RunRecord) -> list[StepView]:
    """Each step of ``record`` in the order it happened, with its attempts, duration and error."""
    views = []
    steps: list[Any] = list(record.steps)  # JSON from the database: checked, not trusted
    for step in steps:
        if not isinstance(step, dict):
            continue
        attempts: list[Attempt] = []
        for raw in step.get("attempts") or []:
            if not isinstance(raw, dict):
                continue
            retry = raw.get("retry_in_s")
            attempts.append(
                Attempt(
                    int(raw.get("attempt") or len(attempts) + 1),
                    step_outcome({"outcome": raw.get("outcome") or ""}, dry_run=False),
                    duration(raw.get("duration_ms")),
                    _text(raw.get("error") or ""),
                    f"retried after {retry:g} s" if isinstance(retry, int | float) else "",
                )
            )
        facts: list[tuple[str, str]] = []
        if step.get("phase") == "monitor":
            facts.append(("metric", f"{step.get('metric', '')} = {_text(step.get('value'), 60)}"))
            facts.append(("severity", str(step.get("severity", ""))))
        reason = step.get("reason") or step.get("error") or ""
        if not reason and record.dry_run and step.get("called") is False:
            reason = "not called: it has side effects"
        views.append(
            StepView(
                id=str(step.get("id", "")),
                phase=PHASES.get(str(step.get("phase", "")), str(step.get("phase", ""))),
                action=str(step.get("action", "")),
                outcome=step_outcome(step, dry_run=record.dry_run),
                duration=duration(step.get("duration_ms")),
                reason=_text(reason),
                attempts=attempts,
                facts=facts,
            )
        )
    return views


def trigger_words(trigger: str) -> str:
    return {"manual": "run by hand", "schedule": "on schedule", "event": "on an event"}.get(trigger, trigger)


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")
