"""``grace serve`` on each event loop ``GRACE_EVENT_LOOP`` offers: it serves, takes a crowd of new
connections arriving at once (on uvloop through Grace's own accepting server, api/eventloop.py), and
stops cleanly when asked."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.servekit import Served

CROWD = 100
REQUEST = b"GET /health HTTP/1.1\r\nHost: grace\r\n\r\n"


def _answer(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_grace_serve_answers_a_crowd_of_new_connections_on_each_loop(
    loop: str, empty_database_url: str, tmp_path: Path
) -> None:
    served = Served(
        tmp_path / "data",
        tmp_path / "serve.log",
        database_url=empty_database_url,
        env={"GRACE_EVENT_LOOP": loop, "GRACE_HTM_EMBEDDED_WORKERS": "false"},
    )
    served.start()
    try:
        crowd = [socket.create_connection(("127.0.0.1", served.port), timeout=60) for _ in range(CROWD)]
        try:
            for conn in crowd:  # every request is sent before any answer is read
                conn.sendall(REQUEST)
            answers = [_answer(conn) for conn in crowd]
        finally:
            for conn in crowd:
                conn.close()
        assert all(a.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in a for a in answers), answers[:3]
        with served.client() as http:
            me = http.get("/api/auth/me")
            assert me.status_code == 200 and me.json()["username"] == "admin"
            task = http.post("/api/htm/tasks", json={"task_type": "htm.noop"})
            assert task.status_code == 201, task.text
    finally:
        served.stop()
    log = (tmp_path / "serve.log").read_text()
    assert '"event":"grace.stopped"' in log, log[-3000:]  # the lifespan ran to its end: closed, not killed
