"""The audit anchor file: what it holds is judged by its signature; writers take turns; unwritable, it is logged."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grace import errors
from grace.vault.anchor import AnchorFile, AnchorReading, HeadSigner, export_document, parse_export
from grace.vault.masterkey import MasterKey

WRITERS = 4
HEADS = 150
MATERIAL = bytes(range(32))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _signer(material: bytes = MATERIAL) -> HeadSigner:
    return HeadSigner(MasterKey(material, "environment"))


def _anchor(path: Path) -> AnchorFile:
    return AnchorFile(path, _signer())


ABSENT = AnchorReading(Path("unused"), "absent")


def _advance(path: str, first: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    anchor, signer = _anchor(Path(path)), _signer()
    barrier.wait()
    for seq in range(first, HEADS + 1, WRITERS):  # the writers' heads interleave, as commits in processes do
        anchor.advance(lambda seq=seq: signer.sign(seq, f"{seq:064x}", NOW), seq, checked=ABSENT)  # type: ignore[misc]


def test_processes_advancing_the_anchor_together_leave_it_at_the_newest_head(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(4):
        path = tmp_path / f"round{round_}" / "audit.anchor"
        barrier = ctx.Barrier(WRITERS)
        procs = [ctx.Process(target=_advance, args=(str(path), i + 1, barrier)) for i in range(WRITERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs)
        reading = _anchor(path).read()
        assert reading.state == "genuine" and reading.checkpoint is not None
        assert reading.checkpoint.seq == HEADS and reading.checkpoint.head_hash == f"{HEADS:064x}"
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_an_anchor_that_cannot_be_written_is_logged_and_the_caller_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    signer = _signer()
    # It runs after a commit: it must not raise.
    _anchor(blocker / "audit.anchor").advance(lambda: signer.sign(1, "00" * 32, NOW), 1, checked=ABSENT)
    assert [r.getMessage() for r in caplog.records] == ["vault.audit_anchor_failed"]


def test_a_reading_says_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "audit-anchor.json"
    anchor = _anchor(path)
    assert anchor.read().state == "absent" and anchor.read().problem is None
    path.write_text("")
    assert anchor.read().state == "empty" and "is empty" in str(anchor.read().problem)
    path.write_text('{"seq": 3, "head_hash": ')
    assert anchor.read().state == "unreadable" and "garbled" in str(anchor.read().problem)
    path.write_text(json.dumps({"seq": "3", "head_hash": "ab", "at": "x", "signature": "", "public_key": ""}))
    assert anchor.read().state == "unreadable"
    genuine = _signer().sign(3, "ab" * 32, NOW)
    forged = {**genuine.as_dict(), "seq": 300}
    path.write_text(json.dumps(forged))
    assert anchor.read().state == "foreign" and "not signed by this vault's key" in str(anchor.read().problem)
    path.write_text(json.dumps(_signer(bytes(32)).sign(3, "ab" * 32, NOW).as_dict()))  # another master key
    assert anchor.read().state == "foreign"
    path.write_text(json.dumps(genuine.as_dict()))
    assert anchor.read().state == "genuine" and anchor.read().checkpoint == genuine


def test_advancing_leaves_a_file_that_changed_since_the_append_checked_it(tmp_path: Path) -> None:
    path = tmp_path / "audit-anchor.json"
    anchor, signer = _anchor(path), _signer()
    anchor.advance(lambda: signer.sign(1, "01" * 32, NOW), 1, checked=ABSENT)
    checked = anchor.read()
    assert checked.state == "genuine"
    path.write_text("garbled")  # evidence for verify: the next head must not paper over it
    anchor.advance(lambda: signer.sign(2, "02" * 32, NOW), 2, checked=checked)
    assert path.read_text() == "garbled"
    path.unlink()  # gone, though the append found a signed head: not recreated either
    anchor.advance(lambda: signer.sign(2, "02" * 32, NOW), 2, checked=checked)
    assert not path.exists()


def test_replacing_keeps_a_newer_genuine_head_written_since(tmp_path: Path) -> None:
    path = tmp_path / "audit-anchor.json"
    anchor, signer = _anchor(path), _signer()
    stale = signer.sign(40, "40" * 32, NOW)
    path.write_text(json.dumps(stale.as_dict()))
    over = anchor.read()
    anchor.replace(signer.sign(30, "30" * 32, NOW), over=over)  # behind the stale head it replaces
    assert anchor.read().checkpoint == signer.sign(30, "30" * 32, NOW)
    newer = signer.sign(31, "31" * 32, NOW)
    path.write_text(json.dumps(newer.as_dict()))  # another process advanced it since
    anchor.replace(signer.sign(30, "30" * 32, NOW), over=over)
    assert anchor.read().checkpoint == newer


def test_an_export_is_read_back_and_a_forged_or_foreign_one_refused(tmp_path: Path) -> None:
    signer = _signer()
    heads = [signer.sign(64, "64" * 32, NOW), signer.sign(10, "10" * 32, NOW), signer.sign(64, "64" * 32, NOW)]
    document = export_document(heads, public_key=signer.public_key, at=NOW)
    assert [c["seq"] for c in document["checkpoints"]] == [10, 64]
    assert [c.seq for c in parse_export(json.dumps(document), signer)] == [10, 64]
    assert [c.seq for c in parse_export(json.dumps(heads[0].as_dict()), signer)] == [64]  # a copy of the anchor
    document["checkpoints"][1]["seq"] = 65
    with pytest.raises(errors.InvalidInput, match="did not sign"):
        parse_export(json.dumps(document), signer)
    with pytest.raises(errors.InvalidInput, match="did not sign"):
        parse_export(json.dumps(heads[1].as_dict()), _signer(bytes(32)))
    for garbage in ("", "[]", '{"format": "grace-audit-checkpoints/1"}', "not json"):
        with pytest.raises(errors.InvalidInput, match="not an export"):
            parse_export(garbage, signer)
