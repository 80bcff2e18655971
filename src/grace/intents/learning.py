"""The learning loop's arithmetic: pure functions over outcomes, the reference the summaries are read from.

- Percentiles are nearest-rank: the smallest value with at least q% of the values at or below it.
- The Brier score is the mean of (confidence - outcome)^2 over outcomes that carry a confidence
  (outcome 1 for a success, 0 for a failure): 0 is perfect, 0.25 is what always saying 0.5 earns.
- The calibration table puts confidences in ten bins ([0, 0.1), ..., [0.9, 1.0]) and shows, per bin
  with outcomes, the mean confidence beside the observed success rate: a well-calibrated agent's two
  columns match.
- A suggested SLA for a task type is its observed p95 execution time with 20% headroom, rounded up
  to a whole 100 ms, once at least ``MIN_SAMPLES`` outcomes of that type succeeded.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BINS",
    "HEADROOM",
    "MIN_SAMPLES",
    "OutcomeFacts",
    "brier_score",
    "calibration",
    "group_summary",
    "percentile",
    "suggest_sla_ms",
    "summarise",
]

BINS = 10
HEADROOM = 1.2
MIN_SAMPLES = 5
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class OutcomeFacts:
    """What a summary reads from one outcome."""

    action_type: str
    domain: str | None
    task_type: str | None
    success: bool
    confidence: float | None
    execution_time: float  # seconds
    sla_ms: int | None = None
    sla_met: bool | None = None


# (task type, its outcomes) -> (the SLA configured for it, where that comes from)
Configured = Callable[[str, Sequence["OutcomeFacts"]], tuple[int | None, str | None]]


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Return the nearest-rank ``q``-th percentile of ``ordered`` (sorted ascending); None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def brier_score(pairs: Iterable[tuple[float, bool]]) -> float | None:
    """Return the mean squared gap between confidence and outcome; None without a confidence."""
    values = [(c - (1.0 if ok else 0.0)) ** 2 for c, ok in pairs]
    return sum(values) / len(values) if values else None


def calibration(pairs: Iterable[tuple[float, bool]], bins: int = BINS) -> list[dict[str, Any]]:
    """Return the non-empty confidence bins: bounds, count, mean confidence and observed success rate."""
    grouped: dict[int, list[tuple[float, bool]]] = defaultdict(list)
    for c, ok in pairs:
        grouped[min(int(c * bins), bins - 1)].append((c, ok))
    table = []
    for b in sorted(grouped):
        members = grouped[b]
        table.append(
            {
                "lower": round(b / bins, 6),
                "upper": round((b + 1) / bins, 6),
                "count": len(members),
                "mean_confidence": sum(c for c, _ in members) / len(members),
                "success_rate": sum(1 for _, ok in members if ok) / len(members),
            }
        )
    return table


def group_summary(outcomes: Sequence[OutcomeFacts]) -> dict[str, Any]:
    """Return one group's figures: counts, success rate, execution-time percentiles, Brier score, calibration."""
    times = sorted(o.execution_time for o in outcomes)
    pairs = [(o.confidence, o.success) for o in outcomes if o.confidence is not None]
    with_sla = [o.sla_met for o in outcomes if o.sla_met is not None]
    successes = sum(1 for o in outcomes if o.success)
    return {
        "count": len(outcomes),
        "successes": successes,
        "success_rate": successes / len(outcomes) if outcomes else None,
        "execution_time": {
            **{f"p{q}": percentile(times, q) for q in PERCENTILES},
            "mean": sum(times) / len(times) if times else None,
            "max": times[-1] if times else None,
        },
        "with_confidence": len(pairs),
        "brier_score": brier_score(pairs),
        "calibration": calibration(pairs),
        "sla_met_rate": sum(1 for m in with_sla if m) / len(with_sla) if with_sla else None,
    }


def suggest_sla_ms(successful_seconds: Sequence[float]) -> int | None:
    """Return the p95 of successful runs (seconds) as milliseconds with headroom, or None with too few."""
    if len(successful_seconds) < MIN_SAMPLES:
        return None
    p95 = percentile(sorted(successful_seconds), 95)
    assert p95 is not None
    return max(100, math.ceil(p95 * 1000 * HEADROOM / 100) * 100)


def summarise(outcomes: Sequence[OutcomeFacts], configured: Configured) -> dict[str, Any]:
    """Return the figures per action type and per domain, and a suggested SLA per task type.

    ``configured(task_type, its_outcomes)`` returns the SLA configured for the type and where it
    comes from, shown beside the suggestion.
    """
    by_action: dict[str, list[OutcomeFacts]] = defaultdict(list)
    by_domain: dict[str, list[OutcomeFacts]] = defaultdict(list)
    by_type: dict[str, list[OutcomeFacts]] = defaultdict(list)
    for o in outcomes:
        by_action[o.action_type].append(o)
        if o.domain is not None:
            by_domain[o.domain].append(o)
        if o.task_type is not None:
            by_type[o.task_type].append(o)
    suggestions = []
    for task_type in sorted(by_type):
        group = by_type[task_type]
        ok_times = sorted(o.execution_time for o in group if o.success)
        p95 = percentile(ok_times, 95)
        configured_ms, source = configured(task_type, group)
        suggestions.append(
            {
                "task_type": task_type,
                "count": len(group),
                "successes": len(ok_times),
                "observed_p95_ms": p95 * 1000 if p95 is not None else None,
                "suggested_sla_ms": suggest_sla_ms(ok_times),
                "configured_sla_ms": configured_ms,
                "configured_from": source,
            }
        )
    return {
        "total": group_summary(outcomes),
        "by_action_type": {k: group_summary(v) for k, v in sorted(by_action.items())},
        "by_domain": {k: group_summary(v) for k, v in sorted(by_domain.items())},
        "sla_suggestions": suggestions,
    }


def most_requested_sla(outcomes: Iterable[OutcomeFacts]) -> int | None:
    """Return the SLA most often requested among ``outcomes`` (the latest-listed one on a tie), or None."""
    counts = Counter(o.sla_ms for o in outcomes if o.sla_ms is not None)
    if not counts:
        return None
    best = max(counts.values())
    return [ms for ms, n in counts.items() if n == best][-1]


def configured_from(
    defaults: Mapping[str, int], priority: str = "normal"
) -> Callable[[str, Sequence[OutcomeFacts]], tuple[int | None, str | None]]:
    """Return a ``configured`` for :func:`summarise`: the default SLA, else the SLA most requested.

    ``defaults`` are the task manager's (``GRACE_HTM_DEFAULT_SLA_MS``, keys ``type:priority``, ``type``
    or ``priority``), read as it reads them for a task of the type submitted at ``priority``.
    """

    def configured(task_type: str, group: Sequence[OutcomeFacts]) -> tuple[int | None, str | None]:
        for key in (f"{task_type}:{priority}", task_type, priority):
            if key in defaults:
                return defaults[key], "default"
        requested = most_requested_sla(group)
        return (requested, "requested") if requested is not None else (None, None)

    return configured
