"""An acknowledged write is on disk: ``grace serve`` on SQLite, traced with strace, flushes its
write-ahead log before each submission is answered."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.backends import in_ci
from tests.servekit import Served

SUBMISSIONS = 100
# Every thread, fsync and fdatasync only, with the path of each descriptor, nothing else.
TRACE_FLUSHES = ["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-e", "signal=none"]
_WAL_FLUSH = re.compile(r"^\d+\s+f(?:data)?sync\(\d+<[^>]*grace\.db-wal>\)\s+=\s+0", re.MULTILINE)


def _wal_flushes(trace: Path) -> int:
    return len(_WAL_FLUSH.findall(trace.read_text(errors="replace")))


@pytest.mark.slow
def test_every_acknowledged_submission_on_sqlite_is_flushed_to_disk_before_it_is_answered(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        if in_ci():
            pytest.fail("strace is missing: `make system-packages` installs it")
        pytest.skip("strace is not installed (Debian package strace; `make system-packages`)")
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
