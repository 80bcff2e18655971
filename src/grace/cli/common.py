"""What every CLI command shares: settings, services, and turning errors into messages."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from grace import errors
from grace.config import Settings, load_settings
from grace.services import Services, build

__all__ = ["console", "err_console", "fail", "open_services", "print_table", "run", "settings"]

T = TypeVar("T")

# Piped output is not cut to 80 columns: ids and tokens must survive copy and paste.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_table(ids: Sequence[str], columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print a table: first the identifier columns ``ids``, never truncated, then ``columns``."""
    table = Table()
    for name in ids:
        table.add_column(name, no_wrap=True, min_width=30)
    for name in columns:
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def settings() -> Settings:
    return load_settings()


@contextlib.asynccontextmanager
async def open_services(*, bootstrap: bool = False) -> AsyncIterator[Services]:
    services = await build(settings(), bootstrap=bootstrap)
    vault_warning = services.vault.master.first_run_warning
    if vault_warning:  # this command just generated the vault's master key file
        err_console.print(f"[yellow]warning:[/yellow] {vault_warning}")
    try:
        yield services
    finally:
        await services.close()


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body; print a Grace error as a message and exit 1."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except errors.GraceError as exc:
        err_console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    sys.stderr.flush()
    return typer.Exit(code)
