"""The published contract, read from the app's own route table and ``/openapi.json``.

A route added later without an answer model, without its 401/403 when it needs a principal, or with
an error in another shape fails here, whoever adds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from grace.api import create_app
from grace.api.policy import Policy, Public, api_routes, policy_of
from grace.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
APP = create_app(load_settings(data_dir=ROOT / ".unused", database_url="sqlite:///:memory:"))
SCHEMA: dict[str, Any] = APP.openapi()
ERROR_REF = "#/components/schemas/ErrorBody"
SSE = "text/event-stream"


def _operations() -> dict[str, tuple[APIRoute, dict[str, Any]]]:
    found: dict[str, tuple[APIRoute, dict[str, Any]]] = {}
    for route in api_routes(APP):
        if not route.include_in_schema:
            continue  # the web UI's pages (grace.web): HTML, not part of the API's contract
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            found[f"{method} {route.path}"] = (route, SCHEMA["paths"][route.path][method.lower()])
    return found


OPERATIONS = _operations()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = SCHEMA["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def _refs(schema: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        return {schema["$ref"]}
    return {s["$ref"] for s in schema.get("anyOf", []) if "$ref" in s}


def test_the_table_and_the_schema_agree() -> None:
    in_schema = {f"{m.upper()} {p}" for p, item in SCHEMA["paths"].items() for m in item}
    assert in_schema == set(OPERATIONS)
    assert len(OPERATIONS) >= 35


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_success_is_a_typed_object(name: str) -> None:
    route, operation = OPERATIONS[name]
    successes = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
    assert successes, f"{name} declares no success"
    for status, response in successes.items():
        content = response.get("content", {})
        if SSE in content:
            assert set(content) == {SSE}, f"{name} {status}: an event stream is declared as {sorted(content)}"
            continue
        if content and all(m.startswith("audio/") for m in content):
            continue  # a recording's bytes (a voice note's audio), declared as audio
        if name == "GET /metrics":
            assert set(content) == {"text/plain; version=0.0.4; charset=utf-8"}, f"{name}: Prometheus' text format"
            continue
        assert route.response_model is not None, f"{name}: give it response_model= (a model in grace.api.schemas)"
        schema = _resolve(content["application/json"]["schema"])
        assert schema.get("type") == "object" and schema.get("properties"), f"{name} {status} is an untyped object"
        assert schema.get("additionalProperties") is False, f"{name} {status}: its model must forbid extra fields"


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_error_is_declared_in_the_one_shape(name: str) -> None:
    route, operation = OPERATIONS[name]
    responses = operation["responses"]
    declared = policy_of(route)
    if isinstance(declared, Policy):
        assert {"401", "403"} <= set(responses), f"{name} needs a principal but does not declare 401 and 403"
        assert "row_tampered" in responses.get("500", {}).get("description", ""), (
            f"{name} reads a sealed principal but does not declare 500 row_tampered"
        )
    else:
        assert isinstance(declared, Public)
    if operation.get("parameters") or "requestBody" in operation:
        assert "422" in responses, f"{name} takes input but does not declare 422"
    if "requestBody" in operation:
        assert {"400", "413"} <= set(responses), f"{name} takes a body but does not declare 400 and 413"
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            schema = response["content"]["application/json"]["schema"]
            assert ERROR_REF in _refs(schema), f"{name} {status} is not the one error shape"


def test_the_error_shape_is_published() -> None:
    models = SCHEMA["components"]["schemas"]
    assert "HTTPValidationError" not in models
    error = models["ErrorBody"]
    assert error["required"] == ["error"]
    detail = _resolve(error["properties"]["error"])
    assert set(detail["required"]) == {"code", "message", "details"}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_every_operation_says_who_may_call_it(name: str) -> None:
    route, operation = OPERATIONS[name]
    declared = policy_of(route)
    assert declared is not None
    assert operation["x-policy"] == declared.name
    if isinstance(declared, Public):
        assert "security" not in operation
        return
    method = name.split(" ", 1)[0]
    session: dict[str, list[str]] = {"session": [], "csrf": []} if method != "GET" else {"session": []}
    assert operation["security"] == [{"bearer": []}, session]


def test_the_security_schemes_give_docs_an_authorize_button() -> None:
    schemes = SCHEMA["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]}
    assert (schemes["session"]["in"], schemes["session"]["name"]) == ("cookie", "grace_session")
    assert (schemes["csrf"]["in"], schemes["csrf"]["name"]) == ("header", "X-CSRF-Token")


def test_the_sign_in_body_is_in_the_schema() -> None:
    body = OPERATIONS["POST /api/auth/login"][1]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    credentials = _resolve(body["content"]["application/json"]["schema"])
    assert set(credentials["required"]) == {"username", "password"}
    responses = OPERATIONS["POST /api/auth/login"][1]["responses"]
    assert {"200", "401", "422", "429"} <= set(responses)


def test_the_consent_stream_is_declared_as_server_sent_events() -> None:
    ok = OPERATIONS["GET /api/secrets/consent/stream"][1]["responses"]["200"]
    assert set(ok["content"]) == {SSE}


async def test_what_the_api_serves_is_the_schema_tested_here(client: httpx.AsyncClient) -> None:
    served = await client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == SCHEMA
