"""SLA enforcement as a user meets it: ``GET /api/htm/sla/stats``, ``GET /api/htm/sla/violations`` and
``grace tasks sla``, with who may see what and the errors for bad input.

The app runs on a ManualClock here, so tasks become overdue when the test says so.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from grace.api import create_app
from grace.cli.main import app as cli_app
from grace.clock import ManualClock
from grace.config import Settings
from grace.htm.origins import Origin
from grace.services import Services, build
from tests.htmkit import manual_htm, submit

SEED_KEYS = {
    "total_violations",
    "warnings_issued",
    "escalations_triggered",
    "sub_agents_spawned",
    "sla_compliance_rate",
}


@pytest.fixture
async def clocked(settings: Settings, clock: ManualClock) -> AsyncIterator[Services]:
    """The real composition root on the test database, on a clock that moves only when told to."""
    built = await build(settings, clock=clock, migrate=False)
    yield built
    await built.close()


@pytest.fixture
async def http(settings: Settings, clocked: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, services=clocked))
    async with httpx.AsyncClient(transport=transport, base_url="http://grace.test") as client:
        yield client


async def headers_for(services: Services, name: str, role: str) -> dict[str, str]:
    user, _ = await services.accounts.create_user(name, role)
    _, token = await services.accounts.create_token(user.id, name="t")
    return {"Authorization": f"Bearer {token}"}


async def test_the_sla_routes_need_a_principal(client: httpx.AsyncClient) -> None:
    for path in ("/api/htm/sla/stats", "/api/htm/sla/violations"):
        r = await client.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthenticated"


async def test_members_see_only_their_own_violations_and_operators_see_all(
    http: httpx.AsyncClient, clocked: Services, clock: ManualClock
) -> None:
    assert clocked.htm is not None and clocked.bootstrap is not None
    alice = await headers_for(clocked, "alice", "member")
    bob = await headers_for(clocked, "bob", "member")
    olivia = await headers_for(clocked, "olivia", "operator")
    admin = {"Authorization": f"Bearer {clocked.bootstrap.token}"}
    ids = {}
    for who, headers in (("alice", alice), ("bob", bob)):
        r = await http.post("/api/htm/tasks", json={"task_type": "htm.noop", "sla_ms": 1000}, headers=headers)
        assert r.status_code == 201, r.text
        ids[who] = r.json()["task_id"]
    r = await http.post("/api/htm/tasks", json={"task_type": "htm.noop", "sla_ms": 60_000}, headers=alice)
    in_time = r.json()["task_id"]

    clock.advance(1.5)
    await clocked.htm.sla.tick()
    mine = (await http.get("/api/htm/sla/violations", headers=alice)).json()["violations"]
    assert [v["task_id"] for v in mine] == [ids["alice"]]
    [v] = mine
    assert v["origin"] == "user_request" and v["priority"] == "high" and v["sla_level"] == "violated"
    assert v["overdue_ms"] == 500 and v["elapsed_ratio"] == 1.5 and v["status"] == "queued"
    assert [v["task_id"] for v in (await http.get("/api/htm/sla/violations", headers=bob)).json()["violations"]] == [
        ids["bob"]
    ]
    for headers in (olivia, admin):
        everyone = (await http.get("/api/htm/sla/violations", headers=headers)).json()["violations"]
        assert {v["task_id"] for v in everyone} == set(ids.values())
        assert in_time not in {v["task_id"] for v in everyone}
    only = await http.get("/api/htm/sla/violations?origin=intent", headers=admin)
    assert only.status_code == 200 and only.json()["violations"] == []
    assert len((await http.get("/api/htm/sla/violations?limit=1", headers=admin)).json()["violations"]) == 1


async def test_sla_stats_in_the_seeds_shape(http: httpx.AsyncClient, clocked: Services, clock: ManualClock) -> None:
    assert clocked.htm is not None and clocked.bootstrap is not None
    admin = {"Authorization": f"Bearer {clocked.bootstrap.token}"}
    member = await headers_for(clocked, "mia", "member")
    for sla_ms in (1000, 1000, 10_000):
        await http.post("/api/htm/tasks", json={"task_type": "htm.noop", "sla_ms": sla_ms}, headers=admin)
    pool = clocked.htm.new_pool(concurrency=1, claim_batch=1)
    clock.advance(0.5)
    await pool.claim_once()  # the first one finishes in time
    await pool.wait_idle()
    clock.advance(1.5)  # the second is at 200%, the third at 20%
    tick = await clocked.htm.sla.tick()
    assert len(tick.rescues) == 1
    stats = (await http.get("/api/htm/sla/stats", headers=member)).json()
    assert set(stats) >= SEED_KEYS
    assert {k: stats[k] for k in (*SEED_KEYS, "active_violations", "window_seconds")} == {
        "total_violations": 1,
        "warnings_issued": 1,
        "escalations_triggered": 1,
        "sub_agents_spawned": 1,
        "sla_compliance_rate": 1.0,
        "active_violations": 1,
        "window_seconds": 86400,
    }
    short = (await http.get("/api/htm/sla/stats?window_seconds=1", headers=admin)).json()
    assert short["window_seconds"] == 1 and short["sla_compliance_rate"] is None  # finished 1.5 s ago


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/api/htm/sla/violations?limit=0", "limit"),
        ("/api/htm/sla/violations?limit=1001", "limit"),
        ("/api/htm/sla/violations?limit=many", "limit"),
        ("/api/htm/sla/violations?origin=marketing", "valid origins: user_request"),
        ("/api/htm/sla/stats?window_seconds=0", "window_seconds"),
        ("/api/htm/sla/stats?window_seconds=99999999", "window_seconds"),
        ("/api/htm/sla/stats?window_seconds=soon", "window_seconds"),
    ],
)
async def test_bad_input_is_a_clear_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], path: str, says: str
) -> None:
    r = await client.get(path, headers=admin_headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert says in json.dumps(error)


async def test_the_serving_process_runs_the_enforcer_unless_it_is_turned_off(
    services: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert services.htm is not None
    services.start_background()  # what `grace serve`'s lifespan does
    started = services.htm.sla.running  # asserting the property itself, mypy would keep it True past stop()
    assert started
    await services.htm.sla.stop()
    assert not services.htm.sla.running

    monkeypatch.setenv("GRACE_HTM_SLA_ENABLED", "false")
    monkeypatch.setenv("GRACE_HTM_EMBEDDED_WORKERS", "false")
    off = await build(settings, migrate=False)
    try:
        off.start_background()
        assert off.htm is not None and not off.htm.config.sla_enabled and not off.htm.sla.running
    finally:
        await off.close()


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    return CliRunner()


def test_grace_tasks_sla(grace: CliRunner, database_url: str) -> None:
    # An hour ago (on a clock of the test's own) a task with a one-second SLA was submitted and
    # left waiting; the enforcer took it through every level two seconds later.
    clock = ManualClock(datetime.now(UTC) - timedelta(hours=1))

    async def seed() -> str:
        async with manual_htm(database_url, clock) as htm:
            [task_id] = await submit(htm, Origin.INTENT, sla_ms=1000, task_type="htm.noop")
            clock.advance(2)
            assert (await htm.sla.tick()).tasks_at("critical") == [task_id]
            return task_id

    task_id = asyncio.run(seed())
    r = grace.invoke(cli_app, ["tasks", "sla", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["stats"]["sub_agents_spawned"] == 1 and data["stats"]["active_violations"] == 1
    [v] = data["violations"]
    assert v["task_id"] == task_id and v["sla_level"] == "critical" and v["priority"] == "high"
    assert v["overdue_ms"] > 3_500_000  # about an hour, by the real clock the CLI reads

    r = grace.invoke(cli_app, ["tasks", "sla"])
    assert r.exit_code == 0, r.output
    assert "warnings 1, violations 1, escalations 1, rescue tasks 1, active violations 1" in r.output
    assert "compliance n/a" in r.output and task_id in r.output and "critical" in r.output

    r = grace.invoke(cli_app, ["tasks", "sla", "--origin", "marketing"])
    assert r.exit_code == 1 and "valid origins" in r.output
    r = grace.invoke(cli_app, ["tasks", "sla", "--limit", "0"])
    assert r.exit_code == 2 and "--limit" in r.output
