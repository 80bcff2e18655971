"""Intent handlers: what an intent names to be carried out, each run as an HTM task type ``intent.<name>``.

A capability (or a deployment's own module) registers a handler with the domains it serves. The
task manager runs it like any task (fair share of origin ``intent``, retries, timeouts, SLA); the
handler gets the intent's goal, expected outcome, domain and context from the task's payload.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from grace import errors
from grace.clock import Clock
from grace.htm import ANYONE, HandlerRegistry, TaskContext

__all__ = ["TASK_PREFIX", "HandlerSpec", "IntentContext", "IntentHandler", "IntentHandlers", "register_builtin"]

TASK_PREFIX = "intent."
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,59}$")
_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,39}$")


@dataclass(frozen=True)
class IntentContext:
    """What an intent handler gets: the intent as carried in its task's payload, and the task."""

    intent_id: str
    goal: str
    expected_outcome: str | None
    domain: str
    context: dict[str, Any]
    task: TaskContext


IntentHandler = Callable[[IntentContext], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class HandlerSpec:
    """A registered intent handler: its name, the domains it serves (the first is its default), its task type."""

    name: str
    domains: tuple[str, ...]
    description: str

    @property
    def task_type(self) -> str:
        return TASK_PREFIX + self.name


class IntentGone(RuntimeError):
    """The task's intent is no longer stored: the task is an orphan (the sweep cancels it)."""


class IntentHandlers:
    """Intent handlers by name, registered as task types on the task manager."""

    def __init__(self, tasks: HandlerRegistry, exists: Callable[[str], Awaitable[bool]]) -> None:
        self._tasks = tasks
        self._exists = exists
        self._specs: dict[str, HandlerSpec] = {}

    def register(
        self, name: str, fn: IntentHandler, *, domains: tuple[str, ...] = ("general",), description: str = ""
    ) -> HandlerSpec:
        """Register ``fn`` as the handler ``name`` serving ``domains``; refuses a second one of the same name."""
        if not _NAME.match(name):
            raise ValueError(f"intent handler name {name!r}: 1 to 60 lowercase letters, digits, '_' or '-'")
        if not domains or not all(_DOMAIN.match(d) for d in domains):
            raise ValueError(f"intent handler {name!r}: domains are 1 to 40 lowercase letters, digits, '_' or '-'")
        if name in self._specs:
            raise errors.Conflict(f"an intent handler named {name!r} is already registered")
        spec = HandlerSpec(name, tuple(domains), description)
        exists = self._exists

        async def run(ctx: TaskContext) -> Any:
            payload = ctx.payload
            intent_id = str(payload.get("intent_id") or ctx.task.intent_id or "")
            if not intent_id or not await exists(intent_id):
                raise IntentGone(f"intent {intent_id[:100]!r} is gone: this task serves no one")
            return await fn(
                IntentContext(
                    intent_id=intent_id,
                    goal=str(payload.get("goal", "")),
                    expected_outcome=payload.get("expected_outcome"),
                    domain=str(payload.get("domain", spec.domains[0])),
                    context=dict(payload.get("context") or {}),
                    task=ctx,
                )
            )

        # Anyone's (members and their agents): the submission itself goes through admission as the intent's owner.
        self._tasks.register(spec.task_type, run, submitters=ANYONE)
        self._specs[name] = spec
        return spec

    def get(self, name: str) -> HandlerSpec:
        """Return the handler ``name``; 422 naming the field and the known handlers otherwise."""
        spec = self._specs.get(name)
        if spec is None:
            known = sorted(self._specs)
            raise errors.InvalidInput(
                f"handler: no intent handler named {name[:60]!r}; known handlers: {', '.join(known) or 'none'}",
                details={"field": "handler", "valid": known},
            )
        return spec

    def specs(self) -> list[HandlerSpec]:
        return [self._specs[n] for n in sorted(self._specs)]

    def domains(self) -> list[str]:
        """Return every domain some handler serves."""
        return sorted({d for s in self._specs.values() for d in s.domains})

    def parse_domain(self, value: str, *, field: str = "domain", among: tuple[str, ...] | None = None) -> str:
        """Return ``value`` if it is a known domain (of ``among`` when given); 422 naming the valid ones."""
        valid = list(among) if among is not None else self.domains()
        name = value.strip().lower()
        if name not in valid:
            raise errors.InvalidInput(
                f"{field}: unknown domain {value[:40]!r}; valid domains: {', '.join(valid)}",
                details={"field": field, "valid": valid},
            )
        return name


def register_builtin(handlers: IntentHandlers, clock: Clock) -> None:
    """Register Grace's own intent handlers: ``echo`` and ``wait`` (domain ``general``), for trying the bridge."""

    async def echo(ctx: IntentContext) -> dict[str, Any]:
        return {"goal": ctx.goal, "context": ctx.context}

    async def wait(ctx: IntentContext) -> dict[str, float]:
        seconds = ctx.context.get("seconds", 1.0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
            raise ValueError("context.seconds must be a number from 0 to 3600")
        await clock.sleep(float(seconds))
        return {"waited": float(seconds)}

    handlers.register("echo", echo, description="Completes with the intent's goal and context.")
    handlers.register("wait", wait, description="Waits context.seconds (0 to 3600), then completes.")
