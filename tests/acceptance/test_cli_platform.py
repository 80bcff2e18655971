"""The ``grace`` command as an operator uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from grace import __version__
from grace.cli.main import app


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    return CliRunner()


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"grace {__version__}"


def test_db_upgrade_on_an_empty_file_then_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRACE_DATABASE_URL", raising=False)
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0 and "upgraded from empty" in first.output
    assert (tmp_path / "grace.db").exists()
    again = runner.invoke(app, ["db", "upgrade"])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_users_and_tokens_lifecycle(grace: CliRunner) -> None:
    made = grace.invoke(app, ["users", "create", "olivia", "--role", "operator"])
    assert made.exit_code == 0, made.output
    assert "created operator olivia" in made.output and "password (shown once)" in made.output

    listed = grace.invoke(app, ["users", "list"])
    assert "olivia" in listed.output and "operator" in listed.output

    issued = grace.invoke(app, ["tokens", "create", "--user", "olivia", "--agent", "code_agent"])
    assert issued.exit_code == 0, issued.output
    token_id = issued.output.split()[1]
    token = issued.output.split("token (shown once):")[1].strip()
    assert token.startswith("grc_")

    tokens = grace.invoke(app, ["tokens", "list", "--user", "olivia"])
    assert token_id[:12] in tokens.output and "code_agent" in tokens.output and token not in tokens.output

    assert grace.invoke(app, ["tokens", "revoke", token_id]).exit_code == 0
    assert "revoked" in grace.invoke(app, ["tokens", "list"]).output

    disabled = grace.invoke(app, ["users", "disable", "olivia"])
    assert disabled.exit_code == 0 and "disabled olivia" in disabled.output
    assert "yes" in grace.invoke(app, ["users", "list"]).output
    enabled = grace.invoke(app, ["users", "enable", "olivia"])
    assert enabled.exit_code == 0 and "enabled olivia" in enabled.output
    assert "yes" not in grace.invoke(app, ["users", "list"]).output


def test_tokens_carry_the_scopes_and_limits_they_were_given(grace: CliRunner) -> None:
    assert grace.invoke(app, ["users", "create", "tess", "--role", "member"]).exit_code == 0
    narrow = grace.invoke(
        app,
        ["tokens", "create", "--user", "tess", "--scope", "tasks", "--origin", "intent", "--max-priority", "normal"],
    )
    assert narrow.exit_code == 0, narrow.output
    assert "scopes: tasks (origins: intent; at most normal)" in narrow.output
    agent = grace.invoke(app, ["tokens", "create", "--user", "tess", "--agent", "code_agent"])
    assert "scopes: secrets:ask tasks" in agent.output
    listed = grace.invoke(app, ["tokens", "list", "--user", "tess"]).output
    assert "secrets:ask tasks" in listed and "origins: intent" in listed

    answering = grace.invoke(app, ["tokens", "create", "--user", "tess", "--agent", "a2", "--scope", "consents"])
    assert answering.exit_code == 1 and "never answer" in answering.output
    for argv, message in (
        (["--scope", "users"], "only an admin's"),
        (["--scope", "root"], "valid scopes"),
        (["--origin", "hunter_alert"], "cannot be given origin hunter_alert"),
        (["--max-priority", "critical"], "at most high"),
    ):
        refused = grace.invoke(app, ["tokens", "create", "--user", "tess", *argv])
        assert refused.exit_code == 1 and message in refused.output, refused.output


def test_password_from_stdin(grace: CliRunner) -> None:
    made = grace.invoke(app, ["users", "create", "pat", "--password-stdin"], input="a sturdy passphrase\n")
    assert made.exit_code == 0 and "shown once" not in made.output
    short = grace.invoke(app, ["users", "create", "quinn", "--password-stdin"], input="short\n")
    assert short.exit_code == 1 and "at least 12" in short.output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["users", "create", "admin2", "--role", "king"], "valid roles: member, operator, admin"),
        (["users", "disable", "nobody"], "no user 'nobody'"),
        (["tokens", "create", "--user", "nobody"], "no user 'nobody'"),
        (["tokens", "revoke", "tok_missing"], "no token 'tok_missing'"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message(grace: CliRunner, argv: list[str], message: str) -> None:
    result = grace.invoke(app, argv)
    assert result.exit_code == 1
    assert message in result.output


def test_duplicate_user_is_refused_and_the_first_kept(grace: CliRunner) -> None:
    assert grace.invoke(app, ["users", "create", "rory"]).exit_code == 0
    again = grace.invoke(app, ["users", "create", "rory", "--role", "admin"])
    assert again.exit_code == 1 and "already exists" in again.output
    assert "member" in grace.invoke(app, ["users", "list"]).output


def test_bad_configuration_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GRACE_MASTER_KEY", "changeme")
    result = CliRunner().invoke(app, ["users", "list"])
    assert result.exit_code == 1 and "GRACE_MASTER_KEY" in result.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GRACE_DATABASE_URL": "postgresql://grace:not-for-your-eyes@127.0.0.1:1/grace"},
            "the database at postgresql://grace:***@127.0.0.1:1/grace cannot be reached: ",
        ),
        (
            {"GRACE_DATABASE_URL": "sqlite:////proc/no-such-dir/grace.db"},
            "the SQLite database /proc/no-such-dir/grace.db cannot be created",
        ),
        ({"GRACE_DATA_DIR": "/proc/no-such-dir"}, "/proc/no-such-dir"),  # the data directory, or the database in it
    ],
)
@pytest.mark.parametrize("argv", [["db", "upgrade"], ["users", "list"]])
def test_a_database_that_cannot_be_reached_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], message: str, argv: list[str]
) -> None:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("GRACE_DATABASE_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1 and message in result.output and "cannot be" in result.output, result.output
    assert "Traceback" not in result.output and "not-for-your-eyes" not in result.output
