"""The vault's background upkeep: expiry warnings, rotation scheduling, and the tick that runs them.

Key rotations run as task-manager tasks (``vault.rotate_keys``) once the
composition root wires a submitter in; until then (the CLI, tests) they run in
this process. Each round also expires unanswered consents through the
callable it is given, and signs the audit log's head.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from grace import background, clock, errors
from grace.bus import Bus
from grace.vault.audit import AuditLog
from grace.vault.keyring import Keyring, RotationReport, StepHook
from grace.vault.store import SecretStore

__all__ = [
    "ROTATION_TASK",
    "TOPIC_KEY_EXPIRING",
    "TOPIC_KEY_ROTATED",
    "TOPIC_ROTATION_DUE",
    "RotationSubmitter",
    "Upkeep",
]

log = logging.getLogger("grace.vault")

TOPIC_ROTATION_DUE = "secrets.rotation.due"
TOPIC_KEY_EXPIRING = "secrets.key.expiring"
TOPIC_KEY_ROTATED = "secrets.key.rotated"
ROTATION_TASK = "vault.rotate_keys"

RotationSubmitter = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(eq=False, repr=False)
class Upkeep:
    """Warn of due secret rotations and an expiring key, and rotate the key on schedule."""

    bus: Bus
    audit: AuditLog
    keyring: Keyring
    secrets: SecretStore
    expire_pending: Callable[[], Awaitable[int]]
    _rotation_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _rotation_task: asyncio.Task[None] | None = field(default=None, init=False)
    _submit_rotation: RotationSubmitter | None = field(default=None, init=False)
    _queued_for_term: int | None = field(default=None, init=False)

    def __repr__(self) -> str:
        return f"Upkeep(on_task_manager={self._submit_rotation is not None})"

    async def tick(self) -> dict[str, Any]:
        """One round of background upkeep: expiries, due rotations, key expiry, scheduled key rotation."""
        done: dict[str, Any] = {
            "expired": await self.expire_pending(),
            "rotation_due": await self.publish_rotation_due(),
        }
        done["key_expiring"] = await self.check_key_expiry()
        if await self.keyring.rotation_due():
            if self._submit_rotation is None:
                done["rotated"] = (await self.rotate_keys(by="schedule")).as_dict()
            else:
                term = await self._active_term()
                if term != self._queued_for_term:  # one task per key term from this process
                    done["rotation_queued"] = await self.request_rotation(by="schedule", reason="schedule")
                    self._queued_for_term = term
        await self.audit.checkpoint()
        return done

    async def publish_rotation_due(self) -> int:
        """Publish ``secrets.rotation.due`` once for each secret that has become due; return how many."""
        published = 0
        for secret in await self.secrets.rotation_due(None):
            if await self.secrets.mark_rotation_notified(secret.id):
                await self.bus.publish(
                    TOPIC_ROTATION_DUE,
                    {
                        "secret_key": secret.key,
                        "secret_type": secret.secret_type,
                        "service": secret.service,
                        "user_id": secret.owner_id,
                        "due_at": clock.iso(secret.rotation_due_at),
                    },
                )
                published += 1
        return published

    async def check_key_expiry(self) -> bool:
        """Publish ``secrets.key.expiring`` when the active key is within 7 days of expiry."""
        status = await self.keyring.status()
        if status["expiring_soon"]:
            await self.bus.publish(
                TOPIC_KEY_EXPIRING,
                {"key_id": (status["active_key"] or {}).get("id"), "expires_at": status["expires_at"]},
            )
            log.warning("vault.key_expiring", extra={"expires_at": status["expires_at"]})
            return True
        return False

    # -- key rotation ----------------------------------------------------------------

    async def _active_term(self) -> Any:
        return ((await self.keyring.status())["active_key"] or {}).get("term")

    async def rotate_keys(
        self, *, by: str = "system", on_step: StepHook | None = None, batch_size: int = 500
    ) -> RotationReport:
        """Rotate the key-encryption key (or resume an unfinished rotation)."""
        async with self._rotation_lock:
            report = await self.keyring.rotate(by=by, on_step=on_step, batch_size=batch_size)
        await self.audit.checkpoint()
        await self.bus.publish(TOPIC_KEY_ROTATED, {"key_id": report.to_key_id, "rewrapped": report.rewrapped})
        return report

    def use_task_manager(self, submit: RotationSubmitter) -> None:
        """Run key rotations as task-manager tasks: ``submit`` queues a ``vault.rotate_keys`` task, returns its id."""
        self._submit_rotation = submit

    async def run_rotation_task(self, ctx: Any) -> dict[str, Any]:
        """The ``vault.rotate_keys`` task handler: rotate, or resume, unless someone already rotated past it."""
        payload = getattr(ctx, "payload", {}) or {}
        status = await self.keyring.status()
        term = (status["active_key"] or {}).get("term")
        expected = payload.get("active_term")
        if expected is not None and term != expected and not status["rotation_in_progress"]:
            return {"skipped": "the key was rotated since this task was queued", "active_term": term}
        try:
            report = await self.rotate_keys(by=f"task:{getattr(ctx, 'task_id', '?')}")
        except errors.Conflict:
            return {"skipped": "another rotation is running"}
        return report.as_dict()

    async def request_rotation(self, *, by: str, reason: str = "requested") -> dict[str, Any]:
        """Queue a rotation on the task manager when it is wired; otherwise run it in the background here."""
        if self._submit_rotation is None:
            return {"queued": False, "started": self.start_rotation(by=by)}
        term = await self._active_term()
        task_id = await self._submit_rotation({"active_term": term, "reason": reason, "requested_by": by})
        log.info("vault.rotation_queued", extra={"task_id": task_id, "reason": reason})
        return {"queued": True, "task_id": task_id}

    def start_rotation(self, *, by: str = "system") -> bool:
        """Run :meth:`rotate_keys` as a background task in this process; False if one is already running here."""
        if self._rotation_task is not None and not self._rotation_task.done():
            return False
        self._rotation_task = asyncio.create_task(self._rotate_in_background(by), name="grace-vault-rotation")
        return True

    async def _rotate_in_background(self, by: str) -> None:
        try:
            await self.rotate_keys(by=by)
        except errors.Conflict:
            log.info("vault.rotation_skipped", extra={"reason": "another rotation is running"})
        except Exception as exc:  # resumable: the next tick or `grace keys rotate` finishes it
            log.error("vault.rotation_failed", extra={"reason": type(exc).__name__})

    async def close(self) -> None:
        """Stop a background rotation (it resumes from its last step next time)."""
        await background.stop(self._rotation_task)
