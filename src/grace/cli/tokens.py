"""``grace tokens``: issue, list and revoke API tokens."""

from __future__ import annotations

from datetime import timedelta

import typer
from rich.table import Table

from grace.cli.common import console, id_column, open_services, run

app = typer.Typer(help="Manage API tokens for users and the agents acting for them.", no_args_is_help=True)


@app.command("create")
def create(
    user: str = typer.Option(..., "--user", "-u", help="Username (or id) that will own the token."),
    agent: str | None = typer.Option(None, "--agent", "-a", help="Name of the agent using it, e.g. code_agent."),
    name: str = typer.Option("", "--name", "-n", help="A label to recognise the token by."),
    expires_days: int | None = typer.Option(None, "--expires-days", min=1, help="Days until it expires."),
) -> None:
    """Issue a token; it is printed once and stored only as a hash."""

    async def work() -> None:
        async with open_services() as services:
            owner = await services.accounts.get_user(user)
            info, plaintext = await services.accounts.create_token(
                owner.id,
                name=name,
                agent=agent,
                expires_in=timedelta(days=expires_days) if expires_days else None,
            )
        console.print(f"token {info.id} for {owner.username}" + (f" (agent {info.agent})" if info.agent else ""))
        console.print(f"token (shown once): {plaintext}")

    run(work)


@app.command("list")
def list_(user: str | None = typer.Option(None, "--user", "-u", help="Only this user's tokens.")) -> None:
    """List tokens (never their values)."""

    async def work() -> None:
        async with open_services() as services:
            user_id = (await services.accounts.get_user(user)).id if user else None
            tokens = await services.accounts.list_tokens(user_id)
        table = Table()
        id_column(table)
        id_column(table, "user")
        for name in ("agent", "name", "prefix", "last used", "state"):
            table.add_column(name)
        for t in tokens:
            state = "revoked" if t.revoked_at else "active"
            last = t.last_used_at.isoformat() if t.last_used_at else "never"
            table.add_row(t.id, t.user_id, t.agent or "", t.name, t.prefix + "…", last, state)
        console.print(table)

    run(work)


@app.command("revoke")
def revoke(token_id: str = typer.Argument(..., help="The token's id (from `grace tokens list`).")) -> None:
    """Revoke a token; requests using it get 401 from then on."""

    async def work() -> None:
        async with open_services() as services:
            info = await services.accounts.revoke_token(token_id)
        console.print(f"revoked {info.id}")

    run(work)
