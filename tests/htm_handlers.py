"""Handlers for worker processes started by tests: ``grace worker --handlers tests.htm_handlers:register``.

``test.work`` sleeps ``payload.seconds`` (real time) and appends one line per start and per finish
to the file named by GRACE_TEST_HTM_LOG, so a test can count how often each task really ran.
"""

from __future__ import annotations

import asyncio
import os

from grace.htm import HandlerRegistry, TaskContext


def _log(line: str) -> None:
    path = os.environ.get("GRACE_TEST_HTM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


async def work(ctx: TaskContext) -> dict[str, int]:
    _log(f"start {ctx.task_id} {os.getpid()}")
    await asyncio.sleep(float(ctx.payload.get("seconds", 0.1)))
    _log(f"done {ctx.task_id} {os.getpid()}")
    return {"pid": os.getpid()}


def register(registry: HandlerRegistry) -> None:
    registry.register("test.work", work)
