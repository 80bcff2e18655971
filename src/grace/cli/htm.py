"""``grace htm``: the task manager's dashboard in the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from grace.cli.common import console, open_services, run
from grace.services import Services

app = typer.Typer(help="The task manager's dashboard.", no_args_is_help=True)

PRIORITIES = ("critical", "high", "normal", "low")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def render(stats: dict[str, Any], health: dict[str, Any], hourly: dict[str, Any]) -> Group:
    """Return the dashboard as Rich renderables (pure: the figures in, the view out)."""
    colour = {"ok": "green", "degraded": "yellow", "failing": "red"}[health["status"]]
    head = Table.grid(padding=(0, 3))
    head.add_row(
        f"[bold {colour}]{health['status'].upper()}[/]",
        f"tasks {stats['total_tasks']:,}",
        f"running {stats['active_tasks']}",
        f"queued {stats['queued_tasks']}",
        f"completed {stats['completed_tasks']:,}",
        f"failed {stats['failed_tasks']:,}",
        f"SLA {_rate(stats['sla_compliance_rate'])}",
        f"violations {stats['active_violations']}",
        f"workers {stats['worker_utilization']:.0%} of {stats['capacity']}",
    )
    times = Table.grid(padding=(0, 3))
    times.add_row(
        f"avg {_ms(stats['avg_execution_time_ms'])}",
        f"p50 {_ms(stats['p50_execution_ms'])}",
        f"p95 {_ms(stats['p95_execution_ms'])}",
        f"p99 {_ms(stats['p99_execution_ms'])}",
        "queue " + " ".join(f"{p} {stats['queue_depths'][p]}" for p in PRIORITIES),
        f"warnings {stats['warnings_issued']}",
        f"escalations {stats['escalations_triggered']}",
        f"rescues {stats['sub_agents_spawned']}",
    )
    origins = Table("origin", "tasks", "running", "queued", "done", "failed", "SLA", "p50", "p95", title="by origin")
    for name, o in stats["by_origin"].items():
        origins.add_row(
            name,
            str(o["total_tasks"]),
            str(o["active_tasks"]),
            str(o["queued_tasks"]),
            str(o["completed_tasks"]),
            str(o["failed_tasks"]),
            _rate(o["sla_compliance_rate"]),
            _ms(o["p50_execution_ms"]),
            _ms(o["p95_execution_ms"]),
        )
    hours = Table("hour (UTC)", "created", "done", "failed", "p50", "p95", "SLA", "tasks/s", title="last hours")
    for b in hourly["buckets"][-8:]:
        hours.add_row(
            b["hour"][11:16],
            str(b["created"]),
            str(b["completed"]),
            str(b["failed"]),
            _ms(b["p50_execution_ms"]),
            _ms(b["p95_execution_ms"]),
            _rate(b["sla_compliance_rate"]),
            f"{b['throughput_tasks_per_second']:.3f}",
        )
    parts: list[Any] = [head, times, origins, hours]
    if health["alerts"]:
        alerts = Table("alert", "level", "figure", "threshold", title="health")
        for a in health["alerts"]:
            alerts.add_row(a["check"], a["level"], f"{a['figure']:g}", f"{a['threshold']:g}")
        parts.append(alerts)
    window = stats["window"]
    return Group(Panel(Group(*parts), title=f"HTM dashboard — last {window['hours']} h, at {stats['at'][:19]}Z"))


@app.command("dashboard")
def dashboard(
    window_hours: int = typer.Option(24, "--window-hours", min=1, max=720, help="Hourly buckets the figures cover."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh the view live until interrupted."),
    every: float = typer.Option(2.0, "--every", min=0.2, max=3600, help="Seconds between refreshes with --watch."),
    as_json: bool = typer.Option(False, "--json", help="Print the stats, health and hourly buckets as JSON."),
) -> None:
    """Show the task manager's dashboard: counts, SLA compliance, execution times, queue, health (everyone's)."""

    async def read(services: Services) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        htm = services.htm
        return (
            await htm.dashboard_stats(principal=None, window_hours=window_hours),
            await htm.dashboard_health(principal=None),
            await htm.dashboard_hourly(principal=None),
        )

    async def work() -> None:
        async with open_services() as services:
            stats, health, hourly = await read(services)
            if as_json:
                console.print_json(json.dumps({"stats": stats, "health": health, "hourly": hourly}))
                return
            if not watch:
                console.print(render(stats, health, hourly))
                return
            with Live(render(stats, health, hourly), console=console, refresh_per_second=4) as live:
                while True:
                    await asyncio.sleep(every)
                    live.update(render(*await read(services)))

    with contextlib.suppress(KeyboardInterrupt):  # --watch ends with Ctrl-C
        run(work)
