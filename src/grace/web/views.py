"""What the pages say about consents and secrets: the seed's prompt, who may answer, what a risk demands.

Pure functions of the vault's records and the caller, so they are tested without a browser.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from grace.auth import Principal, Role
from grace.vault import ConsentRecord

__all__ = [
    "HISTORY_STATUSES",
    "RISK_DEMANDS",
    "RISK_LEVELS",
    "ConsentCard",
    "action_phrase",
    "answered_message",
    "approval_what",
    "card",
    "filter_history",
    "prompt",
]

RISK_LEVELS = ("low", "medium", "high", "critical")
HISTORY_STATUSES = ("pending", "approved", "consumed", "denied", "expired", "revoked")

# What each risk level asks of a consent (vault/risk.py), in the words the add-secret form shows.
RISK_DEMANDS = {
    "low": "read-only uses approve themselves; anything else asks you",
    "medium": "Grace asks you before each use",
    "high": "Grace asks you, and the governance policy must allow it",
    "critical": "Grace asks you, the governance policy must allow it, and a second person"
    " (an operator or admin) must approve too",
}

# Actions whose plain words differ from their name; anything else reads as its name ("send_email" -> "send email").
ACTION_PHRASES = {
    "git_push": "push code",
    "git_pull": "pull code",
    "git_clone": "clone a repository",
    "git_fetch": "fetch code",
    "read": "read it",
    "get": "read it",
    "fetch": "fetch data",
    "deploy": "deploy",
    "send_email": "send email",
    "sign": "sign something",
    "ssh": "open an SSH session",
    "ssh_connect": "open an SSH session",
}


def action_phrase(action: str) -> str:
    """Return ``action`` in plain words: ``git_push`` -> ``push code``."""
    known = ACTION_PHRASES.get(action.strip().lower())
    return known if known is not None else action.replace("_", " ").replace("-", " ").strip()


def prompt(record: ConsentRecord) -> str:
    """Return the seed's question: ``Grace wants to use your github credentials to push code. Allow?``.

    An approval (a playbook step asking its owner) asks in the same words about what it would do:
    ``Grace wants to run step 'remediate' (htm.reap) of playbook htm_timing_and_sizing. Allow?``.
    """
    if record.is_approval:
        return f"Grace wants to {approval_what(record)}. Allow?"
    return f"Grace wants to use your {record.service} credentials to {action_phrase(record.requested_action)}. Allow?"


def approval_what(record: ConsentRecord) -> str:
    """What an approval would let happen, in words: ``run step 'act' (bus.publish) of playbook guarded``."""
    ctx = record.context
    step, playbook = ctx.get("step"), ctx.get("playbook")
    if isinstance(step, str) and isinstance(playbook, str):
        return f"run step {step!r} ({record.requested_action}) of playbook {playbook}"
    return f"run {record.requested_action} for {record.requested_by}"


def answered_message(record: ConsentRecord) -> str:
    """The line shown after an answer: what it means for the agent, or for the playbook run."""
    if record.is_approval:
        what = approval_what(record)
        if record.status == "approved":
            return f"Approved: the playbook run goes on ({what})."
        return f"Denied: the playbook run will not {what}; it fails and rolls back."
    if record.status == "pending":
        return "Approved. It now needs a second approver (an operator or admin)."
    if record.status == "approved":
        return (
            f"Approved: {record.requested_by} may use {record.secret_key} to {action_phrase(record.requested_action)}."
        )
    return f"Denied: {record.requested_by} will not get {record.secret_key}."


@dataclass(frozen=True)
class ConsentCard:
    """A pending request as one person sees it: the question, and what they may do about it."""

    record: ConsentRecord
    prompt: str
    can_answer: bool
    as_second: bool  # the caller would answer as the second approver
    note: str  # about the second approval, if any
    context: list[tuple[str, str]]
    expires_in: int

    @property
    def id(self) -> str:
        return self.record.consent_id

    @property
    def version(self) -> str:
        """What, if it changes, means the card must be drawn again."""
        r = self.record
        return f"{r.status}|{r.approved_by}|{r.second_approved_by}|{self.can_answer}"


# An approval's who/what/why are shown in their own lines; the rest of its context as context.
APPROVAL_SHOWN = ("what", "why")


def _context(values: dict[str, Any]) -> list[tuple[str, str]]:
    shown = []
    for key, value in list(values.items())[:20]:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        shown.append((str(key)[:64], text if len(text) <= 200 else text[:199] + "…"))
    return shown


def card(record: ConsentRecord, principal: Principal, now: datetime) -> ConsentCard:
    """Describe a pending request for ``principal``: may they answer it, and as whom."""
    awaiting = record.awaiting_second_approval
    mine = record.user_id == principal.user_id
    if awaiting:
        someone_else = principal.username not in (record.approved_by, record.requested_by) and (
            principal.user_id != record.requester_user_id
        )
        can_answer = principal.agent is None and principal.has_role(Role.OPERATOR) and someone_else
        if can_answer:
            note = f"{record.approved_by} approved this. It is critical, so it needs a second approver: you can be it."
        elif principal.username == record.approved_by:
            note = (
                "You approved this. It is critical, so a second person (an operator or admin other than you)"
                " must approve it too before the agent gets the secret."
            )
        else:
            note = f"{record.approved_by} approved this; it is waiting for a second approver (an operator or admin)."
    else:
        can_answer = principal.agent is None and (mine or principal.is_admin)
        note = (
            "Critical risk: after you approve, a second person (an operator or admin) must approve too."
            if record.second_approval_required
            else ""
        )
    return ConsentCard(
        record,
        prompt(record),
        can_answer,
        awaiting and can_answer,
        note,
        _context({k: v for k, v in record.context.items() if not (record.is_approval and k in APPROVAL_SHOWN)}),
        max(0, int((record.expires_at - now).total_seconds())),
    )


def filter_history(
    records: list[ConsentRecord], *, status: str = "", risk: str = "", service: str = "", agent: str = ""
) -> list[ConsentRecord]:
    """Keep the records that match every filter given (an empty filter matches everything)."""
    service, agent = service.strip().lower(), agent.strip().lower()
    return [
        r
        for r in records
        if (not status or r.status == status)
        and (not risk or r.risk_level == risk)
        and (not service or service in r.service.lower())
        and (not agent or agent in r.requested_by.lower())
    ]
