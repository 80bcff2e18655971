"""Intents: the agent's goals run as tasks (the Layer 3 ↔ Layer 2 bridge), and the learning loop.

An agent submits an intent (a goal, the outcome it expects, an SLA, a priority, a domain, context
and its confidence) for a named intent handler; Grace records it and submits it to the task manager
as a task of origin ``intent``, linked both ways. The intent's status follows its task;
``agentic.intent.created|completed|failed|timeout|cancelled`` go on the bus; every finished intent
records an outcome in the learning loop, whose summaries say how often each kind of action
succeeds, how long it takes, how well the agent's confidence predicted success, and what SLA the
observed times suggest. :class:`Intents` is the facade; see docs/intents.md.
"""

from __future__ import annotations

from grace.intents.config import IntentsConfig, load_config
from grace.intents.handlers import HandlerSpec, IntentContext, IntentHandler, IntentHandlers
from grace.intents.learning import OutcomeFacts, summarise
from grace.intents.model import Intent, IntentStatus
from grace.intents.outcomes import LearningLoop
from grace.intents.recovery import Sweep
from grace.intents.service import CRASH_AFTER_RECORD_ENV, Intents

__all__ = [
    "CRASH_AFTER_RECORD_ENV",
    "HandlerSpec",
    "Intent",
    "IntentContext",
    "IntentHandler",
    "IntentHandlers",
    "IntentStatus",
    "Intents",
    "IntentsConfig",
    "LearningLoop",
    "OutcomeFacts",
    "Sweep",
    "load_config",
    "summarise",
]
