"""``grace playbook``: lint, execute (or dry-run) and the run history."""

from __future__ import annotations

from pathlib import Path

import typer

from grace import jsontext
from grace.cli.common import console, err_console, fail, open_services, print_table, run
from grace.playbooks import check, default_registry

app = typer.Typer(help="Operational playbooks: lint, execute, cancel, history.", no_args_is_help=True)


@app.command("lint")
def lint(files: list[Path] = typer.Argument(..., help="Playbook files to check.")) -> None:
    """Check playbooks; print each problem as file:line:column and exit 1 if any."""
    registry = default_registry()
    found = 0
    for path in files:
        problems = check(path, registry)[1]
        for problem in problems:
            err_console.print(str(problem), markup=False)
        found += len(problems)
        if not problems:
            console.print(f"{path}: ok", markup=False)
    if found:
        raise fail(f"{found} problem(s) in {len(files)} file(s)")


def _inputs(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise fail(f"--input takes NAME=VALUE, not {pair!r}")
        out[name.strip()] = value
    return out


@app.command("execute")
def execute(
    file: Path = typer.Argument(..., help="The playbook to run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Call no action with side effects; report each step."),
    inputs: list[str] = typer.Option([], "--input", help="An input as NAME=VALUE (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
    as_user: str | None = typer.Option(
        None,
        "--as",
        metavar="USERNAME",
        help="The person the run is for (its approvals ask them, its secrets are theirs); default: its owner.",
    ),
) -> None:
    """Run a playbook now in this process (lint first); exit 0 if it succeeds, 3 if it waits for an approval, else 1."""
    given = _inputs(inputs)

    async def work() -> int:
        async with open_services() as services:
            playbook = services.playbooks.load(file)
            principal = None
            who = "cli"
            if as_user is not None:
                principal = await services.playbooks.person(as_user)
                if principal is None:
                    raise fail(f"--as {as_user!r}: no active user of that name")
                who = f"cli as {principal.name}"
            result = await services.playbooks.execute(playbook, given, who=who, principal=principal, dry_run=dry_run)
        if as_json:
            console.print(
                jsontext.dumps(
                    {"run_id": result.run_id, "status": result.status, "reason": result.reason, "steps": result.steps}
                ),
                markup=False,
            )
        else:
            console.print(
                f"run {result.run_id}: {result.status}" + (f" ({result.reason})" if result.reason else ""), markup=False
            )
            for step in result.steps:
                extra = step.get("reason") or step.get("error") or ""
                console.print(
                    f"  {step['phase']:<10} {step['id']:<28} {step.get('outcome', '?'):<16} {extra}", markup=False
                )
        if result.status == "waiting":
            console.print(
                "the run waits for its approval: a serving Grace goes on with it once answered, if this file is"
                " in its playbooks folder (GRACE_PLAYBOOKS_DIR); 'grace playbook cancel RUN_ID' withdraws it",
                markup=False,
            )
            return 3
        return 0 if result.status == "succeeded" else 1

    code = run(work)
    if code:
        raise typer.Exit(code)


@app.command("cancel")
def cancel(
    run_id: str = typer.Argument(..., help="The run to cancel (queued, running or waiting for its approval)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
) -> None:
    """Cancel a run: its approval is withdrawn, completed steps roll back, always runs; exit 1 if it had finished."""

    async def work() -> None:
        async with open_services() as services:
            record = await services.scheduler.cancel_run(run_id, by="cli")
        if as_json:
            console.print(jsontext.dumps(record.as_dict()), markup=False)
            return
        if record.status == "running":
            console.print(
                f"run {record.id}: cancel asked of its task; it reads 'cancelled' once its worker has stopped it",
                markup=False,
            )
        else:
            console.print(f"run {record.id}: {record.status} ({record.reason})", markup=False)

    run(work)


@app.command("history")
def history(
    run_id: str | None = typer.Argument(None, help="One run's id: show its steps and attempts."),
    playbook: str | None = typer.Option(None, "--playbook", help="Only this playbook's runs."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many runs, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List recent runs and skipped firings, or show one run whole."""

    async def work() -> None:
        async with open_services() as services:
            if run_id:
                record = await services.playbooks.run_record(run_id)
                console.print(jsontext.dumps(record.as_dict()), markup=False)
                return
            records = await services.playbooks.runs(playbook=playbook, limit=limit)
        if as_json:
            console.print(jsontext.dumps([r.as_dict() for r in records]), markup=False)
            return
        print_table(
            ["run"],
            ["playbook", "trigger", "who", "status", "reason", "created"],
            [(r.id, r.playbook, r.trigger, r.who, r.status, r.reason or "", r.created_at.isoformat()) for r in records],
        )

    run(work)
