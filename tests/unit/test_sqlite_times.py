"""The SQLite claim path's own time conversions agree with the column type SQLAlchemy writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from grace.htm import sqlite_claims
from grace.htm.sqlite_claims import stamp, unstamp

PARIS = timezone(timedelta(hours=1))


def test_a_time_is_written_as_naive_utc_text_with_microseconds_whatever_its_zone() -> None:
    assert stamp(datetime(2026, 11, 22, 2, 30, tzinfo=UTC)) == "2026-11-22 02:30:00.000000"
    # The same instant in another zone is the same text: what is stored is UTC.
    assert stamp(datetime(2026, 11, 22, 3, 30, 0, 5, tzinfo=PARIS)) == "2026-11-22 02:30:00.000005"
    assert stamp(None) is None


def test_text_reads_back_as_the_aware_utc_time_it_was_written_from() -> None:
    when = datetime(2026, 11, 22, 3, 30, 0, 123456, tzinfo=PARIS)
    back = unstamp(stamp(when) or "")
    assert back == when
    assert back.tzinfo is UTC
    # SQLAlchemy's text without microseconds, and text that names its offset, read back too.
    assert unstamp("2026-11-22 02:30:00") == datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    assert unstamp("2026-11-22 03:30:00+01:00") == datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    assert unstamp("2026-11-22 03:30:00+01:00").tzinfo is UTC


def test_remembered_conversions_stay_right_when_the_memory_fills_and_empties() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [start + timedelta(microseconds=i) for i in range(sqlite_claims._CACHE_LIMIT + 10)]
    texts = [stamp(t) for t in times]
    assert len(sqlite_claims._stamps) <= sqlite_claims._CACHE_LIMIT
    assert texts[-1] == "2026-01-01 00:00:00.004105"
    # Asked again after the memory was emptied, every conversion gives the same answer.
    assert [stamp(t) for t in times] == texts
    assert [unstamp(x or "") for x in texts] == times
    assert len(sqlite_claims._times) <= sqlite_claims._CACHE_LIMIT
