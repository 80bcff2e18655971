"""Background loops: how they notice they were asked to stop, and how their owners stop them.

A loop that retries on errors (``except Exception``: log, then go on) has a hazard. Cancelling a
task in the middle of a database call can surface as another error, raised while the driver or a
context manager cleans up; the cancellation itself is then spent. The loop logs the error, goes
on, and waits again for an event or a tick, and an owner that cancelled it once and awaits it
waits for ever. Two halves close that hole:

- the loop calls :func:`stop_if_cancelled` in its error handler, so a pending cancellation ends it;
- the owner stops it with :func:`stop`, which asks again every second until the task has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["stop", "stop_all", "stop_if_cancelled"]

log = logging.getLogger("grace.background")

ASK_AGAIN_SECONDS = 1.0


def stop_if_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop (call it where a loop swallows errors)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it to end, asking again if a cancellation was swallowed.

    What the task raised on its way out is logged (by class only) and not raised: the owner is stopping.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=ASK_AGAIN_SECONDS)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background.failed", extra={"task": task.get_name(), "reason": type(task.exception()).__name__})


async def stop_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Stop every task in ``tasks`` (all asked at once, then each awaited)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        await stop(task)
