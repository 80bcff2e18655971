"""The tamper suite, on both databases: rows that decide a release or a privilege are sealed.

Each edit below is made with raw SQL, as someone who can write the database but does not hold the
master key would make it. The next read that decides refuses it (RowTampered, audited as
``integrity.row_tampered``), and ``grace audit verify`` reports the row. The first six are the
reproductions of issue 13's failure 4; the per-table tests then change every other sealed column.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Integer, select, text
from sqlalchemy.engine import RowMapping

from grace import errors, storage
from grace.auth import SEALED as AUTH_SEALED
from grace.integrity import Sealed
from grace.storage import UTCDateTime
from grace.vault import SecretInfo
from grace.vault.tables import SEALED as VAULT_SEALED
from grace.vault.tables import vault_audit
from tests.vaultkit import Cast

SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----" + "b3BlbnNzaC1rZXk" * 4
GITHUB_TOKEN = "ghp_" + "Z9y8X7w6" * 4
SPECS = {spec.name: spec for spec in (*AUTH_SEALED, *VAULT_SEALED)}
FOREIGN_KEYS = {
    ("api_tokens", "user_id"),
    ("sessions", "user_id"),
    ("vault_secrets", "owner_id"),
    ("secret_consent_records", "secret_id"),
}


async def raw_update(db: storage.Database, table: str, row_id: str, **values: Any) -> None:
    """UPDATE with plain SQL, the seal column untouched."""
    spec = SPECS[table]
    if db.is_sqlite:
        values = {k: storage.utc_text(v) if isinstance(v, datetime) else v for k, v in values.items()}
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    async with db.write() as conn:
        await conn.execute(
            text(f"UPDATE {table} SET {assignments} WHERE {spec.key} = :row_id"),  # the names are this test's own
            {**values, "row_id": row_id},
        )


async def read_row(db: storage.Database, table: str, row_id: str) -> RowMapping:
    spec = SPECS[table]
    async with db.read() as conn:
        return (await conn.execute(select(spec.table).where(spec.table.c[spec.key] == row_id))).mappings().one()


async def tamper_events(cast: Cast) -> list[dict[str, Any]]:
    async with cast.services.db.read() as conn:
        rows = (
            await conn.execute(
                select(vault_audit.c.details, vault_audit.c.outcome).where(
                    vault_audit.c.event == "integrity.row_tampered"
                )
            )
        ).all()
    assert all(outcome == "refused" for _, outcome in rows)
    return [json.loads(details) for details, _ in rows]


async def assert_caught(cast: Cast, table: str, row_id: str) -> None:
    """The refusal was audited (table and row, nothing else) and verify reports exactly this row."""
    assert {"table": table, "id": row_id} in await tamper_events(cast)
    report = await cast.vault.verify_audit()
    assert not report.ok
    assert report.tampered_rows == [{"table": table, "id": row_id}]
    assert report.as_dict()["tampered_rows"] == [{"table": table, "id": row_id}]


async def store(cast: Cast, key: str, value: str, kind: str, service: str) -> SecretInfo:
    return await cast.vault.store(cast.owner, key, value, secret_type=kind, service=service)


# -- issue 13, failure 4: each reproduction -----------------------------------------------------


async def test_a_critical_key_lowered_to_low_risk_is_not_released(cast: Cast) -> None:
    secret = await store(cast, "deploy_key", SSH_KEY, "ssh_key", "servers")
    await raw_update(cast.services.db, "vault_secrets", secret.id, risk_level="low")
    # Low risk and a read-only action would approve themselves, with no human at all.
    with pytest.raises(errors.RowTampered) as refused:
        await cast.vault.access(cast.agent, "deploy_key", action="read", wait_seconds=0)
    assert refused.value.details == {"table": "vault_secrets", "id": secret.id}
    await assert_caught(cast, "vault_secrets", secret.id)
    assert (await read_row(cast.services.db, "vault_secrets", secret.id))["usage_count"] == 0


async def test_a_secret_handed_to_another_owner_is_refused(cast: Cast) -> None:
    secret = await store(cast, "github_token", GITHUB_TOKEN, "api_key", "github")
    await raw_update(cast.services.db, "vault_secrets", secret.id, owner_id=cast.other.user_id)
    with pytest.raises(errors.RowTampered):
        await cast.vault.access(cast.other, "github_token", action="read", wait_seconds=0)
    with pytest.raises(errors.RowTampered):
        await cast.vault.secret(cast.other, "github_token")
    await assert_caught(cast, "vault_secrets", secret.id)


async def test_a_consent_flipped_to_approved_releases_nothing(cast: Cast) -> None:
    await store(cast, "github_token", GITHUB_TOKEN, "api_key", "github")
    asked = await cast.vault.access(cast.agent, "github_token", action="git_push", wait_seconds=0)
    assert asked.status == "pending" and asked.consent_id is not None
    now = cast.clock.now()
    await raw_update(
        cast.services.db,
        "secret_consent_records",
        asked.consent_id,
        consent_status="approved",
        approved_by="aaron",
        responded_at=now,
        valid_until=now + timedelta(days=1),
        single_use=False,
        idle_timeout_seconds=3600,
    )
    with pytest.raises(errors.RowTampered):
        await cast.vault.redeem(cast.agent, asked.consent_id)
    # Nor is it found as a standing consent by the next request.
    with pytest.raises(errors.RowTampered):
        await cast.vault.access(cast.agent, "github_token", action="git_push", wait_seconds=0)
    await assert_caught(cast, "secret_consent_records", asked.consent_id)


async def test_an_inserted_token_is_refused(cast: Cast, http: httpx.AsyncClient) -> None:
    forged = "grc_" + "forged" * 8
    now = cast.clock.now()
    db = cast.services.db
    async with db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO api_tokens (id, user_id, agent, name, token_hash, prefix, created_at, scopes)"
                " VALUES ('tok_forged', :user_id, NULL, 'forged', :token_hash, 'grc_forg', :now, :scopes)"
            ),
            {
                "user_id": cast.admin.user_id,
                "token_hash": hashlib.sha256(forged.encode()).hexdigest(),
                "now": storage.utc_text(now) if db.is_sqlite else now,
                "scopes": "audit consents keys secrets secrets:ask tasks tokens users",
            },
        )
    with pytest.raises(errors.RowTampered):
        await cast.services.accounts.resolve_token(forged)
    answer = await http.get("/api/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "row_tampered"
    assert answer.json()["error"]["details"] == {"table": "api_tokens", "id": "tok_forged"}
    await assert_caught(cast, "api_tokens", "tok_forged")


def past_the_token_cache(cast: Cast) -> None:
    """Move the clock past the life of a cached principal: the next request reads (and checks) the rows again.

    Until then the process answers from the principal it read, and checked, before the row was changed:
    the writer's change gains nothing in that window, and is refused once the row is read again.
    """
    cast.clock.advance(cast.services.settings.token_cache_seconds + 1)


async def test_a_member_made_admin_is_refused(cast: Cast, http: httpx.AsyncClient) -> None:
    await raw_update(cast.services.db, "users", cast.owner.user_id, role="admin")
    past_the_token_cache(cast)
    with pytest.raises(errors.RowTampered):
        await cast.services.accounts.resolve_token(cast.tokens["owner"])
    listed = await http.get("/api/users", headers=cast.headers("owner"))
    assert listed.status_code == 500 and listed.json()["error"]["code"] == "row_tampered"
    await assert_caught(cast, "users", cast.owner.user_id)


async def test_current_version_moved_back_after_a_rotation_is_refused(cast: Cast) -> None:
    await store(cast, "github_token", "ghp_old_" + "a" * 20, "api_key", "github")
    secret = await store(cast, "github_token", GITHUB_TOKEN, "api_key", "github")
    assert secret.version == 2
    asked = await cast.vault.access(cast.agent, "github_token", action="git_push", wait_seconds=0)
    assert asked.consent_id is not None
    await cast.vault.respond(cast.owner, asked.consent_id, True)
    await raw_update(cast.services.db, "vault_secrets", secret.id, current_version=1)
    with pytest.raises(errors.RowTampered):
        await cast.vault.redeem(cast.agent, asked.consent_id)
    await assert_caught(cast, "vault_secrets", secret.id)
    # The consent was not used up by the refused release.
    assert (await cast.vault.get_consent(asked.consent_id)).status == "approved"


# -- every other sealed column ---------------------------------------------------------------------


@dataclass
class World:
    """One row of each sealed table, and the read that decides with it (an approved consent, not yet used)."""

    rows: dict[str, str]  # table -> the row's key
    decide: dict[str, Callable[[], Awaitable[object]]]
    others: dict[str, str]  # foreign-key columns -> another row they may point at
    # The bearer token and session cookie presented; a hash swapped for one the writer knows swaps them too.
    presented: dict[str, str]


async def world(cast: Cast) -> World:
    secret = await store(cast, "github_token", GITHUB_TOKEN, "api_key", "github")
    other_secret = await store(cast, "slack_token", "xoxb-" + "q1w2e3r4" * 3, "api_key", "slack")
    asked = await cast.vault.access(cast.agent, "github_token", action="git_push", wait_seconds=0)
    assert asked.consent_id is not None
    consent_id = asked.consent_id
    await cast.vault.respond(cast.owner, consent_id, True)
    owner = await cast.services.accounts.get_user(cast.owner.user_id)
    grant = await cast.services.sign_in.start_session(cast.owner)
    assert cast.agent.token_id is not None
    accounts, sign_in, vault = cast.services.accounts, cast.services.sign_in, cast.vault
    presented = {"token_hash": cast.tokens["agent"], "session_hash": grant.session_token}
    return World(
        rows={
            "users": owner.id,
            "api_tokens": cast.agent.token_id,
            "sessions": grant.principal.session_id or "",
            "vault_secrets": secret.id,
            "secret_consent_records": consent_id,
        },
        decide={
            "users": lambda: accounts.resolve_token(cast.tokens["owner"]),
            "api_tokens": lambda: accounts.resolve_token(presented["token_hash"]),
            "sessions": lambda: sign_in.resolve_session(presented["session_hash"]),
            # Releasing under an approved consent reads the secret by its id: owner, key, version, status.
            "vault_secrets": lambda: vault.redeem(cast.agent, consent_id),
            "secret_consent_records": lambda: vault.redeem(cast.agent, consent_id),
        },
        others={
            "user_id": cast.other.user_id,
            "owner_id": cast.other.user_id,
            "secret_id": other_secret.id,
        },
        presented=presented,
    )


def changed(spec: Sealed, column: str, value: Any, w: World, now: datetime) -> Any:
    """Return another value of the column's type (one a foreign key accepts)."""
    if (spec.name, column) in FOREIGN_KEYS:
        return w.others[column]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, datetime):
        return value + timedelta(seconds=1)
    if isinstance(value, str):
        return value[:-1] + ("y" if value.endswith("x") else "x")
    column_type = spec.table.c[column].type
    if isinstance(column_type, UTCDateTime):
        return now
    return 60 if isinstance(column_type, Integer) else "x"


@pytest.mark.parametrize("table", list(SPECS))
async def test_every_sealed_column_changed_is_refused_and_reported(cast: Cast, table: str) -> None:
    w = await world(cast)
    spec = SPECS[table]
    row_id = w.rows[table]
    db = cast.services.db
    original = await read_row(db, table, row_id)
    for column in spec.columns:
        value = changed(spec, column, original[column], w, cast.clock.now())
        if column in w.presented:  # the writer's own token or cookie, under the row's name
            genuine, w.presented[column] = w.presented[column], "grc_known_to_the_writer_" + column
            value = hashlib.sha256(w.presented[column].encode()).hexdigest()
        await raw_update(db, table, row_id, **{column: value})
        past_the_token_cache(cast)
        with pytest.raises(errors.RowTampered) as refused:
            await w.decide[table]()
        assert refused.value.details == {"table": table, "id": row_id}, column
        report = await cast.vault.verify_audit()
        assert report.tampered_rows == [{"table": table, "id": row_id}], column
        await raw_update(db, table, row_id, **{column: original[column]})
        if column in w.presented:
            w.presented[column] = genuine
        assert (await cast.vault.verify_audit()).tampered_rows == [], column
    assert len(await tamper_events(cast)) == len(spec.columns)
    await w.decide[table]()  # put back as it was, the row is genuine again


async def test_a_seal_copied_from_another_row_is_refused(cast: Cast) -> None:
    first = await store(cast, "github_token", GITHUB_TOKEN, "api_key", "github")
    second = await store(cast, "deploy_key", SSH_KEY, "ssh_key", "servers")
    copied = (await read_row(cast.services.db, "vault_secrets", second.id))["seal"]
    await raw_update(
        cast.services.db, "vault_secrets", first.id, seal=copied, key="deploy_key_x", risk_level="critical"
    )
    report = await cast.vault.verify_audit()
    assert report.tampered_rows == [{"table": "vault_secrets", "id": first.id}]


# -- an install nobody tampered with -----------------------------------------------------------------


async def test_an_unchanged_install_verifies_clean(cast: Cast) -> None:
    """Every write path seals what it writes: a working day leaves no row verify would report."""
    accounts, sign_in, vault = cast.services.accounts, cast.services.sign_in, cast.vault
    await store(cast, "github_token", GITHUB_TOKEN, "api_key", "github")
    await store(cast, "github_token", GITHUB_TOKEN + "2", "api_key", "github")  # a new version
    await store(cast, "deploy_key", SSH_KEY, "ssh_key", "servers")
    await store(cast, "note", "a low risk value", "other", "notes")
    single = await cast.vault.access(cast.agent, "github_token", action="git_push", wait_seconds=0)
    assert single.consent_id is not None
    await vault.respond(cast.owner, single.consent_id, True)
    assert (await vault.redeem(cast.agent, single.consent_id)).approved
    standing = await cast.vault.access(cast.agent, "github_token", action="git_pull", wait_seconds=0)
    assert standing.consent_id is not None
    await vault.respond(cast.owner, standing.consent_id, True, persistent=True)
    assert (await vault.redeem(cast.agent, standing.consent_id)).approved
    assert (await cast.vault.access(cast.agent, "github_token", action="git_pull", wait_seconds=0)).approved
    assert (await cast.vault.access(cast.agent, "note", action="read", wait_seconds=0)).approved
    critical = await cast.vault.access(cast.agent, "deploy_key", action="deploy", wait_seconds=0)
    assert critical.consent_id is not None
    await vault.respond(cast.owner, critical.consent_id, True)
    await vault.respond(cast.operator, critical.consent_id, True)
    assert (await vault.redeem(cast.agent, critical.consent_id)).approved
    denied = await cast.vault.access(cast.agent, "github_token", action="git_force", wait_seconds=0)
    assert denied.consent_id is not None
    await vault.respond(cast.owner, denied.consent_id, False, reason="no")
    revoked = await cast.vault.access(cast.agent, "github_token", action="git_tag", wait_seconds=0)
    assert revoked.consent_id is not None
    await vault.revoke_consent(cast.owner, revoked.consent_id)
    expiring = await cast.vault.access(cast.agent, "github_token", action="git_merge", wait_seconds=0)
    assert expiring.consent_id is not None
    cast.clock.advance(3600)
    assert await vault.expire_pending() == 1
    await vault.revoke_secret(cast.owner, "github_token")

    user, password = await accounts.create_user("carla", "operator")
    await accounts.set_password(user.id, password + "-changed")
    grant = await sign_in.start_session(await sign_in.verify_password("carla", password + "-changed"))
    await sign_in.resolve_session(grant.session_token)
    await sign_in.end_session(grant.principal.session_id or "")
    await sign_in.start_session(await sign_in.verify_password("carla", password + "-changed"))
    issuer = await accounts.resolve_token((await accounts.create_token(user.id, name="ci"))[1])
    child, _ = await accounts.create_token(user.id, agent="ops_agent", by=issuer)
    await accounts.revoke_token(issuer.token_id or "", by=issuer)
    assert (await accounts.list_tokens(user.id))[-1].id == child.id
    await accounts.set_disabled(user.id)
    await accounts.set_disabled(user.id, False)
    await accounts.set_password(user.id, password + "-reset", revoke_tokens=True)  # ends sessions, revokes tokens

    report = await cast.vault.verify_audit()
    assert report.tampered_rows == []
    assert report.ok, report.as_dict()
    assert await tamper_events(cast) == []
