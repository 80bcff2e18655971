"""Test parts for playbooks: a registry of recording actions (a named fake), and a sleeper that never waits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from grace.playbooks import Action, ActionContext, ActionFailed, ActionRegistry, Param


@dataclass
class RecordingSleeper:
    """A sleeper that records each wait and returns at once (the engine's backoff and timeouts use it)."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@dataclass
class FakeTimer:
    """Timeouts that expire only when told: :meth:`expire` ends the shortest pending one (a named fake)."""

    asked: list[float] = field(default_factory=list)
    pending: list[tuple[float, asyncio.Future[None]]] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seconds, waiter)
        self.pending.append(entry)
        try:
            await waiter
        finally:
            self.pending.remove(entry)

    def expire(self) -> None:
        live = [p for p in self.pending if not p[1].done()]
        if live:
            min(live, key=lambda p: p[0])[1].set_result(None)


@dataclass
class FakeActions:
    """Actions that record their calls; ``fail`` and ``failures`` inject failures (a named fake)."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)  # step ids whose action always fails
    failures: dict[str, int] = field(default_factory=dict)  # step id -> failures before it succeeds
    fail_rollback: set[str] = field(default_factory=set)
    cancelled: list[str] = field(default_factory=list)
    leak: str = ""  # a value to put into error texts and outputs (for the secret tests)
    timer: FakeTimer = field(default_factory=FakeTimer)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)  # set once a hanging action waits
    hang_expires: bool = True  # whether a hanging action lets the nearest deadline come

    def registry(self) -> ActionRegistry:
        return ActionRegistry(
            [
                Action(
                    "test.do",
                    "record a call; fail as told",
                    self.do,
                    params={"value": Param("any"), "secret": Param("secret")},
                    outputs={"value": "any", "count": "int"},
                ),
                Action(
                    "test.read",
                    "record a call without side effects",
                    self.read,
                    outputs={"count": "int"},
                    side_effects=False,
                ),
                Action("test.undo", "record a rollback", self.undo, params={"of": Param("string")}),
                Action("test.hang", "wait until cancelled", self.hang),
            ]
        )

    async def do(self, ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((ctx.step_id, args))
        if self.leak:
            raise ActionFailed(f"the server refused {self.leak}")
        if ctx.step_id in self.fail:
            raise ActionFailed(f"{ctx.step_id} failed as told")
        if self.failures.get(ctx.step_id, 0) > 0:
            self.failures[ctx.step_id] -= 1
            raise ActionFailed(f"{ctx.step_id} failed for now")
        return {"value": args.get("value"), "count": len(self.calls)}

    async def read(self, ctx: ActionContext, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((ctx.step_id, args))
        return {"count": 7}

    async def undo(self, ctx: ActionContext, args: dict[str, Any]) -> None:
        self.calls.append((f"undo:{ctx.step_id}", args))
        if ctx.step_id in self.fail_rollback:
            raise ActionFailed("rollback failed as told")

    async def hang(self, ctx: ActionContext, args: dict[str, Any]) -> None:
        self.calls.append((ctx.step_id, args))
        try:
            await asyncio.sleep(0)  # the step's own timer starts beside it
            self.hanging.set()
            if self.hang_expires:
                self.timer.expire()  # time passes only for the hanging action: the nearest deadline comes
            await asyncio.Event().wait()
        finally:
            self.cancelled.append(ctx.step_id)
