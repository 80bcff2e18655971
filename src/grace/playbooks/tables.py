"""Playbook tables: every run (and every skipped firing) with its steps, and each schedule's last firing.

The migration ``0011_playbooks`` creates the same tables.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, String, Table, Text, UniqueConstraint

from grace.storage import UTCDateTime, metadata

__all__ = ["playbook_runs", "playbook_schedules"]

# ``status``: queued -> running -> succeeded | failed | cancelled | timed_out, with ``waiting`` (for an
# approval: no task holds it) -> ``queued`` -> ``running`` again in between; ``skipped`` for a
# firing that did not start a run (its ``reason`` says why). ``trigger_key`` makes a firing
# idempotent: ``event:<bus event id>`` or ``schedule:<fire time>``, unique per playbook.
playbook_runs = Table(
    "playbook_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("playbook", String(64), nullable=False),
    Column("digest", String(16), nullable=False, server_default=""),
    Column("trigger", String(20), nullable=False),
    Column("trigger_key", String(200), nullable=True),
    Column("who", String(200), nullable=False),
    Column("inputs", Text, nullable=False, server_default="{}"),
    Column("status", String(20), nullable=False),
    Column("reason", Text, nullable=True),
    Column("dry_run", Boolean, nullable=False, server_default="0"),
    Column("task_id", String(40), nullable=True),
    Column("steps", Text, nullable=False, server_default="[]"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("duration_ms", Float, nullable=True),
    # A run waiting for an approval (status ``waiting``): the consent it asked, and what it resumes from.
    Column("approval_id", String(128), nullable=True),
    Column("parked", Text, nullable=True),
    UniqueConstraint("playbook", "trigger_key", name="uq_playbook_runs_trigger_key"),
    Index("ix_playbook_runs_playbook_created", "playbook", "created_at"),
    Index("ix_playbook_runs_status", "status"),
    Index("ix_playbook_runs_approval_id", "approval_id"),
)

playbook_schedules = Table(
    "playbook_schedules",
    metadata,
    Column("playbook", String(64), primary_key=True),
    Column("last_fire_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
