"""Workers: the handler registry, and the pool that claims tasks and runs them.

A handler is an async function taking a :class:`TaskContext` and returning a
JSON-serialisable result (or None). Capabilities register handlers by
task type on ``services.htm.handlers``. A pool runs up to ``concurrency``
handlers at once, claims as many tasks as it has free slots (at most
``claim_batch`` per claim), records outcomes in batches, heartbeats its leases,
returns expired leases of dead workers to the queue, and enforces timeouts
against the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from grace import background, errors, jsontext, storage
from grace.clock import Clock
from grace.htm import admission
from grace.htm import queue as queue_module
from grace.htm.config import HTMConfig
from grace.htm.outcomes import Recorder
from grace.htm.queue import WAKE_CHANNEL, Outcome, Queue
from grace.htm.tasks import Status, Task
from grace.storage import Database

__all__ = ["Handler", "HandlerRegistry", "LocalWorkers", "TaskContext", "WorkerPool", "load_handlers"]

log = logging.getLogger("grace.htm")

LISTEN_TIMEOUT = 0.5
TIDY_SECONDS = 1.0

Handler = Callable[["TaskContext"], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets: the task's data and the clock to measure time with."""

    task: Task
    worker_id: str
    clock: Clock

    @property
    def task_id(self) -> str:
        return self.task.task_id

    @property
    def payload(self) -> dict[str, Any]:
        return self.task.payload

    @property
    def attempt(self) -> int:
        return self.task.attempts


class HandlerRegistry:
    """Handlers by task type, and who may submit each type."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._submitters: dict[str, admission.Submitters] = {}

    def register(
        self,
        task_type: str,
        handler: Handler,
        *,
        submitters: admission.Submitters = admission.ANYONE,
        replace: bool = False,
    ) -> None:
        """Register ``handler`` for ``task_type`` and who may submit it; refuses a second one unless ``replace``."""
        if task_type in self._handlers and not replace:
            raise errors.Conflict(f"a handler for task type {task_type!r} is already registered")
        self._handlers[task_type] = handler
        self._submitters[task_type] = submitters

    def handler(
        self, task_type: str, *, submitters: admission.Submitters = admission.ANYONE
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function for ``task_type``."""

        def decorate(fn: Handler) -> Handler:
            self.register(task_type, fn, submitters=submitters)
            return fn

        return decorate

    def get(self, task_type: str) -> Handler | None:
        return self._handlers.get(task_type)

    def submitters(self, task_type: str) -> admission.Submitters:
        """Return who may submit ``task_type``: as declared, else the default for its name."""
        return self._submitters.get(task_type) or admission.default_submitters(task_type)

    def types(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._handlers


@dataclass(eq=False)
class _Running:
    task: Task
    handler_task: asyncio.Task[Any]
    reason: str | None = None  # why it was stopped: timeout, cancelled, shutdown
    deadline: datetime | None = None


def new_worker_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(eq=False)
class WorkerPool:
    """Claim and run tasks in this process."""

    db: Database
    clock: Clock
    config: HTMConfig
    queue: Queue
    recorder: Recorder  # records outcomes and reaps, publishing the task events
    handlers: HandlerRegistry
    concurrency: int
    claim_batch: int
    worker_id: str = field(default_factory=new_worker_id)
    _running: dict[str, _Running] = field(default_factory=dict)
    _outcomes: list[Outcome] = field(default_factory=list)
    _loops: list[asyncio.Task[None]] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    _outcome_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _flushing: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    _listen: asyncio.Task[None] | None = None
    _liveness: storage.Leadership | storage.FileLock | None = None
    # When the earliest claim whose answer was lost was sent (see adopt), or None.
    _in_doubt: datetime | None = field(default=None, repr=False)
    # Tasks whose outcomes are on their way to the database now.
    _recording: set[str] = field(default_factory=set, repr=False)
    _stopping: bool = False
    _unrecorded: int = 0
    _reserved: int = 0
    claimers: int = 0
    _started: bool = False
    claimed: int = 0
    finished: int = 0

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def free_slots(self) -> int:
        """Return slots free to claim into: a slot is taken until its outcome is recorded, so the
        database's count of running tasks (the global accounting) never exceeds the workers' capacity."""
        return self.concurrency - len(self._running) - self._unrecorded - self._reserved

    # -- life cycle ------------------------------------------------------------

    async def register(self) -> None:
        """Record this worker (for capacity and the dashboard) without starting its loops."""
        if self._liveness is None:
            await self._hold_liveness()
        await self.queue.register_worker(
            self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.concurrency,
            task_types=self.handlers.types(),
        )
        self._started = True

    async def _hold_liveness(self) -> None:
        self._liveness = await self.queue.hold_liveness(self.worker_id)

    async def keep_alive(self) -> bool:
        """On PostgreSQL, take this worker's liveness lock again if its connection was lost; return whether it did.

        The lock lives on one connection. When the server restarts, or that connection drops, the
        lock is gone, and after a short wait (``Queue.liveness_confirm_seconds``) other workers
        would take this one for dead and run its tasks again. The maintenance loop calls this
        every tick, before reaping: the lock is taken again on a new connection and the worker
        registered again (a reaper may have removed it).
        """
        if not self._started or self._stopping:
            return False
        if self._liveness is not None and self._liveness.is_leader:  # always, on SQLite
            return False
        await self.release_liveness()
        await self.register()
        log.warning("htm.liveness_restored", extra={"worker_id": self.worker_id})
        return True

    async def start(self) -> None:
        """Register and start claiming, heartbeating and reaping in the background."""
        await self.register()
        # Several claimers overlap their round trips when claims are small; the database still takes
        # claims one at a time, so fairness is unchanged.
        claimers = self.claimers or max(1, min(4, self.concurrency // (2 * self.claim_batch)))
        # Two exchanges (outcomes, then a claim) are in flight at once, so this process works on one
        # answer while the database works on the other. On SQLite the second waits for the single
        # writer, but it is ready to go the moment the first commits, and SQLite's thread, which
        # runs without the event loop's lock while in SQLite, is kept busy.
        flushers = 2
        self._flushing = asyncio.Semaphore(flushers)
        self._loops = [
            *(asyncio.create_task(self._dispatch_loop(), name="grace-htm-dispatch") for _ in range(claimers)),
            *(asyncio.create_task(self._flush_loop(), name="grace-htm-flush") for _ in range(flushers)),
            asyncio.create_task(self._maintenance_loop(), name="grace-htm-maintenance"),
        ]
        if not self.db.is_sqlite:
            # Only PostgreSQL has other processes to hear from; on SQLite submits wake the pool directly.
            self._listen = asyncio.create_task(self._listen_loop(), name="grace-htm-listen")
        log.info("htm.worker_started", extra={"worker_id": self.worker_id, "concurrency": self.concurrency})

    def wake(self) -> None:
        """Tell the dispatcher there may be new work."""
        self._wake.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running tasks finish for ``grace`` seconds, then release the rest to the queue."""
        if not self._started:
            return
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        self._stopping = True
        with contextlib.suppress(Exception):
            await self.queue.mark_stopping(self.worker_id)
        dispatcher = [t for t in self._loops if t.get_name() == "grace-htm-dispatch"]
        for t in dispatcher:
            t.cancel()
        runners = self._handler_tasks()
        if runners:
            _, pending = await asyncio.wait(runners, timeout=grace)
            if pending:
                for r in list(self._running.values()):
                    self._interrupt(r, "shutdown")
                await asyncio.wait(pending, timeout=max(1.0, grace))
        await self.flush()
        for t in self._loops:
            t.cancel()
        loops = [*self._loops, *([self._listen] if self._listen is not None else [])]
        if loops:
            await asyncio.wait(loops, timeout=2 * LISTEN_TIMEOUT + 1)
        self._loops = []
        self._listen = None
        await self.flush()
        with contextlib.suppress(Exception):
            await self.queue.unregister_worker(self.worker_id)
        await self.release_liveness()
        self._started = False
        log.info("htm.worker_stopped", extra={"worker_id": self.worker_id, "finished": self.finished})

    # -- claiming ---------------------------------------------------------------

    async def claim_once(self) -> list[Task]:
        """Claim tasks for the free slots (at most ``claim_batch``) and start running them."""
        n = min(self.free_slots, self.claim_batch)
        if n <= 0 or self._stopping:
            return []
        if self._in_doubt is not None:
            await self.adopt()
        self._reserved += n  # other claimers in this pool must not claim into the same slots
        asked_at = self.clock.now()
        try:
            tasks = await self.queue.claim(self.worker_id, n, fallback_capacity=self.concurrency)
        except Exception:
            self._claim_lost(asked_at)
            raise
        finally:
            self._reserved -= n
        if tasks:
            await self._started_claimed(tasks)
        return tasks

    def _claim_lost(self, asked_at: datetime) -> None:
        """Remember that a claim sent at ``asked_at`` got no answer: it may have committed all the same."""
        if self._in_doubt is None or asked_at < self._in_doubt:
            self._in_doubt = asked_at

    async def adopt(self) -> list[Task]:
        """Start the tasks a claim whose answer was lost took for this worker; return them.

        The claim may have committed before the connection dropped: its tasks are then running
        for this worker in the database, leased to it, while nothing here runs them. Rather than
        leave them for the lease to end, the worker reads them back (running for it, claimed since
        the lost claim was sent, neither running here nor awaiting their outcome) and runs them.
        """
        since = self._in_doubt
        if since is None:
            return []
        found = await self.queue.running_for(self.worker_id, since=since)
        self._in_doubt = None
        known = self._running.keys() | self._recording | {o.task_id for o in self._outcomes}
        lost = [t for t in found if t.task_id not in known]
        if lost:
            log.warning("htm.lost_claim_adopted", extra={"worker_id": self.worker_id, "tasks": len(lost)})
            await self._started_claimed(lost)
        return lost

    async def _started_claimed(self, tasks: list[Task]) -> None:
        # A task adopted after a lost claim can also arrive in a concurrent claim's late answer.
        tasks = [t for t in tasks if t.task_id not in self._running]
        for task in tasks:
            self._launch(task)
        self.claimed += len(tasks)
        await self.recorder.claimed(self.worker_id, tasks)

    def _launch(self, task: Task) -> None:
        handler = self.handlers.get(task.task_type)
        if handler is None:
            known = ", ".join(self.handlers.types()) or "none"
            error = (
                f"no handler registered for task type {task.task_type!r} on worker {self.worker_id} "
                f"(registered: {known})"
            )
            self._add_outcome(Outcome(task.task_id, task.attempts, Status.FAILED, self.clock.now(), error=error))
            return
        try:
            # One asyncio task per handler; its outcome is worked out when it ends (see _ended).
            handler_task = asyncio.create_task(handler(TaskContext(task, self.worker_id, self.clock)))
        except Exception as exc:  # a handler that is not an async function fails here, not in a task
            self._add_outcome(self._failure(task, Status.FAILED, f"{type(exc).__name__}: {exc}", self.clock.now()))
            return
        started = task.started_at or self.clock.now()
        running = _Running(task, handler_task, deadline=started + timedelta(seconds=task.timeout_seconds))
        self._running[task.task_id] = running
        handler_task.add_done_callback(lambda _done: self._ended(running))

    def _handler_tasks(self) -> list[asyncio.Task[Any]]:
        return [r.handler_task for r in self._running.values()]

    async def _dispatch_loop(self) -> None:
        poll = self.config.poll_seconds
        while not self._stopping:
            if self.free_slots <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            want = min(self.free_slots, self.claim_batch)
            try:
                got = await self.claim_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # try again, unless asked to stop
                background.stop_if_cancelled()
                log.warning("htm.claim_failed", extra={"worker_id": self.worker_id, "reason": type(exc).__name__})
                await asyncio.sleep(poll)
                continue
            if len(got) < want:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll)

    async def _listen_loop(self) -> None:
        # Wake-ups from other processes: a submit anywhere notifies WAKE_CHANNEL when it commits, and
        # every idle dispatcher claims. A lost connection is reopened; meanwhile polling covers the gap.
        listener: asyncpg.Connection | None = None
        try:
            while not self._stopping:
                if listener is None or listener.is_closed():
                    try:
                        listener = await asyncpg.connect(self.db.driver_dsn)
                        await listener.add_listener(WAKE_CHANNEL, lambda *_: self._wake.set())
                        self._wake.set()  # anything submitted while not listening
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("htm.listen_failed", extra={"reason": type(exc).__name__})
                        listener = None
                await asyncio.sleep(LISTEN_TIMEOUT)
        finally:
            if listener is not None and not listener.is_closed():
                with contextlib.suppress(Exception):
                    await listener.close()

    # -- running ----------------------------------------------------------------

    def _ended(self, running: _Running) -> None:
        """Record the outcome of a handler that returned, raised or was stopped, and free its slot."""
        self._running.pop(running.task.task_id, None)
        outcome = self._outcome_of(running)
        if outcome is not None:
            self._add_outcome(outcome)
        else:
            self._slot_freed.set()

    def _add_outcome(self, outcome: Outcome) -> None:
        self._unrecorded += 1
        self._outcomes.append(outcome)
        self._outcome_ready.set()

    def _outcome_of(self, running: _Running) -> Outcome | None:
        task = running.task
        ht = running.handler_task
        now = self.clock.now()
        if ht.cancelled() or running.reason is not None:
            if running.reason == "timeout":
                return self._failure(task, Status.TIMED_OUT, f"timed out after {task.timeout_seconds:g}s", now)
            if running.reason == "shutdown":
                return Outcome(task.task_id, task.attempts, Status.QUEUED, now, error="released at worker shutdown")
            return None  # cancelled elsewhere, or its lease was lost: nothing to record
        exc = ht.exception()
        if exc is not None:
            return self._failure(task, Status.FAILED, f"{type(exc).__name__}: {exc}", now)
        result = ht.result()
        if result is not None:
            # Encoded here, so a result that is not JSON fails its own task instead of every
            # outcome recorded with it.
            try:
                result = jsontext.Encoded(jsontext.dumps(result))
            except (TypeError, ValueError) as exc:
                return self._failure(task, Status.FAILED, f"the handler's result is not JSON: {exc}", now)
        return Outcome(task.task_id, task.attempts, Status.COMPLETED, now, result=result)

    def _failure(self, task: Task, final: Status, error: str, now: datetime) -> Outcome:
        cfg = self.config
        if task.attempts < task.max_attempts:
            wait = queue_module.backoff(task.attempts, cfg.retry_base_seconds, cfg.retry_max_seconds)
            return Outcome(
                task.task_id, task.attempts, Status.DELAYED, now, error=error, retry_at=now + timedelta(seconds=wait)
            )
        return Outcome(task.task_id, task.attempts, final, now, error=error)

    async def release_liveness(self) -> None:
        """Give up this worker's liveness lock (stop, or a test's pool)."""
        lock, self._liveness = self._liveness, None
        if lock is not None:
            await lock.release()

    def stop_task(self, task_id: str) -> bool:
        """Stop the handler of a task cancelled elsewhere, if it runs here; its outcome is not recorded."""
        running = self._running.get(task_id)
        if running is None:
            return False
        self._interrupt(running, "cancelled")
        return True

    def _interrupt(self, running: _Running, reason: str) -> None:
        if running.reason is None:
            running.reason = reason
        if not running.handler_task.done():
            running.handler_task.cancel()

    # -- recording outcomes -------------------------------------------------------

    async def flush(self, *, claim: bool = False) -> int:
        """Record every outcome pending now in one transaction; return how many were recorded.

        Two flushes may run at once, each with the outcomes pending when it began.
        With ``claim``, the same round trip also claims tasks into the slots the outcomes free
        (and any others free), at most ``claim_batch``, and starts them.
        """
        async with self._flushing:
            if not self._outcomes:
                return 0
            batch, self._outcomes = self._outcomes, []
            n = max(0, min(self.claim_batch, self.free_slots + len(batch))) if claim and not self._stopping else 0
            self._reserved += n
            ids = {o.task_id for o in batch}
            self._recording |= ids
            asked_at = self.clock.now()
            try:
                done = await self.recorder.record(self.worker_id, batch, claim=n, fallback_capacity=self.concurrency)
            except BaseException:
                # Not known to be recorded: sent again on the next round (the queue recognises an
                # outcome that did commit). A claim sent with it may have committed too.
                self._outcomes[:0] = batch
                if n:
                    self._claim_lost(asked_at)
                raise
            finally:
                self._reserved -= n
                self._recording -= ids
            self._unrecorded -= len(batch)
            self.finished += len(done.recorded)
            if done.claimed:
                await self._started_claimed(done.claimed)
            self._slot_freed.set()
            return len(done.recorded)

    async def _flush_loop(self) -> None:
        while True:
            await self._outcome_ready.wait()
            await asyncio.sleep(0)  # let handlers finishing in the same turn join this batch
            self._outcome_ready.clear()
            try:
                await self.flush(claim=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # try again, unless asked to stop
                background.stop_if_cancelled()
                log.warning("htm.flush_failed", extra={"worker_id": self.worker_id, "reason": type(exc).__name__})
                await asyncio.sleep(self.config.poll_seconds)
                if self._outcomes:
                    self._outcome_ready.set()  # what failed is pending still: try again without waiting for more

    async def wait_idle(self) -> None:
        """Wait until no task is running here and every outcome is recorded (tests, benchmarks)."""
        while self._running or self._outcomes:
            runners = self._handler_tasks()
            if runners:
                await asyncio.wait(runners)
            await self.flush()

    # -- leases, timeouts and dead workers ---------------------------------------

    def check_timeouts(self) -> int:
        """Cancel handlers that ran past their task's timeout (by the injected clock); return how many."""
        now = self.clock.now()
        hit = 0
        for running in list(self._running.values()):
            if running.deadline is not None and now >= running.deadline and running.reason is None:
                self._interrupt(running, "timeout")
                hit += 1
        return hit

    async def heartbeat(self) -> None:
        """Extend this worker's leases; stop handlers whose task was cancelled or taken away."""
        # Judge only tasks held before the query: one claimed while it runs is not in its snapshot.
        asked = set(self._running)
        held = await self.queue.heartbeat(self.worker_id, asked)
        for task_id in asked - held:
            running = self._running.get(task_id)
            if running is not None and running.reason is None:
                self._interrupt(running, "cancelled")

    async def _maintenance_loop(self) -> None:
        cfg = self.config
        tick = min(0.5, cfg.lease_seconds / 6)
        beat_every = cfg.lease_seconds / 3
        last_beat = last_tidy = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            try:
                self.check_timeouts()
                await self.keep_alive()
                if self._in_doubt is not None:
                    await self.adopt()
                if loop.time() - last_beat >= beat_every:
                    last_beat = loop.time()
                    await self.heartbeat()
                if await self.recorder.reap():
                    self._wake.set()
                if loop.time() - last_tidy >= TIDY_SECONDS:
                    last_tidy = loop.time()
                    await self.queue.tidy()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # try again, unless asked to stop
                background.stop_if_cancelled()
                log.warning("htm.maintenance_failed", extra={"reason": type(exc).__name__})


class LocalWorkers:
    """The worker pool started in this process, if any: what a submit wakes, and the capacity it implies."""

    def __init__(self, default_concurrency: int) -> None:
        self.pool: WorkerPool | None = None
        self.default_concurrency = default_concurrency

    @property
    def fallback_capacity(self) -> int:
        """Return the capacity to assume while no worker has a heartbeat: this pool's, else the configured one."""
        return self.pool.concurrency if self.pool is not None else self.default_concurrency

    def wake(self) -> None:
        """Tell this process's pool there may be new work (other processes hear it from the database)."""
        if self.pool is not None:
            self.pool.wake()

    def stop_task(self, task_id: str) -> None:
        """Stop the handler of a task cancelled here, if it runs in this process."""
        if self.pool is not None:
            self.pool.stop_task(task_id)


def load_handlers(spec: str, registry: HandlerRegistry) -> None:
    """Import ``module:function`` and call it with ``registry`` so it registers its handlers."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise errors.ConfigurationError(f"handler module {spec!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.ConfigurationError(f"handler module {module_name!r} cannot be imported: {exc}") from None
    hook = getattr(module, attr, None)
    if not callable(hook):
        raise errors.ConfigurationError(f"{module_name} has no function {attr!r}")
    hook(registry)
