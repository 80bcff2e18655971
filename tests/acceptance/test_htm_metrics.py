"""``GET /metrics``: Prometheus' exposition, read by prometheus-client's own parser, equal to the dashboard's
figures; the same totals from another process on the same database; the scrape token or an admin, else 401/403.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from grace.clock import ManualClock
from grace.config import Settings, load_settings
from grace.services import Services, build
from tests.acceptance.test_htm_dashboard import EVERYONE, START, client_for, workload

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-token-for-the-test-0123456789"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def scraped(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url, metrics_token=TOKEN)


@pytest.fixture
async def clocked(scraped: Settings, clock: ManualClock) -> AsyncIterator[Services]:
    built = await build(scraped, clock=clock, migrate=False)
    yield built
    await built.close()


def parse(text: str) -> dict[str, list[Any]]:
    """Return each family's samples by family name, as prometheus-client's parser reads them."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def total(samples: list[Any], name: str, **labels: str) -> float:
    return float(
        sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
    )


SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


async def test_metrics_parse_and_equal_the_dashboards_figures(
    scraped: Settings, clocked: Services, clock: ManualClock
) -> None:
    async with client_for(scraped, clocked) as http:
        who = await workload(http, clocked, clock)
        stats = (await http.get("/api/htm/dashboard/stats", headers=who["admin"])).json()
        assert {k: stats[k] for k in EVERYONE} == EVERYONE
        r = await http.get("/metrics", headers=SCRAPE)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        m = parse(r.text)

        tasks = m["grace_htm_tasks"]
        assert total(tasks, "grace_htm_tasks_total", status="completed") == stats["completed_tasks"] == 8
        failed = total(tasks, "grace_htm_tasks_total", status="failed") + total(
            tasks, "grace_htm_tasks_total", status="timed_out"
        )
        assert failed == stats["failed_tasks"] == 1
        assert total(tasks, "grace_htm_tasks_total", origin="scheduler", status="completed") == 5
        created = total(m["grace_htm_tasks_created"], "grace_htm_tasks_created_total")
        assert created == stats["total_tasks"] == 15
        for origin, figures in stats["by_origin"].items():
            assert (
                total(m["grace_htm_tasks_created"], "grace_htm_tasks_created_total", origin=origin)
                == (figures["total_tasks"])
            )

        durations = m["grace_htm_task_duration_seconds"]
        assert total(durations, "grace_htm_task_duration_seconds_count") == 9
        assert total(durations, "grace_htm_task_duration_seconds_sum") == pytest.approx(5.5)
        # 100 … 500 ms (scheduler), 600, 700, 1200, 1500 ms (user_request)
        assert total(durations, "grace_htm_task_duration_seconds_bucket", le="0.5") == 5
        assert total(durations, "grace_htm_task_duration_seconds_bucket", le="1.0") == 7
        assert total(durations, "grace_htm_task_duration_seconds_bucket", le="2.5") == 9
        assert total(durations, "grace_htm_task_duration_seconds_bucket", origin="scheduler", le="0.25") == 2

        depth = m["grace_htm_queue_depth"]
        for priority, n in stats["queue_depths"].items():
            assert total(depth, "grace_htm_queue_depth", priority=priority) == n
        assert total(depth, "grace_htm_queue_depth", origin="scheduler", priority="high") == 2
        assert total(m["grace_htm_tasks_running"], "grace_htm_tasks_running") == stats["active_tasks"] == 1
        assert total(m["grace_htm_sla_active_violations"], "grace_htm_sla_active_violations") == 1
        assert total(m["grace_htm_sla_warnings"], "grace_htm_sla_warnings_total") == stats["warnings_issued"] == 3
        assert total(m["grace_htm_sla_violations"], "grace_htm_sla_violations_total") == 3
        assert total(m["grace_htm_sla_escalations"], "grace_htm_sla_escalations_total") == 3
        assert total(m["grace_htm_sla_rescues"], "grace_htm_sla_rescues_total") == 0
        assert total(m["grace_htm_sla_finished"], "grace_htm_sla_finished_total") == 4
        assert total(m["grace_htm_sla_met"], "grace_htm_sla_met_total") == 2
        assert "grace_vault_consents_total" in m

        # The roll-ups fold the rows; the exposition does not change.
        clock.advance(120)
        await clocked.htm.upkeep()
        again = parse((await http.get("/metrics", headers=SCRAPE)).text)
        for name in ("grace_htm_tasks", "grace_htm_tasks_created", "grace_htm_task_duration_seconds"):
            assert again[name] == m[name]


def _totals(text: str) -> dict[str, Any]:
    m = parse(text)
    keep = (
        "grace_htm_tasks",
        "grace_htm_tasks_created",
        "grace_htm_task_duration_seconds",
        "grace_htm_queue_depth",
        "grace_htm_tasks_running",
        "grace_htm_sla_warnings",
        "grace_htm_sla_violations",
        "grace_htm_sla_finished",
        "grace_htm_sla_met",
        "grace_vault_consents_total",
    )
    return {name: sorted((s.name, sorted(s.labels.items()), s.value) for s in m[name]) for name in keep}


async def test_another_process_on_the_same_database_reports_the_same_totals(
    scraped: Settings, clocked: Services, clock: ManualClock
) -> None:
    async with client_for(scraped, clocked) as http:
        await workload(http, clocked, clock)
        mine = (await http.get("/metrics", headers=SCRAPE)).text
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.acceptance.metrics_child", str(scraped.data_dir), scraped.database_url],
        cwd=ROOT,
        env={**os.environ, "GRACE_METRICS_TOKEN": TOKEN, "GRACE_HTM_EMBEDDED_WORKERS": "false"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert _totals(child.stdout) == _totals(mine)
    assert total(parse(child.stdout)["grace_htm_tasks"], "grace_htm_tasks_total", status="completed") == 8


async def test_metrics_need_the_scrape_token_or_an_admin(scraped: Settings, clocked: Services) -> None:
    assert clocked.bootstrap is not None
    member, _ = await clocked.accounts.create_user("mona", "member")
    _, member_token = await clocked.accounts.create_token(member.id, name="t")
    operator, _ = await clocked.accounts.create_user("otto", "operator")
    _, operator_token = await clocked.accounts.create_token(operator.id, name="t")
    async with client_for(scraped, clocked) as http:
        r = await http.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer not-the-scrape-token-at-all-0000"})
        assert wrong.status_code == 401
        for token in (member_token, operator_token):
            refused = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 403 and refused.json()["error"]["details"]["policy"] == "metrics"
        admin = await http.get("/metrics", headers={"Authorization": f"Bearer {clocked.bootstrap.token}"})
        assert admin.status_code == 200 and "grace_htm_tasks_total" in admin.text
        assert (await http.get("/metrics", headers=SCRAPE)).status_code == 200
        assert TOKEN not in (await http.get("/metrics", headers=SCRAPE)).text


async def test_without_a_scrape_token_set_only_an_admin_reads_the_metrics(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await client.get("/metrics", headers=SCRAPE)).status_code == 401
    assert (await client.get("/metrics", headers=admin_headers)).status_code == 200
