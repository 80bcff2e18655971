"""Times as the UTC column type writes them on SQLite, and reads them back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from grace.storage import types
from grace.storage.types import utc_from_text, utc_read, utc_text

PARIS = timezone(timedelta(hours=1))


def test_a_time_is_written_as_naive_utc_text_with_microseconds_whatever_its_zone() -> None:
    assert utc_text(datetime(2026, 11, 22, 2, 30, tzinfo=UTC)) == "2026-11-22 02:30:00.000000"
    # The same instant in another zone is the same text: what is stored is UTC.
    assert utc_text(datetime(2026, 11, 22, 3, 30, 0, 5, tzinfo=PARIS)) == "2026-11-22 02:30:00.000005"
    assert utc_text(None) is None


def test_text_reads_back_as_the_aware_utc_time_it_was_written_from() -> None:
    when = datetime(2026, 11, 22, 3, 30, 0, 123456, tzinfo=PARIS)
    back = utc_from_text(utc_text(when) or "")
    assert back == when
    assert back.tzinfo is UTC
    # SQLAlchemy's text without microseconds, and text that names its offset, read back too.
    assert utc_from_text("2026-11-22 02:30:00") == datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    assert utc_from_text("2026-11-22 03:30:00+01:00") == datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    assert utc_from_text("2026-11-22 03:30:00+01:00").tzinfo is UTC


def test_remembered_conversions_stay_right_when_the_memory_fills_and_empties() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [start + timedelta(microseconds=i) for i in range(types._CACHE_LIMIT + 10)]
    texts = [utc_text(t) for t in times]
    assert len(types._stamps) <= types._CACHE_LIMIT
    assert texts[-1] == "2026-01-01 00:00:00.004105"
    # Asked again after the memory was emptied, every conversion gives the same answer.
    assert [utc_text(t) for t in times] == texts
    assert [utc_from_text(x or "") for x in texts] == times
    assert len(types._times) <= types._CACHE_LIMIT


def test_a_time_as_either_database_hands_it_back_reads_as_aware_utc() -> None:
    instant = datetime(2026, 11, 22, 2, 30, tzinfo=UTC)
    assert utc_read("2026-11-22 02:30:00.000000") == instant  # SQLite's text
    assert utc_read(datetime(2026, 11, 22, 2, 30)) == instant  # noqa: DTZ001 - a naive value is UTC
    assert utc_read(datetime(2026, 11, 22, 3, 30, tzinfo=PARIS)) == instant
    for value in ("2026-11-22 02:30:00", instant.astimezone(PARIS)):
        back = utc_read(value)
        assert back is not None and back.tzinfo is UTC
    assert utc_read(None) is None
