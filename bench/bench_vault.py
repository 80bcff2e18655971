"""Vault benchmark: consented access latency (in process and over HTTP) and key rotation of 10,000 secrets.

Run on its own with ``python -m bench.bench_vault`` (or through ``python -m bench``); writes
``bench/results/vault.json``. SQLite always; PostgreSQL too when ``GRACE_TEST_DATABASE_URL`` names a
server (a throwaway database is created and dropped there).

What is measured:

- ``access_in_process``: ``Vault.access`` for an agent holding a standing (persistent) consent —
  anomaly check, consent lookup, decryption, and the audited release transaction.
- ``access_http``: the same through ``POST /api/secrets/{key}/access`` on a real uvicorn server on
  127.0.0.1 (token resolution, JSON, TCP included).
- ``rotation_10k``: ``Vault.rotate_keys`` with 10,000 secrets: new key, activation, re-wrapping
  10,000 data keys in batches of 500, archiving.

The burst detector is switched off for the latency loops (they would otherwise trip it by design
after 10 releases a minute and turn every call into a fresh consent request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from grace import storage
from grace.api import create_app
from grace.auth import Principal, Role
from grace.config import load_settings
from grace.services import Services, build
from grace.storage import new_id
from grace.vault import crypto
from grace.vault.anomaly import AnomalyPolicy
from grace.vault.tables import SECRETS, vault_secret_versions, vault_secrets

RESULTS = Path(__file__).parent / "results"
ACCESS_CALLS = int(os.environ.get("BENCH_VAULT_ACCESS_CALLS", "500"))
ROTATION_SECRETS = int(os.environ.get("BENCH_VAULT_ROTATION_SECRETS", "10000"))
VALUE = "ghp_" + "b" * 36


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "calls": len(samples),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
    }


@contextlib.asynccontextmanager
async def _database(backend: str, workdir: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        db = storage.Database(url)
        await storage.upgrade(db)
        await db.dispose()
        yield url
        return
    admin = os.environ["GRACE_TEST_DATABASE_URL"]
    name = f"grace_bench_{secrets.token_hex(4)}"
    dsn = make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = make_url(admin).set(database=name).render_as_string(hide_password=False)
    db = storage.Database(url)
    await storage.upgrade(db)
    await db.dispose()
    try:
        yield url
    finally:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def _cast(services: Services) -> tuple[Principal, Principal, str]:
    owner, _ = await services.accounts.create_user("bench_owner", "member")
    _, token = await services.accounts.create_token(owner.id, agent="code_agent")
    agent = await services.accounts.resolve_token(token)
    return Principal(owner.id, owner.username, Role.MEMBER), agent, token


async def _standing_consent(services: Services, owner: Principal, agent: Principal, key: str) -> None:
    vault = services.vault
    assert vault is not None
    await vault.store(owner, key, VALUE, secret_type="api_key", service="github")
    pending = await vault.access(agent, key, action="git_push", wait_seconds=0)
    assert pending.consent_id is not None
    await vault.respond(
        owner, pending.consent_id, True, persistent=True, valid_for_seconds=86400, idle_timeout_seconds=86400
    )


async def bench_access_in_process(services: Services, owner: Principal, agent: Principal) -> dict[str, Any]:
    vault = services.vault
    assert vault is not None
    await _standing_consent(services, owner, agent, "inproc_token")
    samples: list[float] = []
    for _ in range(ACCESS_CALLS):
        started = time.perf_counter()
        result = await vault.access(agent, "inproc_token", action="git_push", wait_seconds=0)
        samples.append(time.perf_counter() - started)
        assert result.approved
    return _percentiles(samples)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def bench_access_http(services: Services, owner: Principal, agent: Principal, token: str) -> dict[str, Any]:
    await _standing_consent(services, owner, agent, "http_token")
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(services.settings, services=services),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):  # up to 10 s for the server to listen
            if server.started:
                break
            await asyncio.sleep(0.01)
        samples: list[float] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            headers = {"Authorization": f"Bearer {token}"}
            for _ in range(ACCESS_CALLS):
                started = time.perf_counter()
                response = await client.post(
                    "/api/secrets/http_token/access", json={"requested_action": "git_push"}, headers=headers
                )
                samples.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
        return _percentiles(samples)
    finally:
        server.should_exit = True
        await serving


async def _seed_secrets(services: Services, owner: Principal, count: int) -> None:
    """Insert ``count`` secrets sealed exactly as the vault seals them, in bulk (storing one by one is slower)."""
    vault = services.vault
    assert vault is not None
    now = datetime.now(UTC)
    kek = await vault.keyring.active()
    for start in range(0, count, 1000):
        secret_rows, version_rows = [], []
        for i in range(start, min(count, start + 1000)):
            secret_id = new_id("sec")
            dek = crypto.new_key(new_id("dek"))
            secret_rows.append(
                {
                    "id": secret_id, "owner_id": owner.user_id, "key": f"bulk_{i:05d}", "secret_type": "api_key",
                    "service": "bulk", "risk_level": "medium", "description": "", "status": "active",
                    "current_version": 1, "hint": VALUE[-4:], "usage_count": 0, "last_used_at": None,
                    "rotation_interval_seconds": 7 * 86400, "rotation_due_at": now, "rotation_notified_at": None,
                    "created_at": now, "updated_at": now, "revoked_at": None, "revoked_by": None,
                }
            )  # fmt: skip
            secret_rows[-1]["seal"] = vault.seal.seal(SECRETS, secret_rows[-1])
            version_rows.append(
                {
                    "id": new_id("ver"), "secret_id": secret_id, "version": 1, "key_id": kek.id, "dek_id": dek.id,
                    "wrapped_dek": vault.keyring.wrap_dek(kek, dek, secret_id, 1),
                    "ciphertext": crypto.seal(dek, VALUE.encode(), crypto.Binding("value", secret_id, 1, dek.id)),
                    "created_at": now, "created_by": "bench",
                }
            )  # fmt: skip
        async with services.db.write() as conn:
            await conn.execute(insert(vault_secrets), secret_rows)
            await conn.execute(insert(vault_secret_versions), version_rows)


async def bench_rotation(services: Services, owner: Principal) -> dict[str, Any]:
    vault = services.vault
    assert vault is not None
    await _seed_secrets(services, owner, ROTATION_SECRETS)
    started = time.perf_counter()
    report = await vault.rotate_keys(by="bench")
    elapsed = time.perf_counter() - started
    sample = await vault.secrets.list_for(owner.user_id)
    assert (await vault.secrets.decrypt(sample[-1].id)).reveal() == VALUE
    return {
        "secrets": ROTATION_SECRETS,
        "rewrapped": report.rewrapped,
        "seconds": round(elapsed, 3),
        "data_keys_per_second": round(report.rewrapped / elapsed, 1),
    }


async def bench_backend(backend: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with _database(backend, workdir) as url:
            settings = load_settings(data_dir=workdir / "data", database_url=url, log_json=True)
            services = await build(settings, migrate=False)
            try:
                assert services.vault is not None
                services.vault.consents.anomaly_policy = AnomalyPolicy(burst_count=10**9)
                owner, agent, token = await _cast(services)
                return {
                    "access_in_process": await bench_access_in_process(services, owner, agent),
                    "access_http": await bench_access_http(services, owner, agent, token),
                    "rotation_10k": await bench_rotation(services, owner),
                }
            finally:
                await services.close()


async def run() -> dict[str, Any]:
    """Run the vault benchmarks on every configured backend; write and return the results."""
    backends = ["sqlite"] + (["postgresql"] if os.environ.get("GRACE_TEST_DATABASE_URL") else [])
    results: dict[str, Any] = {
        "benchmark": "vault",
        "at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "access_calls": ACCESS_CALLS,
        "backends": {},
    }
    for backend in backends:
        results["backends"][backend] = await bench_backend(backend)
    results["summary"] = {
        backend: {
            "in_process_p50_p99_ms": [r["access_in_process"]["p50_ms"], r["access_in_process"]["p99_ms"]],
            "http_p50_p99_ms": [r["access_http"]["p50_ms"], r["access_http"]["p99_ms"]],
            "rotation_10k_seconds": r["rotation_10k"]["seconds"],
        }
        for backend, r in results["backends"].items()
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vault.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2))
