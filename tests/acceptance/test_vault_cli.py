"""``grace secrets``, ``grace keys`` and ``grace audit`` as an operator uses them, on both databases."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update
from typer.testing import CliRunner, Result

from grace.auth import Principal, Role
from grace.cli.main import app
from grace.config import load_settings
from grace.services import build
from grace.vault import AccessResult
from grace.vault.tables import vault_audit, vault_audit_checkpoints
from tests import canary
from tests.vaultkit import reprotect_audit, unprotect_audit

TOKEN = "xoxb-" + "5f6G7h8J9k" * 3


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    return CliRunner()


def _run(grace: CliRunner, *args: str, stdin: str | None = None) -> Result:
    result = grace.invoke(app, list(args), input=stdin)
    canary.SESSION.add("cli:" + " ".join(args[:2]), result.output)
    return result


def test_keys_generate_prints_a_usable_master_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "generate"])
    key = result.output.strip()
    assert result.exit_code == 0 and len(base64.urlsafe_b64decode(key)) == 32
    assert load_settings(data_dir=tmp_path, master_key=key).master_key is not None


def test_store_list_rotate_and_verify(grace: CliRunner, tmp_path: Path) -> None:
    first = _run(grace, "users", "create", "aaron")
    assert first.exit_code == 0 and "A new vault master key was written" in first.output
    assert "Back it up now" in first.output
    stored = _run(grace, "secrets", "store", "slack_token", "--user", "aaron", "--service", "slack", stdin=TOKEN + "\n")
    assert stored.exit_code == 0, stored.output
    assert "stored slack_token v1 (api_key, medium risk)" in stored.output and TOKEN not in stored.output
    assert (tmp_path / "data" / "master.key").exists()
    assert oct((tmp_path / "data" / "master.key").stat().st_mode & 0o777) == "0o600"

    listed = _run(grace, "secrets", "list", "--user", "aaron")
    assert "slack_token" in listed.output and TOKEN[-4:] in listed.output and TOKEN not in listed.output
    assert "master key was written" not in stored.output + listed.output  # only the run that made it warns

    status = _run(grace, "keys", "status")
    assert status.exit_code == 0 and "term 1" in status.output and "master key: file" in status.output
    rotated = _run(grace, "keys", "rotate")
    assert rotated.exit_code == 0 and "1 data keys re-wrapped" in rotated.output
    status = _run(grace, "keys", "status")
    assert "archived" in status.output and "term 2" in status.output

    verified = _run(grace, "audit", "verify")
    assert verified.exit_code == 0 and "audit log intact" in verified.output

    async def tamper() -> None:
        # Change one entry in the database, as someone with database access might.
        services = await build(load_settings(), migrate=False)
        try:
            await unprotect_audit(services.db)
            async with services.db.write() as conn:
                await conn.execute(update(vault_audit).where(vault_audit.c.seq == 2).values(actor="mallory"))
            await reprotect_audit(services.db)
        finally:
            await services.close()

    asyncio.run(tamper())
    tampered = _run(grace, "audit", "verify")
    assert tampered.exit_code == 2 and "modified: 1 at seq 2" in tampered.output


def test_verify_reports_a_tampered_row_and_the_commands_refuse_it(grace: CliRunner) -> None:
    _run(grace, "users", "create", "aaron")
    _run(grace, "secrets", "store", "slack_token", "--user", "aaron", "--service", "slack", stdin=TOKEN)
    assert _run(grace, "audit", "verify").exit_code == 0

    async def make_admin() -> str:
        # A member made admin with plain SQL, as someone who can write the database might.
        services = await build(load_settings(), migrate=False)
        try:
            user = await services.accounts.get_user("aaron")
            async with services.db.write() as conn:
                await conn.execute(text("UPDATE users SET role = 'admin' WHERE id = :id"), {"id": user.id})
        finally:
            await services.close()
        return user.id

    user_id = asyncio.run(make_admin())
    tampered = _run(grace, "audit", "verify")
    assert tampered.exit_code == 2, tampered.output
    assert "tampered rows: 1" in tampered.output and f"users {user_id}" in tampered.output
    assert "admin" not in tampered.output  # the row is named, never its values
    listed = _run(grace, "secrets", "list", "--user", "aaron")
    assert listed.exit_code == 1 and "changed outside Grace" in listed.output


def test_answering_a_request_from_the_terminal(grace: CliRunner) -> None:
    _run(grace, "users", "create", "aaron")
    _run(grace, "users", "create", "olga", "--role", "operator")
    _run(grace, "secrets", "store", "slack_token", "--user", "aaron", "--service", "slack", stdin=TOKEN)

    async def agent_asks() -> tuple[AccessResult, AccessResult]:
        services = await build(load_settings(), migrate=False)
        try:
            assert services.vault is not None
            user = await services.accounts.get_user("aaron")
            agent = Principal(user.id, user.username, Role.MEMBER, agent="code_agent")
            first = await services.vault.access(agent, "slack_token", action="post_message", wait_seconds=0)
            second = await services.vault.access(agent, "slack_token", action="read_channel", wait_seconds=0)
        finally:
            await services.close()
        return first, second

    first, second = asyncio.run(agent_asks())
    pending = _run(grace, "secrets", "pending", "--user", "aaron")
    assert str(first.consent_id) in pending.output and "post_message" in pending.output

    by_other = _run(grace, "secrets", "respond", str(first.consent_id), "--as", "olga", "--approve")
    assert by_other.exit_code == 1 and "owner" in by_other.output
    approved = _run(grace, "secrets", "respond", str(first.consent_id), "--as", "aaron", "--approve")
    assert approved.exit_code == 0 and "approved" in approved.output
    twice = _run(grace, "secrets", "respond", str(first.consent_id), "--as", "aaron", "--deny")
    assert twice.exit_code == 1 and "already approved" in twice.output
    denied = _run(grace, "secrets", "respond", str(second.consent_id), "--as", "aaron", "--deny", "--reason", "no")
    assert denied.exit_code == 0 and "denied" in denied.output
    neither = _run(grace, "secrets", "respond", str(second.consent_id), "--as", "aaron")
    assert neither.exit_code == 1

    history = _run(grace, "secrets", "history", "--user", "aaron")
    assert "approved" in history.output and "denied" in history.output and TOKEN not in history.output
    assert "no rotation due" in _run(grace, "secrets", "due", "--user", "aaron").output
    revoked = _run(grace, "secrets", "revoke", "slack_token", "--user", "aaron", "--reason", "done")
    assert revoked.exit_code == 0 and "revoked slack_token" in revoked.output


def test_bad_input_from_the_terminal(grace: CliRunner) -> None:
    _run(grace, "users", "create", "aaron")
    unknown = _run(
        grace, "secrets", "store", "k", "--user", "aaron", "--service", "s", "--type", "wallet", stdin="v" * 20
    )
    assert unknown.exit_code == 1 and "unknown secret type" in unknown.output
    empty = _run(grace, "secrets", "store", "k", "--user", "aaron", "--service", "s", stdin="\n")
    assert empty.exit_code == 1 and "must not be empty" in empty.output
    huge = _run(grace, "secrets", "store", "k", "--user", "aaron", "--service", "s", stdin="v" * 70_000)
    assert huge.exit_code == 1 and "at most" in huge.output
    missing = _run(grace, "secrets", "respond", "cns_nope", "--as", "aaron", "--approve")
    assert missing.exit_code == 1 and "no consent request" in missing.output
    listed = _run(grace, "secrets", "list", "--user", "aaron")
    assert " k " not in listed.output


def _cut_newest(count: int) -> None:
    """Delete the newest ``count`` entries and their checkpoints, as someone with the database might."""

    async def cut() -> None:
        services = await build(load_settings(), migrate=False)
        try:
            await unprotect_audit(services.db)
            async with services.db.write() as conn:
                head = (await conn.execute(select(func.max(vault_audit.c.seq)))).scalar_one()
                await conn.execute(delete(vault_audit).where(vault_audit.c.seq > head - count))
                await conn.execute(delete(vault_audit_checkpoints).where(vault_audit_checkpoints.c.seq > head - count))
            await reprotect_audit(services.db)
        finally:
            await services.close()

    asyncio.run(cut())


def test_audit_export_verify_against_and_reanchor(
    grace: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor = tmp_path / "other-disk" / "grace-anchor.json"
    monkeypatch.setenv("GRACE_AUDIT_ANCHOR_PATH", str(anchor))
    _run(grace, "users", "create", "aaron")
    _run(grace, "secrets", "store", "slack_token", "--user", "aaron", "--service", "slack", stdin=TOKEN)
    assert anchor.exists() and not (tmp_path / "data" / "audit-anchor.json").exists()

    exported_file = tmp_path / "safe" / "checkpoints.json"
    exported_file.parent.mkdir()
    exported = _run(grace, "audit", "export", str(exported_file))
    assert exported.exit_code == 0 and "keep a copy off this machine" in exported.output
    assert oct(exported_file.stat().st_mode & 0o777) == "0o600"
    head = json.loads(exported_file.read_text())["checkpoints"][-1]["seq"]
    against = _run(grace, "audit", "verify", "--against", str(exported_file))
    assert against.exit_code == 0 and "checked against" in against.output and "audit log intact" in against.output

    _cut_newest(2)
    cut = _run(grace, "audit", "verify")
    assert cut.exit_code == 2 and f"truncated: 2 at seq {head - 1}, {head}" in cut.output
    assert "tampered with, or cut" in cut.output
    refused = _run(grace, "secrets", "store", "other_token", "--user", "aaron", "--service", "x", stdin=TOKEN)
    assert refused.exit_code == 1 and "does not continue from its signed anchor" in refused.output

    declined = _run(grace, "audit", "reanchor", stdin="n\n")
    assert declined.exit_code == 1 and "nothing changed" in declined.output
    assert _run(grace, "audit", "verify").exit_code == 2
    reanchored = _run(grace, "audit", "reanchor", "--yes", "--reason", "incident 7")
    assert reanchored.exit_code == 0 and f"re-anchored at seq {head - 1}" in reanchored.output
    assert _run(grace, "audit", "verify").exit_code == 0
    stored = _run(grace, "secrets", "store", "other_token", "--user", "aaron", "--service", "x", stdin=TOKEN)
    assert stored.exit_code == 0, stored.output
    # The export taken before the cut still shows it.
    still = _run(grace, "audit", "verify", "--against", str(exported_file))
    assert still.exit_code == 2 and "forked: 1 at seq" in still.output

    anchor.unlink()
    missing = _run(grace, "audit", "verify")
    assert missing.exit_code == 2 and "is missing" in missing.output and "grace audit reanchor" in missing.output
    not_an_export = tmp_path / "notes.txt"
    not_an_export.write_text("hello")
    bad = _run(grace, "audit", "verify", "--against", str(not_an_export))
    assert bad.exit_code == 1 and "not an export of signed checkpoints" in bad.output
