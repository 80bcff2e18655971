"""Execution-time histograms: fixed buckets two significant digits wide, merged and read as percentiles (pure).

The dashboard keeps durations as counts per bucket, so an hour's roll-up is a few hundred numbers at
most however many tasks ran in it, and percentiles over any set of hours are a merge and a walk.
A bucket's bound is a value with two significant digits in milliseconds (0.0010, 0.0011, …, 9.9,
10, 11, …, 99, 100, 110, …): a duration lands in the smallest bound at or above it, and a
percentile is read as that bound (the nearest-rank method). So a percentile is exact for
durations that have two significant digits, and otherwise at most one step (under 10%) above the
true value. Prometheus' coarser buckets (:data:`PROMETHEUS_BOUNDS_SECONDS`) are bounds of this
scale too, so the exported histogram's counts are exact.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

__all__ = [
    "BOUNDS_MS",
    "PROMETHEUS_BOUNDS_SECONDS",
    "bucket_of",
    "cumulative",
    "merge",
    "percentile",
]

# 0.001 ms to 99,000,000 ms (27.5 hours); longer runs fall into one overflow bucket past the end.
BOUNDS_MS: tuple[float, ...] = tuple(round(m / 10 * 10.0**e, 6) for e in range(-3, 8) for m in range(10, 100))
OVERFLOW = len(BOUNDS_MS)

PROMETHEUS_BOUNDS_SECONDS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
    3600.0,
)


def bucket_of(duration_ms: float) -> int:
    """Return the bucket a duration falls in: the index of the smallest bound at or above it."""
    if duration_ms <= BOUNDS_MS[0]:
        return 0
    # Durations come from microsecond differences, so compare at a precision finer than that.
    return bisect.bisect_left(BOUNDS_MS, round(duration_ms, 6))


def merge(into: dict[int, int], other: Mapping[int, int]) -> dict[int, int]:
    """Add ``other``'s counts to ``into`` (in place) and return it."""
    for bucket, n in other.items():
        into[bucket] = into.get(bucket, 0) + n
    return into


def percentile(counts: Mapping[int, int], p: float) -> float | None:
    """Return the ``p``-th percentile (0 < p ≤ 100) by nearest rank, as its bucket's bound; None when empty."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return BOUNDS_MS[min(bucket, OVERFLOW - 1)]
    return BOUNDS_MS[-1]  # pragma: no cover - the walk always reaches the rank


def cumulative(counts: Mapping[int, int], bounds_seconds: Iterable[float]) -> list[tuple[float, int]]:
    """Return ``(bound, count at or below it)`` for each bound in seconds (Prometheus' ``le`` buckets)."""
    out = []
    for bound in bounds_seconds:
        limit = bucket_of(bound * 1000)
        out.append((bound, sum(n for b, n in counts.items() if b <= limit)))
    return out
