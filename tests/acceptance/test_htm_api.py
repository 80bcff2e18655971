"""The task API as a user meets it: submit, read, list, cancel, stats, and the errors for bad input."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from grace.services import Services


async def member_headers(services: Services, name: str) -> dict[str, str]:
    user, _ = await services.accounts.create_user(name, "member")
    _, token = await services.accounts.create_token(user.id, name="t")
    return {"Authorization": f"Bearer {token}"}


async def test_submit_returns_the_task_id_and_the_routing_decision(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.post(
        "/api/htm/tasks",
        json={"task_type": "htm.noop", "payload": {"from_filesystem_trigger": True, "files": ["a.pdf"]}},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["task_id"].startswith("task_") and body["status"] == "queued"
    assert set(body["routing"]) == {"origin", "route", "queue_name", "quota_used", "reasoning", "delay_seconds"}
    assert body["routing"]["origin"] == "filesystem" and body["routing"]["route"] == "accepted"
    assert body["routing"]["queue_name"] == "normal_queue" and body["routing"]["quota_used"] == "0/1"
    shown = (await client.get(f"/api/htm/tasks/{body['task_id']}", headers=admin_headers)).json()["task"]
    assert shown["origin"] == "filesystem" and shown["origin_rule"] == "payload.from_filesystem_trigger"
    assert shown["payload"]["files"] == ["a.pdf"] and shown["created_by_name"] == "admin"


async def test_members_see_only_their_own_tasks_and_operators_see_all(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    alice = await member_headers(services, "alice")
    bob = await member_headers(services, "bob")
    a_id = (await client.post("/api/htm/tasks", json={"task_type": "htm.noop"}, headers=alice)).json()["task_id"]
    b_id = (await client.post("/api/htm/tasks", json={"task_type": "htm.noop"}, headers=bob)).json()["task_id"]
    listed = (await client.get("/api/htm/tasks", headers=alice)).json()["tasks"]
    assert [t["task_id"] for t in listed] == [a_id] and listed[0]["origin"] == "user_request"
    r = await client.get(f"/api/htm/tasks/{b_id}", headers=alice)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await client.post(f"/api/htm/tasks/{b_id}/cancel", headers=alice)).status_code == 404
    everyone = (await client.get("/api/htm/tasks?limit=10", headers=admin_headers)).json()["tasks"]
    assert {t["task_id"] for t in everyone} == {a_id, b_id}
    filtered = await client.get("/api/htm/tasks?status=queued&origin=user_request", headers=admin_headers)
    assert len(filtered.json()["tasks"]) == 2


async def test_cancel_then_cancel_again_is_a_conflict(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    task_id = (await client.post("/api/htm/tasks", json={"task_type": "htm.noop"}, headers=admin_headers)).json()[
        "task_id"
    ]
    r = await client.post(f"/api/htm/tasks/{task_id}/cancel", headers=admin_headers)
    assert r.status_code == 200 and r.json()["task"]["status"] == "cancelled"
    r = await client.post(f"/api/htm/tasks/{task_id}/cancel", headers=admin_headers)
    assert r.status_code == 409 and "already cancelled" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "task_already_finished"


async def test_cancel_of_a_completed_task_is_a_conflict(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    assert services.htm is not None
    task_id = (await client.post("/api/htm/tasks", json={"task_type": "htm.noop"}, headers=admin_headers)).json()[
        "task_id"
    ]
    pool = services.htm.new_pool(concurrency=1, claim_batch=1)
    await pool.claim_once()
    await pool.wait_idle()
    shown = (await client.get(f"/api/htm/tasks/{task_id}", headers=admin_headers)).json()["task"]
    assert shown["status"] == "completed" and shown["attempts"] == 1
    r = await client.post(f"/api/htm/tasks/{task_id}/cancel", headers=admin_headers)
    assert r.status_code == 409 and r.json()["error"]["message"].startswith(f"task {task_id} is already completed")
    assert r.json()["error"]["code"] == "task_already_finished"


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [("origin", "marketing", "user_request"), ("priority", "urgent", "critical, high, normal, low")],
)
async def test_unknown_origin_or_priority_is_422_naming_the_valid_values(
    client: httpx.AsyncClient, admin_headers: dict[str, str], field: str, value: str, valid: str
) -> None:
    r = await client.post("/api/htm/tasks", json={"task_type": "htm.noop", field: value}, headers=admin_headers)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and valid in error["message"] and value in error["message"]
    r = await client.get(f"/api/htm/tasks?{'status' if field == 'priority' else field}=nope", headers=admin_headers)
    assert r.status_code == 422


async def test_a_payload_over_the_limit_is_413(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    r = await client.post(
        "/api/htm/tasks", json={"task_type": "htm.noop", "payload": {"blob": "x" * 70_000}}, headers=admin_headers
    )
    assert r.status_code == 413
    assert r.json()["error"]["details"]["limit_bytes"] == 65536


async def test_every_route_needs_a_principal(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/api/htm/tasks"),
        ("GET", "/api/htm/tasks"),
        ("GET", "/api/htm/tasks/task_x"),
        ("POST", "/api/htm/tasks/task_x/cancel"),
        ("GET", "/api/htm/routing/stats"),
    ]:
        r = await client.request(method, path, json={"task_type": "htm.noop"} if method == "POST" else None)
        assert r.status_code == 401, path


async def test_routing_stats_per_origin(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    for _ in range(3):
        await client.post(
            "/api/htm/tasks", json={"task_type": "htm.noop", "origin": "hunter_alert"}, headers=admin_headers
        )
    stats = (await client.get("/api/htm/routing/stats", headers=admin_headers)).json()
    hunter = stats["origins"]["hunter_alert"]
    assert hunter["total_queued"] == 3 and hunter["current_count"] == 0 and hunter["utilization"] == 0.0
    assert {"max_concurrent", "tasks_starved", "delayed", "deferred", "throughput_mb_s"} <= set(hunter)
    assert len(stats["origins"]) == 8


async def test_the_serving_process_runs_tasks_in_its_embedded_pool(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    assert services.htm is not None and services.htm.config.embedded_workers
    services.start_background()  # what the app's lifespan does in `grace serve`
    r = await client.post("/api/htm/tasks", json={"task_type": "htm.echo", "payload": {"n": 7}}, headers=admin_headers)
    task_id = r.json()["task_id"]
    for _ in range(500):
        task = (await client.get(f"/api/htm/tasks/{task_id}", headers=admin_headers)).json()["task"]
        if task["status"] == "completed":
            break
        await asyncio.sleep(0.01)
    assert task["status"] == "completed" and task["result"] == {"n": 7}
    assert services.htm.pool is not None and services.htm.pool.finished == 1
