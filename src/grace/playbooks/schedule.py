"""When a schedule fires: the pure reference the scheduler's loop follows (tested as a table).

Next times come from croniter (day 0 of the week is Sunday, as cron has it). A schedule's cron
is read as wall-clock time in its time zone; the daylight-saving rule:

- a wall time that does not exist (the hour skipped when clocks go forward) fires once, shifted
  forward by the gap: ``30 2 * * *`` in America/New_York fires at 03:30 EDT on that day;
- a wall time that happens twice (the hour repeated when clocks go back) fires once, at its first
  occurrence (the earlier offset, PEP 495's ``fold=0``);
- two wall times that land on the same instant fire once.

:func:`decide` applies the misfire and coalesce rules to the firings missed since the last one:
with ``coalesce`` the missed firings become one run at the latest of them (the others are recorded
as coalesced into it); without it each runs. Either way a firing later than ``misfire_grace``
seconds is skipped as misfired. A schedule seen for the first time starts from now: nothing fires
for the time before it existed.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadDateError, croniter

from grace.clock import ensure_utc

__all__ = ["MAX_FIRINGS", "Decision", "decide", "fire_times", "next_fire"]

MAX_FIRINGS = 10_000  # a tick after years of downtime still ends


def fire_times(cron: str, timezone: str, after: datetime, until: datetime) -> list[datetime]:
    """Return the instants (aware UTC, ascending, distinct) in ``(after, until]`` the schedule names."""
    after, until = ensure_utc(after), ensure_utc(until)
    zone = zoneinfo.ZoneInfo(timezone)
    # Walk wall time with a margin on both sides: a time in a skipped hour maps forward, so wall
    # times and instants are not in the same order around a change of offset.
    start = after.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
    stop = until.astimezone(zone).replace(tzinfo=None) + timedelta(hours=3)
    times = croniter(cron, start)
    found: set[datetime] = set()
    for _ in range(MAX_FIRINGS * 4):
        wall: datetime = times.get_next(datetime)
        if wall > stop:
            break
        instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if after < instant <= until:
            found.add(instant)
    return sorted(found)[:MAX_FIRINGS]


# Windows searched, in turn, for a schedule's next firing: an hour first (every few minutes), up to
# eight years (the 29th of February on a Monday fires at least that often).
_NEXT_WINDOWS = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=367), timedelta(days=2930))


def next_fire(cron: str, timezone: str, after: datetime) -> datetime | None:
    """Return the schedule's first firing after ``after`` (aware UTC, the same rules); None within 8 years."""
    after = ensure_utc(after)
    for window in _NEXT_WINDOWS:
        try:
            found = fire_times(cron, timezone, after, after + window)
        except CroniterBadDateError:  # a date that never comes (the 30th of February)
            return None
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class Decision:
    """What one tick does for one schedule: the runs to start, the firings to record as skipped."""

    run: list[datetime] = field(default_factory=list)
    skipped: list[tuple[datetime, str]] = field(default_factory=list)
    last: datetime | None = None  # the new last firing, to store (None: leave it)


def decide(
    cron: str,
    timezone: str,
    last: datetime | None,
    now: datetime,
    *,
    misfire_grace: float,
    coalesce: bool,
) -> Decision:
    """Decide the firings due at ``now`` for a schedule that last fired at ``last``."""
    now = ensure_utc(now)
    if last is None:
        return Decision(last=now)
    due = fire_times(cron, timezone, last, now)
    if not due:
        return Decision()
    grace = timedelta(seconds=misfire_grace)
    run: list[datetime] = []
    skipped: list[tuple[datetime, str]] = []
    if coalesce:
        latest = due[-1]
        for earlier in due[:-1]:
            skipped.append((earlier, f"coalesced into the firing at {latest.isoformat()}"))
        if now - latest <= grace:
            run.append(latest)
        else:
            skipped.append((latest, _misfired(now - latest, misfire_grace)))
    else:
        for at in due:
            if now - at <= grace:
                run.append(at)
            else:
                skipped.append((at, _misfired(now - at, misfire_grace)))
    return Decision(run=run, skipped=skipped, last=due[-1])


def _misfired(late: timedelta, grace: float) -> str:
    return f"misfired: {late.total_seconds():.0f} s late, past the misfire grace of {grace:g} s"
