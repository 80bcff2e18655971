"""``make run`` as a new user runs it: it serves, prints how to sign in, and refuses strangers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACE_")}
    env.update(GRACE_DATA_DIR=str(tmp_path / "data"), GRACE_PORT=str(port))
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    printed: dict[str, str] = {}
    url = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "token" not in printed:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("Serving at "):
                url = line.split()[2]
            for key in ("username", "password", "token"):
                if line.strip().startswith(f"{key}:"):
                    printed[key] = line.split(":", 1)[1].strip()
        assert url and set(printed) == {"username", "password", "token"}, f"make run printed {printed} {url!r}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, printed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.mark.slow
def test_make_run_serves_and_the_printed_credentials_sign_in(served: tuple[str, dict[str, str]]) -> None:
    url, creds = served
    assert url == f"http://127.0.0.1:{url.rsplit(':', 1)[1]}"
    assert httpx.get(f"{url}/health").json()["status"] == "ok"

    refused = httpx.get(f"{url}/api/auth/me")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthenticated"

    with_token = httpx.get(f"{url}/api/auth/me", headers={"Authorization": f"Bearer {creds['token']}"})
    assert with_token.json()["username"] == creds["username"] == "admin"

    with httpx.Client(base_url=url) as browser:
        signed_in = browser.post("/api/auth/login", json={"username": "admin", "password": creds["password"]})
        assert signed_in.status_code == 200
        assert browser.get("/api/auth/me").json()["role"] == "admin"
