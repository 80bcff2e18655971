"""Users, tokens, sessions and sign-in limits against the real database."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import select

from grace import errors, storage
from grace.auth import Accounts, Role, SignIn
from grace.auth.tables import api_tokens, sessions, users
from grace.clock import ManualClock
from grace.integrity import RowSeal


@pytest.fixture
def accounts(db: storage.Database, clock: ManualClock) -> Accounts:
    return Accounts(db, clock, RowSeal(os.urandom(32)))


@pytest.fixture
def sign_in(db: storage.Database, clock: ManualClock, accounts: Accounts) -> SignIn:
    return SignIn(db, clock, accounts, session_ttl=timedelta(hours=1), max_failures=3, window=timedelta(minutes=5))


async def test_passwords_and_tokens_are_stored_only_as_hashes(
    db: storage.Database, accounts: Accounts, sign_in: SignIn
) -> None:
    password = "correct horse battery staple"
    user, _ = await accounts.create_user("alice", Role.MEMBER, password)
    _, token = await accounts.create_token(user.id, agent="code_agent")
    grant = await sign_in.start_session(await sign_in.verify_password("alice", password))

    async with db.read() as conn:
        dumped: list[str] = []
        for table in (users, api_tokens, sessions):
            for row in (await conn.execute(select(table))).all():
                dumped.extend(str(v) for v in row)
    everything = "\n".join(dumped)
    for plaintext in (password, token, grant.session_token, grant.csrf_token):
        assert plaintext not in everything
    assert any(v.startswith("$argon2id$") for v in dumped)
    assert token[:8] in everything  # only the short display prefix is kept


async def test_a_token_resolves_to_its_user_and_agent(accounts: Accounts) -> None:
    user, _ = await accounts.create_user("bob", "operator")
    _, token = await accounts.create_token(user.id, agent="code_agent")
    principal = await accounts.resolve_token(token)
    assert (principal.username, principal.role, principal.agent) == ("bob", Role.OPERATOR, "code_agent")
    assert principal.name == "code_agent@bob"


async def test_revoked_expired_and_disabled_tokens_stop_working(accounts: Accounts, clock: ManualClock) -> None:
    user, _ = await accounts.create_user("carol", "member")
    revoked, revoked_token = await accounts.create_token(user.id)
    _, expiring_token = await accounts.create_token(user.id, expires_in=timedelta(hours=1))
    _, plain_token = await accounts.create_token(user.id)

    await accounts.revoke_token(revoked.id)
    with pytest.raises(errors.Unauthenticated):
        await accounts.resolve_token(revoked_token)

    await accounts.resolve_token(expiring_token)
    clock.advance(3601)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        await accounts.resolve_token(expiring_token)

    await accounts.resolve_token(plain_token)
    await accounts.set_disabled("carol")
    with pytest.raises(errors.Unauthenticated):
        await accounts.resolve_token(plain_token)


async def test_members_cannot_revoke_other_peoples_tokens(accounts: Accounts) -> None:
    owner, _ = await accounts.create_user("owner", "member")
    other, _ = await accounts.create_user("other", "member")
    info, token = await accounts.create_token(owner.id)
    other_principal = await accounts.resolve_token((await accounts.create_token(other.id))[1])
    with pytest.raises(errors.NotFound):
        await accounts.revoke_token(info.id, by=other_principal)
    assert (await accounts.resolve_token(token)).username == "owner"


async def test_failed_sign_ins_are_limited_per_user_and_client(
    sign_in: SignIn, accounts: Accounts, clock: ManualClock
) -> None:
    await accounts.create_user("dave", "member", "a long enough password")
    await accounts.create_user("fay", "member", "fay's long password")
    for _ in range(3):
        with pytest.raises(errors.Unauthenticated):
            await sign_in.verify_password("dave", "wrong guess here", client="10.0.0.1")
    # Locked now for dave from that address, even with the right password.
    with pytest.raises(errors.RateLimited) as locked:
        await sign_in.verify_password("dave", "a long enough password", client="10.0.0.1")
    assert 0 < locked.value.retry_after <= 300
    # Nobody else behind that address is locked out by it, nor dave from elsewhere.
    assert (await sign_in.verify_password("fay", "fay's long password", client="10.0.0.1")).username == "fay"
    assert (await sign_in.verify_password("dave", "a long enough password", client="10.0.0.2")).username == "dave"
    clock.advance(301)
    principal = await sign_in.verify_password("dave", "a long enough password", client="10.0.0.1")
    assert principal.username == "dave"


async def test_one_address_trying_many_usernames_meets_a_higher_ceiling(
    db: storage.Database, clock: ManualClock, accounts: Accounts
) -> None:
    sign_in = SignIn(
        db,
        clock,
        accounts,
        session_ttl=timedelta(hours=1),
        max_failures=3,
        window=timedelta(minutes=5),
        client_max_failures=6,
    )
    await accounts.create_user("gus", "member", "gus's long password")
    for n in range(6):
        with pytest.raises(errors.Unauthenticated):
            await sign_in.verify_password(f"guess{n}", "wrong guess here", client="10.0.0.9")
    with pytest.raises(errors.RateLimited):
        await sign_in.verify_password("gus", "gus's long password", client="10.0.0.9")
    assert (await sign_in.verify_password("gus", "gus's long password", client="10.0.0.10")).username == "gus"


async def test_sessions_end_on_sign_out_expiry_and_disable(
    sign_in: SignIn, accounts: Accounts, clock: ManualClock
) -> None:
    await accounts.create_user("erin", "member", "another long password")
    principal = await sign_in.verify_password("erin", "another long password")
    first = await sign_in.start_session(principal)
    active = await sign_in.resolve_session(first.session_token)
    active.check_csrf(first.csrf_token)
    with pytest.raises(errors.PermissionDenied):
        active.check_csrf("forged")
    assert first.principal.session_id is not None
    await sign_in.end_session(first.principal.session_id)
    with pytest.raises(errors.Unauthenticated):
        await sign_in.resolve_session(first.session_token)

    second = await sign_in.start_session(principal)
    clock.advance(3601)
    with pytest.raises(errors.Unauthenticated):
        await sign_in.resolve_session(second.session_token)

    third = await sign_in.start_session(principal)
    await accounts.set_disabled("erin")
    with pytest.raises(errors.Unauthenticated):
        await sign_in.resolve_session(third.session_token)


async def test_bootstrap_runs_once_and_honours_the_given_token(accounts: Accounts) -> None:
    given = "automation-token-0123456789abcdef"
    creds = await accounts.bootstrap(given)
    assert creds is not None and creds.token == given and creds.username == "admin"
    assert given not in repr(creds) and creds.password not in repr(creds)
    principal = await accounts.resolve_token(given)
    assert principal.role is Role.ADMIN
    assert await accounts.bootstrap("another-token-0123456789abcdef") is None
    assert await accounts.count_users() == 1


@pytest.mark.parametrize(
    ("username", "role", "password", "message"),
    [
        ("Bad Name", "member", None, "username"),
        ("ok", "superuser", None, "valid roles: member, operator, admin"),
        ("shortpw", "member", "short", "at least 12"),
    ],
)
async def test_bad_user_input_is_refused(
    accounts: Accounts, username: str, role: str, password: str | None, message: str
) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        await accounts.create_user(username, role, password)
    assert await accounts.count_users() == 0
