"""Helpers for the task manager's tests: an HTM on the test database with a manual clock, and gated handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from grace import storage
from grace.bus import InProcessBus
from grace.clock import ManualClock
from grace.htm import HTM, TaskContext, load_config
from grace.htm.origins import Origin


@contextlib.asynccontextmanager
async def manual_htm(database_url: str, clock: ManualClock, **overrides: Any) -> AsyncIterator[HTM]:
    """An HTM whose time moves only when the test says so (no burst limit unless asked)."""
    db = storage.Database(database_url)
    bus = InProcessBus(clock=clock)
    htm = HTM(db, bus, clock, load_config(**{"burst_per_minute": 0, **overrides}))
    await htm.prepare()
    try:
        yield htm
    finally:
        await htm.close(grace=0)
        await bus.close()
        await db.dispose()


async def submit(htm: HTM, origin: Origin | str, count: int = 1, **fields: Any) -> list[str]:
    """Submit ``count`` tasks of one origin (task type ``test.gate`` unless given); return their ids."""
    task_type = fields.pop("task_type", "test.gate")
    origin_name = origin.value if isinstance(origin, Origin) else origin
    requests = [htm.request(task_type, origin=origin_name, **fields) for _ in range(count)]
    return [s.task_id for s in await htm.submit_many(requests, creator=None)]


class Gate:
    """A handler that blocks until released (or fails when told to), recording what started."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.open = asyncio.Event()
        self.fail_with: BaseException | None = None

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        self.started.append(ctx.task_id)
        if self.fail_with is not None:
            raise self.fail_with
        await self.open.wait()
        return {"ran": ctx.task_id}

    def release(self) -> None:
        self.open.set()


async def settle() -> None:
    """Let started handler tasks run up to their first wait."""
    for _ in range(5):
        await asyncio.sleep(0)
