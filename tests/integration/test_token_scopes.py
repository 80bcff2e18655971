"""Token scopes against the real database: what a token holds, who may issue one, and what goes when it is revoked."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text, update

from grace import errors, storage
from grace.auth import AGENT_SCOPES, Accounts, Principal, Role, Scope
from grace.auth.tables import TOKENS, api_tokens, users
from grace.clock import ManualClock
from grace.htm import task_limits
from grace.integrity import RowSeal


@pytest.fixture
def accounts(db: storage.Database, clock: ManualClock) -> Accounts:
    return Accounts(db, clock, RowSeal(os.urandom(32)), limits=task_limits())


async def principal_of(accounts: Accounts, user_id: str, **kwargs: object) -> tuple[Principal, str]:
    info, token = await accounts.create_token(user_id, **kwargs)  # type: ignore[arg-type]
    return await accounts.resolve_token(token), info.id


async def test_an_agent_issues_and_revokes_no_token_even_for_an_admin(accounts: Accounts) -> None:
    admin, _ = await accounts.create_user("root", Role.ADMIN)
    agent, _ = await principal_of(accounts, admin.id, agent="ops_agent")
    assert agent.is_admin and agent.scopes == AGENT_SCOPES
    with pytest.raises(errors.PermissionDenied, match="agent"):
        await accounts.create_token(admin.id, name="innocent", by=agent)
    _, own_id = await principal_of(accounts, admin.id)
    with pytest.raises(errors.PermissionDenied, match="agent"):
        await accounts.revoke_token(own_id, by=agent)
    assert (await accounts.resolve_token((await accounts.create_token(admin.id))[1])).username == "root"
    assert len(await accounts.list_tokens(admin.id)) == 3


async def test_a_token_gets_what_its_owner_may_hold_and_an_agents_only_what_asks(accounts: Accounts) -> None:
    member, _ = await accounts.create_user("mia", Role.MEMBER)
    admin, _ = await accounts.create_user("root", Role.ADMIN)
    own, _ = await principal_of(accounts, member.id)
    assert own.scopes == Role.MEMBER.scopes and Scope.USERS not in own.scopes
    assert (await principal_of(accounts, admin.id))[0].scopes == frozenset(Scope)
    assert (await principal_of(accounts, member.id, agent="code_agent"))[0].scopes == AGENT_SCOPES
    with pytest.raises(errors.InvalidInput, match="agents ask, never answer"):
        await accounts.create_token(member.id, agent="code_agent", scopes=["tasks", "consents"])
    with pytest.raises(errors.InvalidInput, match="only an admin's"):
        await accounts.create_token(member.id, scopes=["users"])
    with pytest.raises(errors.InvalidInput, match="valid scopes"):
        await accounts.create_token(member.id, scopes=["everything"])
    with pytest.raises(errors.InvalidInput, match="valid origins"):
        await accounts.create_token(member.id, origins=["marketing"])


async def test_a_token_never_gets_more_than_its_issuer_has(accounts: Accounts, clock: ManualClock) -> None:
    member, _ = await accounts.create_user("mia", Role.MEMBER)
    narrow, _ = await principal_of(
        accounts, member.id, scopes=["tokens", "tasks"], origins=["intent"], expires_in=timedelta(hours=1)
    )
    with pytest.raises(errors.PermissionDenied, match="consents"):
        await accounts.create_token(member.id, scopes=["consents"], by=narrow)
    with pytest.raises(errors.PermissionDenied, match="user_request"):
        await accounts.create_token(member.id, origins=["user_request"], by=narrow)
    with pytest.raises(errors.PermissionDenied, match="critical"):
        await accounts.create_token(member.id, max_priority="critical", by=narrow)
    child, plaintext = await accounts.create_token(member.id, expires_in=timedelta(days=30), by=narrow)
    assert child.scopes == ("tasks", "tokens") and child.origins == ("intent",)
    assert child.expires_at is not None and child.expires_at <= clock.now() + timedelta(hours=1)
    clock.advance(3601)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        await accounts.resolve_token(plaintext)

    no_tokens, _ = await principal_of(accounts, member.id, scopes=["tasks"])
    with pytest.raises(errors.PermissionDenied, match="'tokens' scope"):
        await accounts.create_token(member.id, by=no_tokens)
    other, _ = await accounts.create_user("ned", Role.MEMBER)
    with pytest.raises(errors.PermissionDenied, match="your own"):
        await accounts.create_token(other.id, by=(await principal_of(accounts, member.id))[0])


async def test_revoking_a_token_revokes_every_token_it_issued(accounts: Accounts) -> None:
    member, _ = await accounts.create_user("mia", Role.MEMBER)
    root, root_id = await principal_of(accounts, member.id)
    child_info, child = await accounts.create_token(member.id, by=root)
    child_principal = await accounts.resolve_token(child)
    _, grandchild = await accounts.create_token(member.id, agent="code_agent", by=child_principal)
    _, sibling = await accounts.create_token(member.id)
    assert child_info.parent_id == root_id

    await accounts.revoke_token(root_id, by=root)
    for token in (child, grandchild):
        with pytest.raises(errors.Unauthenticated):
            await accounts.resolve_token(token)
    assert (await accounts.resolve_token(sibling)).username == "mia"
    with pytest.raises(errors.Unauthenticated):
        await accounts.create_token(member.id, by=child_principal)  # its issuer is gone


async def test_an_agents_token_is_capped_whatever_its_row_says(db: storage.Database, accounts: Accounts) -> None:
    admin, _ = await accounts.create_user("root", Role.ADMIN)
    info, token = await accounts.create_token(admin.id, agent="ops_agent")
    # A row that says more than an agent may hold, sealed as Grace itself would have written it.
    async with db.write() as conn:
        row = (await conn.execute(select(api_tokens).where(api_tokens.c.id == info.id))).mappings().one()
        scopes = "tokens users consents keys tasks"
        await conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == info.id)
            .values(scopes=scopes, seal=accounts.seal.seal(TOKENS, {**row, "scopes": scopes}))
        )
    agent = await accounts.resolve_token(token)
    assert agent.scopes == frozenset({Scope.TASKS})
    with pytest.raises(errors.PermissionDenied):
        await accounts.create_token(admin.id, by=agent)
    # And a row written without scopes holds none.
    async with db.write() as conn:
        await conn.execute(
            insert(api_tokens).values(
                id="tok_bare",
                user_id=admin.id,
                name="bare",
                token_hash="0" * 64,
                prefix="grc_bare",
                created_at=datetime.now(UTC),
            )
        )
        stored = (await conn.execute(select(api_tokens.c.scopes).where(api_tokens.c.id == "tok_bare"))).scalar_one()
    assert stored == ""


async def test_the_migration_gives_existing_tokens_what_they_may_still_do(empty_database_url: str) -> None:
    db = storage.Database(empty_database_url)
    try:
        await storage.upgrade(db, "0007_htm_single_claim")
        now = datetime.now(UTC)
        async with db.write() as conn:
            for user_id, role in (("usr_a", "admin"), ("usr_m", "member"), ("usr_o", "operator")):
                await conn.execute(
                    text(
                        "INSERT INTO users (id, username, password_hash, role, disabled, created_at, updated_at)"
                        " VALUES (:id, :id, NULL, :role, false, :now, :now)"
                    ),
                    {"id": user_id, "role": role, "now": now},
                )
            for token_id, user_id, agent in (
                ("tok_a", "usr_a", None),
                ("tok_aa", "usr_a", "ops_agent"),
                ("tok_m", "usr_m", None),
                ("tok_ma", "usr_m", "code_agent"),
                ("tok_o", "usr_o", None),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO api_tokens (id, user_id, agent, name, token_hash, prefix, created_at)"
                        " VALUES (:id, :user_id, :agent, :id, :id, 'grc_', :now)"
                    ),
                    {"id": token_id, "user_id": user_id, "agent": agent, "now": now},
                )
        await storage.upgrade(db, seal_key=os.urandom(32))
        async with db.read() as conn:
            rows = dict((await conn.execute(select(api_tokens.c.id, api_tokens.c.scopes))).all())
            assert (await conn.execute(select(users.c.id))).all()
    finally:
        await db.dispose()
    assert rows == {
        "tok_a": "audit consents keys secrets secrets:ask tasks tokens users",
        "tok_aa": "secrets:ask tasks",
        "tok_m": "audit consents secrets secrets:ask tasks tokens",
        "tok_ma": "secrets:ask tasks",
        "tok_o": "audit consents secrets secrets:ask tasks tokens",
    }
