"""``grace users``: create, list and disable users."""

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


@app.command("set-password")
def set_password(username: str = typer.Argument(..., help="The user whose password to set.")) -> None:
    """Set a user's password, read from standard input."""
    password = typer.get_text_stream("stdin").readline().rstrip("\n")

    async def work() -> None:
        async with open_services() as services:
            await services.accounts.set_password(username, password)
        console.print(f"password set for {username}")

    run(work)
