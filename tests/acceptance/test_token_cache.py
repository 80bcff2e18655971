"""A bearer token is resolved from a short-lived cache, and a revoked token or disabled user still stops at once.

In one process the change drops what the cache holds before its call returns. Across processes the
change reaches each one's cache at once: on PostgreSQL through the bus (the NOTIFY sent on commit),
on SQLite through the epoch file beside the database (a CLI revoking a token while ``grace serve``
runs). The served process keeps its cache 300 s here, so only the invalidation can explain a refusal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from grace.config import Settings
from grace.services import Services, build
from tests.servekit import Served

ROOT = Path(__file__).resolve().parents[2]
GRACE = str(Path(sys.executable).with_name("grace"))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _agent_token(client: httpx.AsyncClient, headers: dict[str, str], **body: object) -> tuple[str, str]:
    made = await client.post("/api/tokens", json={"agent": "cached", **body}, headers=headers)
    assert made.status_code == 201, made.text
    return made.json()["token"], made.json()["info"]["id"]


async def test_a_revoked_token_is_refused_at_once_though_it_was_cached(
    services: Services, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    token, token_id = await _agent_token(client, admin_headers)
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 200
    assert services.accounts.cache is not None
    assert services.accounts.cache.get(_digest(token)) is not None  # the next request would not read the rows
    revoked = await client.post(f"/api/tokens/{token_id}/revoke", headers=admin_headers)
    assert revoked.status_code == 200, revoked.text
    refused = await client.get("/api/auth/me", headers=bearer)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthenticated"


async def test_a_disabled_users_cached_token_is_refused_at_once(
    services: Services, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    made = await client.post("/api/users", json={"username": "cachy", "role": "operator"}, headers=admin_headers)
    assert made.status_code == 201, made.text
    token, _ = await _agent_token(client, admin_headers, user_id="cachy")
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 200
    assert (await client.post("/api/users/cachy/disable", headers=admin_headers)).status_code == 200
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401


async def test_a_token_revoked_by_another_process_on_sqlite_is_refused_at_once(
    backend: str, settings: Settings, services: Services, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """``grace tokens revoke`` from the CLI is another process with its own in-process bus: the epoch file tells."""
    if backend != "sqlite":
        pytest.skip("on PostgreSQL the bus reaches every process (the served test below)")
    token, token_id = await _agent_token(client, admin_headers)
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 200
    other = await build(settings, migrate=False, bootstrap=False)  # what the CLI builds
    try:
        await other.accounts.revoke_token(token_id)
    finally:
        await other.close()
    assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401


@pytest.fixture
def served(settings: Settings, services: Services, tmp_path: Path) -> Iterator[str]:
    """A second process, ``grace serve`` on the same database and data directory, caching tokens 300 s."""
    server = Served(
        settings.data_dir,
        tmp_path / "serve.log",
        database_url=settings.database_url,
        env={"GRACE_TOKEN_CACHE_SECONDS": "300", "GRACE_HTM_EMBEDDED_WORKERS": "false", "GRACE_LOG_LEVEL": "WARNING"},
    )
    server.env.pop("GRACE_BOOTSTRAP_TOKEN")  # the database has its admin already
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.slow
async def test_a_token_revoked_on_one_process_is_refused_at_once_by_another(
    served: str, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    token, token_id = await _agent_token(client, admin_headers)
    made = await client.post("/api/users", json={"username": "remote", "role": "operator"}, headers=admin_headers)
    assert made.status_code == 201, made.text
    user, _ = await _agent_token(client, admin_headers, agent=None, user_id="remote")
    async with httpx.AsyncClient(base_url=served, timeout=30) as other:
        bearer = {"Authorization": f"Bearer {token}"}
        # Twice: the second answer comes from the served process's cache.
        for _ in range(2):
            assert (await other.get("/api/auth/me", headers=bearer)).status_code == 200
        assert (await client.post(f"/api/tokens/{token_id}/revoke", headers=admin_headers)).status_code == 200
        refused = await other.get("/api/auth/me", headers=bearer)
        assert refused.status_code == 401, refused.text
        # A user's own token, cached there too, then the user disabled on this process.
        own = {"Authorization": f"Bearer {user}"}
        for _ in range(2):
            assert (await other.get("/api/auth/me", headers=own)).status_code == 200
        assert (await client.post("/api/users/remote/disable", headers=admin_headers)).status_code == 200
        assert (await other.get("/api/auth/me", headers=own)).status_code == 401


@pytest.mark.slow
async def test_a_revocation_whose_process_dies_as_it_commits_still_reaches_every_process(
    backend: str, settings: Settings, served: str, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    """The revoking process is killed the moment its commit returns: the event went with the change."""
    if backend != "postgresql":
        pytest.skip("on SQLite the other process is told by the epoch file (the test above)")
    token, token_id = await _agent_token(client, admin_headers)
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=served, timeout=30) as other:
        for _ in range(2):  # the second answer comes from the served process's 300 s cache
            assert (await other.get("/api/auth/me", headers=bearer)).status_code == 200
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
        args = [str(settings.data_dir), settings.database_url, token_id]
        child = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "tests.acceptance.revoke_and_die_child", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output = (await child.communicate())[0].decode()
        assert child.returncode == 75, output  # died as the commit returned
        assert "REVOKED" not in output
        # The served process learns of it without the revoker's help; its cache would keep the
        # token 300 s otherwise. Wait for the refusal (the NOTIFY is sent on the commit).
        for _ in range(600):
            answer = await other.get("/api/auth/me", headers=bearer)
            if answer.status_code != 200:
                break
            await asyncio.sleep(0.1)
        assert answer.status_code == 401, answer.text
