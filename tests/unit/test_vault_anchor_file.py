"""The audit anchor file: written by several processes at once it ends at the newest head; unwritable, it is logged."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from grace.clock import SystemClock
from grace.storage import Database
from grace.vault.audit import AuditLog
from grace.vault.masterkey import MasterKey

WRITERS = 4
HEADS = 150
MATERIAL = bytes(range(32))


def _audit(path: Path) -> AuditLog:
    return AuditLog(Database("sqlite://"), SystemClock(), MasterKey(MATERIAL, "environment"), anchor_path=path)


def _advance(path: str, first: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    audit = _audit(Path(path))
    barrier.wait()
    for seq in range(first, HEADS + 1, WRITERS):  # the writers' heads interleave, as commits in processes do
        audit._advance_anchor(seq, f"{seq:064x}")


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
        anchor = json.loads(path.read_text())
        assert anchor["seq"] == HEADS and anchor["head_hash"] == f"{HEADS:064x}"
        assert _audit(path)._signature_ok(_audit(path)._read_anchor())  # type: ignore[arg-type]


def test_an_anchor_that_cannot_be_written_is_logged_and_the_caller_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    _audit(blocker / "audit.anchor")._advance_anchor(1, "00" * 32)  # runs after a commit: it must not raise
    assert [r.getMessage() for r in caplog.records] == ["vault.audit_anchor_failed"]
