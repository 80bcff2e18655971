"""Who may submit what to the task manager: task types, origins and priorities (issue 13, failure 5).

Over HTTP and straight into the task manager, so an edge that forgot to check would not matter; on
both databases.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from grace import errors
from grace.htm import HTM
from grace.htm.tables import htm_tasks
from grace.vault.tables import vault_keys
from tests.vaultkit import Cast


def task_manager(cast: Cast) -> HTM:
    assert cast.services.htm is not None
    return cast.services.htm


async def submit(http: httpx.AsyncClient, headers: dict[str, str], task_type: str, **body: object) -> httpx.Response:
    return await http.post("/api/htm/tasks", json={"task_type": task_type, **body}, headers=headers)


async def count(cast: Cast, table: str, task_type: str | None = None) -> int:
    async with cast.services.db.read() as conn:
        if table == "vault_keys":
            query = select(func.count()).select_from(vault_keys)
        else:
            query = select(func.count()).select_from(htm_tasks).where(htm_tasks.c.task_type == task_type)
        return int((await conn.execute(query)).scalar_one())


async def test_a_member_cannot_run_the_key_rotation(http: httpx.AsyncClient, cast: Cast) -> None:
    keys_before = await count(cast, "vault_keys")
    for who in ("owner", "agent", "operator"):
        for _ in range(3):
            refused = await submit(http, cast.headers(who), "vault.rotate_keys")
            assert refused.status_code == 403, refused.text
            assert "vault.rotate_keys" in refused.json()["error"]["message"]
    _, token = await cast.services.accounts.create_token(cast.admin.user_id, agent="ops_agent")
    by_admins_agent = await submit(http, {"Authorization": f"Bearer {token}"}, "vault.rotate_keys")
    assert by_admins_agent.status_code == 403
    assert await count(cast, "htm_tasks", "vault.rotate_keys") == 0
    pool = task_manager(cast).new_pool(concurrency=2, claim_batch=8)
    await pool.claim_once()
    await pool.wait_idle()
    assert await count(cast, "vault_keys") == keys_before

    htm = task_manager(cast)
    with pytest.raises(errors.PermissionDenied):
        await htm.submit(htm.request("vault.rotate_keys"), creator=cast.owner)
    by_admin = await submit(http, cast.headers("admin2"), "vault.rotate_keys")
    assert by_admin.status_code == 201, by_admin.text  # declared for admins, who are people


async def test_nobody_submits_a_rescue_for_someone_elses_task(http: httpx.AsyncClient, cast: Cast) -> None:
    bobs = await submit(http, cast.headers("other"), "htm.noop")
    assert bobs.status_code == 201
    rescue = {"payload": {"task_id": bobs.json()["task_id"], "task_type": "htm.noop"}, "origin": "remediation"}
    for who in ("owner", "agent", "operator", "admin2"):
        refused = await submit(http, cast.headers(who), "htm.sla.rescue", **rescue)
        assert refused.status_code == 403, refused.text
        assert "Grace itself" in refused.json()["error"]["message"]
    assert await count(cast, "htm_tasks", "htm.sla.rescue") == 0
    htm = task_manager(cast)
    with pytest.raises(errors.PermissionDenied):
        await htm.submit(htm.request("htm.sla.rescue", payload=rescue["payload"]), creator=cast.admin)
    # An undeclared type in a capability's own namespace is Grace's own too.
    assert (await submit(http, cast.headers("admin2"), "vault.future_thing")).status_code == 403
    assert (await submit(http, cast.headers("owner"), "mine.backup")).status_code == 201


MEMBER_SUBMISSIONS: list[tuple[dict[str, object], bool]] = [
    ({"origin": "hunter_alert"}, False),
    ({"origin": "remediation"}, False),
    ({"origin": "scheduler"}, False),
    ({"origin": "internal"}, False),
    ({"payload": {"from_hunter_alert": True}}, False),
    ({"payload": {"from_scheduler": True}}, False),
    ({"priority": "critical"}, False),
    ({"origin": "intent", "priority": "high"}, True),
    ({"origin": "external_api"}, True),
    ({"payload": {"from_webhook": True}}, True),
    ({}, True),
]


async def test_a_member_claims_only_a_persons_origins_at_most_high(http: httpx.AsyncClient, cast: Cast) -> None:
    for body, allowed in MEMBER_SUBMISSIONS:
        for who in ("owner", "agent"):
            r = await submit(http, cast.headers(who), "htm.noop", **body)
            assert r.status_code == (201 if allowed else 403), (who, body, r.text)
            if not allowed:
                details = r.json()["error"]["details"]
                assert details.get("allowed_origins") == ["user_request", "intent", "external_api"] or (
                    details.get("max_priority") == "high"
                )


async def test_operators_and_admins_claim_every_origin_but_internal(http: httpx.AsyncClient, cast: Cast) -> None:
    for who in ("operator", "admin2"):
        for origin in ("hunter_alert", "remediation", "scheduler", "filesystem"):
            r = await submit(http, cast.headers(who), "htm.noop", origin=origin, priority="critical")
            assert r.status_code == 201, (who, r.text)
        assert (await submit(http, cast.headers(who), "htm.noop", origin="internal")).status_code == 403


async def test_a_members_agent_named_for_a_system_component_gets_no_system_origin(
    http: httpx.AsyncClient, cast: Cast
) -> None:
    _, token = await cast.services.accounts.create_token(cast.owner.user_id, agent="scheduler")
    r = await submit(http, {"Authorization": f"Bearer {token}"}, "htm.noop")
    assert r.status_code == 403 and "scheduler" in r.json()["error"]["message"]


async def test_a_token_narrowed_to_origins_and_a_priority_is_held_to_them(http: httpx.AsyncClient, cast: Cast) -> None:
    made = await http.post(
        "/api/tokens",
        json={"name": "intents only", "origins": ["intent"], "max_priority": "normal"},
        headers=cast.headers("admin2"),
    )
    assert made.status_code == 201, made.text
    assert made.json()["info"]["origins"] == ["intent"] and made.json()["info"]["max_priority"] == "normal"
    narrow = {"Authorization": f"Bearer {made.json()['token']}"}
    assert (await submit(http, narrow, "htm.noop", origin="intent")).status_code == 201
    assert (await submit(http, narrow, "htm.noop", origin="intent", priority="high")).status_code == 403
    assert (await submit(http, narrow, "htm.noop")).status_code == 403  # user_request
    assert (await submit(http, narrow, "htm.noop", origin="hunter_alert")).status_code == 403

    # What it issues is held to the same, or narrower.
    wider = await http.post("/api/tokens", json={"origins": ["intent", "hunter_alert"]}, headers=narrow)
    assert wider.status_code == 403, wider.text
    louder = await http.post("/api/tokens", json={"max_priority": "critical"}, headers=narrow)
    assert louder.status_code == 403, louder.text
    inherited = await http.post("/api/tokens", json={"name": "child"}, headers=narrow)
    assert inherited.json()["info"]["origins"] == ["intent"] and inherited.json()["info"]["max_priority"] == "normal"

    # A member's token cannot be given a system origin, whoever issues it.
    for issuer in ("owner", "admin2"):
        r = await http.post(
            "/api/tokens",
            json={"user_id": cast.owner.user_id, "origins": ["hunter_alert"]},
            headers=cast.headers(issuer),
        )
        assert r.status_code == 403, r.text
