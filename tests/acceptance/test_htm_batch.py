"""POST /api/htm/tasks/batch: up to 1,000 tasks in one transaction, each with its routing decision, or none."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from grace.htm.tables import htm_tasks
from grace.services import Services


async def count_tasks(services: Services) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(htm_tasks))).scalar_one())


async def test_a_batch_is_enqueued_in_order_with_each_tasks_routing_decision(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    tasks = [{"task_type": "htm.noop", "payload": {"i": i}, "origin": "intent"} for i in range(100)]
    tasks[7] = {"task_type": "htm.echo", "payload": {"from_filesystem_trigger": True}, "priority": "high"}
    r = await client.post("/api/htm/tasks/batch", json={"tasks": tasks}, headers=admin_headers)
    assert r.status_code == 201, r.text
    answers = r.json()["tasks"]
    assert len(answers) == 100 and len({a["task_id"] for a in answers}) == 100
    assert all(set(a["routing"]) >= {"origin", "route", "reasoning"} for a in answers)
    assert answers[0]["routing"]["origin"] == "intent" and answers[7]["routing"]["origin"] == "filesystem"
    assert answers[7]["routing"]["queue_name"] == "high_queue"
    shown = (await client.get(f"/api/htm/tasks/{answers[42]['task_id']}", headers=admin_headers)).json()["task"]
    assert shown["payload"] == {"i": 42} and shown["created_by_name"] == "admin"
    assert await count_tasks(services) == 100


async def test_more_than_a_thousand_tasks_are_refused_naming_the_limit(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    r = await client.post(
        "/api/htm/tasks/batch", json={"tasks": [{"task_type": "htm.noop"}] * 1001}, headers=admin_headers
    )
    assert r.status_code == 422, r.text
    assert "1000" in r.text and "tasks" in r.text
    assert (await client.post("/api/htm/tasks/batch", json={"tasks": []}, headers=admin_headers)).status_code == 422
    assert await count_tasks(services) == 0


async def test_one_bad_task_refuses_the_whole_batch_naming_it(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    tasks: list[dict[str, object]] = [{"task_type": "htm.noop"} for _ in range(10)]
    tasks[5] = {"task_type": "htm.noop", "priority": "urgentest"}
    r = await client.post("/api/htm/tasks/batch", json={"tasks": tasks}, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert "tasks[5]" in r.json()["error"]["message"]
    tasks[5] = {"task_type": "htm.noop", "sla_ms": -1}  # refused by the shape: named by its place too
    r = await client.post("/api/htm/tasks/batch", json={"tasks": tasks}, headers=admin_headers)
    assert r.status_code == 422 and "5" in str(r.json()["error"]["details"])
    bad: object
    for bad in ({"tasks": "htm.noop"}, {"tasks": [1, 2]}, {}, [], {"tasks": [{"task_type": ""}]}):
        r = await client.post("/api/htm/tasks/batch", json=bad, headers=admin_headers)
        assert r.status_code == 422, (bad, r.text)
    assert await count_tasks(services) == 0


async def test_a_task_the_caller_may_not_submit_refuses_the_batch(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    user, _ = await services.accounts.create_user("batcher", "member")
    _, token = await services.accounts.create_token(user.id, agent="fanout")
    agent = {"Authorization": f"Bearer {token}"}
    tasks = [{"task_type": "htm.noop"}, {"task_type": "vault.rotate_keys"}]  # people (admins) only
    r = await client.post("/api/htm/tasks/batch", json={"tasks": tasks}, headers=agent)
    assert r.status_code == 403, r.text
    assert await count_tasks(services) == 0
    ok = await client.post("/api/htm/tasks/batch", json={"tasks": tasks[:1] * 3}, headers=agent)
    assert ok.status_code == 201 and len(ok.json()["tasks"]) == 3


async def test_a_batch_larger_than_the_request_limit_is_a_413(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    tasks = [{"task_type": "htm.noop", "payload": {"blob": "x" * 2000}} for _ in range(1000)]  # ~2 MB
    r = await client.post("/api/htm/tasks/batch", json={"tasks": tasks}, headers=admin_headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
