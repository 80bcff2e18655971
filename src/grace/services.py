"""The composition root: build the running system from settings.

The API's lifespan, the CLI and the worker all call :func:`build`; nothing is
constructed at import time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from grace import auth, background, errors, storage
from grace.bus import Bus, InProcessBus, PostgresBus
from grace.clock import Clock, SystemClock
from grace.config import Settings
from grace.htm import ADMINS, HTM, task_limits
from grace.htm import load_config as load_htm_config
from grace.idempotency import IdempotencyKeys
from grace.integrity import SEAL_LABEL
from grace.intents import Intents
from grace.intents import load_config as load_intents_config
from grace.playbooks import LEADER_LOCK, RUN_TASK, Capabilities, Playbooks, Scheduler, default_registry
from grace.vault import ROTATION_TASK, Vault, stored_master_key
from grace.voice import VoiceNotes, engines

__all__ = ["Services", "build"]

log = logging.getLogger("grace.services")

BUS_PRUNE_INTERVAL_SECONDS = 600.0
VAULT_UPKEEP_INTERVAL_SECONDS = 60.0


@dataclass
class Services:
    """Everything a running Grace holds, built once per process."""

    settings: Settings
    clock: Clock
    db: storage.Database
    bus: Bus
    accounts: auth.Accounts
    sign_in: auth.SignIn
    vault: Vault
    htm: HTM
    voice: VoiceNotes
    playbooks: Playbooks
    scheduler: Scheduler
    idempotency: IdempotencyKeys
    intents: Intents
    bootstrap: auth.BootstrapCredentials | None = None  # the first admin, when this build created it
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    def start_background(self) -> None:
        """Start the periodic jobs a serving process runs (bus and idempotency-key retention, vault upkeep, the
        dashboard's roll-ups and task retention, workers, SLA enforcer)."""
        self._background.append(asyncio.create_task(self._prune_events(), name="grace-bus-prune"))
        self._background.append(asyncio.create_task(self._vault_upkeep(), name="grace-vault-upkeep"))
        self._background.append(asyncio.create_task(self._htm_upkeep(), name="grace-htm-upkeep"))
        if self.htm.config.embedded_workers:
            self._background.append(asyncio.create_task(self._start_htm_workers(), name="grace-htm-start"))
        # The serving process owns SLA enforcement (on PostgreSQL, whichever process holds the
        # leader lock acts); close() stops it through HTM.close().
        self.htm.start_sla()
        if self.settings.playbooks_scheduler:
            self.scheduler.start()
        # Intents follow their tasks' events; the sweep recovers orphans (now, then periodically).
        self.intents.start()

    async def _start_htm_workers(self) -> None:
        # The serving process runs an embedded worker pool; close() stops it gracefully.
        await self.htm.start_workers()

    async def _vault_upkeep(self) -> None:
        # Consent expiry, secrets.rotation.due, key expiry warnings and the weekly key rotation (resumable).
        while True:
            try:
                await self.vault.tick()
            except Exception as exc:  # try again on the next round, unless asked to stop
                background.stop_if_cancelled()
                log.warning("vault.upkeep_failed", extra={"reason": type(exc).__name__})
            await asyncio.sleep(VAULT_UPKEEP_INTERVAL_SECONDS)

    async def _htm_upkeep(self) -> None:
        # The dashboard's roll-ups and the retention of finished tasks; safe in several processes at once.
        while True:
            try:
                await self.htm.upkeep()
            except Exception as exc:  # try again on the next round, unless asked to stop
                background.stop_if_cancelled()
                log.warning("htm.upkeep_failed", extra={"reason": type(exc).__name__})
            await asyncio.sleep(self.htm.config.rollup_seconds)

    async def _prune_events(self) -> None:
        while True:
            try:
                dropped = await self.bus.prune()
                if dropped:
                    log.info("bus.pruned", extra={"events": dropped})
                expired = await self.idempotency.prune()
                if expired:
                    log.info("idempotency.pruned", extra={"keys": expired})
            except Exception as exc:  # keep pruning on the next round, unless asked to stop
                background.stop_if_cancelled()
                log.warning("bus.prune_failed", extra={"reason": type(exc).__name__})
            await asyncio.sleep(BUS_PRUNE_INTERVAL_SECONDS)

    async def close(self) -> None:
        await background.stop_all(self._background)
        self._background = []
        await self.accounts.close()
        await self.scheduler.stop()
        await self.intents.close()
        await self.vault.close()
        await self.htm.close()
        await self.bus.close()
        await self.db.dispose()


async def build(
    settings: Settings, *, clock: Clock | None = None, migrate: bool = True, bootstrap: bool = True
) -> Services:
    """Connect to the database, apply migrations, create the first admin if needed, wire capabilities."""
    clock = clock or SystemClock()
    htm_config = load_htm_config()
    try:
        # 0700, and what is in it 0600 (the database, the master key file, the audit anchor): fixed if not.
        storage.private_tree(settings.data_dir)
        storage.private_file(settings.audit_anchor_file, create=False)  # when it is kept elsewhere
    except OSError as exc:
        raise errors.ConfigurationError(
            f"GRACE_DATA_DIR: {settings.data_dir} cannot be created: {exc.strerror or exc}"
        ) from None
    db = storage.Database(settings.database_url)
    try:
        # Loaded before migrating: a migration seals the rows already stored (grace.integrity).
        master = await stored_master_key(settings, db)
        if migrate:
            await storage.upgrade(db, seal_key=master.derive(SEAL_LABEL) if master is not None else None)
        bus: Bus
        if db.is_sqlite:
            bus = InProcessBus(clock=clock, retention_seconds=settings.bus_retention_seconds)
        else:
            bus = PostgresBus(db, clock=clock, retention_seconds=settings.bus_retention_seconds)
        await bus.start()
    except BaseException:
        await db.dispose()
        raise
    try:
        vault = await Vault.open(settings, db, clock, bus, master=master)
    except BaseException:
        await bus.close()
        await db.dispose()
        raise
    accounts = auth.Accounts(
        db,
        clock,
        vault.seal,
        limits=task_limits(),
        cache=_token_cache(settings, db, clock),
        bus=bus,
    )
    try:
        await accounts.start()
    except BaseException:
        await vault.close()
        await bus.close()
        await db.dispose()
        raise
    sign_in = auth.SignIn(
        db,
        clock,
        accounts,
        session_ttl=timedelta(seconds=settings.session_ttl_seconds),
        max_failures=settings.login_max_failures,
        window=timedelta(seconds=settings.login_window_seconds),
        client_max_failures=settings.login_client_max_failures,
    )
    htm = HTM(db, bus, clock, htm_config)
    _run_vault_rotation_on_htm(htm, vault)
    voice = VoiceNotes(
        db,
        clock,
        bus,
        vault,
        htm,
        engines(settings.voice_model_dir, settings.voice_embedder),
        max_upload_bytes=settings.voice_max_upload_bytes,
    )
    capabilities = Capabilities(clock, bus=bus, htm=htm, vault=vault, voice=voice)

    async def person(user_id: str) -> auth.Principal | None:
        """A user (by id or name) as the person a playbook run is for; None if gone or disabled."""
        try:
            user = await accounts.get_user(user_id)
        except errors.NotFound:
            return None
        return None if user.disabled else auth.Principal(user.id, user.username, user.role)

    playbooks = Playbooks(db, capabilities, default_registry(), settings.playbooks_dir, people=person)

    scheduler = Scheduler(playbooks, htm, bus, clock, leadership=storage.Leadership(db, LEADER_LOCK), person=person)
    # Playbook runs are HTM tasks (fairness, SLAs and the dashboard apply); people, never an agent, submit them.
    htm.handlers.register(RUN_TASK, scheduler.run_task, submitters=ADMINS)
    # The learning summary shows the configured SLA (GRACE_HTM_DEFAULT_SLA_MS) beside the suggested one.
    intents = Intents(
        db, clock, bus, htm, accounts, load_intents_config(), sla_defaults=lambda: htm.config.default_sla_ms
    )
    voice.use_learning_loop(intents.learning.record_outcome)  # the voice pipeline's learn step
    capabilities.learning = intents.learning  # the playbooks' learning.record
    services = Services(
        settings,
        clock,
        db,
        bus,
        accounts,
        sign_in,
        vault,
        htm,
        voice,
        playbooks,
        scheduler,
        IdempotencyKeys(db, clock),
        intents,
    )
    if bootstrap:
        token = settings.bootstrap_token.get_secret_value() if settings.bootstrap_token else None
        services.bootstrap = await accounts.bootstrap(token)
    return services


def _token_cache(settings: Settings, db: storage.Database, clock: Clock) -> auth.TokenCache:
    """The process's cache of resolved tokens; on SQLite with an epoch file beside the database.

    On SQLite each process has its own in-process bus, so a CLI revoking a token tells the serving
    process through that file's stat; on PostgreSQL the bus reaches every node.
    """
    epoch = None
    if db.is_sqlite:
        database = make_url(settings.database_url).database
        if database and database != ":memory:":
            epoch = Path(database).with_name(Path(database).name + "-auth-epoch")
    return auth.TokenCache(clock, timedelta(seconds=settings.token_cache_seconds), epoch_file=epoch)


def _run_vault_rotation_on_htm(htm: HTM, vault: Vault) -> None:
    """Key rotation runs as the HTM task type ``vault.rotate_keys`` (resumable, retried, on the dashboard).

    Admins may submit it (people, never an agent); the upkeep loop and ``keys/rotate`` submit it as Grace.
    """
    htm.handlers.register(ROTATION_TASK, vault.run_rotation_task, submitters=ADMINS)

    async def submit(payload: dict[str, Any]) -> str:
        decision = await htm.route_task(
            ROTATION_TASK, payload=payload, origin="scheduler", max_attempts=5, timeout_seconds=3600
        )
        return str(decision["task_id"])

    vault.use_task_manager(submit)
