"""Faults under a real ``grace serve``: PostgreSQL connections cut and refused mid-load (through
:class:`tests.faultkit.TcpProxy`), a full disk under SQLite (a small tmpfs), and ``kill -9`` of the
server on SQLite. Each answers 503 with ``Retry-After`` and a code naming the cause, never 500, and
loses no acknowledged task."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.backends import PostgresTestDatabase, in_ci
from tests.faultkit import TcpProxy
from tests.servekit import TOKEN, Served

OUTAGE_CODES = {"database_unreachable", "disk_full", "storage_unavailable", "service_not_running"}


def _raw_exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Send each request on one TCP connection, in turn; return each answer's head and body."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            sock.sendall(request)
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                assert line, "the server closed the connection"
                head += line
            length = next(
                int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")
            )
            answers.append(head + reader.read(length))
    return answers


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: grace\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# -- PostgreSQL: connections cut and refused --------------------------------------------------


@pytest.fixture
def proxied_postgres(postgres_database: PostgresTestDatabase | None) -> Iterator[tuple[TcpProxy, str, str]]:
    """A clean database reached through a TcpProxy; yields the proxy, the proxied URL and the direct one."""
    if postgres_database is None:
        pytest.skip("PostgreSQL not configured or unreachable (set GRACE_TEST_DATABASE_URL)")
    asyncio.run(postgres_database.truncate())
    url = make_url(postgres_database.url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield proxy, proxied, postgres_database.url
    finally:
        proxy.close()


@pytest.mark.slow
async def test_postgres_cut_and_refused_mid_load_answers_503_and_every_acknowledged_task_completes_once(
    proxied_postgres: tuple[TcpProxy, str, str], tmp_path: Path
) -> None:
    proxy, proxied, direct = proxied_postgres
    # No burst limit: six clients submit thousands of tasks in seconds, and this test is about faults,
    # not about the router delaying what is over 600 a minute (tests/acceptance/test_task_admission.py).
    served = Served(
        tmp_path / "data", tmp_path / "serve.log", database_url=proxied, env={"GRACE_HTM_BURST_PER_MINUTE": "0"}
    )
    served.start()
    acked: list[str] = []
    answers: Counter[str] = Counter()
    wrong: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def submit(worker: int) -> None:
        async with served.async_client() as http:
            n = 0
            while not stop.is_set():
                n += 1
                r = await http.post("/api/htm/tasks", json={"task_type": "htm.noop", "payload": {"w": worker, "n": n}})
                if r.status_code == 201:
                    acked.append(r.json()["task_id"])
                    answers["201"] += 1
                elif (
                    r.status_code == 503 and r.headers.get("retry-after") and r.json()["error"]["code"] in OUTAGE_CODES
                ):
                    answers[r.json()["error"]["code"]] += 1
                else:
                    wrong.append((r.status_code, r.text[:300]))

    try:
        load = [asyncio.create_task(submit(w)) for w in range(6)]
        await asyncio.sleep(1.0)
        for _ in range(3):  # connections cut mid-load, as by a network drop or a server restart
            await asyncio.to_thread(proxy.cut)
            await asyncio.sleep(1.0)
        await asyncio.to_thread(proxy.refuse)  # the server is down for a while
        try:
            await asyncio.sleep(1.0)
            # A 503 keeps the keep-alive connection: two requests, two answers, one connection.
            first, second = await asyncio.to_thread(
                _raw_exchange, served.port, [_post("/api/htm/tasks", b'{"task_type": "htm.noop"}')] * 2
            )
            async with served.async_client() as http:
                ready = await http.get("/ready")
            await asyncio.sleep(1.0)
        finally:
            await asyncio.to_thread(proxy.accept)
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*load)

        assert wrong == [], wrong[:5]
        assert answers["201"] > 0 and answers["database_unreachable"] > 0, answers
        for answer in (first, second):
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert b"retry-after:" in answer.lower() and b"database_unreachable" in answer
            assert b"connection: close" not in answer.lower()
        assert ready.status_code == 503 and ready.headers["retry-after"]
        async with served.async_client() as http:
            assert (await http.get("/ready")).status_code == 200

        # Every acknowledged task completes, once, and its completed event is in the log once.
        conn = await asyncpg.connect(make_url(direct).set(drivername="postgresql").render_as_string(False))
        try:
            deadline = time.monotonic() + 120
            while True:
                rows = await conn.fetch(
                    "SELECT t.task_id, t.status, t.attempts,"
                    " (SELECT count(*) FROM events e WHERE e.topic = 'htm.task.completed'"
                    "   AND e.payload->>'task_id' = t.task_id) AS completed_events"
                    " FROM htm_tasks t WHERE t.task_id = ANY($1::text[])",
                    acked,
                )
                done = [r for r in rows if r["status"] == "completed" and r["completed_events"] >= 1]
                if len(done) == len(acked) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
        assert len(rows) == len(acked), "an acknowledged task is missing"
        assert Counter(r["status"] for r in rows) == {"completed": len(acked)}
        assert [r["task_id"] for r in rows if r["attempts"] != 1] == []  # each ran once
        # Exactly once: the event is written with the outcome and moved into the log once (docs/htm.md).
        assert [(r["task_id"], r["completed_events"]) for r in rows if r["completed_events"] != 1] == []
    finally:
        served.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "http.storage_unavailable" in log and "internal_error" not in log


# -- SQLite: a full disk ---------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=False)
    if done.returncode != 0:
        if in_ci():
            pytest.fail("a tmpfs cannot be mounted here (the full-disk test needs root or CAP_SYS_ADMIN)")
        pytest.skip("a tmpfs cannot be mounted here (needs root or CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the disk is full; return it (remove it to give the space back)."""
    filler = directory / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


@pytest.mark.slow
def test_a_full_disk_on_sqlite_answers_503_disk_full_and_recovers_when_space_returns(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "24m") as disk:
        served = Served(disk / "data", tmp_path / "serve.log", env={"GRACE_HTM_SLA_ENABLED": "false"})
        served.start()
        try:
            with served.client() as http:
                assert http.post("/api/htm/tasks", json={"task_type": "htm.noop"}).status_code == 201
                filler = _fill(disk)
                big = "x" * 60_000
                seen: Counter[int] = Counter()
                for n in range(400):  # large payloads: each needs new pages, which the disk no longer has
                    r = http.post("/api/htm/tasks", json={"task_type": "htm.echo", "payload": {"n": n, "pad": big}})
                    seen[r.status_code] += 1
                    if r.status_code == 503:
                        break
                assert r.status_code == 503, seen
                assert r.json()["error"]["code"] == "disk_full" and "disk is full" in r.json()["error"]["message"]
                assert int(r.headers["retry-after"]) > 0
                assert set(seen) <= {201, 503}, seen
                ready = http.get("/ready")
                assert ready.status_code == 503 and ready.json()["error"]["code"] == "disk_full"

                filler.unlink()  # the space returns
                assert http.get("/ready").status_code == 200
                again = http.post("/api/htm/tasks", json={"task_type": "htm.echo", "payload": {"pad": big}})
                assert again.status_code == 201, again.text
        finally:
            served.stop()
        with contextlib.closing(sqlite3.connect(disk / "data" / "grace.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    log = (tmp_path / "serve.log").read_text()
    assert "database or disk is full" in log  # the driver's own words are in the log


# -- SQLite: kill -9 ---------------------------------------------------------------------------


def _task(http: httpx.Client, task_id: str) -> dict[str, Any]:
    r = http.get(f"/api/htm/tasks/{task_id}")
    assert r.status_code == 200, r.text
    task: dict[str, Any] = r.json()["task"]
    return task


@pytest.mark.slow
def test_after_kill_9_on_sqlite_the_restarted_server_runs_the_dead_ones_tasks_again_long_before_the_lease(
    tmp_path: Path,
) -> None:
    lease = 60.0
    served = Served(
        tmp_path / "data",
        tmp_path / "serve.log",
        env={"GRACE_HTM_LEASE_SECONDS": str(lease), "GRACE_HTM_SLA_ENABLED": "false"},
    )
    served.start()
    with served.client() as http:
        ids = [
            http.post("/api/htm/tasks", json={"task_type": "htm.sleep", "payload": {"seconds": 3600}}).json()["task_id"]
            for _ in range(3)
        ]
        deadline = time.monotonic() + 300  # a guard against a hang, not a budget
        while any(_task(http, i)["status"] != "running" for i in ids):
            assert time.monotonic() < deadline, [_task(http, i) for i in ids]
            time.sleep(0.1)
    served.kill()
    restarted = time.monotonic()
    served.start()
    with served.client() as http:
        while True:
            tasks = [_task(http, i) for i in ids]
            if all(t["status"] == "running" and t["attempts"] == 2 for t in tasks):
                break
            # The only bound on time: the tasks come back before their leases would have ended.
            assert time.monotonic() - restarted < lease, tasks
            time.sleep(0.1)
    served.stop()
