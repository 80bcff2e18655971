"""Input at the edge as a fuzzer sends it: integers past 64 bits, NUL characters, deep JSON, JSON without
Content-Type, and users named by username. Each gets a 4xx saying why, on both databases; never a 5xx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from grace.services import Services
from tests.acceptance.test_api_platform import assert_error

INT64_MAX = 2**63 - 1


async def member(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services, name: str
) -> dict[str, str]:
    made = await client.post(
        "/api/users", json={"username": name, "password": f"{name}'s long password"}, headers=admin_headers
    )
    assert made.status_code == 201, made.text
    user = await services.accounts.get_user(name)
    _, token = await services.accounts.create_token(user.id, name="laptop")
    return {"Authorization": f"Bearer {token}"}


def where(response: httpx.Response) -> list[list[str]]:
    return [d["loc"] for d in response.json()["error"]["details"]]


# -- integers past what storage holds -------------------------------------------------------------


async def test_an_audit_cursor_past_64_bits_is_a_422_naming_it(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Before: 500 on both databases (the driver could not bind the number).
    too_big = await client.get("/api/secrets/audit", params={"before": str(2**63)}, headers=admin_headers)
    assert_error(too_big, 422, "invalid_input")
    assert ["query", "before"] in where(too_big)
    largest = await client.get("/api/secrets/audit", params={"before": str(INT64_MAX)}, headers=admin_headers)
    assert largest.status_code == 200, largest.text


async def test_a_task_data_size_past_64_bits_is_a_422_and_the_largest_is_stored(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    too_big = await client.post(
        "/api/htm/tasks", json={"task_type": "htm.noop", "data_size_bytes": 2**63}, headers=admin_headers
    )
    assert_error(too_big, 422, "invalid_input")
    assert ["body", "data_size_bytes"] in where(too_big)
    largest = await client.post(
        "/api/htm/tasks", json={"task_type": "htm.noop", "data_size_bytes": INT64_MAX}, headers=admin_headers
    )
    assert largest.status_code == 201, largest.text
    task = await client.get(f"/api/htm/tasks/{largest.json()['task_id']}", headers=admin_headers)
    assert task.json()["task"]["data_size_bytes"] == INT64_MAX


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", str(2**64), str(-(2**63) - 1)])
async def test_numbers_no_column_holds_are_refused_anywhere_in_a_body(
    client: httpx.AsyncClient, admin_headers: dict[str, str], number: str
) -> None:
    body = f'{{"task_type": "htm.noop", "payload": {{"deep": {{"n": {number}}}}}}}'
    response = await client.post(
        "/api/htm/tasks", content=body, headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_input")


# -- NUL characters -----------------------------------------------------------------------------------


async def test_a_nul_in_a_body_query_or_path_is_a_422_on_both_databases(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Before, on PostgreSQL: 500 in 20 of 28 fields, including the unauthenticated sign-in.
    sign_in = await client.post("/api/auth/login", json={"username": "ad\x00min", "password": "whatever it is"})
    assert_error(sign_in, 422, "invalid_input")
    assert ["body", "username"] in where(sign_in)
    in_payload = await client.post(
        "/api/htm/tasks", json={"task_type": "htm.noop", "payload": {"files": ["a\x00.pdf"]}}, headers=admin_headers
    )
    assert ["body", "payload", "files", "0"] in where(in_payload)
    query = await client.get("/api/htm/tasks", params={"origin": "intent\x00"}, headers=admin_headers)
    assert_error(query, 422, "invalid_input")
    path = await client.get("/api/secrets/gh%00token", headers=admin_headers)
    assert_error(path, 422, "invalid_input")
    form = await client.post("/api/auth/login", data={"username": "admin\x00", "password": "whatever it is"})
    assert_error(form, 422, "invalid_input")


async def test_a_secret_description_with_a_nul_is_a_422_not_an_audit_outage(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Before, on PostgreSQL: the audit entry could not be written, and the answer was 503 audit_unavailable.
    stored = await client.post(
        "/api/secrets/store",
        json={
            "secret_key": "gh_token",
            "secret_value": "ghp_0123456789abcdef",
            "service": "github",
            "description": "a\x00b",
        },
        headers=admin_headers,
    )
    assert_error(stored, 422, "invalid_input")
    assert ["body", "description"] in where(stored)
    listed = (await client.get("/api/secrets", headers=admin_headers)).json()["secrets"]
    assert "gh_token" not in [s["secret_key"] for s in listed]


# -- nesting, content types -------------------------------------------------------------------------


async def test_deep_json_is_a_400_and_300000_brackets_do_not_break_sign_in(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # Before: 500 (the parser's recursion ran out).
    brackets = await client.post(
        "/api/auth/login", content=b"[" * 300_000, headers={"Content-Type": "application/json"}
    )
    assert_error(brackets, 400, "nesting_too_deep")
    deep: Any = "bottom"
    for _ in range(70):
        deep = {"d": deep}
    too_deep = await client.post(
        "/api/htm/tasks", json={"task_type": "htm.noop", "payload": deep}, headers=admin_headers
    )
    assert_error(too_deep, 400, "nesting_too_deep")
    nested: Any = "bottom"
    for _ in range(20):
        nested = {"d": nested}
    fine = await client.post("/api/htm/tasks", json={"task_type": "htm.noop", "payload": nested}, headers=admin_headers)
    assert fine.status_code == 201, fine.text


async def test_json_without_a_content_type_is_read_as_json_as_curl_sends_it(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    # The seed's curl lines send -d '{...}' without -H 'Content-Type: application/json'.
    # Before: a 422 that did not say why.
    assert services.bootstrap is not None
    creds = json.dumps({"username": "admin", "password": services.bootstrap.password}).encode()
    signed_in = await client.post("/api/auth/login", content=creds)
    assert signed_in.status_code == 200, signed_in.text
    body = json.dumps({"secret_key": "gh_token", "secret_value": "ghp_0123456789abcdef", "service": "github"})
    stored = await client.post("/api/secrets/store", content=body.encode(), headers=admin_headers)
    assert stored.status_code == 201, stored.text
    # What curl -d actually sends without -H: the form type, over JSON.
    as_curl = {**admin_headers, "Content-Type": "application/x-www-form-urlencoded"}
    body = json.dumps({"secret_key": "npm_token", "secret_value": "npm_0123456789abcdef", "service": "npm"})
    stored = await client.post("/api/secrets/store", content=body.encode(), headers=as_curl)
    assert stored.status_code == 201, stored.text
    listed = await client.get("/api/secrets", headers=admin_headers)
    assert {"gh_token", "npm_token"} <= {s["secret_key"] for s in listed.json()["secrets"]}


async def test_a_content_type_grace_does_not_read_is_a_415_naming_the_header(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/api/htm/tasks", content=b'{"task_type": "htm.noop"}', headers={**admin_headers, "Content-Type": "text/plain"}
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in error["message"] and error["details"] == {"content_type": "text/plain"}


# -- users named by username --------------------------------------------------------------------------


async def test_a_user_id_may_be_a_username_and_an_unknown_one_is_a_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    alice = await member(client, admin_headers, services, "alice")
    await member(client, admin_headers, services, "bob")
    alice_id = (await services.accounts.get_user("alice")).id
    secret = {"secret_key": "gh_token", "secret_value": "ghp_0123456789abcdef", "service": "github"}
    # An admin stores one for alice, naming her by username.
    stored = await client.post("/api/secrets/store", json={**secret, "user_id": "alice"}, headers=admin_headers)
    assert stored.status_code == 201, stored.text
    # Before: a username in user_id silently listed nothing.
    by_name = await client.get("/api/secrets", params={"user_id": "alice"}, headers=admin_headers)
    by_id = await client.get("/api/secrets", params={"user_id": alice_id}, headers=admin_headers)
    assert (
        [s["secret_key"] for s in by_name.json()["secrets"]]
        == ["gh_token"]
        == [s["secret_key"] for s in by_id.json()["secrets"]]
    )
    mine = await client.get("/api/secrets", params={"user_id": "alice"}, headers=alice)
    assert [s["secret_key"] for s in mine.json()["secrets"]] == ["gh_token"]
    audit = await client.get("/api/secrets/audit", params={"user_id": "alice"}, headers=admin_headers)
    assert audit.status_code == 200 and audit.json()["entries"]
    everyone = await client.get("/api/secrets/audit", params={"user_id": "*"}, headers=admin_headers)
    assert everyone.status_code == 200 and everyone.json()["entries"]

    unknown = await client.get("/api/secrets", params={"user_id": "ghost"}, headers=admin_headers)
    assert "ghost" in assert_error(unknown, 404, "not_found")["message"]
    assert_error(await client.get("/api/secrets", params={"user_id": "*"}, headers=admin_headers), 404, "not_found")
    # A member naming anyone else is refused before any lookup: existing or not, the same 403.
    assert_error(await client.get("/api/secrets", params={"user_id": "bob"}, headers=alice), 403, "forbidden")
    assert_error(await client.get("/api/secrets", params={"user_id": "ghost"}, headers=alice), 403, "forbidden")
    issued = await client.post("/api/tokens", json={"name": "ci", "user_id": "bob"}, headers=admin_headers)
    assert (
        issued.status_code == 201 and issued.json()["info"]["user_id"] == (await services.accounts.get_user("bob")).id
    )
