"""The session-wide canary check: runs last (see tests/conftest.py) and fails on any leak seen so far."""

from __future__ import annotations

from tests import canary


def test_canary_never_leaked() -> None:
    session = canary.SESSION
    canary.scan_live_objects(session)
    assert session.planted > 0, "the canary was never planted: no test built the services"
    assert session.scanned.get("log", 0) > 0, "no log line was collected"
    leaks = session.leaks()
    assert not leaks, "the canary secret appeared outside its authorised retrieval:\n" + "\n".join(leaks[:20])
