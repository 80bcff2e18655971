"""The playbooks facade: find and check playbooks, run them (inline or as task-manager tasks), read history."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grace import errors
from grace.auth import Principal
from grace.playbooks.actions import ActionRegistry, Capabilities
from grace.playbooks.engine import Answer, Engine, RunResult, RunState, parse_inputs
from grace.playbooks.history import RunPage, RunRecord, RunStore
from grace.playbooks.schema import Playbook, Problem, Step, check, check_text
from grace.storage import Database

__all__ = ["RUN_TASK", "Playbooks"]

log = logging.getLogger("grace.playbooks")

RUN_TASK = "playbooks.run"


@dataclass(frozen=True)
class Listed:
    name: str
    path: str
    description: str
    valid: bool
    problems: list[Problem]
    playbook: Playbook | None


class Playbooks:
    """Playbooks in one directory, the engine that runs them and their history."""

    def __init__(
        self,
        db: Database,
        capabilities: Capabilities,
        registry: ActionRegistry,
        directory: Path,
        *,
        engine: Engine | None = None,
        people: Callable[[str], Awaitable[Principal | None]] | None = None,
    ) -> None:
        self.db = db
        # A user by name or id, as a person a run can be for (None: no such user, or disabled).
        self.people = people
        self.capabilities = capabilities
        self.registry = registry
        self.directory = directory
        self.history = RunStore(db, capabilities.clock)
        # path -> ((its text, how many actions were registered), what checking it gave)
        self._checks: dict[str, tuple[tuple[str, int], tuple[Playbook | None, list[Problem]]]] = {}
        self.engine = engine or Engine(
            registry,
            capabilities,
            self.history,
            resolve_secret=self._resolve_secret,
            ask_approval=self._ask_approval,
        )

    def __repr__(self) -> str:
        return f"Playbooks(directory={str(self.directory)!r})"

    # -- finding and checking ----------------------------------------------------------------

    def lint(self, path: Path) -> list[Problem]:
        return check(path, self.registry)[1]

    def load(self, path: Path) -> Playbook:
        """Return the checked playbook at ``path``; PlaybookInvalid lists every problem."""
        playbook, problems = check(path, self.registry)
        if playbook is None:
            raise errors.PlaybookInvalid(
                f"{path} does not pass lint: {problems[0]}" if problems else f"{path} does not pass lint",
                details=[p.as_dict() for p in problems],
            )
        return playbook

    def catalogue(self) -> list[Listed]:
        """Every ``*.yaml`` in the directory, checked, by name."""
        found: list[Listed] = []
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob("*.yaml")):
            playbook, problems = self._checked(path)
            found.append(
                Listed(
                    playbook.name if playbook else path.stem,
                    str(path),
                    playbook.description if playbook else "",
                    playbook is not None,
                    problems,
                    playbook,
                )
            )
        return found

    def _checked(self, path: Path) -> tuple[Playbook | None, list[Problem]]:
        """Check ``path``, or hand back what checking the same text gave last time.

        The catalogue is read on every listing and every run by name; checking compiles each
        condition, so an unchanged file (the same text, read again each time, and the same actions)
        is checked once.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return check(path, self.registry)  # which reports the file as unreadable
        key = str(path)
        actions = len(self.registry.names())  # an action registered since may answer a problem
        kept = self._checks.get(key)
        if kept is not None and kept[0] == (text, actions):
            return kept[1][0], list(kept[1][1])
        result = check_text(text, key, self.registry)
        self._checks[key] = ((text, actions), result)
        return result[0], list(result[1])

    def named(self, name: str) -> Playbook:
        for listed in self.catalogue():
            if listed.name == name:
                if listed.playbook is None:
                    raise errors.PlaybookInvalid(
                        f"playbook {name!r} does not pass lint", details=[p.as_dict() for p in listed.problems]
                    )
                return listed.playbook
        raise errors.NotFound(f"no playbook {name[:64]!r}")

    # -- running ---------------------------------------------------------------------------------

    async def execute(
        self,
        playbook: Playbook,
        inputs: Mapping[str, Any],
        *,
        who: str,
        principal: Any = None,
        dry_run: bool = False,
        trigger: str = "manual",
    ) -> RunResult:
        """Run ``playbook`` in this process to its end (the CLI's ``execute``).

        With no ``principal`` (no one started it as a person), the run is for the playbook's ``owner``;
        an owner who is not an active user fails the run at its start, saying so.
        """
        try:
            parse_inputs(playbook, inputs)
        except ValueError as exc:
            raise errors.InvalidInput(str(exc)) from None
        failed = None
        if principal is None and not dry_run:
            principal, failed = await self.owner_of(playbook)
        return await self.engine.run(
            playbook, inputs, trigger=trigger, who=who, principal=principal, dry_run=dry_run, failed=failed
        )

    async def person(self, username_or_id: str) -> Principal | None:
        """The active user ``username_or_id`` as a person a run can be for; None if there is none."""
        return await self.people(username_or_id) if self.people is not None else None

    async def owner_of(self, playbook: Playbook) -> tuple[Principal | None, str | None]:
        """The person a run no one started is for: the playbook's ``owner``, and why not if it cannot be.

        Returns (None, None) for a playbook without an owner (the run has no person, as before);
        (None, reason) for an owner who is not an active user of this Grace (the run fails, saying so).
        """
        if playbook.owner is None:
            return None, None
        person = await self.person(playbook.owner)
        if person is None:
            return None, (
                f"the playbook's owner {playbook.owner!r} is not an active user of this Grace"
                " (no such user, or disabled): fix 'owner:' in the playbook"
            )
        return person, None

    async def _resolve_secret(self, key: str, state: RunState) -> str:
        """Ask the vault for a secret as the run's person, with consent where the vault demands it."""
        vault = self.capabilities.vault
        if vault is None:
            raise ValueError("no vault to resolve secrets")
        if state.principal is None:
            raise ValueError(
                f"secret {key!r} needs the person the run is for; this run has none (give the playbook an 'owner:')"
            )
        result = await vault.access(
            state.principal,
            key,
            action="read",
            purpose=f"playbook {state.playbook.name} run {state.run_id}",
        )
        if not result.approved or result.value is None:
            raise ValueError(f"secret {key!r} was not released: {result.status}")
        return result.value.reveal()

    # -- approvals ---------------------------------------------------------------------------------

    async def _ask_approval(self, step: Step, state: RunState) -> dict[str, str]:
        """Ask the person the run is for, in the vault's consent inbox, to approve ``step``."""
        vault = self.capabilities.vault
        if vault is None:
            raise ValueError("this Grace has no vault, so no consent inbox to ask in")
        person = state.principal
        if person is None or getattr(person, "agent", None) is not None:
            raise ValueError(
                "an approval asks the person the run is for, and this run has none (a scheduled, event or CLI"
                " run of a playbook without 'owner:'): give the playbook an owner, run it with"
                " 'grace playbook execute --as USERNAME', or start it through POST /api/playbooks/{name}/run"
            )
        assert step.approval is not None
        record = await vault.ask_approval(
            user_id=person.user_id,
            asked_by=f"playbook.{state.playbook.name}",
            action=step.call.action,
            what=f"run step {step.id!r} ({step.call.action}) of playbook {state.playbook.name}",
            why=state.scrub(step.approval.message),
            service="playbooks",
            timeout_seconds=step.approval.timeout,
            context={"playbook": state.playbook.name, "run_id": state.run_id, "step": step.id, "started_by": state.who},
        )
        return {"consent_id": record.consent_id, "expires_at": record.expires_at.isoformat()}

    async def answer_of(self, consent_id: str) -> Answer | None:
        """The answer to a run's approval (an unanswered one past its timeout is expired now); None while pending."""
        vault = self.capabilities.vault
        if vault is None:
            return Answer("denied", "this Grace has no vault to read the approval from")
        record = await vault.settle_consent(consent_id)
        if not record.is_approval:
            return Answer("denied", "the run's approval record is not an approval")
        if record.status == "pending":
            return None
        if record.status in ("approved", "consumed"):
            return Answer("approved", f"approved by {record.approved_by}")
        if record.status == "expired":
            return Answer("expired", "no answer before the approval's timeout")
        if record.status == "revoked":
            return Answer("denied", "the approval request was withdrawn")
        return Answer("denied", f"denied: {record.denial_reason or 'no reason given'}")

    # -- history ----------------------------------------------------------------------------------

    async def run_record(self, run_id: str) -> RunRecord:
        return await self.history.get(run_id)

    async def runs(self, *, playbook: str | None = None, limit: int = 50) -> list[RunRecord]:
        return await self.history.recent(playbook=playbook, limit=limit)

    async def run_page(
        self, *, playbook: str | None = None, statuses: tuple[str, ...] = (), before: str | None = None, limit: int = 50
    ) -> RunPage:
        """A page of runs, newest first; a ``playbook`` neither in the directory nor in the history is NotFound."""
        known = playbook is None or await self.history.recorded(playbook)
        if not known and not any(p.name == playbook for p in self.catalogue()):
            raise errors.NotFound(f"no playbook {str(playbook)[:64]!r}")
        return await self.history.page(playbook=playbook, statuses=statuses, before=before, limit=limit)

    async def last_run(self, playbook: str) -> RunRecord | None:
        """The newest run of ``playbook`` that is not a skipped firing."""
        return await self.history.last(playbook)
