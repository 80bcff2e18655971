"""The master key file: processes that start together on a fresh data directory all get the same key."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from grace import errors
from grace.vault import masterkey

STARTERS = 6
ROUNDS = 12


def _start(path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]) -> None:
    barrier.wait()
    try:
        results.put(masterkey.load_from_file(Path(path)).key_id)
    except errors.ConfigurationError as exc:
        results.put(f"error: {exc}")


def test_processes_starting_together_all_read_the_one_key_that_was_written(tmp_path: Path) -> None:
    # A second process used to find the file created but not yet written, read it empty and refuse to start.
    ctx = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        path = tmp_path / f"round{round_}" / "master.key"
        barrier = ctx.Barrier(STARTERS)
        results: multiprocessing.Queue[str] = ctx.Queue()
        procs = [ctx.Process(target=_start, args=(str(path), barrier, results)) for _ in range(STARTERS)]
        for p in procs:
            p.start()
        ids = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert len(set(ids)) == 1 and not ids[0].startswith("error"), ids
        assert masterkey.load_from_file(path, create=False).key_id == ids[0]
        assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # nothing left behind
