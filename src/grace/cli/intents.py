"""``grace intents``: submit, show, list and cancel intents; ``grace learning summary``.

The CLI runs beside the database, so it sees every intent. An intent always has an owner: submit
names the user (``--user``) and, when it is an agent's, the agent (``--agent``).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from grace import errors
from grace.auth import Principal
from grace.cli.common import console, open_services, print_table, run

app = typer.Typer(help="Submit and follow the agent's intents (each runs as a task).", no_args_is_help=True)
learning_app = typer.Typer(help="The learning loop: how intents and other actions turned out.", no_args_is_help=True)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _print_intent(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        console.print(f"{key:>16}: {'' if value is None else value}")


@app.command("submit")
def submit(
    goal: str = typer.Argument(..., help="What should be done, in words."),
    handler: str = typer.Option(..., "--handler", help="The intent handler to run it (e.g. echo)."),
    user: str = typer.Option(..., "--user", "-u", help="Whose intent it is (username or id)."),
    agent: str | None = typer.Option(None, "--agent", help="The agent submitting it for that user."),
    expected_outcome: str | None = typer.Option(None, "--expected", help="The outcome expected."),
    sla_ms: int | None = typer.Option(None, "--sla-ms", help="Deadline in milliseconds from now."),
    priority: str = typer.Option("normal", "--priority", help="critical, high, normal or low."),
    domain: str | None = typer.Option(None, "--domain", help="One of the handler's domains (default its first)."),
    context: str = typer.Option("{}", "--context", "-c", help="Context for the handler, a JSON object."),
    confidence: float | None = typer.Option(None, "--confidence", help="How sure it will succeed, 0 to 1."),
    as_json: bool = typer.Option(False, "--json", help="Print the intent as JSON."),
) -> None:
    """Record an intent and submit it as a task; print its id, status and task."""
    try:
        body = json.loads(context)
    except ValueError:
        raise errors.InvalidInput("--context is not valid JSON") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("--context must be a JSON object")

    async def work() -> None:
        async with open_services() as services:
            found = await services.accounts.get_user(user)
            owner = Principal(found.id, found.username, found.role, agent=agent)
            intent = await services.intents.submit(
                owner,
                goal=goal,
                handler=handler,
                expected_outcome=expected_outcome,
                sla_ms=sla_ms,
                priority=priority,
                domain=domain,
                context=body,
                confidence=confidence,
            )
        if as_json:
            _print_json(intent.as_dict())
            return
        console.print(f"intent {intent.intent_id} {intent.status.value}")
        console.print(f"  task {intent.htm_task_id} ({intent.task_type}), domain {intent.domain}")

    run(work)


@app.command("show")
def show(
    intent_id: str = typer.Argument(..., help="The intent's id."),
    as_json: bool = typer.Option(False, "--json", help="Print the intent as JSON."),
) -> None:
    """Show one intent, in step with its task: status, task, result or reason, whether it was learned from."""

    async def work() -> None:
        async with open_services() as services:
            intent = await services.intents.get(intent_id, principal=None)
        if as_json:
            _print_json(intent.as_dict())
        else:
            _print_intent(intent.as_dict())

    run(work)


@app.command("list")
def list_(
    status: str | None = typer.Option(None, "--status", "-s", help="Only intents in this status."),
    domain: str | None = typer.Option(None, "--domain", "-d", help="Only intents of this domain."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the intents as JSON."),
) -> None:
    """List intents, newest first."""

    async def work() -> None:
        async with open_services() as services:
            intents = await services.intents.list_intents(principal=None, status=status, domain=domain, limit=limit)
        if as_json:
            _print_json([i.as_dict(include_context=False) for i in intents])
            return
        print_table(
            ("intent",),
            ("status", "handler", "domain", "owner", "goal", "created"),
            (
                (
                    i.intent_id,
                    i.status.value,
                    i.handler,
                    i.domain,
                    f"{i.agent}@{i.owner_name}" if i.agent else i.owner_name,
                    i.goal if len(i.goal) <= 60 else i.goal[:57] + "...",
                    i.created_at.isoformat(timespec="seconds"),
                )
                for i in intents
            ),
        )

    run(work)


@app.command("cancel")
def cancel(intent_id: str = typer.Argument(..., help="The intent's id.")) -> None:
    """Cancel an open intent and its task (a finished one cannot be cancelled)."""

    async def work() -> None:
        async with open_services() as services:
            intent = await services.intents.cancel(intent_id, principal=None)
        console.print(f"intent {intent.intent_id} {intent.status.value}")

    run(work)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


@learning_app.command("summary")
def summary(
    action_type: str | None = typer.Option(None, "--action-type", "-a", help="Only this action type."),
    domain: str | None = typer.Option(None, "--domain", "-d", help="Only this domain."),
    window_days: float | None = typer.Option(None, "--window-days", "-w", help="Only the last this many days."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Per action type and domain: success rate, execution times, Brier score; suggested SLAs per task type."""

    async def work() -> None:
        async with open_services() as services:
            data = await services.intents.summary(
                principal=None, action_type=action_type, domain=domain, window_days=window_days
            )
        if as_json:
            _print_json(data)
            return
        for title, groups in (("action type", data["by_action_type"]), ("domain", data["by_domain"])):
            table = Table(title, "count", "success", "p50 s", "p95 s", "p99 s", "Brier", "SLA met")
            for name, g in groups.items():
                t = g["execution_time"]
                table.add_row(
                    name,
                    str(g["count"]),
                    _pct(g["success_rate"]),
                    _num(t["p50"]),
                    _num(t["p95"]),
                    _num(t["p99"]),
                    _num(g["brier_score"]),
                    _pct(g["sla_met_rate"]),
                )
            console.print(table)
        table = Table("task type", "count", "observed p95 ms", "suggested SLA ms", "configured SLA ms")
        for s in data["sla_suggestions"]:
            configured = "-" if s["configured_sla_ms"] is None else f"{s['configured_sla_ms']} ({s['configured_from']})"
            table.add_row(
                s["task_type"],
                str(s["count"]),
                _num(s["observed_p95_ms"], "{:.0f}"),
                _num(s["suggested_sla_ms"], "{:.0f}"),
                configured,
            )
        console.print(table)
        total = data["total"]
        if total["calibration"]:
            cal = Table("confidence", "count", "mean confidence", "success rate", title="calibration (all)")
            for b in total["calibration"]:
                cal.add_row(
                    f"{b['lower']:.1f}-{b['upper']:.1f}",
                    str(b["count"]),
                    f"{b['mean_confidence']:.2f}",
                    _pct(b["success_rate"]),
                )
            console.print(cal)

    run(work)
