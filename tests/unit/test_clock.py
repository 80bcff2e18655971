"""Time is aware UTC everywhere, and tests move it by hand."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from grace.clock import ManualClock, SystemClock, ensure_utc, iso

ROOT = Path(__file__).resolve().parents[2]


def test_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


def test_ensure_utc_converts_and_refuses_naive() -> None:
    assert ensure_utc(datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))).hour == 17
    with pytest.raises(ValueError, match="naive"):
        ensure_utc(datetime(2026, 1, 1))  # noqa: DTZ001


def test_times_are_written_as_iso_text_with_their_offset() -> None:
    assert iso(datetime(2026, 3, 1, 9, 30, 0, 250, tzinfo=UTC)) == "2026-03-01T09:30:00.000250+00:00"
    assert iso(None) is None


async def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(datetime(2026, 5, 1, tzinfo=UTC))
    assert clock.now() == clock.now()
    await clock.sleep(30)
    clock.advance(30)
    assert clock.now() == datetime(2026, 5, 1, 0, 1, tzinfo=UTC)
    assert clock.monotonic() == 60
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_lint_rejects_naive_datetimes(tmp_path: Path) -> None:
    """ruff's datetime rules (DTZ), as configured for the project, refuse naive datetimes."""
    sample = tmp_path / "naive.py"
    sample.write_text("import datetime\n\nSTAMP = datetime.datetime.utcnow()\nLATER = datetime.datetime.now()\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--select",
            "DTZ",
            "--no-cache",
            str(sample),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "DTZ003" in result.stdout and "DTZ005" in result.stdout


def test_source_has_no_naive_datetime_calls() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--select",
            "DTZ",
            "--no-cache",
            str(ROOT / "src"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
