"""The composition root's life cycle: what a serving process starts, it stops."""

from __future__ import annotations

import asyncio

import pytest

from grace.config import Settings
from grace.services import build


async def test_close_stops_a_background_job_even_when_its_first_cancellation_was_swallowed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelling a job in the middle of a database call can surface as another error, which a
    # retrying loop would swallow; closing must still end, not wait for it forever.
    monkeypatch.setenv("GRACE_HTM_EMBEDDED_WORKERS", "false")
    built = await build(settings, migrate=False)
    swallowed: list[bool] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)

    job = asyncio.create_task(stubborn())
    built._background.append(job)
    await asyncio.sleep(0)
    await asyncio.wait_for(built.close(), timeout=30)
    assert swallowed == [True] and job.cancelled()
