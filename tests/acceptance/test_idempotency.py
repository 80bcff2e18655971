"""Idempotency-Key on creating POSTs: a retry gets the first answer and changes nothing; a reused key is a 409."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select

from grace import errors, storage
from grace.api import create_app
from grace.clock import ManualClock
from grace.config import Settings
from grace.htm.tables import htm_tasks
from grace.idempotency import IdempotencyKeys, fingerprint
from grace.intents.tables import intent_records
from grace.services import Services

TASK = {"task_type": "htm.noop", "payload": {"n": 1}}


async def count_tasks(services: Services) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(htm_tasks))).scalar_one())


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def test_a_retried_submission_with_the_same_key_makes_one_task(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    first = await client.post("/api/htm/tasks", json=TASK, headers=keyed(admin_headers, "submit-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/api/htm/tasks", json=TASK, headers=keyed(admin_headers, "submit-1"))
    assert again.status_code == 201
    assert again.content == first.content  # the first answer, byte for byte: the same task_id and decision
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert await count_tasks(services) == 1
    # Without a key, each POST is a new task, as before.
    assert (await client.post("/api/htm/tasks", json=TASK, headers=admin_headers)).status_code == 201
    assert await count_tasks(services) == 2


async def test_the_same_key_with_another_body_or_route_is_a_conflict(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    assert (await client.post("/api/htm/tasks", json=TASK, headers=keyed(admin_headers, "k"))).status_code == 201
    other = await client.post("/api/htm/tasks", json={**TASK, "priority": "high"}, headers=keyed(admin_headers, "k"))
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and "Idempotency-Key" in error["message"]
    batch = await client.post("/api/htm/tasks/batch", json={"tasks": [TASK]}, headers=keyed(admin_headers, "k"))
    assert batch.status_code == 409 and batch.json()["error"]["code"] == "idempotency_key_reused"
    assert await count_tasks(services) == 1


async def test_keys_are_per_principal(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    user, _ = await services.accounts.create_user("keyholder", "member")
    _, own = await services.accounts.create_token(user.id)
    _, agent = await services.accounts.create_token(user.id, agent="helper")
    answers = []
    for headers in (admin_headers, {"Authorization": f"Bearer {own}"}, {"Authorization": f"Bearer {agent}"}):
        r = await client.post("/api/htm/tasks", json=TASK, headers=keyed(headers, "shared-key"))
        assert r.status_code == 201, r.text
        answers.append(r.json()["task_id"])
    assert len(set(answers)) == 3 and await count_tasks(services) == 3


async def test_concurrent_requests_with_one_key_make_one_task(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    sent = [client.post("/api/htm/tasks", json=TASK, headers=keyed(admin_headers, "race")) for _ in range(5)]
    answers = await asyncio.gather(*sent)
    ok = [r for r in answers if r.status_code == 201]
    assert ok and {r.json()["task_id"] for r in ok} == {ok[0].json()["task_id"]}
    assert all(r.status_code in (201, 409) for r in answers)
    assert all(r.json()["error"]["code"] == "idempotency_key_in_use" for r in answers if r.status_code == 409)
    assert await count_tasks(services) == 1


async def test_a_batch_retried_with_its_key_is_enqueued_once(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    body = {"tasks": [{"task_type": "htm.noop", "payload": {"i": i}} for i in range(100)]}
    first = await client.post("/api/htm/tasks/batch", json=body, headers=keyed(admin_headers, "batch-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/api/htm/tasks/batch", json=body, headers=keyed(admin_headers, "batch-1"))
    assert again.status_code == 201 and again.content == first.content
    assert await count_tasks(services) == 100


async def test_a_secret_stored_twice_with_one_key_has_one_version(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    body = {"secret_key": "idem_key", "secret_value": "v-123456", "service": "github"}
    first = await client.post("/api/secrets/store", json=body, headers=keyed(admin_headers, "store-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/api/secrets/store", json=body, headers=keyed(admin_headers, "store-1"))
    assert again.status_code == 201 and again.content == first.content
    detail = await client.get("/api/secrets/idem_key", headers=admin_headers)
    assert detail.status_code == 200, detail.text
    assert len(detail.json()["versions"]) == 1
    # Another value under the same key is another request: refused, not stored.
    other = await client.post(
        "/api/secrets/store", json={**body, "secret_value": "v-654321"}, headers=keyed(admin_headers, "store-1")
    )
    assert other.status_code == 409 and "v-654321" not in other.text


async def test_a_voice_note_started_twice_with_one_key_is_one_note(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    first = await client.post("/api/voice-notes/start", json={"title": "standup"}, headers=keyed(admin_headers, "v-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/api/voice-notes/start", json={"title": "standup"}, headers=keyed(admin_headers, "v-1"))
    assert again.status_code == 201 and again.json() == first.json()
    notes = (await client.get("/api/voice-notes", headers=admin_headers)).json()
    assert notes["total"] == 1


async def count_intents(services: Services) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(intent_records))).scalar_one())


async def test_an_intent_submitted_twice_with_one_key_is_one_intent_and_one_task(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    body = {"goal": "Say it back", "handler": "echo", "context": {"folder": "/uploads"}}
    first = await client.post("/api/intents", json=body, headers=keyed(admin_headers, "intent-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/api/intents", json=body, headers=keyed(admin_headers, "intent-1"))
    assert again.status_code == 201 and again.content == first.content  # the same intent_id and task
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert first.json()["intent"]["htm_task_id"]
    assert await count_intents(services) == 1 and await count_tasks(services) == 1
    # Another body under the same key is another request: refused, nothing made.
    other = await client.post(
        "/api/intents", json={**body, "goal": "Say something else"}, headers=keyed(admin_headers, "intent-1")
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    # A refused intent (an unknown handler) releases its key: the corrected request runs.
    bad = await client.post("/api/intents", json={**body, "handler": "nope"}, headers=keyed(admin_headers, "i-2"))
    assert bad.status_code == 422 and "handler" in bad.text
    fixed = await client.post("/api/intents", json=body, headers=keyed(admin_headers, "i-2"))
    assert fixed.status_code == 201, fixed.text
    assert await count_intents(services) == 2 and await count_tasks(services) == 2


async def test_concurrent_intents_with_one_key_make_one_intent(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    body = {"goal": "Say it back", "handler": "echo"}
    sent = [client.post("/api/intents", json=body, headers=keyed(admin_headers, "intent-race")) for _ in range(5)]
    answers = await asyncio.gather(*sent)
    ok = [r for r in answers if r.status_code == 201]
    assert ok and {r.json()["intent"]["intent_id"] for r in ok} == {ok[0].json()["intent"]["intent_id"]}
    assert all(r.json()["error"]["code"] == "idempotency_key_in_use" for r in answers if r.status_code == 409)
    assert await count_intents(services) == 1 and await count_tasks(services) == 1


async def test_a_failed_request_releases_its_key(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    """Only successes are kept: a refused request can be corrected and retried under the same key."""
    bad = await client.post(
        "/api/htm/tasks", json={**TASK, "priority": "urgentest"}, headers=keyed(admin_headers, "fix-me")
    )
    assert bad.status_code == 422
    stored = await client.post("/api/secrets/store", json={"secret_key": "x"}, headers=keyed(admin_headers, "s-bad"))
    assert stored.status_code == 422
    fixed = await client.post(
        "/api/secrets/store",
        json={"secret_key": "fixed_key", "secret_value": "v-1", "service": "github"},
        headers=keyed(admin_headers, "s-bad"),
    )
    assert fixed.status_code == 201, fixed.text


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there"])
async def test_a_malformed_key_is_a_422_naming_the_header(
    client: httpx.AsyncClient, admin_headers: dict[str, str], key: str
) -> None:
    r = await client.post("/api/htm/tasks", json=TASK, headers=keyed(admin_headers, key))
    assert r.status_code == 422, r.text
    assert "idempotency-key" in r.text.lower()


async def test_keys_expire_after_a_day_and_are_pruned(db: storage.Database) -> None:
    clock = ManualClock()
    keys = IdempotencyKeys(db, clock)
    fp = fingerprint("POST", "/api/htm/tasks", b"{}")
    assert await keys.begin("usr_1/", "k", fp) is None
    await keys.finish("usr_1/", "k", 201, '{"ok":true}')
    stored = await keys.lookup("usr_1/", "k", fp)
    assert stored is not None and stored.status == 201
    with pytest.raises(errors.IdempotencyKeyReused):
        await keys.lookup("usr_1/", "k", fingerprint("POST", "/api/htm/tasks", b"{ }"))
    clock.advance(24 * 3600)
    assert await keys.lookup("usr_1/", "k", fp) is None  # expired: free again, even before the prune
    assert await keys.prune() == 1
    assert await keys.begin("usr_1/", "k", fp) is None


async def test_the_contract_declares_the_header_and_the_409_on_every_creating_post(
    settings: Settings, services: Services
) -> None:
    schema = create_app(settings, services=services).openapi()
    for path in (
        "/api/htm/tasks",
        "/api/htm/tasks/batch",
        "/api/secrets/store",
        "/api/voice-notes/start",
        "/api/voice-notes/{note_id}/upload",
        "/api/intents",
    ):
        operation = schema["paths"][path]["post"]
        headers = [p for p in operation.get("parameters", []) if p["in"] == "header"]
        assert [p["name"] for p in headers] == ["Idempotency-Key"], path
        assert "idempotency_key_reused" in operation["responses"]["409"]["description"], path
