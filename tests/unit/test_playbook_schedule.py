"""Schedules as a table on a fake clock: the pure reference the scheduler's loop follows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grace.playbooks.schedule import decide, fire_times, next_fire


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "zone", "after", "until", "expected"),
    [
        # every five minutes
        ("*/5 * * * *", "UTC", utc(2026, 3, 1, 10, 2), utc(2026, 3, 1, 10, 20),
         [utc(2026, 3, 1, 10, 5), utc(2026, 3, 1, 10, 10), utc(2026, 3, 1, 10, 15), utc(2026, 3, 1, 10, 20)]),
        # Sunday 02:00 UTC: day 0 is Sunday (APScheduler 3 would read it as Monday)
        ("0 2 * * 0", "UTC", utc(2026, 12, 1), utc(2026, 12, 31),
         [utc(2026, 12, 6, 2), utc(2026, 12, 13, 2), utc(2026, 12, 20, 2), utc(2026, 12, 27, 2)]),
        # spring forward in New York (2026-03-08 02:00 EST -> 03:00 EDT): 02:30 does not exist,
        # it fires once, shifted forward by the gap, at 03:30 EDT = 07:30 UTC
        ("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12), utc(2026, 3, 9, 12),
         [utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]),
        # fall back (2026-11-01 02:00 EDT -> 01:00 EST): 01:30 happens twice, it fires once at the first
        ("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), utc(2026, 11, 2, 12),
         [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
        # an hourly schedule over the skipped hour: 02:00 lands on 03:00 EDT, which fires once
        ("0 * * * *", "America/New_York", utc(2026, 3, 8, 5, 30), utc(2026, 3, 8, 8, 30),
         [utc(2026, 3, 8, 6), utc(2026, 3, 8, 7), utc(2026, 3, 8, 8)]),
        # every 15 minutes over the skipped hour: 02:15 lands on 03:15 EDT, which also comes on its own; once each
        ("*/15 * * * *", "America/New_York", utc(2026, 3, 8, 6, 20), utc(2026, 3, 8, 7, 30),
         [utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 15),
          utc(2026, 3, 8, 7, 30)]),
        # Europe: Sunday 02:00 in London is 01:00 UTC in summer, 02:00 UTC in winter
        ("0 2 * * 0", "Europe/London", utc(2026, 10, 17), utc(2026, 11, 2),
         [utc(2026, 10, 18, 1), utc(2026, 10, 25, 2), utc(2026, 11, 1, 2)]),
    ],
)  # fmt: skip
def test_fire_times(cron: str, zone: str, after: datetime, until: datetime, expected: list[datetime]) -> None:
    assert fire_times(cron, zone, after, until) == expected


def test_sunday_two_am_utc_lands_only_on_sundays_at_two() -> None:
    times = fire_times("0 2 * * 0", "UTC", utc(2026, 1, 1), utc(2027, 1, 1))
    assert len(times) == 52
    assert all(t.weekday() == 6 and (t.hour, t.minute) == (2, 0) for t in times)


@pytest.mark.parametrize(
    ("last", "now", "coalesce", "grace", "runs", "skipped"),
    [
        # on time: one run
        (utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 10, 5), True, 300, [utc(2026, 3, 1, 10, 5)], 0),
        # nothing due yet
        (utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 10, 4, 59), True, 300, [], 0),
        # three hours down under coalesce: exactly one catch-up run, the 35 others recorded as coalesced
        (utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 13, 0), True, 300, [utc(2026, 3, 1, 13, 0)], 35),
        # three hours down without coalesce: the one firing within the grace runs, the rest misfired
        (utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 13, 2), False, 300, [utc(2026, 3, 1, 13, 0)], 35),
        # without coalesce and a long grace, each missed firing runs
        (utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 10, 16), False, 3600,
         [utc(2026, 3, 1, 10, 5), utc(2026, 3, 1, 10, 10), utc(2026, 3, 1, 10, 15)], 0),
        # under coalesce, a latest firing past the grace is skipped as misfired
        (utc(2026, 3, 1, 10, 0), utc(2026, 3, 1, 10, 9), True, 60, [], 1),
    ],
)  # fmt: skip
def test_decide_misfire_and_coalesce(
    last: datetime, now: datetime, coalesce: bool, grace: float, runs: list[datetime], skipped: int
) -> None:
    decision = decide("*/5 * * * *", "UTC", last, now, misfire_grace=grace, coalesce=coalesce)
    assert decision.run == runs
    assert len(decision.skipped) == skipped
    assert all(reason for _, reason in decision.skipped)


def test_a_new_schedule_starts_from_now_and_fires_nothing_for_the_past() -> None:
    decision = decide("*/5 * * * *", "UTC", None, utc(2026, 3, 1, 10, 3), misfire_grace=300, coalesce=True)
    assert decision.run == [] and decision.last == utc(2026, 3, 1, 10, 3)


@settings(max_examples=60, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)),  # noqa: DTZ001 - naive bounds, as hypothesis asks
    hours=st.integers(min_value=0, max_value=72),
    zone=st.sampled_from(["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe"]),
)
def test_every_firing_is_run_or_skipped_once_and_in_order(start: datetime, hours: int, zone: str) -> None:
    last = start.replace(tzinfo=UTC)  # hypothesis draws naive times; read them as UTC
    now = last + timedelta(hours=hours)
    for coalesce in (True, False):
        decision = decide("*/15 * * * *", zone, last, now, misfire_grace=600, coalesce=coalesce)
        seen = sorted([*decision.run, *(t for t, _ in decision.skipped)])
        assert seen == fire_times("*/15 * * * *", zone, last, now)
        assert len(decision.run) <= (1 if coalesce else len(seen))
        assert all(last < t <= now for t in seen)


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    [
        ("*/5 * * * *", "UTC", utc(2026, 3, 1, 10, 2), utc(2026, 3, 1, 10, 5)),
        ("*/5 * * * *", "UTC", utc(2026, 3, 1, 10, 5), utc(2026, 3, 1, 10, 10)),  # strictly after
        ("0 2 * * 0", "UTC", utc(2026, 12, 6, 2), utc(2026, 12, 13, 2)),  # the next Sunday
        ("30 2 * * *", "America/New_York", utc(2026, 3, 8, 0), utc(2026, 3, 8, 7, 30)),  # the skipped 02:30
        ("0 0 29 2 *", "UTC", utc(2026, 3, 1), utc(2028, 2, 29)),  # years away
        ("0 0 30 2 *", "UTC", utc(2026, 3, 1), None),  # never
    ],
)
def test_the_next_firing_follows_the_same_rules(
    cron: str, zone: str, after: datetime, expected: datetime | None
) -> None:
    assert next_fire(cron, zone, after) == expected
