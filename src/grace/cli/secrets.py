"""``grace secrets``: store, list, revoke, and answer consent requests from the terminal.

The CLI runs on the server with the database at hand, so it acts as the user
named by ``--user`` (for storing and listing) or ``--as`` (for answering), with
that user's real role.
"""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from grace.auth import Principal
from grace.cli.common import console, fail, open_services, run
from grace.services import Services

app = typer.Typer(help="Store secrets and answer the agent's requests for them.", no_args_is_help=True)


async def _principal(services: Services, username: str) -> Principal:
    user = await services.accounts.get_user(username)
    return Principal(user.id, user.username, user.role)


@app.command("store")
def store(
    key: str = typer.Argument(..., help="The secret's name, e.g. github_api_token."),
    user: str = typer.Option(..., "--user", "-u", help="Username that owns the secret."),
    service: str = typer.Option(..., "--service", "-s", help="The service it is for, e.g. github."),
    secret_type: str = typer.Option(
        "api_key", "--type", "-t", help="api_key, password, oauth_token, ssh_key, certificate or other."
    ),
    risk_level: str | None = typer.Option(None, "--risk", help="Raise the risk above the type's (never lower)."),
    description: str = typer.Option("", "--description", "-d", help="A note shown beside the masked value."),
    rotation_days: int | None = typer.Option(None, "--rotation-days", help="Rotation period (API keys: 7 by default)."),
) -> None:
    """Store a secret read from standard input (never from the command line); a second store adds a version."""
    value = sys.stdin.read()
    if value.endswith("\n"):
        value = value[:-1]

    async def work() -> None:
        async with open_services() as services:
            principal = await _principal(services, user)
            info = await services.vault.store(
                principal,
                key,
                value,
                secret_type=secret_type,
                service=service,
                risk_level=risk_level,
                description=description,
                rotation_days=rotation_days,
            )
        console.print(
            f"stored {info.key} v{info.version} ({info.secret_type}, {info.risk_level} risk) for {user}: {info.masked}"
        )

    run(work)


@app.command("list")
def list_(user: str = typer.Option(..., "--user", "-u", help="Whose secrets to list.")) -> None:
    """List a user's secrets, masked, with usage counts and rotation dates."""

    async def work() -> None:
        async with open_services() as services:
            secrets = await services.vault.list_secrets(await _principal(services, user))
        table = Table("key", "service", "type", "risk", "value", "version", "used", "rotation due", "status")
        for s in secrets:
            due = s.rotation_due_at.isoformat(timespec="minutes") if s.rotation_due_at else ""
            table.add_row(
                s.key,
                s.service,
                s.secret_type,
                s.risk_level,
                s.masked,
                str(s.version),
                str(s.usage_count),
                due,
                s.status,
            )
        console.print(table)

    run(work)


@app.command("revoke")
def revoke(
    key: str = typer.Argument(..., help="The secret to revoke."),
    user: str = typer.Option(..., "--user", "-u", help="Username that owns it."),
    reason: str = typer.Option("", "--reason", "-r", help="Why; kept in the audit log."),
) -> None:
    """Revoke a secret: no further releases; its versions and audit history are kept."""

    async def work() -> None:
        async with open_services() as services:
            info = await services.vault.revoke_secret(await _principal(services, user), key, reason=reason)
        console.print(f"revoked {info.key}")

    run(work)


@app.command("due")
def due(user: str = typer.Option(..., "--user", "-u", help="Whose secrets to check.")) -> None:
    """List secrets whose rotation is due."""

    async def work() -> None:
        async with open_services() as services:
            secrets = await services.vault.rotation_due(await _principal(services, user))
        if not secrets:
            console.print("no rotation due")
        for s in secrets:
            when = s.rotation_due_at.isoformat() if s.rotation_due_at else ""
            console.print(f"{s.key} ({s.service}, {s.secret_type}) due {when}")

    run(work)


@app.command("pending")
def pending(user: str = typer.Option(..., "--user", "-u", help="Whose pending requests to show.")) -> None:
    """Show consent requests waiting for an answer."""

    async def work() -> None:
        async with open_services() as services:
            principal = await _principal(services, user)
            records = await services.vault.pending(principal)
        table = Table("consent id", "secret", "agent", "action", "purpose", "risk", "expires")
        for r in records:
            table.add_row(
                r.consent_id,
                r.secret_key,
                r.requested_by,
                r.requested_action,
                r.requested_for,
                r.risk_level + (" (second approval)" if r.awaiting_second_approval else ""),
                r.expires_at.isoformat(timespec="seconds"),
            )
        console.print(table)

    run(work)


@app.command("respond")
def respond(
    consent_id: str = typer.Argument(..., help="The request to answer (from `grace secrets pending`)."),
    as_user: str = typer.Option(..., "--as", help="The user answering: the owner, an admin, or a second approver."),
    approve: bool = typer.Option(False, "--approve", help="Approve the request."),
    deny: bool = typer.Option(False, "--deny", help="Deny the request."),
    reason: str | None = typer.Option(None, "--reason", "-r", help="Why (kept with a denial)."),
    persistent: bool = typer.Option(
        False, "--persistent", help="Let the approval stand for this agent and action (not for critical secrets)."
    ),
) -> None:
    """Approve or deny a pending consent request."""
    if approve == deny:
        raise fail("say --approve or --deny")

    async def work() -> None:
        async with open_services() as services:
            principal = await _principal(services, as_user)
            record = await services.vault.respond(principal, consent_id, approve, reason=reason, persistent=persistent)
        note = " (waiting for a second approver)" if record.awaiting_second_approval else ""
        console.print(f"{record.consent_id}: {record.status}{note}")

    run(work)


@app.command("history")
def history(
    user: str = typer.Option(..., "--user", "-u", help="Whose consent history to show."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=1000, help="How many records, newest first."),
) -> None:
    """Show consent requests and their outcomes, newest first."""

    async def work() -> None:
        async with open_services() as services:
            records = await services.vault.history(await _principal(services, user), limit=limit)
        table = Table("when", "secret", "agent", "action", "risk", "status", "by")
        for r in records:
            table.add_row(
                r.created_at.isoformat(timespec="seconds"),
                r.secret_key,
                r.requested_by,
                r.requested_action,
                r.risk_level,
                r.status,
                ", ".join(x for x in (r.approved_by, r.second_approved_by) if x),
            )
        console.print(table)

    run(work)
