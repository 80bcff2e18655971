"""Actions: what a playbook step may do, registered like plugins.

An :class:`Action` declares its parameters and outputs with types (lint checks every ``with`` and
every ``steps.<id>.output.<field>`` against them), whether it has side effects (a dry run calls
only those without), and a coroutine that does the work through a capability's public API, given
the :class:`Capabilities` of the running Grace.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grace.auth import Principal
    from grace.bus import Bus
    from grace.clock import Clock
    from grace.htm import HTM
    from grace.intents import LearningLoop
    from grace.vault import Vault
    from grace.voice import VoiceNotes

__all__ = ["Action", "ActionContext", "ActionFailed", "ActionRegistry", "Capabilities", "Param", "suggest"]


class ActionFailed(Exception):
    """An action could not do its work; the message is what the run history shows."""


@dataclass(frozen=True)
class Param:
    """One parameter of an action: its type (one of ``expressions.TYPES``), whether required, its default."""

    type: str
    required: bool = False
    default: Any = None
    description: str = ""


@dataclass
class Capabilities:
    """The parts of a running Grace that actions call (each through its public API)."""

    clock: Clock
    bus: Bus | None = None
    htm: HTM | None = None
    vault: Vault | None = None
    voice: VoiceNotes | None = None
    learning: LearningLoop | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionContext:
    """What an action is given besides its arguments: the capabilities and the run it works for."""

    capabilities: Capabilities
    run_id: str
    playbook: str
    step_id: str
    attempt: int
    who: str
    principal: Principal | None = None  # the person a manual run is for; None for the scheduler
    run_started_at: datetime | None = None

    def need(self, name: str) -> Any:
        """Return the named capability, or fail the step naming what is missing."""
        part = getattr(self.capabilities, name, None)
        if part is None:
            raise ActionFailed(f"this Grace has no {name} capability for the action")
        return part


ActionFn = Callable[[ActionContext, dict[str, Any]], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class Action:
    """A registered action."""

    name: str
    description: str
    fn: ActionFn
    params: Mapping[str, Param] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    side_effects: bool = True
    needs: str = ""  # the issue whose capability the action waits for, when it is not on main yet


class ActionRegistry:
    """Actions by name."""

    def __init__(self, actions: Iterable[Action] = ()) -> None:
        self._actions: dict[str, Action] = {}
        for action in actions:
            self.register(action)

    def register(self, action: Action) -> Action:
        if action.name in self._actions:
            raise ValueError(f"action {action.name!r} is registered twice")
        self._actions[action.name] = action
        return action

    def get(self, name: str) -> Action | None:
        return self._actions.get(name)

    def names(self) -> list[str]:
        return sorted(self._actions)

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def __iter__(self) -> Any:
        return iter(self._actions.values())


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
