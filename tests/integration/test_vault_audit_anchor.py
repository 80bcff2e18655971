"""The audit chain cannot be cut, on both databases: the anchor's head hash is checked, a damaged anchor is
reported, a chain that does not continue from the anchor is not extended, and exported checkpoints catch a
cut even where the anchor was reached too."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import delete, func, select

from grace import errors
from grace.vault.anchor import HeadSigner
from grace.vault.audit import CHECKPOINT_EVERY, AuditLog
from grace.vault.masterkey import MasterKey
from grace.vault.tables import vault_audit, vault_audit_checkpoints
from tests.vaultkit import Cast, reprotect_audit, unprotect_audit

VALUE = "value-" + "x" * 20


async def _grow(cast: Cast, n: int, audit: AuditLog | None = None) -> int:
    """Append ``n`` entries; return the head's seq."""
    for i in range(n):
        entry = await (audit or cast.vault.audit).record("test.entry", actor="test", details={"i": i})
    return entry.seq


async def _head(cast: Cast) -> int:
    async with cast.services.db.read() as conn:
        return int((await conn.execute(select(func.max(vault_audit.c.seq)))).scalar_one() or 0)


async def _cut(cast: Cast, above: int, *, checkpoints: bool = True) -> None:
    """Delete every entry above seq ``above`` (and their checkpoints), as someone with the database would."""
    db = cast.services.db
    await unprotect_audit(db)
    try:
        async with db.write() as conn:
            await conn.execute(delete(vault_audit).where(vault_audit.c.seq > above))
            if checkpoints:
                await conn.execute(delete(vault_audit_checkpoints).where(vault_audit_checkpoints.c.seq > above))
    finally:
        await reprotect_audit(db)


def _anchor(cast: Cast) -> Path:
    path = cast.vault.audit.anchor_path
    assert path is not None
    return path


@pytest.mark.parametrize("k", [5, 6, 40, CHECKPOINT_EVERY + 6])
async def test_deleted_newest_entries_do_not_heal_under_new_requests(
    http: httpx.AsyncClient, cast: Cast, k: int
) -> None:
    head = await _grow(cast, k + 3)
    await _cut(cast, head - k)
    for i in range(k):  # as many audited requests as entries were cut: each refused, nothing written
        r = await http.post(
            "/api/secrets/store",
            json={"secret_key": f"k{i}", "secret_value": VALUE, "service": "s"},
            headers=cast.headers("owner"),
        )
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "audit_chain_broken" and error["details"] == {"reason": "truncated"}
        assert "grace audit verify" in error["message"] and str(_anchor(cast)) not in error["message"]
    assert await _head(cast) == head - k
    report = await cast.vault.verify_audit()
    assert not report.ok and report.truncated == list(range(head - k + 1, head + 1))
    assert (await http.get("/api/secrets", headers=cast.headers("owner"))).json()["secrets"] == []


async def test_a_cut_regrown_by_a_process_with_another_anchor_is_reported(cast: Cast, tmp_path: Path) -> None:
    # Another machine on the same database keeps its own anchor, which lags behind this one's.
    other_anchor = tmp_path / "other-machine" / "audit-anchor.json"
    other_anchor.parent.mkdir()
    shutil.copy(_anchor(cast), other_anchor)
    head = await _grow(cast, 12)
    await _cut(cast, head - 6)
    other = AuditLog(cast.services.db, cast.clock, cast.vault.master, anchor_path=other_anchor)
    assert await _grow(cast, 6, other) == head  # the same length again, every entry authentic

    report = await cast.vault.verify_audit()
    assert not report.ok and report.forked == [head]
    assert not (report.truncated or report.deleted or report.modified or report.inserted)
    with pytest.raises(errors.AuditChainBroken) as refused:
        await cast.vault.store(cast.owner, "k", VALUE, secret_type="api_key", service="s")
    assert refused.value.details == {"reason": "forked"}


def _forge_seq(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "seq": 10_000}))


def _unsign(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "signature": "00" * 64}))


def _other_key(path: Path) -> None:
    body = json.loads(path.read_text())
    signer = HeadSigner(MasterKey(bytes(range(1, 33)), "environment"))
    signed = signer.sign(body["seq"], body["head_hash"], datetime.fromisoformat(body["at"]))
    path.write_text(json.dumps(signed.as_dict()))


DAMAGE: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "missing": (Path.unlink, "anchor_missing", "grace audit reanchor"),
    "empty": (lambda p: p.write_text(""), "empty", "is empty"),
    "garbled": (lambda p: p.write_text(p.read_text()[:-9]), "unreadable", "garbled"),
    "forged": (_forge_seq, "foreign", "not signed by this vault's key"),
    "unsigned": (_unsign, "foreign", "not signed by this vault's key"),
    "another key": (_other_key, "foreign", "not signed by this vault's key"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_a_damaged_anchor_is_reported_and_refuses_new_entries(cast: Cast, damage: str) -> None:
    await cast.vault.store(cast.owner, "k", VALUE, secret_type="api_key", service="s")
    assert (await cast.vault.verify_audit()).ok
    path = _anchor(cast)
    do, reason, said = DAMAGE[damage]
    do(path)
    evidence = path.read_bytes() if path.exists() else None

    report = await cast.vault.verify_audit()
    assert not report.ok and report.anchor is not None and said in report.anchor and str(path) in report.anchor
    assert not (report.truncated or report.forked or report.deleted or report.modified or report.inserted)
    entries = report.entries
    with pytest.raises(errors.AuditChainBroken) as refused:
        await cast.vault.store(cast.owner, "k2", VALUE, secret_type="api_key", service="s")
    assert refused.value.details == {"reason": reason}
    with pytest.raises(errors.AuditChainBroken):
        await cast.vault.audit.checkpoint()
    assert await _head(cast) == entries  # nothing written
    assert (path.read_bytes() if path.exists() else None) == evidence  # and the evidence left as it was


async def test_the_whole_log_cut_under_its_anchor_is_reported(cast: Cast) -> None:
    head = await _grow(cast, 5)
    await _cut(cast, 0)
    report = await cast.vault.verify_audit()
    assert report.entries == 0 and report.truncated == list(range(1, head + 1))
    with pytest.raises(errors.AuditChainBroken):
        await cast.vault.audit.record("test.entry", actor="test")


async def test_an_install_with_entries_and_no_anchor_is_told_to_reanchor(cast: Cast) -> None:
    head = await _grow(cast, 3)
    _anchor(cast).unlink()  # an install from before the anchor, or one whose anchor moved without its file
    with pytest.raises(errors.AuditChainBroken, match="grace audit reanchor"):
        await cast.vault.store(cast.owner, "k", VALUE, secret_type="api_key", service="s")
    report = await cast.vault.verify_audit()
    assert report.anchor is not None and "grace audit reanchor" in report.anchor and f"seq {head}" in report.anchor

    made = await cast.vault.reanchor_audit(actor="cli", reason="upgraded")
    assert made.seq == head + 1 and (await cast.vault.verify_audit()).ok
    entry = (await cast.vault.audit.entries(limit=1))[0]
    assert entry.event == "audit.reanchored" and entry.actor == "cli"
    assert entry.details["found"] == "anchor_missing" and entry.details["previous_anchor"] == {"state": "absent"}
    assert entry.details["reason"] == "upgraded"
    await cast.vault.store(cast.owner, "k", VALUE, secret_type="api_key", service="s")
    assert json.loads(_anchor(cast).read_text())["seq"] == head + 2
    assert (await cast.vault.verify_audit()).ok


async def test_reanchoring_after_a_cut_acknowledges_exactly_that_cut(cast: Cast) -> None:
    head = await _grow(cast, 10)
    signed = await cast.vault.audit.checkpoint()
    assert signed is not None and signed.seq == head
    await _cut(cast, head - 4, checkpoints=False)  # the checkpoint at the head stays behind
    report = await cast.vault.verify_audit()
    assert report.truncated == list(range(head - 3, head + 1))

    await cast.vault.reanchor_audit(actor="cli", reason="incident 7: restored what we could")
    entry = (await cast.vault.audit.entries(limit=1))[0]
    assert entry.details["found"] == "truncated"
    assert entry.details["previous_anchor"] == {"state": "genuine", "seq": head, "head_hash": signed.head_hash}
    assert entry.details["superseded"] == [[head, signed.head_hash]]
    assert (await cast.vault.verify_audit()).ok
    await _grow(cast, 8)  # past the stale checkpoint's seq: it names another entry there, acknowledged
    assert (await cast.vault.verify_audit()).ok

    # What the anchor cannot explain stays reported.
    db = cast.services.db
    await unprotect_audit(db)
    try:
        async with db.write() as conn:
            await conn.execute(delete(vault_audit).where(vault_audit.c.seq == 3))
    finally:
        await reprotect_audit(db)
    await cast.vault.reanchor_audit(actor="cli")
    assert (await cast.vault.verify_audit()).deleted == [3]


async def test_exported_checkpoints_catch_a_cut_that_reached_the_anchor_too(cast: Cast) -> None:
    head = await _grow(cast, 7)
    exported = await cast.vault.export_audit()
    assert exported["format"] == "grace-audit-checkpoints/1" and exported["public_key"] == cast.vault.audit.public_key
    assert exported["checkpoints"][-1]["seq"] == head  # the head was signed for the export
    against = cast.vault.read_audit_export(json.dumps(exported))
    assert (await cast.vault.verify_audit(against)).ok

    # Someone who can write the database and the anchor file wipes both: the log looks new.
    await _cut(cast, 0)
    _anchor(cast).unlink()
    assert (await cast.vault.verify_audit()).ok
    report = await cast.vault.verify_audit(against)
    assert not report.ok and report.truncated == list(range(1, head + 1)) and report.against == len(against)

    await _grow(cast, head + 2)  # and the log grows again past every exported head
    report = await cast.vault.verify_audit(against)
    assert not report.ok and report.forked == sorted({c.seq for c in against}) and not report.truncated


async def test_the_admin_exports_signed_checkpoints_over_http(http: httpx.AsyncClient, cast: Cast) -> None:
    head = await _grow(cast, 3)
    r = await http.post("/api/secrets/audit/export", headers=cast.headers("admin2"))
    assert r.status_code == 200, r.text
    exported = r.json()["export"]
    heads = cast.vault.read_audit_export(json.dumps(exported))
    assert heads[-1].seq == head and (await cast.vault.verify_audit(heads)).ok
    refused = await http.post("/api/secrets/audit/export", headers=cast.headers("owner"))
    assert refused.status_code == 403 and refused.json()["error"]["details"] == {"policy": "audit_admin"}
