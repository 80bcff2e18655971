"""Event bus: publish/subscribe by topic, with wildcards, replay and durable cursors.

``InProcessBus`` serves a single node; ``PostgresBus`` shares events between
processes and machines through the database.
"""

from __future__ import annotations

from grace.bus.log import Bus, Event, Subscription
from grace.bus.memory import InProcessBus
from grace.bus.postgres import PostgresBus
from grace.bus.topics import matches

__all__ = ["Bus", "Event", "InProcessBus", "PostgresBus", "Subscription", "matches"]
