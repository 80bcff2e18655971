"""Handlers for benchmark worker processes: ``grace worker --handlers bench.htm_handlers:register``."""

from __future__ import annotations

import asyncio
import os

from grace.htm import HandlerRegistry, TaskContext


def _log(line: str) -> None:
    path = os.environ.get("GRACE_BENCH_HTM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


async def sleep(ctx: TaskContext) -> None:
    _log(f"start {ctx.task_id}")
    await asyncio.sleep(float(ctx.payload.get("seconds", 0.05)))
    _log(f"done {ctx.task_id}")


def register(registry: HandlerRegistry) -> None:
    registry.register("bench.sleep", sleep)
