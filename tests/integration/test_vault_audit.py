"""The audit log on both databases: append-only, and every kind of tampering is detected."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import DBAPIError

from grace.errors import AuditChainBroken
from grace.vault.tables import vault_audit, vault_audit_checkpoints
from tests.vaultkit import Cast, reprotect_audit, unprotect_audit


@pytest.fixture
async def logged(cast: Cast) -> AsyncIterator[Cast]:
    """A log of 13 entries (first key, canary, eleven stores), the triggers dropped as an attacker would."""
    for i in range(11):
        await cast.vault.store(cast.owner, f"k{i}", f"value-number-{i}-" + "x" * 16, secret_type="api_key", service="s")
    assert (await cast.vault.verify_audit()).ok
    await unprotect_audit(cast.services.db)
    yield cast
    await reprotect_audit(cast.services.db)


async def _rows(cast: Cast) -> list[dict[str, Any]]:
    async with cast.services.db.read() as conn:
        return [dict(r) for r in (await conn.execute(select(vault_audit).order_by(vault_audit.c.seq))).mappings()]


async def test_the_log_refuses_updates_and_deletes(cast: Cast) -> None:
    await cast.vault.store(cast.owner, "k", "value-" + "x" * 20, secret_type="api_key", service="s")
    with pytest.raises(DBAPIError, match="append-only"):
        async with cast.services.db.write() as conn:
            await conn.execute(update(vault_audit).values(actor="someone else"))
    with pytest.raises(DBAPIError, match="append-only"):
        async with cast.services.db.write() as conn:
            await conn.execute(delete(vault_audit))
    assert (await cast.vault.verify_audit()).ok


async def test_a_modified_entry_is_detected(logged: Cast) -> None:
    async with logged.services.db.write() as conn:
        await conn.execute(
            update(vault_audit).where(vault_audit.c.seq == 5).values(details=json.dumps({"secret_key": "innocent"}))
        )
        await conn.execute(update(vault_audit).where(vault_audit.c.seq == 8).values(actor="mallory"))
    report = await logged.vault.verify_audit()
    assert report.modified == [5, 8] and not report.ok
    assert not (report.deleted or report.inserted or report.reordered or report.truncated)


async def test_a_deleted_entry_is_detected(logged: Cast) -> None:
    async with logged.services.db.write() as conn:
        await conn.execute(delete(vault_audit).where(vault_audit.c.seq.in_((4, 7))))
    report = await logged.vault.verify_audit()
    assert report.deleted == [4, 7] and not (report.modified or report.inserted or report.reordered)


async def test_an_inserted_entry_is_detected(logged: Cast) -> None:
    rows = await _rows(logged)
    forged = dict(rows[-1])
    forged.update(seq=len(rows) + 1, event="secret.stored", actor="mallory", prev_hash=rows[-1]["hash"], hash="ab" * 32)
    async with logged.services.db.write() as conn:
        await conn.execute(insert(vault_audit).values(**forged))
    report = await logged.vault.verify_audit()
    assert report.inserted == [len(rows) + 1] and not (report.modified or report.deleted or report.reordered)


async def test_an_entry_slipped_into_the_middle_is_detected(logged: Cast) -> None:
    rows = await _rows(logged)
    async with logged.services.db.write() as conn:
        # Make room at seq 6 by moving every later entry up by one, then write the forgery there.
        for row in reversed(rows[5:]):
            await conn.execute(
                update(vault_audit).where(vault_audit.c.seq == row["seq"]).values(seq=int(row["seq"]) + 1)
            )
        forged = dict(rows[5])
        forged.update(seq=6, actor="mallory", prev_hash=rows[4]["hash"])
        await conn.execute(insert(vault_audit).values(**forged))
    report = await logged.vault.verify_audit()
    assert report.inserted == [6] and not (report.deleted or report.reordered or report.modified)


async def test_reordered_entries_are_detected(logged: Cast) -> None:
    rows = await _rows(logged)
    a, b = rows[4], rows[5]
    fields = [c for c in a if c != "seq"]
    async with logged.services.db.write() as conn:
        await conn.execute(update(vault_audit).where(vault_audit.c.seq == a["seq"]).values(**{f: b[f] for f in fields}))
        await conn.execute(update(vault_audit).where(vault_audit.c.seq == b["seq"]).values(**{f: a[f] for f in fields}))
    report = await logged.vault.verify_audit()
    assert report.reordered == [5, 6] and not (report.deleted or report.inserted or report.modified)


async def test_a_truncated_log_is_detected_by_the_checkpoint(logged: Cast) -> None:
    checkpoint = await logged.vault.audit.checkpoint()
    assert checkpoint is not None and checkpoint.seq == 13
    async with logged.services.db.write() as conn:
        await conn.execute(delete(vault_audit).where(vault_audit.c.seq > 9))
    report = await logged.vault.verify_audit()
    assert report.truncated == [10, 11, 12, 13] and not (report.deleted or report.modified)


async def test_a_truncated_log_with_its_checkpoints_is_caught_by_the_anchor_file(logged: Cast) -> None:
    await logged.vault.audit.checkpoint()
    assert logged.vault.audit.anchor_path is not None and logged.vault.audit.anchor_path.exists()
    async with logged.services.db.write() as conn:
        await conn.execute(delete(vault_audit).where(vault_audit.c.seq > 9))
        await conn.execute(delete(vault_audit_checkpoints))
    report = await logged.vault.verify_audit()
    assert report.truncated == [10, 11, 12, 13]


async def test_the_newest_entries_deleted_after_the_last_checkpoint_are_caught_by_the_anchor(logged: Cast) -> None:
    # No checkpoint was asked for and none is due (13 entries): the anchor file follows every commit.
    async with logged.services.db.read() as conn:
        assert (await conn.execute(select(vault_audit_checkpoints))).first() is None
    async with logged.services.db.write() as conn:
        await conn.execute(delete(vault_audit).where(vault_audit.c.seq > 11))
    report = await logged.vault.verify_audit()
    assert report.truncated == [12, 13] and not (report.deleted or report.modified or report.inserted)


async def test_an_entry_whose_change_rolled_back_does_not_advance_the_anchor(cast: Cast) -> None:
    await cast.vault.store(cast.owner, "k", "value-" + "x" * 20, secret_type="api_key", service="s")
    audit = cast.vault.audit
    assert audit.anchor_path is not None
    before = json.loads(audit.anchor_path.read_text())

    async def failing_change() -> None:
        async with cast.services.db.write() as conn:
            await audit.append(conn, "test.entry", actor="test")
            raise RuntimeError("the change it records fails")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert json.loads(audit.anchor_path.read_text()) == before
    assert (await cast.vault.verify_audit()).ok  # the log did not lose an entry it never had
    entry = await audit.record("test.entry", actor="test")
    assert json.loads(audit.anchor_path.read_text())["seq"] == entry.seq == before["seq"] + 1


async def test_a_forged_checkpoint_is_detected(logged: Cast) -> None:
    await logged.vault.audit.checkpoint()
    async with logged.services.db.write() as conn:
        await conn.execute(update(vault_audit_checkpoints).values(seq=40, signature="00" * 64))
    report = await logged.vault.verify_audit()
    assert report.bad_checkpoints == [40] and not report.truncated


async def test_checkpoints_are_signed_automatically_every_64_entries(cast: Cast) -> None:
    for i in range(64):
        await cast.vault.audit.record("test.entry", actor="test", details={"i": i})
    async with cast.services.db.read() as conn:
        seqs = list((await conn.execute(select(vault_audit_checkpoints.c.seq))).scalars())
    assert seqs == [64]
    assert (await cast.vault.verify_audit()).ok


async def test_an_anchor_this_key_did_not_sign_is_kept_as_evidence_until_reanchored(cast: Cast) -> None:
    audit = cast.vault.audit
    assert audit.anchor_path is not None
    entry = await audit.record("test.entry", actor="test")
    forged = json.loads(audit.anchor_path.read_text())
    forged.update(seq=10_000, signature="00" * 64)  # far ahead: trusted, it would hide any cut below it
    audit.anchor_path.write_text(json.dumps(forged))
    with pytest.raises(AuditChainBroken):
        await audit.record("test.entry", actor="test")
    assert json.loads(audit.anchor_path.read_text()) == forged
    report = await cast.vault.verify_audit()
    assert not report.ok and not report.truncated and "not signed by this vault's key" in str(report.anchor)
    made = await audit.reanchor(actor="cli", reason="test")
    anchor = json.loads(audit.anchor_path.read_text())
    assert anchor["seq"] == made.seq == entry.seq + 1 and anchor["signature"] != "00" * 64
    assert (await cast.vault.verify_audit()).ok
