"""The dashboard as a user meets it: ``/api/htm/dashboard/*`` checked against a workload whose answers are known.

The app runs on a ManualClock, and tasks are claimed and finished at chosen instants through the
queue itself, so every duration, deadline and wait is exact. The same figures are read again from
new services on the same database (a restart), after the roll-ups folded the rows, and after the
retention deleted the finished rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from grace.api import create_app
from grace.cli.main import app as cli_app
from grace.clock import ManualClock
from grace.config import Settings
from grace.htm import HTM, Status, rollups
from grace.htm.attempts import Outcome
from grace.htm.origins import Origin
from grace.services import Services, build
from tests.htmkit import manual_htm, submit

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WORKER = "dashboard-test-worker"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def clocked(settings: Settings, clock: ManualClock) -> AsyncIterator[Services]:
    built = await build(settings, clock=clock, migrate=False)
    yield built
    await built.close()


def client_for(settings: Settings, services: Services) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, services=services)), base_url="http://grace.test"
    )


async def headers_for(services: Services, name: str, role: str) -> dict[str, str]:
    user, _ = await services.accounts.create_user(name, role)
    _, token = await services.accounts.create_token(user.id, name="t")
    return {"Authorization": f"Bearer {token}"}


async def post(http: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> str:
    r = await http.post("/api/htm/tasks", json={"task_type": "htm.noop", **body}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


async def claim(htm: HTM, n: int) -> list[str]:
    tasks = await htm.queue.claim(WORKER, n, fallback_capacity=100)
    return [t.task_id for t in tasks]


async def finish(htm: HTM, clock: ManualClock, started: datetime, plan: list[tuple[str, int, Status]]) -> None:
    """Finish each task ``ms`` after ``started`` (in order of time), with the given status."""
    for task_id, ms, status in sorted(plan, key=lambda p: p[1]):
        clock.advance((started + timedelta(milliseconds=ms) - clock.now()).total_seconds())
        done = await htm.record(
            WORKER, [Outcome(task_id, 1, status, clock.now(), error="boom" if status is Status.FAILED else None)]
        )
        assert [f.task_id for f in done.recorded] == [task_id]


def at(clock: ManualClock, when: datetime) -> None:
    clock.advance((when - clock.now()).total_seconds())


async def workload(http: httpx.AsyncClient, services: Services, clock: ManualClock) -> dict[str, dict[str, str]]:
    """Build the known workload; return the headers of who submitted it.

    08:00  admin: 5 scheduler tasks, run 100..500 ms
    09:00  alice: 4 tasks with a 1 s SLA and 1 MB each: 600 and 700 ms in time, 1200 ms late, 1500 ms failed;
           the enforcer warns at 0.9 s and escalates at 1.1 s the two still running
    10:00  alice: one running (1 h SLA), one left queued with a 20 min SLA
    10:30  admin: 2 high scheduler tasks and 1 normal; alice: 1 low. The enforcer escalates the queued one.
    """
    htm = services.htm
    assert services.bootstrap is not None
    admin = {"Authorization": f"Bearer {services.bootstrap.token}"}
    alice = await headers_for(services, "alice", "member")
    bob = await headers_for(services, "bob", "member")
    olga = await headers_for(services, "olga", "operator")

    for _ in range(5):
        await post(http, admin, origin="scheduler")
    ids = await claim(htm, 5)
    await finish(htm, clock, START, [(i, 100 * (n + 1), Status.COMPLETED) for n, i in enumerate(ids)])

    nine = START + timedelta(hours=1)
    at(clock, nine)
    mine = [await post(http, alice, sla_ms=1000, data_size_bytes=1_000_000, max_attempts=1) for _ in range(4)]
    assert sorted(await claim(htm, 4)) == sorted(mine)
    await finish(htm, clock, nine, [(mine[0], 600, Status.COMPLETED), (mine[1], 700, Status.COMPLETED)])
    at(clock, nine + timedelta(milliseconds=900))
    assert len((await htm.sla.tick()).tasks_at("warning")) == 2
    at(clock, nine + timedelta(milliseconds=1100))
    assert len((await htm.sla.tick()).tasks_at("violated")) == 2
    await finish(htm, clock, nine, [(mine[2], 1200, Status.COMPLETED), (mine[3], 1500, Status.FAILED)])

    ten = START + timedelta(hours=2)
    at(clock, ten)
    await post(http, alice, sla_ms=3_600_000)
    assert len(await claim(htm, 1)) == 1
    await post(http, alice, sla_ms=1_200_000)
    at(clock, ten + timedelta(minutes=30))
    await post(http, admin, origin="scheduler", priority="high")
    await post(http, admin, origin="scheduler", priority="high")
    await post(http, admin)
    await post(http, alice, priority="low")
    assert len((await htm.sla.tick()).tasks_at("violated")) == 1
    return {"admin": admin, "alice": alice, "bob": bob, "olga": olga}


HISTORY = (
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "cancelled_tasks",
    "sla_compliance_rate",
    "avg_execution_time_ms",
    "p50_execution_ms",
    "p95_execution_ms",
    "p99_execution_ms",
)

EVERYONE = {
    "total_tasks": 15,
    "active_tasks": 1,
    "queued_tasks": 5,
    "completed_tasks": 8,
    "failed_tasks": 1,
    "cancelled_tasks": 0,
    "sla_compliance_rate": 0.5,
    "active_violations": 1,
    "avg_execution_time_ms": 611.111,
    "p50_execution_ms": 500.0,
    "p95_execution_ms": 1500.0,
    "p99_execution_ms": 1500.0,
    "queue_depths": {"critical": 0, "high": 3, "normal": 1, "low": 1},
    "warnings_issued": 3,
    "escalations_triggered": 3,
    "sub_agents_spawned": 0,
}

ALICE = {
    "total_tasks": 7,
    "active_tasks": 1,
    "queued_tasks": 2,
    "completed_tasks": 3,
    "failed_tasks": 1,
    "cancelled_tasks": 0,
    "sla_compliance_rate": 0.5,
    "active_violations": 1,
    "avg_execution_time_ms": 1000.0,
    "p50_execution_ms": 700.0,
    "p95_execution_ms": 1500.0,
    "p99_execution_ms": 1500.0,
    "queue_depths": {"critical": 0, "high": 1, "normal": 0, "low": 1},
    "warnings_issued": 3,
    "escalations_triggered": 3,
    "sub_agents_spawned": 0,
}


def figures(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats[k] for k in EVERYONE}


async def hourly(http: httpx.AsyncClient, headers: dict[str, str], hours: int = 24) -> dict[str, dict[str, Any]]:
    r = await http.get(f"/api/htm/dashboard/metrics/hourly?hours={hours}", headers=headers)
    assert r.status_code == 200, r.text
    buckets = r.json()["buckets"]
    assert len(buckets) == hours
    return {b["hour"]: b for b in buckets if b["created"] or b["completed"] or b["failed"]}


def expected_hours() -> dict[str, dict[str, Any]]:
    h8, h9 = START.isoformat(), (START + timedelta(hours=1)).isoformat()
    return {
        h8: {"created": 5, "completed": 5, "failed": 0, "p50_execution_ms": 300.0, "p95_execution_ms": 500.0,
             "sla_compliance_rate": None, "throughput_tasks_per_second": round(5 / 3600, 4),
             "throughput_mb_per_second": 0.0, "seconds": 3600.0},
        h9: {"created": 4, "completed": 3, "failed": 1, "p50_execution_ms": 700.0, "p95_execution_ms": 1500.0,
             "sla_compliance_rate": 0.5, "throughput_tasks_per_second": round(3 / 3600, 4),
             "throughput_mb_per_second": round(3 / 3600, 6), "seconds": 3600.0},
    }  # fmt: skip


def shown(buckets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    keys = expected_hours()[START.isoformat()].keys()
    return {h: {k: b[k] for k in keys} for h, b in buckets.items() if h in expected_hours()}


async def test_the_dashboard_tells_a_known_workload_exactly(
    settings: Settings, clocked: Services, clock: ManualClock
) -> None:
    async with client_for(settings, clocked) as http:
        who = await workload(http, clocked, clock)
        stats = (await http.get("/api/htm/dashboard/stats", headers=who["admin"])).json()
        assert figures(stats) == EVERYONE
        assert stats["scope"] == "everyone"
        assert stats["window"] == {
            "start": (START + timedelta(hours=2) - timedelta(hours=23)).isoformat(),
            "end": clock.now().isoformat(),
            "hours": 24,
        }
        assert stats["by_origin"]["scheduler"]["total_tasks"] == 7
        assert stats["by_origin"]["scheduler"]["completed_tasks"] == 5
        assert stats["by_origin"]["scheduler"]["p50_execution_ms"] == 300.0
        assert stats["by_origin"]["scheduler"]["queue_depths"] == {"critical": 0, "high": 2, "normal": 0, "low": 0}
        assert stats["by_origin"]["user_request"]["total_tasks"] == 8
        assert stats["by_origin"]["user_request"]["sla_compliance_rate"] == 0.5
        assert stats["by_origin"]["intent"]["total_tasks"] == 0
        assert stats["running_all"] == 1
        operator = (await http.get("/api/htm/dashboard/stats", headers=who["olga"])).json()
        assert figures(operator) == EVERYONE

        own = (await http.get("/api/htm/dashboard/stats", headers=who["alice"])).json()
        assert figures(own) == ALICE and own["scope"] == "own"
        nothing = (await http.get("/api/htm/dashboard/stats", headers=who["bob"])).json()
        assert nothing["total_tasks"] == 0 and nothing["queued_tasks"] == 0 and nothing["p50_execution_ms"] is None
        assert nothing["sla_compliance_rate"] is None

        # Only the current hour: what happened at 08:00 and 09:00 is outside it.
        short = (await http.get("/api/htm/dashboard/stats?window_hours=1", headers=who["admin"])).json()
        assert short["total_tasks"] == 6 and short["completed_tasks"] == 0 and short["p50_execution_ms"] is None

        assert shown(await hourly(http, who["admin"])) == expected_hours()
        current = (await hourly(http, who["admin"]))[(START + timedelta(hours=2)).isoformat()]
        assert current["created"] == 6 and current["seconds"] == 1800.0
        alice_hours = await hourly(http, who["alice"])
        assert set(alice_hours) == {(START + timedelta(hours=h)).isoformat() for h in (1, 2)}

        queued = (await http.get("/api/htm/dashboard/tasks/queued", headers=who["admin"])).json()
        assert queued["total"] == 5 and queued["queue_depths"] == EVERYONE["queue_depths"]
        assert queued["by_origin"]["scheduler"] == {"critical": 0, "high": 2, "normal": 0, "low": 0}
        waits = {t["priority"]: t["wait_ms"] for t in queued["tasks"]}
        assert [t["priority"] for t in queued["tasks"]] == ["high", "high", "high", "normal", "low"]
        assert queued["tasks"][0]["wait_ms"] == 30 * 60 * 1000  # the escalated one, waiting since 10:00
        assert waits["low"] == 0 and queued["oldest_wait_ms"] == 30 * 60 * 1000
        assert (
            len((await http.get("/api/htm/dashboard/tasks/queued?limit=2", headers=who["admin"])).json()["tasks"]) == 2
        )
        assert (await http.get("/api/htm/dashboard/tasks/queued", headers=who["alice"])).json()["total"] == 2

        slow = (await http.get("/api/htm/dashboard/tasks/slow", headers=who["alice"])).json()["tasks"]
        assert len(slow) == 1
        assert slow[0]["elapsed_ms"] == 30 * 60 * 1000 and slow[0]["sla_ms"] == 3_600_000
        assert slow[0]["elapsed_ratio"] == 0.5
        assert (await http.get("/api/htm/dashboard/tasks/slow", headers=who["bob"])).json()["tasks"] == []

        violations = (await http.get("/api/htm/dashboard/violations", headers=who["admin"])).json()
        assert violations["total"] == 1
        [v] = violations["violations"]
        assert v["sla_ms"] == 1_200_000 and v["overdue_ms"] == 10 * 60 * 1000 and v["priority"] == "high"
        assert (await http.get("/api/htm/dashboard/violations", headers=who["bob"])).json()["total"] == 0

        health = (await http.get("/api/htm/dashboard/health", headers=who["admin"])).json()
        assert health["status"] == "failing"
        assert {(a["check"], a["level"], a["figure"], a["threshold"]) for a in health["alerts"]} == {
            ("active_violations", "degraded", 1, 0),
            ("oldest_queued_seconds", "failing", 1800.0, 600.0),
        }
        assert all(f"threshold {a['threshold']:g}" in a["message"] for a in health["alerts"])
        quiet = (await http.get("/api/htm/dashboard/health", headers=who["bob"])).json()
        assert quiet["status"] == "ok" and quiet["alerts"] == [] and quiet["scope"] == "own"


async def test_the_figures_survive_a_restart_the_roll_ups_and_the_retention(
    settings: Settings, clocked: Services, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with client_for(settings, clocked) as http:
        who = await workload(http, clocked, clock)
        before = (await http.get("/api/htm/dashboard/stats", headers=who["admin"])).json()
        hours_before = await hourly(http, who["admin"])
    assert figures(before) == EVERYONE
    await clocked.close()

    # A restart: new services on the same database; nothing is held in memory.
    monkeypatch.setenv("GRACE_HTM_RETENTION_DAYS", "1")
    restarted = await build(settings, clock=clock, migrate=False)
    try:
        async with client_for(settings, restarted) as http:
            again = (await http.get("/api/htm/dashboard/stats", headers=who["admin"])).json()
            assert again == before
            assert await hourly(http, who["admin"]) == hours_before

            # The roll-ups fold every finished task up to 30 s ago; the figures do not move.
            assert (await restarted.htm.upkeep())["folded"] > 0
            assert (await http.get("/api/htm/dashboard/stats", headers=who["admin"])).json() == before
            assert await hourly(http, who["admin"]) == hours_before
            assert figures((await http.get("/api/htm/dashboard/stats", headers=who["alice"])).json()) == ALICE

            # Two days on, the retention deletes the finished rows; the history stays.
            clock.advance(2 * 24 * 3600)
            done = await restarted.htm.upkeep()
            assert done["deleted"] == 9
            assert await restarted.htm.list_tasks(principal=None, status="completed") == []
            later = (await http.get("/api/htm/dashboard/stats?window_hours=72", headers=who["admin"])).json()
            assert {k: later[k] for k in HISTORY} == {k: EVERYONE[k] for k in HISTORY}
            own = (await http.get("/api/htm/dashboard/stats?window_hours=72", headers=who["alice"])).json()
            assert {k: own[k] for k in HISTORY} == {k: ALICE[k] for k in HISTORY}
            assert shown(await hourly(http, who["admin"], hours=72)) == expected_hours()
    finally:
        await restarted.close()


async def test_a_second_roll_up_adds_nothing_twice(settings: Settings, clocked: Services, clock: ManualClock) -> None:
    async with client_for(settings, clocked) as http:
        who = await workload(http, clocked, clock)
        await clocked.htm.upkeep()
        clock.advance(60)
        await clocked.htm.upkeep()
        # A task finished after the first roll-up is folded by the second, once.
        await post(http, who["admin"], origin="scheduler")
        [task_id] = await claim(clocked.htm, 1)
        started = clock.now()
        await finish(clocked.htm, clock, started, [(task_id, 250, Status.COMPLETED)])
        clock.advance(60)
        assert (await clocked.htm.upkeep())["folded"] == 2  # created and finished
        assert (await clocked.htm.upkeep())["folded"] == 0
        stats = (await http.get("/api/htm/dashboard/stats", headers=who["admin"])).json()
        assert stats["completed_tasks"] == 9 and stats["total_tasks"] == 16
        assert stats["p50_execution_ms"] == 400.0  # the fifth of 100, 200, 250, 300, 400, … 1500


async def test_the_roll_ups_fold_in_steps_smaller_than_an_hour_without_moving_a_figure(
    settings: Settings, clocked: Services, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fold takes a few rows per transaction, so a burst of finished tasks never holds the event
    # loop for long. Here a step is two tasks: smaller than any hour of the workload, and smaller than
    # the three tasks below that finished at one instant (their outcomes recorded together).
    monkeypatch.setattr(rollups, "FINISHED_CHUNK", 2)
    monkeypatch.setattr(rollups, "CREATED_CHUNK", 2)
    async with client_for(settings, clocked) as http:
        who = await workload(http, clocked, clock)
        claimed = await claim(clocked.htm, 3)
        assert len(claimed) == 3
        clock.advance(0.25)
        together = [Outcome(task_id, 1, Status.COMPLETED, clock.now()) for task_id in claimed]
        assert len((await clocked.htm.record(WORKER, together)).recorded) == 3
        clock.advance(60)

        async def seen() -> list[Any]:
            return [
                (await http.get("/api/htm/dashboard/stats?window_hours=72", headers=who[name])).json()
                for name in ("admin", "alice")
            ] + [await hourly(http, who["admin"], hours=72)]

        before = await seen()
        assert before[0]["completed_tasks"] == 8 + 3  # the workload's and these
        first = await clocked.htm.upkeep()
        assert first["folded"] == before[0]["total_tasks"] + before[0]["completed_tasks"] + before[0]["failed_tasks"]
        assert await seen() == before
        assert (await clocked.htm.upkeep())["folded"] == 0
        assert await seen() == before


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/api/htm/dashboard/stats?window_hours=0", "window_hours"),
        ("/api/htm/dashboard/stats?window_hours=721", "window_hours"),
        ("/api/htm/dashboard/stats?window_hours=soon", "window_hours"),
        ("/api/htm/dashboard/metrics/hourly?hours=0", "hours"),
        ("/api/htm/dashboard/metrics/hourly?hours=9999", "hours"),
        ("/api/htm/dashboard/tasks/slow?limit=0", "limit"),
        ("/api/htm/dashboard/tasks/queued?limit=1001", "limit"),
        ("/api/htm/dashboard/violations?limit=x", "limit"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], path: str, says: str
) -> None:
    r = await client.get(path, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert says in r.text


async def test_the_dashboard_needs_a_principal(client: httpx.AsyncClient) -> None:
    for path in ("stats", "violations", "tasks/slow", "tasks/queued", "metrics/hourly", "health"):
        r = await client.get(f"/api/htm/dashboard/{path}")
        assert r.status_code == 401, path


def test_grace_htm_dashboard(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> None:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    # Ten minutes ago, on a clock of the test's own: three tasks ran 200 ms each, one still waits.
    clock = ManualClock(datetime.now(UTC) - timedelta(minutes=10))

    async def seed() -> None:
        async with manual_htm(database_url, clock) as htm:
            await submit(htm, Origin.SCHEDULER, 4, task_type="htm.noop")
            ids = await claim(htm, 3)
            await finish(htm, clock, clock.now(), [(i, 200, Status.COMPLETED) for i in ids])

    asyncio.run(seed())
    grace = CliRunner()
    r = grace.invoke(cli_app, ["htm", "dashboard", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    stats = data["stats"]
    assert (stats["total_tasks"], stats["completed_tasks"], stats["queued_tasks"]) == (4, 3, 1)
    assert stats["p50_execution_ms"] == 200.0 and stats["by_origin"]["scheduler"]["completed_tasks"] == 3
    assert data["health"]["status"] in {"ok", "degraded", "failing"} and len(data["hourly"]["buckets"]) == 24

    r = grace.invoke(cli_app, ["htm", "dashboard"])
    assert r.exit_code == 0, r.output
    assert "HTM dashboard" in r.output and "completed 3" in r.output and "p50 200.0 ms" in r.output
    r = grace.invoke(cli_app, ["htm", "dashboard", "--window-hours", "0"])
    assert r.exit_code == 2 and "--window-hours" in r.output
