"""The HTTP edge as a client sees it: principals, roles, sessions and the one error shape."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import grace
from grace.api import create_app
from grace.api.routes.health import health as health_route
from grace.auth import BootstrapCredentials
from grace.config import Settings
from grace.logs import JsonFormatter
from grace.services import Services


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def test_health_needs_no_principal_and_ready_checks_the_database(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["status"] == "ok"
    ready = (await client.get("/ready")).json()
    assert ready["status"] == "ready" and ready["schema"]


async def test_liveness_answered_at_the_edge_is_what_the_documented_route_answers(client: httpx.AsyncClient) -> None:
    # /health is answered before the framework (grace.api.middleware); the route describes it in the
    # API and must answer the same.
    answered = await client.get("/health?probe=1")
    assert answered.status_code == 200 and answered.headers["content-type"] == "application/json"
    assert answered.json() == await health_route() == {"status": "ok", "version": grace.__version__}
    assert len(answered.headers["x-request-id"]) == 16
    described = (await client.get("/openapi.json")).json()["paths"]["/health"]["get"]["responses"]["200"]
    assert described["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
    assert_error(await client.post("/health"), 405, "method_not_allowed")  # other methods reach the router


async def test_a_request_while_grace_is_not_running_gets_503_with_its_own_code(settings: Settings) -> None:
    # Before the lifespan has built the services, and once it has closed them, a client is told to try
    # again (service_not_running), not handed an internal error or mistaken for a database outage.
    app = create_app(settings, background=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://grace.test") as http:
        before = await http.get("/ready")
        async with app.router.lifespan_context(app):
            running = await http.get("/ready")
        after = await http.get("/api/htm/tasks")
        alive = await http.get("/health")
    assert_error(before, 503, "service_not_running")
    assert running.status_code == 200 and running.json()["status"] == "ready"
    assert_error(after, 503, "service_not_running")
    assert alive.json()["status"] == "ok"  # liveness needs no services


@pytest.mark.parametrize("path", ["/api/auth/me", "/api/users", "/api/tokens"])
async def test_requests_without_a_principal_get_401(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_wrong_scheme_and_unknown_token_get_401(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/auth/me", headers={"Authorization": "Basic abc"}), 401, "unauthenticated")
    assert_error(
        await client.get("/api/auth/me", headers={"Authorization": "Bearer grc_not-a-real-token"}),
        401,
        "unauthenticated",
    )


async def test_members_get_403_on_admin_routes(
    client: httpx.AsyncClient, services: Services, admin_headers: dict[str, str]
) -> None:
    made = await client.post("/api/users", json={"username": "mia", "role": "member"}, headers=admin_headers)
    assert made.status_code == 201 and "password" in made.json()
    member = await services.accounts.get_user("mia")
    _, token = await services.accounts.create_token(member.id, agent="code_agent")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/auth/me", headers=headers)).json()["agent"] == "code_agent"
    assert_error(await client.get("/api/users", headers=headers), 403, "forbidden")
    # A user_id in the body must be the caller's own unless the caller is an admin.
    admin_id = (await services.accounts.get_user("admin")).id
    assert_error(await client.post("/api/tokens", json={"user_id": admin_id}, headers=headers), 403, "forbidden")


async def test_password_sign_in_sets_a_strict_cookie_and_requires_csrf(
    client: httpx.AsyncClient, admin: BootstrapCredentials
) -> None:
    response = await client.post("/api/auth/login", json={"username": admin.username, "password": admin.password})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    csrf = response.json()["csrf_token"]
    assert (await client.get("/api/auth/me")).json()["via"] == "session"
    assert_error(await client.post("/api/auth/logout"), 403, "forbidden")
    assert (await client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})).json() == {"signed_out": True}
    assert_error(await client.get("/api/auth/me"), 401, "unauthenticated")


async def test_form_sign_in_works_and_bad_credentials_are_limited(
    client: httpx.AsyncClient, admin: BootstrapCredentials, services: Services
) -> None:
    ok = await client.post("/api/auth/login", data={"username": admin.username, "password": admin.password})
    assert ok.status_code == 200
    for _ in range(services.settings.login_max_failures):
        assert_error(
            await client.post("/api/auth/login", json={"username": "admin", "password": "not the password"}),
            401,
            "unauthenticated",
        )
    limited = await client.post("/api/auth/login", json={"username": "admin", "password": admin.password})
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) > 0


async def test_tokens_over_the_api(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    made = await client.post("/api/tokens", json={"name": "ci", "agent": "code_agent"}, headers=admin_headers)
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["info"]["id"]
    listed = (await client.get("/api/tokens", headers=admin_headers)).json()["tokens"]
    assert token_id in [t["id"] for t in listed] and token not in json.dumps(listed)
    assert (await client.post(f"/api/tokens/{token_id}/revoke", headers=admin_headers)).status_code == 200
    assert_error(await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}), 401, "unauthenticated")
    assert_error(await client.post("/api/tokens/tok_nope/revoke", headers=admin_headers), 404, "not_found")


async def test_malformed_json_gets_422_and_logs_only_id_and_reason(
    client: httpx.AsyncClient, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    leaked = "hunter2-do-not-log-me"
    caplog.set_level(logging.INFO)
    response = await client.post(
        "/api/users",
        content=f'{{"username": "{leaked}", '.encode(),
        headers={**admin_headers, "content-type": "application/json"},
    )
    assert_error(response, 422, "malformed_json")
    rid = response.headers["x-request-id"]
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert all(leaked not in line and admin_headers["Authorization"][7:] not in line for line in lines)
    served = [json.loads(line) for line in lines if '"http.' in line]
    assert {entry["event"] for entry in served} >= {"http.error", "http.request"}
    assert all(entry["request_id"] == rid for entry in served)
    error_entry = next(e for e in served if e["event"] == "http.error")
    assert error_entry["reason"] == "the body is not valid JSON"


async def test_wrong_types_get_422_naming_the_field(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.post("/api/users", json={"username": 42, "role": "wizard"}, headers=admin_headers)
    error = assert_error(response, 422, "invalid_input")
    locations = {tuple(d["loc"]) for d in error["details"]}
    assert ("body", "username") in locations and ("body", "role") in locations


async def test_oversized_bodies_get_413(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    limit = services.settings.max_request_bytes
    too_big = b"x" * (limit + 1)
    assert_error(await client.post("/api/users", content=too_big, headers=admin_headers), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536

    streamed = await client.post("/api/users", content=chunks(), headers=admin_headers)
    assert_error(streamed, 413, "payload_too_large")
    assert [u["username"] for u in (await client.get("/api/users", headers=admin_headers)).json()["users"]] == ["admin"]


async def test_unknown_routes_and_methods(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    assert_error(await client.get("/api/nothing-here", headers=admin_headers), 404, "not_found")
    assert_error(await client.delete("/health"), 405, "method_not_allowed")


async def test_request_ids_are_echoed_or_made(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health", headers={"X-Request-ID": "trace-12345678"})).headers[
        "x-request-id"
    ] == "trace-12345678"
    made = (await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})).headers["x-request-id"]
    assert made != "bad id with spaces" and len(made) == 16


async def test_form_posts_with_the_cookie_need_the_csrf_field(
    client: httpx.AsyncClient, admin: BootstrapCredentials
) -> None:
    signed_in = await client.post("/api/auth/login", data={"username": admin.username, "password": admin.password})
    csrf = signed_in.json()["csrf_token"]
    assert_error(await client.post("/api/auth/logout", data={"csrf_token": "forged"}), 403, "forbidden")
    assert (await client.get("/api/auth/me")).status_code == 200
    assert (await client.post("/api/auth/logout", data={"csrf_token": csrf})).status_code == 200
    assert_error(await client.get("/api/auth/me"), 401, "unauthenticated")
