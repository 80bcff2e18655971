"""Migration 0010_row_seals on both databases: a new install and an upgrade both end with every row sealed."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from grace import errors, storage
from grace.auth import SEALED as AUTH_SEALED
from grace.auth.tables import api_tokens, sessions, users
from grace.cli.main import app
from grace.clock import SystemClock
from grace.config import Settings, load_settings
from grace.services import build
from grace.vault import generate_encoded
from grace.vault.tables import SEALED as VAULT_SEALED
from grace.vault.tables import secret_consent_records, vault_secrets

PREVIOUS_HEAD = "0009_voice"
TOKEN = "grc_" + "t0k3n" * 9
COOKIE = "session-" + "c00k1e" * 6


async def unsealed_rows(db: storage.Database) -> dict[str, int]:
    """Return, per sealed table, how many rows it holds and how many of them have no seal."""
    counts = {}
    async with db.read() as conn:
        for spec in (*AUTH_SEALED, *VAULT_SEALED):
            total = (await conn.execute(select(func.count()).select_from(spec.table))).scalar_one()
            bare = (
                await conn.execute(select(func.count()).select_from(spec.table).where(spec.table.c.seal.is_(None)))
            ).scalar_one()
            counts[spec.name] = total if bare else 0
    return counts


def settings_for(url: str, tmp_path: Path, master_key: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=url, master_key=master_key)


async def test_a_new_install_ends_sealed(empty_database_url: str, tmp_path: Path) -> None:
    services = await build(settings_for(empty_database_url, tmp_path, generate_encoded()))
    try:
        assert services.bootstrap is not None
        assert await storage.current_revision(services.db) == storage.head_revision()
        principal = await services.accounts.resolve_token(services.bootstrap.token)
        assert principal.is_admin
        assert await unsealed_rows(services.db) == dict.fromkeys(await unsealed_rows(services.db), 0)
        report = await services.vault.verify_audit()
        assert report.ok and report.tampered_rows == []
    finally:
        await services.close()


async def rows_from_before(db: storage.Database) -> dict[str, str]:
    """Migrate to the previous head and store what an install of it would hold; return the ids."""
    await storage.upgrade(db, PREVIOUS_HEAD)
    now = SystemClock().now()
    member = {"id": "usr_member", "username": "mia", "password_hash": None, "role": "member", "disabled": False}
    async with db.write() as conn:
        await conn.execute(insert(users).values(**member, created_at=now, updated_at=now))
        await conn.execute(
            insert(api_tokens).values(
                id="tok_mia",
                user_id="usr_member",
                agent=None,
                name="laptop",
                token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
                prefix=TOKEN[:8],
                created_at=now,
                expires_at=now + timedelta(days=30),
                scopes="audit consents secrets secrets:ask tasks tokens",
            )
        )
        await conn.execute(
            insert(sessions).values(
                id="ses_mia",
                user_id="usr_member",
                session_hash=hashlib.sha256(COOKIE.encode()).hexdigest(),
                csrf_hash="0" * 64,
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
        secret: dict[str, Any] = {
            "id": "sec_mia",
            "owner_id": "usr_member",
            "key": "github_token",
            "secret_type": "api_key",
            "service": "github",
            "risk_level": "medium",
            "description": "",
            "status": "active",
            "current_version": 1,
            "hint": "",
            "usage_count": 0,
            "created_at": now,
            "updated_at": now,
        }
        await conn.execute(insert(vault_secrets).values(**secret))
        await conn.execute(
            insert(secret_consent_records).values(
                consent_id="cns_mia",
                secret_key="github_token",
                secret_id="sec_mia",
                secret_type="api_key",
                service="github",
                requested_by="code_agent",
                requested_for="push code",
                requested_action="git_push",
                user_id="usr_member",
                requester_user_id="usr_member",
                consent_status="approved",
                risk_level="medium",
                single_use=False,
                used_count=0,
                governance_approval_required=False,
                second_approval_required=False,
                approved_by="mia",
                auto_approved=False,
                anomalies=[],
                context={"repo": "grace"},
                created_at=now,
                expires_at=now + timedelta(minutes=5),
                responded_at=now,
                valid_until=now + timedelta(days=1),
                idle_timeout_seconds=1800,
            )
        )
    return {"user": "usr_member", "consent": "cns_mia"}


@pytest.mark.parametrize("how", ["grace serve", "grace db upgrade"])
async def test_an_upgrade_from_the_previous_head_seals_every_row(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    db = storage.Database(empty_database_url)
    try:
        ids = await rows_from_before(db)
    finally:
        await db.dispose()
    master_key = generate_encoded()
    settings = settings_for(empty_database_url, tmp_path, master_key)
    if how == "grace db upgrade":
        monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("GRACE_DATABASE_URL", empty_database_url)
        monkeypatch.setenv("GRACE_MASTER_KEY", master_key)
        # The command runs its own event loop: off this test's loop, as from a shell.
        result = await asyncio.to_thread(CliRunner().invoke, app, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert f"upgraded from {PREVIOUS_HEAD}" in result.output
    services = await build(settings, migrate=how == "grace serve", bootstrap=False)
    try:
        assert await storage.current_revision(services.db) == storage.head_revision()
        assert set((await unsealed_rows(services.db)).values()) == {0}
        report = await services.vault.verify_audit()
        assert report.tampered_rows == [] and report.ok
        # What the old rows said still holds, under seals made with this master key.
        principal = await services.accounts.resolve_token(TOKEN)
        assert principal.user_id == ids["user"] and principal.role.value == "member"
        assert (await services.sign_in.resolve_session(COOKIE)).principal.username == "mia"
        consent = await services.vault.get_consent(ids["consent"])
        assert consent.status == "approved" and not consent.single_use
        assert (await services.vault.secret(principal, "github_token")).risk_level == "medium"
    finally:
        await services.close()


async def test_an_upgrade_without_the_master_key_is_refused_and_changes_nothing(empty_database_url: str) -> None:
    db = storage.Database(empty_database_url)
    try:
        await rows_from_before(db)
        with pytest.raises(errors.ConfigurationError, match="needs the master key"):
            await storage.upgrade(db)
        assert await storage.current_revision(db) == PREVIOUS_HEAD
    finally:
        await db.dispose()
