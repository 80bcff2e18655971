"""The vault over HTTP, as the agent and its owner use it, on both databases."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from grace.auth import BootstrapCredentials
from tests import canary
from tests.vaultkit import Cast

TOKEN = "ghp_" + "Q7w8E9r0T1y2" * 3


async def _store(http: httpx.AsyncClient, cast: Cast, **body: object) -> httpx.Response:
    payload: dict[str, object] = {"secret_key": "github_token", "secret_value": TOKEN, "service": "github"}
    payload.update(body)
    return await http.post("/api/secrets/store", json=payload, headers=cast.headers("owner"))


async def _ask(http: httpx.AsyncClient, cast: Cast, key: str = "github_token", **body: object) -> httpx.Response:
    payload: dict[str, object] = {"requested_action": "git_push", "requested_for": "push code to repository"}
    payload.update(body)
    return await http.post(f"/api/secrets/{key}/access", json=payload, headers=cast.headers("agent"))


async def test_store_ask_approve_poll_release(http: httpx.AsyncClient, cast: Cast) -> None:
    stored = await _store(http, cast, description="CI pushes")
    assert stored.status_code == 201, stored.text
    secret = stored.json()["secret"]
    assert secret["masked_value"] == "****" + TOKEN[-4:] and secret["risk_level"] == "medium"
    assert secret["rotation_days"] == 7 and TOKEN not in stored.text

    asked = await _ask(http, cast, context={"repo": "grace_2"})
    assert asked.status_code == 202 and TOKEN not in asked.text
    consent_id = asked.json()["consent_id"]
    pending = await http.get("/api/secrets/consent/pending", headers=cast.headers("owner"))
    assert [p["consent_id"] for p in pending.json()["pending"]] == [consent_id]
    assert pending.json()["pending"][0]["expires_in_seconds"] == 300

    still = await _ask(http, cast, consent_id=consent_id)
    assert still.status_code == 202

    answered = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": consent_id, "approved": True, "user_id": cast.owner.user_id},
        headers=cast.headers("owner"),
    )
    assert answered.status_code == 200 and answered.json()["consent"]["consent_status"] == "approved"

    released = await _ask(http, cast, consent_id=consent_id)
    assert released.status_code == 200 and released.json()["secret_value"] == TOKEN
    assert released.headers["cache-control"] == "no-store"
    replay = await _ask(http, cast, consent_id=consent_id)
    assert replay.status_code == 403 and "already used" in replay.json()["reason"]

    listed = await http.get("/api/secrets", headers=cast.headers("owner"))
    assert listed.json()["secrets"][0]["usage_count"] == 1 and TOKEN not in listed.text
    history = await http.get("/api/secrets/consent/history", headers=cast.headers("owner"))
    assert history.json()["consents"][0]["consent_status"] == "consumed"
    stats = (await http.get("/api/secrets/consent/stats", headers=cast.headers("owner"))).json()["stats"]
    assert stats["by_status"] == {"consumed": 1} and stats["approval_rate"] == 1.0
    audit = await http.get("/api/secrets/audit", headers=cast.headers("owner"))
    events = [e["event"] for e in audit.json()["entries"]]
    assert events[:4] == ["secret.access_denied", "secret.released", "consent.approved", "consent.requested"]
    assert TOKEN not in audit.text
    detail = await http.get("/api/secrets/github_token", headers=cast.headers("owner"))
    assert detail.json()["versions"][0]["version"] == 1 and TOKEN not in detail.text


async def test_long_poll_returns_the_value_when_the_owner_answers_in_time(http: httpx.AsyncClient, cast: Cast) -> None:
    await _store(http, cast)

    async def owner_answers() -> None:
        for _ in range(200):
            pending = (await http.get("/api/secrets/consent/pending", headers=cast.headers("owner"))).json()["pending"]
            if pending:
                await http.post(
                    "/api/secrets/consent/respond",
                    json={"consent_id": pending[0]["consent_id"], "approved": True},
                    headers=cast.headers("owner"),
                )
                return
            await asyncio.sleep(0.02)

    asked, _ = await asyncio.gather(_ask(http, cast, wait_seconds=10), owner_answers())
    assert asked.status_code == 200 and asked.json()["secret_value"] == TOKEN


async def test_who_may_answer(http: httpx.AsyncClient, cast: Cast) -> None:
    await _store(http, cast)
    consent_id = (await _ask(http, cast)).json()["consent_id"]
    body = {"consent_id": consent_id, "approved": True}
    by_agent = await http.post("/api/secrets/consent/respond", json=body, headers=cast.headers("agent"))
    assert by_agent.status_code == 403 and "agent" in by_agent.json()["error"]["message"]
    by_other = await http.post("/api/secrets/consent/respond", json=body, headers=cast.headers("other"))
    assert by_other.status_code == 403
    as_someone_else = await http.post(
        "/api/secrets/consent/respond", json={**body, "user_id": cast.other.user_id}, headers=cast.headers("owner")
    )
    assert as_someone_else.status_code == 403
    hidden = await http.get(f"/api/secrets/consent/{consent_id}", headers=cast.headers("other"))
    assert hidden.status_code == 404
    denied = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": consent_id, "approved": False, "denial_reason": "not now"},
        headers=cast.headers("owner"),
    )
    assert denied.json()["consent"]["denial_reason"] == "not now"
    refused = await _ask(http, cast, consent_id=consent_id)
    assert refused.status_code == 403 and refused.json()["status"] == "denied" and "secret_value" not in refused.json()


async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(http: httpx.AsyncClient, cast: Cast) -> None:
    await _store(http, cast)
    consent_id = (await _ask(http, cast)).json()["consent_id"]
    before = (await http.get("/api/secrets", headers=cast.headers("owner"))).json()
    audit_before = len((await http.get("/api/secrets/audit", headers=cast.headers("owner"))).json()["entries"])

    unknown_type = await _store(http, cast, secret_type="bitcoin_wallet", secret_value="other-value-123456789")
    assert unknown_type.status_code == 422 and "unknown secret type" in unknown_type.json()["error"]["message"]
    empty = await _store(http, cast, secret_value="")
    assert empty.status_code == 422 and "empty" in empty.json()["error"]["message"]
    oversized = await _store(http, cast, secret_value="x" * (64 * 1024 + 10))
    assert oversized.status_code == 413 and oversized.json()["error"]["code"] == "payload_too_large"
    lowered = await _store(http, cast, secret_type="password", risk_level="low", secret_key="pw")
    assert lowered.status_code == 422
    shapeless = await http.post("/api/secrets/store", json={"secret_value": TOKEN}, headers=cast.headers("owner"))
    assert shapeless.status_code == 422 and TOKEN not in shapeless.text
    unknown_consent = await http.post(
        "/api/secrets/consent/respond", json={"consent_id": "cns_nope", "approved": True}, headers=cast.headers("owner")
    )
    assert unknown_consent.status_code == 404 and unknown_consent.json()["error"]["code"] == "not_found"
    unknown_revoke = await http.post(
        "/api/secrets/consent/revoke", json={"consent_id": "cns_nope"}, headers=cast.headers("owner")
    )
    assert unknown_revoke.status_code == 404
    unknown_secret = await _ask(http, cast, key="no_such_secret")
    assert unknown_secret.status_code == 404
    bad_action = await _ask(http, cast, requested_action="Push Code!")
    assert bad_action.status_code == 422

    first = await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": consent_id, "approved": False},
        headers=cast.headers("owner"),
    )
    assert first.status_code == 200
    twice = await http.post(
        "/api/secrets/consent/respond", json={"consent_id": consent_id, "approved": True}, headers=cast.headers("owner")
    )
    assert twice.status_code == 409 and "already denied" in twice.json()["error"]["message"]

    after = (await http.get("/api/secrets", headers=cast.headers("owner"))).json()
    assert after == before
    entries = (await http.get("/api/secrets/audit", headers=cast.headers("owner"))).json()["entries"]
    # Bad stores left no trace; the attempt on a missing secret, the denial and the refused answer are recorded.
    assert [e["event"] for e in entries[: len(entries) - audit_before]] == [
        "consent.answer_refused",
        "consent.denied",
        "secret.access_denied",
    ]


async def test_an_answer_to_an_answered_request_is_a_409_a_client_can_tell_apart(
    http: httpx.AsyncClient, cast: Cast
) -> None:
    assert (await _store(http, cast)).status_code == 201
    consent_id = (await _ask(http, cast)).json()["consent_id"]
    answer = {"consent_id": consent_id, "approved": True}
    first = await http.post("/api/secrets/consent/respond", json=answer, headers=cast.headers("owner"))
    assert first.status_code == 200
    again = await http.post("/api/secrets/consent/respond", json=answer, headers=cast.headers("owner"))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "consent_already_answered"
    assert "already approved" in again.json()["error"]["message"]
    # Another conflict keeps the generic code, so a client can branch on the one it cares about.
    await http.post("/api/secrets/consent/revoke", json={"consent_id": consent_id}, headers=cast.headers("owner"))
    revoked_twice = await http.post(
        "/api/secrets/consent/revoke", json={"consent_id": consent_id}, headers=cast.headers("owner")
    )
    assert revoked_twice.status_code == 409 and revoked_twice.json()["error"]["code"] == "conflict"


async def test_every_vault_route_needs_a_principal(http: httpx.AsyncClient) -> None:
    for method, path in [
        ("POST", "/api/secrets/store"),
        ("GET", "/api/secrets"),
        ("POST", "/api/secrets/x/access"),
        ("POST", "/api/secrets/x/revoke"),
        ("GET", "/api/secrets/x"),
        ("POST", "/api/secrets/consent/respond"),
        ("POST", "/api/secrets/consent/revoke"),
        ("GET", "/api/secrets/consent/history"),
        ("GET", "/api/secrets/consent/pending"),
        ("GET", "/api/secrets/consent/stats"),
        ("GET", "/api/secrets/consent/stream"),
        ("GET", "/api/secrets/consent/cns_x"),
        ("GET", "/api/secrets/audit"),
        ("GET", "/api/secrets/audit/verify"),
        ("GET", "/api/secrets/keys/status"),
        ("POST", "/api/secrets/keys/rotate"),
        ("GET", "/api/secrets/rotation/due"),
    ]:
        response = await http.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, (method, path, response.status_code)


async def test_revoking_consent_and_secret_over_http(http: httpx.AsyncClient, cast: Cast) -> None:
    await _store(http, cast)
    consent_id = (await _ask(http, cast)).json()["consent_id"]
    await http.post(
        "/api/secrets/consent/respond",
        json={"consent_id": consent_id, "approved": True, "persistent": True},
        headers=cast.headers("owner"),
    )
    assert (await _ask(http, cast, consent_id=consent_id)).status_code == 200
    assert (await _ask(http, cast)).status_code == 200  # the standing consent
    revoked = await http.post(
        "/api/secrets/consent/revoke", json={"consent_id": consent_id}, headers=cast.headers("owner")
    )
    assert revoked.json()["consent"]["consent_status"] == "revoked"
    assert (await _ask(http, cast, consent_id=consent_id)).status_code == 403
    assert (await _ask(http, cast)).status_code == 202
    gone = await http.post(
        "/api/secrets/github_token/revoke", json={"reason": "rotated"}, headers=cast.headers("owner")
    )
    assert gone.json()["secret"]["status"] == "revoked"
    assert (await _ask(http, cast)).status_code == 403
    by_agent = await http.post("/api/secrets/github_token/revoke", json={}, headers=cast.headers("agent"))
    assert by_agent.status_code == 403


OUTCOMES = ("htm.task.completed", "htm.task.failed")


async def test_admin_keys_and_audit_routes(http: httpx.AsyncClient, cast: Cast) -> None:
    await _store(http, cast)
    assert (await http.get("/api/secrets/keys/status", headers=cast.headers("owner"))).status_code == 403
    status = (await http.get("/api/secrets/keys/status", headers=cast.headers("admin2"))).json()["keys"]
    assert status["active_keys"] == 1 and status["master_key_source"] == "file"
    htm = cast.services.htm
    finished = await htm.bus.subscribe("htm.task.#", since=await htm.bus.latest_id()).open()
    started = await http.post("/api/secrets/keys/rotate", headers=cast.headers("admin2"))
    assert started.status_code == 202 and started.json()["queued"] and started.json()["task_id"]
    task_id = started.json()["task_id"]
    await htm.start_workers()  # what `grace serve` does: the task manager runs the rotation
    # Wait for the rotation task's own outcome, however long a busy machine takes (no time budget).
    outcome = None
    while outcome is None:
        event = await finished.get(timeout=60)
        if event is not None and event.payload["task_id"] == task_id and event.topic in OUTCOMES:
            outcome = event.topic
    await finished.close()
    task = await htm.get(task_id, principal=None)
    assert outcome == "htm.task.completed", task
    status = (await http.get("/api/secrets/keys/status", headers=cast.headers("admin2"))).json()["keys"]
    assert not status["rotation_in_progress"], status
    assert [k["status"] for k in status["keys"]] == ["archived", "active"], (status, task)
    report = (await http.get("/api/secrets/audit/verify", headers=cast.headers("admin2"))).json()["report"]
    assert report["ok"] and report["entries"] > 3
    everything = await http.get("/api/secrets/audit", params={"user_id": "*"}, headers=cast.headers("admin2"))
    assert any(e["event"] == "key.rotation_completed" for e in everything.json()["entries"])
    assert (
        await http.get("/api/secrets/audit", params={"user_id": "*"}, headers=cast.headers("owner"))
    ).status_code == 403


async def test_the_stream_shows_the_owners_pending_requests_live(http: httpx.AsyncClient, cast: Cast) -> None:
    await _store(http, cast)
    await http.post(
        "/api/secrets/store",
        json={"secret_key": "other_token", "secret_value": TOKEN, "service": "x"},
        headers=cast.headers("other"),
    )
    first = (await _ask(http, cast)).json()["consent_id"]

    async def stream() -> httpx.Response:
        return await http.get(
            "/api/secrets/consent/stream", params={"limit": 3, "timeout_seconds": 10}, headers=cast.headers("owner")
        )

    async def activity() -> str:
        await asyncio.sleep(0.3)
        # Someone else's request must not show up in the owner's stream.
        await http.post(
            "/api/secrets/other_token/access",
            json={"requested_action": "read_x_write"},
            headers={"Authorization": f"Bearer {cast.tokens['other']}"},
        )
        second = (await _ask(http, cast, requested_action="git_pull")).json()["consent_id"]
        await http.post(
            "/api/secrets/consent/respond",
            json={"consent_id": second, "approved": False},
            headers=cast.headers("owner"),
        )
        return str(second)

    response, second = await asyncio.gather(stream(), activity())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block.startswith("id:")]
    parsed = [
        (block.split("\n")[1].removeprefix("event: "), json.loads(block.split("\n")[2].removeprefix("data: ")))
        for block in events
    ]
    assert [name for name, _ in parsed] == ["consent.request", "consent.request", "consent.response"]
    assert parsed[0][1]["consent_id"] == first and parsed[1][1]["consent_id"] == second
    assert parsed[2][1]["consent_status"] == "denied"
    assert TOKEN not in response.text


async def test_the_canary_is_released_once_through_consent(
    client: httpx.AsyncClient, admin: BootstrapCredentials, admin_headers: dict[str, str]
) -> None:
    # The canary belongs to the bootstrap admin; its agent asks, the admin approves: the one authorised retrieval.
    made = await client.post("/api/tokens", json={"agent": "code_agent"}, headers=admin_headers)
    agent = {"Authorization": f"Bearer {made.json()['token']}"}
    listed = await client.get("/api/secrets", headers=admin_headers)
    assert listed.json()["secrets"][0]["secret_key"] == canary.CANARY_KEY
    asked = await client.post(
        f"/api/secrets/{canary.CANARY_KEY}/access", json={"requested_action": "canary_check"}, headers=agent
    )
    assert asked.status_code == 202
    consent_id = asked.json()["consent_id"]
    await client.post(
        "/api/secrets/consent/respond", json={"consent_id": consent_id, "approved": True}, headers=admin_headers
    )
    released = await client.post(
        f"/api/secrets/{canary.CANARY_KEY}/access", json={"consent_id": consent_id}, headers=agent
    )
    canary.SESSION.authorise(released)
    assert released.status_code == 200 and released.json()["secret_value"] == canary.CANARY_VALUE


@pytest.mark.parametrize("path", ["/api/secrets/store"])
async def test_a_secret_in_a_malformed_body_is_not_echoed(http: httpx.AsyncClient, cast: Cast, path: str) -> None:
    broken = '{"secret_key": "k", "secret_value": "' + TOKEN + '", "service": '
    response = await http.post(
        path, content=broken, headers={**cast.headers("owner"), "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and TOKEN not in response.text
