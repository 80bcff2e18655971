"""An acknowledged write is on disk: ``grace serve`` on SQLite, traced with strace, flushes its
write-ahead log before each submission is answered; submissions arriving together share a flush."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.backends import in_ci
from tests.servekit import Served

SUBMISSIONS = 100
GROUP = 20
# Every thread, fsync and fdatasync only, with the path of each descriptor, nothing else.
TRACE_FLUSHES = ["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-e", "signal=none"]
_WAL_FLUSH = re.compile(r"^\d+\s+f(?:data)?sync\(\d+<[^>]*grace\.db-wal>\)\s+=\s+0", re.MULTILINE)


def _wal_flushes(trace: Path) -> int:
    return len(_WAL_FLUSH.findall(trace.read_text(errors="replace")))


def _strace() -> str:
    """The strace command; a failure under CI when it is missing, else a skip."""
    strace = shutil.which("strace")
    if strace is None:
        if in_ci():
            pytest.fail("strace is missing: `make system-packages` installs it")
        pytest.skip("strace is not installed (Debian package strace; `make system-packages`)")
    return strace


@pytest.mark.slow
def test_every_acknowledged_submission_on_sqlite_is_flushed_to_disk_before_it_is_answered(tmp_path: Path) -> None:
    strace = _strace()
    trace = tmp_path / "fsync.trace"
    served = Served(
        tmp_path / "data",
        tmp_path / "serve.log",
        # No embedded workers: only the submissions write while they are counted.
        env={"GRACE_HTM_EMBEDDED_WORKERS": "false", "GRACE_HTM_SLA_ENABLED": "false"},
        command_prefix=[strace, *TRACE_FLUSHES, "-o", str(trace)],
    )
    served.start(ready_timeout=120)
    try:
        with served.client() as http:
            before = _wal_flushes(trace)
            for n in range(SUBMISSIONS):
                r = http.post("/api/htm/tasks", json={"task_type": "htm.noop", "payload": {"n": n}})
                assert r.status_code == 201, r.text
                # Each answer comes after its own flush: the count grows with every acknowledgement.
                assert _wal_flushes(trace) >= before + n + 1
    finally:
        served.stop()


@pytest.mark.slow
async def test_submissions_arriving_together_on_sqlite_share_one_flush_and_each_is_answered_after_it(
    tmp_path: Path,
) -> None:
    strace = _strace()
    trace = tmp_path / "fsync.trace"
    data = tmp_path / "data"
    served = Served(
        data,
        tmp_path / "serve.log",
        env={"GRACE_HTM_EMBEDDED_WORKERS": "false", "GRACE_HTM_SLA_ENABLED": "false"},
        command_prefix=[strace, *TRACE_FLUSHES, "-o", str(trace)],
    )
    served.start(ready_timeout=120)
    try:
        async with served.async_client() as http:
            warm = await http.post("/api/htm/tasks", json={"task_type": "htm.noop"})  # the token is cached now
            assert warm.status_code == 201, warm.text
            # Another process holds SQLite's write lock, so the server's next transaction waits in its
            # BEGIN IMMEDIATE while the twenty requests arrive; it takes them all when the lock is free.
            other = sqlite3.connect(data / "grace.db", isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            before = _wal_flushes(trace)
            sent = [
                asyncio.ensure_future(http.post("/api/htm/tasks", json={"task_type": "htm.noop", "payload": {"n": n}}))
                for n in range(GROUP)
            ]
            await asyncio.sleep(2)  # for the requests to arrive; the lock is held well within the busy timeout
            assert not any(s.done() for s in sent)  # nothing is acknowledged before its flush
            other.execute("ROLLBACK")
            other.close()
            answers = await asyncio.gather(*sent)
        assert all(r.status_code == 201 for r in answers), [r.text for r in answers if r.status_code != 201]
        assert len({r.json()["task_id"] for r in answers}) == GROUP
        flushes = _wal_flushes(trace) - before
        assert 1 <= flushes < GROUP / 4, f"{flushes} flushes of the log for {GROUP} submissions"
    finally:
        served.stop()
