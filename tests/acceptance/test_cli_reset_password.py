"""``grace users reset-password``: the user's sessions end; their tokens too when asked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grace import errors
from grace.cli.main import app
from grace.config import load_settings
from grace.services import build


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    return CliRunner()


def sign_in_and_issue(username: str, password: str) -> tuple[str, str]:
    """Return a new session cookie and a new API token of ``username``, as the user gets them."""

    async def work() -> tuple[str, str]:
        services = await build(load_settings(), migrate=False)
        try:
            grant = await services.sign_in.start_session(await services.sign_in.verify_password(username, password))
            user = await services.accounts.get_user(username)
            _, token = await services.accounts.create_token(user.id, name="laptop")
            return grant.session_token, token
        finally:
            await services.close()

    return asyncio.run(work())


def still_works(session_token: str, token: str) -> tuple[bool, bool]:
    async def work() -> tuple[bool, bool]:
        services = await build(load_settings(), migrate=False)
        try:
            out = []
            for check in (services.sign_in.resolve_session(session_token), services.accounts.resolve_token(token)):
                try:
                    await check
                    out.append(True)
                except errors.Unauthenticated:
                    out.append(False)
            return out[0], out[1]
        finally:
            await services.close()

    return asyncio.run(work())


def test_reset_password_ends_sessions_and_keeps_tokens_unless_told(grace: CliRunner) -> None:
    made = grace.invoke(app, ["users", "create", "nora", "--password-stdin"], input="nora's first password\n")
    assert made.exit_code == 0, made.output
    cookie, token = sign_in_and_issue("nora", "nora's first password")

    reset = grace.invoke(app, ["users", "reset-password", "nora"], input="nora's second password\n")
    assert reset.exit_code == 0, reset.output
    assert "sessions ended: 1" in reset.output and "tokens still work" in reset.output.replace("API ", "")
    assert still_works(cookie, token) == (False, True)

    cookie, token = sign_in_and_issue("nora", "nora's second password")
    revoked = grace.invoke(app, ["users", "reset-password", "nora", "--revoke-tokens"], input="nora's third password\n")
    assert revoked.exit_code == 0, revoked.output
    assert "tokens revoked: 2" in revoked.output
    assert still_works(cookie, token) == (False, False)
