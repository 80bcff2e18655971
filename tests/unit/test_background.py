"""Stopping background loops: a loop whose cancellation surfaced as another error still stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from grace import background


class DriverCleanupError(Exception):
    """What a database driver may raise while it cleans up after a cancelled call (a fake, for the test)."""


class RetryingLoop:
    """A loop that retries on errors, as Grace's background loops do, with or without the stop check."""

    def __init__(self, *, checks: bool) -> None:
        self.checks = checks
        self.in_call = asyncio.Event()
        self.retries = 0
        self.forever = asyncio.Event()  # never set: the loop's idle wait

    async def call(self) -> None:
        """A database call whose cleanup turns the cancellation into another error."""
        self.in_call.set()
        try:
            await self.forever.wait()
        except asyncio.CancelledError:
            raise DriverCleanupError("connection reset while rolling back") from None

    async def run(self) -> None:
        while True:
            try:
                await self.call()
            except Exception:
                if self.checks:
                    background.stop_if_cancelled()
                self.retries += 1
            await self.forever.wait()


async def test_a_loop_that_checks_ends_at_the_first_ask_though_its_call_raised_another_error() -> None:
    loop = RetryingLoop(checks=True)
    task = asyncio.create_task(loop.run())
    await loop.in_call.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() and loop.retries == 0


async def test_stop_asks_again_until_a_loop_that_swallowed_the_cancellation_has_ended() -> None:
    loop = RetryingLoop(checks=False)
    task = asyncio.create_task(loop.run(), name="swallower")
    await loop.in_call.wait()
    await background.stop(task)  # the first ask is spent in the driver's clean-up; the second ends the idle wait
    assert task.done() and task.cancelled()
    assert loop.retries == 1


async def test_stop_all_stops_every_task_and_logs_what_one_raised_on_the_way_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_when_stopped() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise DriverCleanupError("gone") from None

    quiet = asyncio.create_task(asyncio.Event().wait(), name="quiet")
    loud = asyncio.create_task(fails_when_stopped(), name="loud")
    await asyncio.sleep(0)  # both are waiting
    with caplog.at_level(logging.WARNING, logger="grace.background"):
        await background.stop_all([quiet, loud])
    assert quiet.cancelled() and loud.done() and isinstance(loud.exception(), DriverCleanupError)
    [record] = [r for r in caplog.records if r.getMessage() == "background.failed"]
    assert record.__dict__["task"] == "loud" and record.__dict__["reason"] == "DriverCleanupError"


async def test_stopping_nothing_or_a_finished_task_returns_at_once() -> None:
    await background.stop(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await background.stop(done)
    assert done.done() and not done.cancelled()
