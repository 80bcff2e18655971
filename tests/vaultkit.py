"""What the vault tests share: a cast of real users and agent tokens on real services with a manual clock."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from grace.api import create_app
from grace.auth import Principal
from grace.clock import ManualClock
from grace.config import Settings
from grace.services import Services, build
from grace.storage import Database
from grace.vault import Vault
from tests import canary


@dataclass
class Cast:
    services: Services
    vault: Vault
    clock: ManualClock
    owner: Principal  # a member, signed in as a person
    agent: Principal  # code_agent, acting through the owner's token
    other: Principal  # another member
    other_agent: Principal  # another agent of the owner
    operator: Principal
    admin: Principal
    tokens: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def make_cast(settings: Settings, clock: ManualClock) -> Cast:
    services = await build(settings, clock=clock, migrate=False)
    await canary.plant(services)
    accounts = services.accounts
    tokens: dict[str, str] = {}
    principals: dict[str, Principal] = {}
    for name, role, agent, owner_name in (
        ("owner", "member", None, "aaron"),
        ("agent", "member", "code_agent", "aaron"),
        ("other_agent", "member", "mail_agent", "aaron"),
        ("other", "member", None, "bella"),
        ("operator", "operator", None, "olga"),
        ("admin2", "admin", None, "adam"),
    ):
        try:
            user = await accounts.get_user(owner_name)
        except Exception:
            user, _ = await accounts.create_user(owner_name, role)
        _, token = await accounts.create_token(user.id, agent=agent, name=name)
        tokens[name] = token
        principals[name] = await accounts.resolve_token(token)
    assert services.vault is not None
    return Cast(
        services,
        services.vault,
        clock,
        principals["owner"],
        principals["agent"],
        principals["other"],
        principals["other_agent"],
        principals["operator"],
        principals["admin2"],
        tokens,
    )


@pytest.fixture
async def cast(settings: Settings, clock: ManualClock) -> AsyncIterator[Cast]:
    built = await make_cast(settings, clock)
    yield built
    await canary.sweep(built.services)
    await built.services.close()


@pytest.fixture
async def http(cast: Cast, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client on the cast's services (every response goes to the canary collector)."""
    app = create_app(settings, services=cast.services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://grace.test", event_hooks={"response": [canary.SESSION.record_response]}
    ) as client:
        yield client


async def unprotect_audit(db: Database) -> None:
    """Drop the append-only triggers, as an attacker with database access would."""
    async with db.write() as conn:
        if db.is_sqlite:
            await conn.execute(text("DROP TRIGGER IF EXISTS vault_audit_no_update"))
            await conn.execute(text("DROP TRIGGER IF EXISTS vault_audit_no_delete"))
        else:
            await conn.execute(text("ALTER TABLE vault_audit DISABLE TRIGGER USER"))


async def reprotect_audit(db: Database) -> None:
    """Put the append-only triggers back (the PostgreSQL database is shared by the session)."""
    if db.is_sqlite:
        return
    async with db.write() as conn:
        await conn.execute(text("ALTER TABLE vault_audit ENABLE TRIGGER USER"))


@contextlib.asynccontextmanager
async def audit_offline(db: Database) -> AsyncIterator[None]:
    """Make every write to the audit trail fail (a trigger raising on insert) while the block runs."""
    async with db.write() as conn:
        if db.is_sqlite:
            await conn.execute(
                text(
                    "CREATE TRIGGER audit_offline BEFORE INSERT ON vault_audit "
                    "BEGIN SELECT RAISE(ABORT, 'audit offline'); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION audit_offline() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit offline'; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER audit_offline BEFORE INSERT ON vault_audit "
                    "FOR EACH ROW EXECUTE FUNCTION audit_offline()"
                )
            )
    try:
        yield
    finally:
        async with db.write() as conn:
            await conn.execute(text("DROP TRIGGER audit_offline" + ("" if db.is_sqlite else " ON vault_audit")))
            if not db.is_sqlite:
                await conn.execute(text("DROP FUNCTION audit_offline()"))
