"""Releases asked for at the same moment share one audited transaction (group commit), on both databases.

Each release still leaves exactly one ``secret.released`` entry of its own, chained after the one
before; the chain and the anchor verify; nothing is answered before the transaction holding its
entry commits, and nothing at all when that transaction fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from grace.vault import AccessResult, AuditUnavailable
from grace.vault.anomaly import AnomalyPolicy
from grace.vault.tables import vault_audit, vault_audit_checkpoints
from tests.vaultkit import Cast, audit_offline

VALUE = "ghp_" + "Z9y8X7w6" * 4


async def _standing(cast: Cast) -> str:
    """Store the secret (once) and give the agent a persistent consent to read it; return the consent id."""
    if not await cast.vault.list_secrets(cast.owner):
        await cast.vault.store(cast.owner, "github_token", VALUE, secret_type="api_key", service="github")
    pending = await cast.vault.access(cast.agent, "github_token", action="read", wait_seconds=0)
    assert pending.consent_id is not None and pending.status == "pending"
    await cast.vault.respond(cast.owner, pending.consent_id, True, persistent=True)
    return pending.consent_id


async def _released(cast: Cast) -> list[dict[str, object]]:
    async with cast.services.db.read() as conn:
        rows = await conn.execute(
            select(vault_audit).where(vault_audit.c.event == "secret.released").order_by(vault_audit.c.seq)
        )
        return [dict(r) for r in rows.mappings()]


@contextlib.asynccontextmanager
async def _writer_holding_the_lock(cast: Cast, waiting: int) -> AsyncIterator[None]:
    """On SQLite, hold the process's write lock until ``waiting`` releases wait for a group, so they share one.

    On PostgreSQL nothing is held: the releases are simply concurrent.
    """
    db = cast.services.db
    if not db.is_sqlite:
        yield
        return
    release = cast.vault.release
    async with db.write():
        yield
        # Each release joins the list after its own reads, which no event reports: look until all have.
        while len(release._waiting) < waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _no_burst(cast: Cast) -> None:
    # Forty reads in a second would be a burst (docs/vault.md, anomalies): here they are what is measured.
    cast.vault.consents.anomaly_policy = AnomalyPolicy(burst_count=10**9)


async def test_concurrent_reads_each_leave_one_chained_entry_and_the_chain_verifies(cast: Cast) -> None:
    consent_id = await _standing(cast)
    n = 70  # a group crosses seq 64, where a checkpoint is signed
    async with _writer_holding_the_lock(cast, n):
        reads = [
            asyncio.create_task(cast.vault.access(cast.agent, "github_token", action="read", wait_seconds=0))
            for _ in range(n)
        ]
    results: list[AccessResult] = await asyncio.gather(*reads)
    assert all(r.approved and r.value is not None and r.value.reveal() == VALUE for r in results)

    released = await _released(cast)
    assert len(released) == n and {r["consent_id"] for r in released} == {consent_id}
    seqs = [int(str(r["seq"])) for r in released]
    assert seqs == list(range(seqs[0], seqs[0] + n))  # one after another, none shared
    for before, after in itertools.pairwise(released):
        assert after["prev_hash"] == before["hash"]
    report = await cast.vault.verify_audit()
    assert report.ok, report.as_dict()

    async with cast.services.db.read() as conn:
        checkpoints = list((await conn.execute(select(vault_audit_checkpoints.c.seq))).scalars())
    assert 64 in checkpoints
    anchor = cast.vault.audit.anchor_path
    assert anchor is not None and json.loads(anchor.read_text())["seq"] == seqs[-1]  # the anchor is at the head
    assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == n
    assert (await cast.vault.get_consent(consent_id)).used_count == n


async def test_a_single_use_consent_used_twice_in_one_group_is_released_once(cast: Cast) -> None:
    standing = await _standing(cast)
    await cast.vault.store(cast.owner, "mail_password", "hunter2-" + "p" * 20, secret_type="api_key", service="mail")
    asked = await cast.vault.access(cast.agent, "mail_password", action="send", wait_seconds=0)
    assert asked.consent_id is not None
    await cast.vault.respond(cast.owner, asked.consent_id, True)  # single use
    async with _writer_holding_the_lock(cast, 6):
        tasks = [
            asyncio.create_task(cast.vault.access(cast.agent, "github_token", action="read", wait_seconds=0))
            for _ in range(4)
        ]
        tasks += [asyncio.create_task(cast.vault.redeem(cast.agent, asked.consent_id)) for _ in range(2)]
    results: list[AccessResult] = await asyncio.gather(*tasks)

    assert all(r.approved for r in results[:4])
    once = results[4:]
    assert sorted(r.status for r in once) == ["approved", "denied"]
    assert "already used" in next(r.reason for r in once if not r.approved)
    # The loser was taken out and the group recorded again: nothing of it counted, nothing counted twice.
    assert (await cast.vault.get_consent(standing)).used_count == 4
    assert (await cast.vault.get_consent(asked.consent_id)).status == "consumed"
    assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == 4
    assert (await cast.vault.secret(cast.owner, "mail_password")).usage_count == 1
    released = await _released(cast)
    assert [r["consent_id"] for r in released].count(asked.consent_id) == 1 and len(released) == 5
    assert (await cast.vault.verify_audit()).ok


async def test_reads_whose_audit_write_fails_are_not_answered(cast: Cast) -> None:
    consent_id = await _standing(cast)
    db = cast.services.db
    async with audit_offline(db):
        async with _writer_holding_the_lock(cast, 10):
            reads = [
                asyncio.create_task(cast.vault.access(cast.agent, "github_token", action="read", wait_seconds=0))
                for _ in range(10)
            ]
        outcomes = await asyncio.gather(*reads, return_exceptions=True)
        assert all(isinstance(o, AuditUnavailable) for o in outcomes), outcomes
        assert not any(VALUE in repr(o) or VALUE in str(o) for o in outcomes)
        assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == 0
        assert (await cast.vault.get_consent(consent_id)).used_count == 0
    assert await _released(cast) == []
    assert (await cast.vault.access(cast.agent, "github_token", action="read", wait_seconds=0)).approved
    assert (await cast.vault.verify_audit()).ok


async def test_a_read_cancelled_before_its_group_began_releases_and_records_nothing(cast: Cast) -> None:
    if not cast.services.db.is_sqlite:
        pytest.skip("PostgreSQL has no in-process write lock for a test to hold the group back with")
    await _standing(cast)
    async with _writer_holding_the_lock(cast, 3):
        reads = [
            asyncio.create_task(cast.vault.access(cast.agent, "github_token", action="read", wait_seconds=0))
            for _ in range(3)
        ]
    reads[1].cancel()  # its client went away while the database was busy
    outcomes = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert all(isinstance(o, AccessResult) and o.approved for o in (outcomes[0], outcomes[2]))
    assert len(await _released(cast)) == 2
    assert (await cast.vault.secret(cast.owner, "github_token")).usage_count == 2
