"""Every CLI command, option and API route explains itself, and the docs exist."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import typer
from typer.core import TyperGroup, TyperOption

from grace.api import create_app
from grace.cli.main import app as cli_app
from grace.config import Settings, load_settings
from grace.htm import HTMConfig

if TYPE_CHECKING:
    # What typer.main.get_command returns. Recent typer builds on its own copy of click, so its
    # commands are neither click.Command nor click.Group: only typer's own classes recognise them.
    from typer._click import Command

ROOT = Path(__file__).resolve().parents[2]


def _commands(command: Command, path: str = "grace") -> list[tuple[str, Command]]:
    found = [(path, command)]
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            found.extend(_commands(sub, f"{path} {name}"))
    return found


COMMANDS = _commands(typer.main.get_command(cli_app))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_cli_command_has_help(path: str, command: Command) -> None:
    assert (command.help or command.short_help or "").strip(), f"`{path}` has no help text"
    for param in command.params:
        if isinstance(param, TyperOption) and param.name != "help":
            assert (param.help or "").strip(), f"`{path}` option {param.opts} has no help text"


def _operations() -> list[tuple[str, dict[str, object]]]:
    app = create_app(load_settings(data_dir=ROOT / ".unused", database_url="sqlite:///:memory:"))
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
    ]


OPERATIONS = _operations()


def test_the_api_has_routes() -> None:
    assert len(OPERATIONS) >= 10


@pytest.mark.parametrize(("name", "operation"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
def test_every_api_route_has_a_description(name: str, operation: dict[str, object]) -> None:
    # FastAPI takes the description from the route function's docstring.
    assert str(operation.get("description") or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize("page", ["quickstart.md", "architecture.md", "configuration.md"])
def test_docs_pages_exist(page: str) -> None:
    assert (ROOT / "docs" / page).read_text().strip()


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    fields = Settings.model_fields
    missing = [f"GRACE_{name.upper()}" for name in fields if f"GRACE_{name.upper()}" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_every_task_manager_setting_is_documented() -> None:
    text = (ROOT / "docs" / "htm.md").read_text()
    names = [f"GRACE_HTM_{name.upper()}" for name in HTMConfig.model_fields]
    missing = [name for name in names if name not in text]
    assert not missing, f"undocumented task manager settings: {missing}"


def test_readme_quickstart_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
