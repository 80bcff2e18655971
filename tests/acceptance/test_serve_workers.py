"""``grace serve --workers N``: several server processes on one port on PostgreSQL; refused on SQLite, saying why."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
GRACE = str(Path(sys.executable).with_name("grace"))
TOKEN = "grc_workers_test_token_0123456789abcdef"


def _env(tmp_path: Path, database_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACE_")}
    env.update(
        GRACE_DATA_DIR=str(tmp_path / "data"),
        GRACE_DATABASE_URL=database_url,
        GRACE_PORT=str(port),
        GRACE_BOOTSTRAP_TOKEN=TOKEN,
        GRACE_TOKEN_CACHE_SECONDS="300",
        GRACE_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_workers_on_sqlite_are_refused_naming_why(tmp_path: Path) -> None:
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'grace.db'}", _free_port())
    done = subprocess.run([GRACE, "serve", "--workers", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "--workers needs PostgreSQL" in said and "bus" in said


@pytest.mark.slow
def test_two_server_processes_share_one_port_and_a_revocation(
    backend: str, empty_database_url: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        pytest.skip("several server processes need PostgreSQL")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {TOKEN}"}
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [GRACE, "serve", "--workers", "2"],
            cwd=ROOT,
            env=_env(tmp_path, empty_database_url, port),
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            # Each process runs its own embedded worker pool: two live workers mean two processes serve.
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                try:
                    stats = http.get("/api/htm/routing/stats", headers=admin)
                    if stats.status_code == 200 and stats.json()["workers"] == 2:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            made = http.post("/api/tokens", json={"agent": "spread"}, headers=admin)
            assert made.status_code == 201, made.text
            bearer = {"Authorization": f"Bearer {made.json()['token']}"}
            # A new connection each time, so the kernel spreads them over both processes' caches.
            for _ in range(20):
                assert httpx.get(f"{url}/api/auth/me", headers=bearer).status_code == 200
            assert http.post(f"/api/tokens/{made.json()['info']['id']}/revoke", headers=admin).status_code == 200
            refused = [httpx.get(f"{url}/api/auth/me", headers=bearer).status_code for _ in range(20)]
            assert refused == [401] * 20
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
