"""``grace serve`` as an attacker on the same machine finds it: X-Forwarded-For from 127.0.0.1 is not
believed, the data directory is private under a permissive umask, and its debug log holds no SQL values."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servekit import TOKEN, Served


@pytest.fixture
def served(backend: str, database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A real server (uvicorn) with umask 000 and GRACE_LOG_LEVEL=DEBUG; yields its URL, data dir and log."""
    server = Served(
        tmp_path / "data",
        tmp_path / "serve.log",
        database_url=None if backend == "sqlite" else database_url,
        env={"GRACE_LOG_LEVEL": "DEBUG", "GRACE_LOGIN_CLIENT_MAX_FAILURES": "8", "GRACE_HTM_EMBEDDED_WORKERS": "false"},
        umask=0,
    )
    server.start()
    try:
        yield server.url, server.data_dir, server.log
    finally:
        server.stop()


@pytest.mark.slow
def test_a_served_grace_holds_its_sign_in_limit_files_and_log(backend: str, served: tuple[str, Path, Path]) -> None:
    url, data_dir, log = served
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        made = http.post("/api/users", json={"username": "mia", "password": "mia's long password"}, headers=admin)
        assert made.status_code == 201, made.text
        # One guess per username, each with a new X-Forwarded-For, from 127.0.0.1: before, uvicorn believed
        # the header, every guess counted under another address, and the per-address limit never held.
        for n in range(8):
            wrong = http.post(
                "/api/auth/login",
                json={"username": f"guess{n}", "password": "not a password"},
                headers={"X-Forwarded-For": f"198.51.100.{n}"},
            )
            assert wrong.status_code == 401, wrong.text
        limited = http.post(
            "/api/auth/login",
            json={"username": "mia", "password": "mia's long password"},
            headers={"X-Forwarded-For": "198.51.100.99"},
        )
        assert limited.status_code == 429, limited.text
        stored = http.post(
            "/api/secrets/store",
            json={"secret_key": "gh_token", "secret_value": "ghp_served_value_K4W8", "service": "github"},
            headers=admin,
        )
        assert stored.status_code == 201, stored.text

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    names = ["master.key", "audit-anchor.json"] + (["grace.db"] if backend == "sqlite" else [])
    for name in names:
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
    text = log.read_text()
    assert "http.request" in text  # the debug log was written ...
    assert "$argon2" not in text and "K4W8" not in text and "mia's long password" not in text  # ... without values
