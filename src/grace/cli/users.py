"""``grace users``: create, list, disable and enable users, and reset passwords."""

from __future__ import annotations

import typer

from grace.cli.common import console, open_services, print_table, run

app = typer.Typer(help="Manage users (admin, operator, member).", no_args_is_help=True)


@app.command("create")
def create(
    username: str = typer.Argument(..., help="Login name: lowercase letters, digits, '.', '_' or '-'."),
    role: str = typer.Option("member", "--role", "-r", help="admin, operator or member."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input instead of generating one."
    ),
) -> None:
    """Create a user; prints a generated password once unless --password-stdin is given."""
    password = typer.get_text_stream("stdin").readline().rstrip("\n") if password_stdin else None

    async def work() -> None:
        async with open_services() as services:
            user, generated = await services.accounts.create_user(username, role, password)
        console.print(f"created {user.role.value} [bold]{user.username}[/bold] ({user.id})")
        if password is None:
            console.print(f"password (shown once): {generated}")

    run(work)


@app.command("list")
def list_() -> None:
    """List users with their role and whether they are disabled."""

    async def work() -> None:
        async with open_services() as services:
            users = await services.accounts.list_users()
        print_table(
            ("id",),
            ("username", "role", "disabled", "created"),
            ((u.id, u.username, u.role.value, "yes" if u.disabled else "", u.created_at.isoformat()) for u in users),
        )

    run(work)


@app.command("disable")
def disable(username: str = typer.Argument(..., help="The user to disable.")) -> None:
    """Disable a user: their tokens and sessions stop working at once."""
    _set_disabled(username, True)


@app.command("enable")
def enable(username: str = typer.Argument(..., help="The user to enable again.")) -> None:
    """Re-enable a disabled user."""
    _set_disabled(username, False)


def _set_disabled(username: str, disabled: bool) -> None:
    async def work() -> None:
        async with open_services() as services:
            user = await services.accounts.set_disabled(username, disabled)
        console.print(f"{'disabled' if disabled else 'enabled'} {user.username}")

    run(work)


@app.command("reset-password")
def reset_password(
    username: str = typer.Argument(..., help="The user whose password to set."),
    revoke_tokens: bool = typer.Option(
        False, "--revoke-tokens", help="Also revoke every API token of the user (after a leak)."
    ),
) -> None:
    """Set a user's password, read from standard input; every session of the user ends.

    Their API tokens keep working unless --revoke-tokens is given.
    """
    password = typer.get_text_stream("stdin").readline().rstrip("\n")

    async def work() -> None:
        async with open_services() as services:
            reset = await services.accounts.set_password(username, password, revoke_tokens=revoke_tokens)
        console.print(f"password set for {reset.username}; sessions ended: {reset.sessions_ended}")
        if revoke_tokens:
            console.print(f"tokens revoked: {reset.tokens_revoked}")
        else:
            console.print("API tokens still work (use --revoke-tokens to revoke them too)")

    run(work)


# The command's earlier name, kept for scripts that use it.
app.command("set-password", hidden=True)(reset_password)
