"""``grace tokens``: issue, list and revoke API tokens."""

from __future__ import annotations

from datetime import timedelta

import typer

from grace.auth import Scope, TokenInfo
from grace.cli.common import console, open_services, print_table, run

app = typer.Typer(help="Manage API tokens for users and the agents acting for them.", no_args_is_help=True)

SCOPE_HELP = "What it may do; repeat for several: " + ", ".join(s.value for s in Scope) + " (default: all it may hold)."


@app.command("create")
def create(
    user: str = typer.Option(..., "--user", "-u", help="Username (or id) that will own the token."),
    agent: str | None = typer.Option(None, "--agent", "-a", help="Name of the agent using it, e.g. code_agent."),
    name: str = typer.Option("", "--name", "-n", help="A label to recognise the token by."),
    expires_days: int | None = typer.Option(None, "--expires-days", min=1, help="Days until it expires."),
    scope: list[str] | None = typer.Option(None, "--scope", "-s", help=SCOPE_HELP),
    origin: list[str] | None = typer.Option(
        None, "--origin", help="A task origin it may claim; repeat for several (default: its user's role's)."
    ),
    max_priority: str | None = typer.Option(
        None, "--max-priority", help="The most urgent task priority it may use (default: its user's role's)."
    ),
) -> None:
    """Issue a token; it is printed once and stored only as a hash. An agent's token only asks (tasks, secrets:ask)."""

    async def work() -> None:
        async with open_services() as services:
            owner = await services.accounts.get_user(user)
            info, plaintext = await services.accounts.create_token(
                owner.id,
                name=name,
                agent=agent,
                expires_in=timedelta(days=expires_days) if expires_days else None,
                scopes=scope or None,
                origins=origin or None,
                max_priority=max_priority,
            )
        console.print(f"token {info.id} for {owner.username}" + (f" (agent {info.agent})" if info.agent else ""))
        console.print(f"scopes: {' '.join(info.scopes) or 'none'}" + _limits(info))
        console.print(f"token (shown once): {plaintext}")

    run(work)


@app.command("list")
def list_(user: str | None = typer.Option(None, "--user", "-u", help="Only this user's tokens.")) -> None:
    """List tokens (never their values)."""

    async def work() -> None:
        async with open_services() as services:
            user_id = (await services.accounts.get_user(user)).id if user else None
            tokens = await services.accounts.list_tokens(user_id)
        print_table(
            ("id", "user"),
            ("agent", "name", "scopes", "prefix", "last used", "state"),
            (
                (
                    t.id,
                    t.user_id,
                    t.agent or "",
                    t.name,
                    " ".join(t.scopes) + _limits(t),
                    t.prefix + "…",
                    t.last_used_at.isoformat() if t.last_used_at else "never",
                    "revoked" if t.revoked_at else "active",
                )
                for t in tokens
            ),
        )

    run(work)


@app.command("revoke")
def revoke(token_id: str = typer.Argument(..., help="The token's id (from `grace tokens list`).")) -> None:
    """Revoke a token and every token it issued; requests using them get 401 from then on."""

    async def work() -> None:
        async with open_services() as services:
            info = await services.accounts.revoke_token(token_id)
        console.print(f"revoked {info.id}")

    run(work)


def _limits(info: TokenInfo) -> str:
    """Describe how a token narrows its user's task limits ('' when it does not)."""
    parts = []
    if info.origins is not None:
        parts.append(f"origins: {' '.join(info.origins) or 'none'}")
    if info.max_priority is not None:
        parts.append(f"at most {info.max_priority}")
    return f" ({'; '.join(parts)})" if parts else ""
