"""``grace tasks``: submit, show, list and cancel tasks, see routing and SLA stats; ``grace worker``.

The CLI runs beside the database, so it sees every task. A task submitted
without ``--user`` is Grace's own (origin ``internal`` unless tagged otherwise);
with ``--user`` it is created as that user, with that user's role.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import typer
from rich.table import Table

from grace import errors, logs, memory
from grace.auth import Principal
from grace.cli.common import console, open_services, print_table, run
from grace.htm import load_handlers

app = typer.Typer(help="Submit and follow tasks, and see how fairly work is routed.", no_args_is_help=True)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


@app.command("submit")
def submit(
    task_type: str = typer.Argument(..., help="The task type, e.g. htm.noop or voice.transcribe."),
    payload: str = typer.Option("{}", "--payload", "-p", help="The payload, a JSON object."),
    priority: str = typer.Option("normal", "--priority", help="critical, high, normal or low."),
    origin: str | None = typer.Option(None, "--origin", "-o", help="Tag the origin explicitly (else automatic)."),
    user: str | None = typer.Option(None, "--user", "-u", help="Create it as this user (default: Grace itself)."),
    sla_ms: int | None = typer.Option(None, "--sla-ms", help="Deadline in milliseconds from now."),
    intent_id: str | None = typer.Option(None, "--intent-id", help="The intent this task serves."),
    max_attempts: int | None = typer.Option(None, "--max-attempts", help="Attempts before it fails for good."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds one attempt may run."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Submit a task and print its id and routing decision."""
    try:
        body = json.loads(payload)
    except ValueError:
        raise errors.InvalidInput("--payload is not valid JSON") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("--payload must be a JSON object")

    async def work() -> None:
        async with open_services() as services:
            htm = services.htm
            creator = None
            if user:
                found = await services.accounts.get_user(user)
                creator = Principal(found.id, found.username, found.role)
            request = htm.request(
                task_type,
                payload=body,
                priority=priority,
                origin=origin,
                sla_ms=sla_ms,
                intent_id=intent_id,
                max_attempts=max_attempts,
                timeout_seconds=timeout,
            )
            submitted = await htm.submit(request, creator=creator)
        if as_json:
            _print_json(submitted.as_dict())
            return
        d = submitted.decision
        console.print(f"task {submitted.task_id} {submitted.status.value}")
        console.print(f"  origin {d.origin.value}, route {d.route}, {d.queue_name}, quota used {d.quota_used}")
        console.print(f"  {d.reasoning}")

    run(work)


@app.command("show")
def show(
    task_id: str = typer.Argument(..., help="The task's id."),
    as_json: bool = typer.Option(False, "--json", help="Print the task as JSON."),
) -> None:
    """Show one task: status, times, attempts, result or error."""

    async def work() -> None:
        async with open_services() as services:
            task = await services.htm.get(task_id, principal=None)
            late = await services.htm.late_completions(task_id, principal=None)
        data = task.as_dict()
        data["late_completions"] = late
        if as_json:
            _print_json(data)
            return
        for key, value in data.items():
            if isinstance(value, dict | list):
                value = json.dumps(value, default=str)
            console.print(f"{key:>17}: {'' if value is None else value}")

    run(work)


@app.command("list")
def list_(
    status: str | None = typer.Option(None, "--status", "-s", help="Only tasks in this status."),
    origin: str | None = typer.Option(None, "--origin", "-o", help="Only tasks from this origin."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the tasks as JSON."),
) -> None:
    """List tasks, newest first."""

    async def work() -> None:
        async with open_services() as services:
            tasks = await services.htm.list_tasks(principal=None, status=status, origin=origin, limit=limit)
        if as_json:
            _print_json([t.as_dict(include_payload=False) for t in tasks])
            return
        print_table(
            ("task",),
            ("type", "origin", "priority", "status", "attempts", "created"),
            (
                (
                    t.task_id,
                    t.task_type,
                    t.origin.value,
                    t.priority.value,
                    t.status.value,
                    f"{t.attempts}/{t.max_attempts}",
                    t.created_at.isoformat(timespec="seconds"),
                )
                for t in tasks
            ),
        )

    run(work)


@app.command("cancel")
def cancel(task_id: str = typer.Argument(..., help="The task's id.")) -> None:
    """Cancel a waiting or running task (a finished one cannot be cancelled)."""

    async def work() -> None:
        async with open_services() as services:
            task = await services.htm.cancel(task_id, principal=None)
        console.print(f"task {task.task_id} {task.status.value}")

    run(work)


@app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json", help="Print the stats as JSON.")) -> None:
    """Show each origin's load against its share: running, quota, queued, starved, throughput."""

    async def work() -> None:
        async with open_services() as services:
            data = await services.htm.routing_stats()
        if as_json:
            _print_json(data)
            return
        console.print(f"capacity {data['capacity']}, running {data['running']}, workers {data['workers']}")
        table = Table("origin", "share", "running", "queued", "delayed", "deferred", "starved", "util", "MB/s")
        for name, o in data["origins"].items():
            table.add_row(
                name,
                f"{o['share']:.0%}",
                f"{o['current_count']}/{o['max_concurrent']}",
                str(o["queued"]),
                str(o["delayed"]),
                str(o["deferred"]),
                str(o["tasks_starved"]),
                f"{o['utilization']:.2f}",
                f"{o['throughput_mb_s']:.3f}",
            )
        console.print(table)

    run(work)


@app.command("sla")
def sla(
    origin: str | None = typer.Option(None, "--origin", "-o", help="Only violations of tasks from this origin."),
    limit: int = typer.Option(
        50, "--limit", "-n", min=1, max=1000, help="At most this many violations, most overdue first."
    ),
    window_seconds: float | None = typer.Option(
        None, "--window-seconds", min=1, help="Compliance window (default GRACE_HTM_SLA_WINDOW_SECONDS)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the stats and violations as JSON."),
) -> None:
    """Show SLA enforcement: warnings, violations, escalations, rescues, compliance, and the tasks overdue now."""

    async def work() -> None:
        async with open_services() as services:
            htm = services.htm
            data = await htm.sla_stats(window_seconds=window_seconds)
            violations = await htm.sla_violations(principal=None, origin=origin, limit=limit)
        if as_json:
            _print_json({"stats": data, "violations": violations})
            return
        rate = data["sla_compliance_rate"]
        hours = data["window_seconds"] / 3600
        console.print(
            f"compliance {'n/a' if rate is None else f'{rate:.1%}'} "
            f"({data['finished_late']} late of {data['finished_with_sla']} finished in the last {hours:g} h)"
        )
        console.print(
            f"warnings {data['warnings_issued']}, violations {data['total_violations']}, "
            f"escalations {data['escalations_triggered']}, rescue tasks {data['sub_agents_spawned']}, "
            f"active violations {data['active_violations']}"
        )
        if not violations:
            return
        print_table(
            ("task",),
            ("type", "origin", "priority", "status", "level", "overdue", "worker"),
            (
                (
                    v["task_id"],
                    v["task_type"],
                    v["origin"],
                    v["priority"],
                    v["status"],
                    v["sla_level"],
                    f"{v['overdue_ms'] / 1000:.1f}s",
                    v["worker_id"] or "",
                )
                for v in violations
            ),
        )

    run(work)


def worker(
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", min=1, help="Tasks run at once (default GRACE_HTM_CONCURRENCY)."
    ),
    claim_batch: int | None = typer.Option(
        None, "--claim-batch", min=1, help="Most tasks taken per claim (default GRACE_HTM_CLAIM_BATCH)."
    ),
    handlers: list[str] = typer.Option(
        [], "--handlers", help="Also load handlers: module:function, called with the registry (repeatable)."
    ),
    shutdown_grace: float | None = typer.Option(
        None, "--shutdown-grace", min=0, help="Seconds running tasks get to finish on shutdown before release."
    ),
) -> None:
    """Run a worker process: claim tasks from the shared queue and run them until SIGTERM or Ctrl-C."""

    async def work() -> None:
        async with open_services() as services:
            cfg = services.settings
            logs.configure(cfg.log_level, json_lines=cfg.log_json)
            htm = services.htm
            for spec in handlers:
                load_handlers(spec, htm.handlers)
            # What start-up made lives as long as the process: keep it out of collections. Done before
            # the pool starts, so the one full collection it takes holds up no task.
            memory.settle()
            pool = await htm.start_workers(concurrency=concurrency, claim_batch=claim_batch)
            # On PostgreSQL a worker process can also stand for SLA enforcer: one process across the
            # cluster holds the leader lock and acts. On SQLite the serving process enforces.
            enforcing = not services.db.is_sqlite and htm.start_sla()
            standing = ", SLA enforcer standing for leader" if enforcing else ""
            console.print(
                f"worker {pool.worker_id} on {services.db.backend}: concurrency {pool.concurrency}, "
                f"handlers {', '.join(htm.handlers.types())}{standing}",
                highlight=False,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            console.print("stopping: letting running tasks finish")
            await htm.close(grace=shutdown_grace)
            console.print(f"stopped after {pool.finished} tasks")

    run(work)
