"""Playbooks: operational runbooks as checked YAML, run by a strict engine and a cron scheduler.

A playbook (``docs/playbooks.md``) declares its triggers, policy, typed inputs, monitors and steps;
:func:`check` reads it with every key's position and type-checks its CEL conditions against the
names it declares, so a typo is a lint error, never a silent ``false``.
"""

from __future__ import annotations

from grace.playbooks.actions import Action, ActionContext, ActionFailed, ActionRegistry, Capabilities, Param
from grace.playbooks.builtin import ALERT_TOPIC, default_registry
from grace.playbooks.engine import Engine, RunResult, backoff_delay
from grace.playbooks.history import RunPage, RunRecord, RunStore
from grace.playbooks.schedule import next_fire
from grace.playbooks.scheduler import LEADER_LOCK, Scheduler
from grace.playbooks.schema import Playbook, Problem, check, check_text
from grace.playbooks.service import RUN_TASK, Playbooks

__all__ = [
    "ALERT_TOPIC",
    "LEADER_LOCK",
    "RUN_TASK",
    "Action",
    "ActionContext",
    "ActionFailed",
    "ActionRegistry",
    "Capabilities",
    "Engine",
    "Param",
    "Playbook",
    "Playbooks",
    "Problem",
    "RunPage",
    "RunRecord",
    "RunResult",
    "RunStore",
    "Scheduler",
    "backoff_delay",
    "check",
    "check_text",
    "default_registry",
    "next_fire",
]
