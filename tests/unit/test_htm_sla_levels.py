"""Property tests of the SLA thresholds (grace.htm.sla_levels): each level falls due at exactly its fraction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from grace.htm import sla_levels as sla

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
SLA_MS = st.integers(min_value=1, max_value=30 * 24 * 3600 * 1000)


@given(SLA_MS)
def test_each_level_falls_due_at_its_fraction_of_the_sla_and_not_a_microsecond_before(sla_ms: int) -> None:
    for level, fraction in ((sla.WARNING, 0.8), (sla.VIOLATED, 1.0), (sla.CRITICAL, 2.0)):
        due = sla.due_at(CREATED, sla_ms, level)
        assert due - CREATED == timedelta(milliseconds=sla_ms * fraction)
        assert sla.level_at(CREATED, sla_ms, due) == level
        assert sla.level_at(CREATED, sla_ms, due - ONE_MICROSECOND) == level - 1
    assert sla.due_at(CREATED, sla_ms, sla.VIOLATED) == CREATED + timedelta(milliseconds=sla_ms)  # the deadline


@given(SLA_MS, st.integers(min_value=0, max_value=10**13), st.integers(min_value=0, max_value=10**13))
def test_levels_only_rise_with_time(sla_ms: int, a: int, b: int) -> None:
    early, late = sorted((a, b))
    assert sla.level_at(CREATED, sla_ms, CREATED + timedelta(microseconds=early)) <= sla.level_at(
        CREATED, sla_ms, CREATED + timedelta(microseconds=late)
    )


def test_a_task_without_an_sla_has_nothing_due() -> None:
    assert sla.first_due(CREATED, None) is None
    assert sla.first_due(CREATED, 10_000) == CREATED + timedelta(seconds=8)
