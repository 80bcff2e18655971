"""Signing in as an attacker probes it: a password reset ends sessions, an unknown username costs
the same password hash verification as a known one (counted, not timed), and a verification in
progress does not stop the service answering others."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import timedelta
from typing import Literal

import pytest
from argon2 import PasswordHasher

from grace import errors, storage
from grace.auth import Accounts, SignIn
from grace.clock import ManualClock
from grace.integrity import RowSeal


class CountingHasher(PasswordHasher):
    """The real Argon2id hasher, counting the verifications it does."""

    verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
def accounts(db: storage.Database, clock: ManualClock) -> Accounts:
    return Accounts(db, clock, RowSeal(os.urandom(32)))


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def sign_in(db: storage.Database, clock: ManualClock, accounts: Accounts, hasher: CountingHasher) -> SignIn:
    return SignIn(
        db,
        clock,
        accounts,
        session_ttl=timedelta(hours=1),
        max_failures=50,
        window=timedelta(minutes=5),
        hasher=hasher,
    )


async def test_a_password_reset_ends_every_session_of_the_user(accounts: Accounts, sign_in: SignIn) -> None:
    await accounts.create_user("hana", "member", "hana's old password")
    await accounts.create_user("ivan", "member", "ivan's own password")
    principal = await sign_in.verify_password("hana", "hana's old password")
    laptop, phone = await sign_in.start_session(principal), await sign_in.start_session(principal)
    other = await sign_in.start_session(await sign_in.verify_password("ivan", "ivan's own password"))
    user = await accounts.get_user("hana")
    _, token = await accounts.create_token(user.id, name="ci")

    reset = await accounts.set_password("hana", "hana's new password")

    assert (reset.sessions_ended, reset.tokens_revoked) == (2, 0)
    for grant in (laptop, phone):
        with pytest.raises(errors.Unauthenticated):
            await sign_in.resolve_session(grant.session_token)
    assert (await sign_in.resolve_session(other.session_token)).principal.username == "ivan"
    assert (await accounts.resolve_token(token)).username == "hana"  # tokens stay unless asked
    with pytest.raises(errors.Unauthenticated):
        await sign_in.verify_password("hana", "hana's old password")
    fresh = await sign_in.start_session(await sign_in.verify_password("hana", "hana's new password"))
    assert (await sign_in.resolve_session(fresh.session_token)).principal.username == "hana"


async def test_a_reset_that_revokes_tokens_ends_them_too(accounts: Accounts, sign_in: SignIn) -> None:
    user, _ = await accounts.create_user("jude", "member", "jude's old password")
    _, first = await accounts.create_token(user.id, name="laptop")
    _, second = await accounts.create_token(user.id, agent="code_agent")
    reset = await accounts.set_password("jude", "jude's new password", revoke_tokens=True)
    assert reset.tokens_revoked == 2
    for token in (first, second):
        with pytest.raises(errors.Unauthenticated):
            await accounts.resolve_token(token)


async def test_every_sign_in_costs_one_password_verification_whoever_the_user_is(
    accounts: Accounts, sign_in: SignIn, hasher: CountingHasher
) -> None:
    await accounts.create_user("kim", "member", "kim's long password")
    await accounts.create_user("lou", "member", "lou's long password")
    await accounts.set_disabled("lou")
    attempts = [
        ("nobody-here", "some password", errors.Unauthenticated),  # no such user
        ("kim", "not kim's password", errors.Unauthenticated),  # wrong password
        ("lou", "lou's long password", errors.Unauthenticated),  # disabled
        ("kim", "kim's long password", None),  # right
    ]
    for username, password, refused in attempts:
        before = hasher.verifications
        if refused is None:
            await sign_in.verify_password(username, password)
        else:
            with pytest.raises(refused):
                await sign_in.verify_password(username, password)
        assert hasher.verifications - before == 1, username


class GatedHasher(PasswordHasher):
    """The real Argon2id hasher, whose verification waits until the test opens its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.entered.set()
        if not self.gate.wait(60):  # on the event loop's thread nothing could open it: fail, do not hang
            raise RuntimeError("the gate was never opened: the verification held the event loop")
        return super().verify(hash, password)


async def test_a_sign_in_whose_hash_is_running_does_not_stop_other_requests(
    db: storage.Database, clock: ManualClock, accounts: Accounts
) -> None:
    hasher = GatedHasher()
    sign_in = SignIn(
        db, clock, accounts, session_ttl=timedelta(hours=1), max_failures=50, window=timedelta(minutes=5), hasher=hasher
    )
    await accounts.create_user("kira", "member", "kira's long password")
    signing_in = asyncio.create_task(sign_in.verify_password("kira", "kira's long password"))
    assert await asyncio.to_thread(hasher.entered.wait, 60)
    # The verification is under way, and the service still reads, writes and answers meanwhile.
    assert (await accounts.get_user("kira")).username == "kira"
    other, _ = await accounts.create_user("lena", "member", "lena's long password")
    assert not signing_in.done()
    hasher.gate.set()
    assert (await signing_in).username == "kira"
    assert (await accounts.get_user(other.id)).username == "lena"
