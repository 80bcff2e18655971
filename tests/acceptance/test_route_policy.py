"""The route-policy matrix: every route declares who may call it, and does what it declares.

Built from the app's own route table: a new route without a policy fails here, and so does one this
file has not yet been told about (decide who may call it, then add it to ``EXPECTED``). Then every
route is called as an admin, an operator, a member, an admin's agent, a member's agent and nobody,
on both databases.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from grace.api import create_app
from grace.api.policy import api_routes, policy_of
from grace.config import load_settings
from tests.vaultkit import Cast

ROOT = Path(__file__).resolve().parents[2]

PEOPLE = frozenset({"admin", "operator", "member"})
EVERYONE = PEOPLE | {"admins_agent", "members_agent"}
PRINCIPALS = sorted(EVERYONE | {"nobody"})

# Who each policy admits. Agents ask (tasks, secrets) and never answer for their human.
ADMITS: dict[str, frozenset[str]] = {
    "public": EVERYONE | {"nobody"},
    "signed_in": EVERYONE,
    "tasks": EVERYONE,
    "ask_secrets": EVERYONE,
    "secrets": PEOPLE,
    "consents": PEOPLE,
    "audit": PEOPLE,
    "tokens": PEOPLE,
    "voice": PEOPLE,
    "audit_admin": frozenset({"admin"}),
    "keys": frozenset({"admin"}),
    "users": frozenset({"admin"}),
    "metrics": frozenset({"admin"}),  # or the scrape token (tests/acceptance/test_htm_metrics.py)
    "playbooks": frozenset({"admin", "operator"}),
    "playbooks_run": frozenset({"admin", "operator"}),
}

EXPECTED: dict[str, str] = {
    "GET /health": "public",
    "GET /ready": "public",
    "POST /api/auth/login": "public",
    "POST /api/auth/logout": "signed_in",
    "GET /api/auth/me": "signed_in",
    "GET /api/users": "users",
    "POST /api/users": "users",
    "POST /api/users/{username}/disable": "users",
    "GET /api/tokens": "tokens",
    "POST /api/tokens": "tokens",
    "POST /api/tokens/{token_id}/revoke": "tokens",
    "POST /api/secrets/store": "secrets",
    "GET /api/secrets": "secrets",
    "GET /api/secrets/rotation/due": "secrets",
    "GET /api/secrets/{key}": "secrets",
    "POST /api/secrets/{key}/revoke": "secrets",
    "POST /api/secrets/{key}/access": "ask_secrets",
    "GET /api/secrets/consent/history": "consents",
    "GET /api/secrets/consent/pending": "consents",
    "GET /api/secrets/consent/stats": "consents",
    "GET /api/secrets/consent/stream": "consents",
    "GET /api/secrets/consent/{consent_id}": "consents",
    "POST /api/secrets/consent/respond": "consents",
    "POST /api/secrets/consent/revoke": "consents",
    "GET /api/secrets/audit": "audit",
    "GET /api/secrets/audit/verify": "audit_admin",
    "POST /api/secrets/audit/export": "audit_admin",
    "GET /api/secrets/keys/status": "keys",
    "POST /api/secrets/keys/rotate": "keys",
    "POST /api/htm/tasks": "tasks",
    "POST /api/htm/tasks/batch": "tasks",
    "GET /api/htm/tasks": "tasks",
    "GET /api/htm/tasks/{task_id}": "tasks",
    "POST /api/htm/tasks/{task_id}/cancel": "tasks",
    "GET /api/htm/routing/stats": "tasks",
    "GET /api/htm/sla/stats": "tasks",
    "GET /api/htm/sla/violations": "tasks",
    "GET /api/htm/dashboard/stats": "tasks",
    "GET /api/htm/dashboard/violations": "tasks",
    "GET /api/htm/dashboard/tasks/slow": "tasks",
    "GET /api/htm/dashboard/tasks/queued": "tasks",
    "GET /api/htm/dashboard/metrics/hourly": "tasks",
    "GET /api/htm/dashboard/health": "tasks",
    "GET /metrics": "metrics",
    # Intents are what agents submit and follow (their own user's only); anyone may feed the learning loop.
    "POST /api/intents": "tasks",
    "GET /api/intents": "tasks",
    "GET /api/intents/{intent_id}": "tasks",
    "POST /api/intents/{intent_id}/cancel": "tasks",
    "POST /api/learning/outcomes": "signed_in",
    "GET /api/learning/outcomes": "signed_in",
    "GET /api/learning/summary": "signed_in",
    "POST /api/voice-notes/start": "voice",
    "POST /api/voice-notes/search": "voice",
    "GET /api/voice-notes": "voice",
    "POST /api/voice-notes/{note_id}/upload": "voice",
    "POST /api/voice-notes/{note_id}/consent": "consents",
    "POST /api/voice-notes/{note_id}/reprocess": "voice",
    "GET /api/voice-notes/{note_id}/status": "voice",
    "GET /api/voice-notes/{note_id}/transcript": "voice",
    "GET /api/voice-notes/{note_id}/audio": "voice",
    "DELETE /api/voice-notes/{note_id}": "voice",
    "GET /api/playbooks": "playbooks",
    "POST /api/playbooks/{name}/run": "playbooks_run",
    "GET /api/playbooks/runs": "playbooks",
    "GET /api/playbooks/runs/{run_id}": "playbooks",
    "POST /api/playbooks/runs/{run_id}/cancel": "playbooks_run",
    # The web UI's pages and fragments (grace.web): the same policies, answered as pages.
    "GET /signin": "public",
    "POST /signin": "public",
    "POST /signout": "signed_in",
    "GET /": "consents",
    "GET /consents/history": "consents",
    "GET /consents/stream": "consents",
    "POST /consents/{consent_id}/answer": "consents",
    "GET /secrets": "secrets",
    "POST /secrets": "secrets",
    "GET /secrets/risk": "secrets",
    "GET /secrets/{key}": "secrets",
    "POST /secrets/{key}/revoke": "secrets",
    "GET /voice": "voice",
    "POST /voice": "voice",
    "GET /voice/{note_id}": "voice",
    "POST /voice/{note_id}/consent": "consents",
    "POST /voice/{note_id}/reprocess": "voice",
    "POST /voice/{note_id}/delete": "voice",
    "GET /voice/{note_id}/progress": "voice",
    "GET /dashboard": "tasks",
    "GET /playbooks": "playbooks",
    "GET /playbooks/{name}": "playbooks",
    "GET /playbooks/runs/{run_id}": "playbooks",
    "POST /playbooks/{name}/run": "playbooks_run",
    "POST /playbooks/runs/{run_id}/cancel": "playbooks_run",
}

# Query strings that keep a call short (the consent stream would otherwise stay open).
QUERY = {
    "GET /api/secrets/consent/stream": "?timeout_seconds=0.05",
    "GET /consents/stream": "?timeout_seconds=0.05",
    "GET /voice/{note_id}/progress": "?timeout_seconds=0.05",
}
PAGE_POLICY = re.compile(r'data-policy="([a-z_]+)"')


def is_page(name: str) -> bool:
    """Whether the route is the web UI's (answered as pages, sending strangers to the sign-in page)."""
    path = name.split(" ", 1)[1]
    return not path.startswith(("/api/", "/health", "/ready", "/metrics"))


def _app_routes() -> dict[str, APIRoute]:
    app = create_app(load_settings(data_dir=ROOT / ".unused", database_url="sqlite:///:memory:"))
    found: dict[str, APIRoute] = {}
    for route in api_routes(app):
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            found[f"{method} {route.path}"] = route
    operations = {f"{m.upper()} {p}" for p, item in app.openapi()["paths"].items() for m in item}
    assert operations <= set(found), f"routes the walk missed: {operations - set(found)}"
    return found


ROUTES = _app_routes()


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_every_route_declares_a_policy(name: str) -> None:
    declared = policy_of(ROUTES[name])
    assert declared is not None, f"{name} declares no policy: add dependencies=[policy.X] to its decorator"
    assert name in EXPECTED, f"{name} is not in the matrix: decide who may call it and add it to EXPECTED"
    assert declared.name == EXPECTED[name], f"{name} declares {declared.name}, the matrix says {EXPECTED[name]}"


def test_the_matrix_names_no_route_that_is_gone() -> None:
    assert set(EXPECTED) == set(ROUTES)


def test_no_agent_policy_reaches_what_answers_for_a_human() -> None:
    human = {
        "users",
        "tokens",
        "keys",
        "consents",
        "audit",
        "audit_admin",
        "secrets",
        "voice",
        "playbooks",
        "playbooks_run",
    }
    for name, route in ROUTES.items():
        declared = policy_of(route)
        assert declared is not None
        if declared.name in human:
            assert not declared.agents, f"{name} lets agents in"


async def _call(http: httpx.AsyncClient, name: str, headers: dict[str, str]) -> httpx.Response:
    method, path = name.split(" ", 1)
    url = re.sub(r"\{[^}]+\}", "x", path) + QUERY.get(name, "")
    payload: dict[str, Any] | None = {} if method == "POST" else None
    return await http.request(method, url, json=payload, headers=headers)


async def test_the_route_policy_matrix(http: httpx.AsyncClient, cast: Cast) -> None:
    _, admins_agent = await cast.services.accounts.create_token(cast.admin.user_id, agent="ops_agent")
    headers = {
        "admin": cast.headers("admin2"),
        "operator": cast.headers("operator"),
        "member": cast.headers("owner"),
        "admins_agent": {"Authorization": f"Bearer {admins_agent}"},
        "members_agent": cast.headers("agent"),
        "nobody": {},
    }
    wrong: list[str] = []
    for name, policy_name in sorted(EXPECTED.items()):
        for who in PRINCIPALS:
            r = await _call(http, name, headers[who])
            body: dict[str, Any] = {}
            if r.headers.get("content-type", "").startswith("application/json"):
                body = r.json()
            error = body.get("error") or {}
            details = error.get("details")
            refused_by = details.get("policy") if isinstance(details, dict) else None
            if r.headers.get("content-type", "").startswith("text/html"):
                found = PAGE_POLICY.search(r.text)
                refused_by = found.group(1) if found else None
            refused_here = r.status_code == 403 and refused_by == policy_name
            location = r.headers.get("location", "")
            sent_to_sign_in = r.status_code == 303 and (location == "/signin" or location.startswith("/signin?next="))
            if r.status_code >= 500:
                wrong.append(f"{name} as {who}: {r.status_code}")
            elif who in ADMITS[policy_name]:
                if r.status_code == 401 or sent_to_sign_in or refused_here:
                    wrong.append(f"{name} as {who}: refused ({r.status_code}), should be admitted")
            elif who == "nobody":
                if is_page(name) and not sent_to_sign_in:
                    wrong.append(f"{name} as nobody: {r.status_code}, should be sent to /signin")
                elif not is_page(name) and r.status_code != 401:
                    wrong.append(f"{name} as nobody: {r.status_code}, should be 401")
            elif not refused_here:
                wrong.append(f"{name} as {who}: {r.status_code}, should be refused by policy {policy_name}")
    assert not wrong, "\n".join(wrong)


async def test_a_token_holds_only_the_scopes_it_was_given(http: httpx.AsyncClient, cast: Cast) -> None:
    made = await http.post(
        "/api/tokens", json={"name": "tasks only", "scopes": ["tasks"]}, headers=cast.headers("owner")
    )
    assert made.status_code == 201 and made.json()["info"]["scopes"] == ["tasks"]
    narrow = {"Authorization": f"Bearer {made.json()['token']}"}
    assert (await http.get("/api/htm/tasks", headers=narrow)).status_code == 200
    refused = await http.get("/api/secrets/consent/pending", headers=narrow)
    assert refused.status_code == 403 and "'consents' scope" in refused.json()["error"]["message"]
    assert (await http.post("/api/tokens", json={}, headers=narrow)).status_code == 403

    # What the owner's own token holds by default: everything a member's token may.
    listed = (await http.get("/api/tokens", headers=cast.headers("owner"))).json()["tokens"]
    own = next(t for t in listed if t["id"] == cast.owner.token_id)
    assert own["scopes"] == ["audit", "consents", "secrets", "secrets:ask", "tasks", "tokens"]
    agents = next(t for t in listed if t["id"] == cast.agent.token_id)
    assert agents["scopes"] == ["secrets:ask", "tasks"]


async def test_a_signed_in_person_holds_every_scope_of_their_role(http: httpx.AsyncClient, cast: Cast) -> None:
    await cast.services.accounts.set_password("aaron", "a long enough password")
    signed_in = await http.post("/api/auth/login", json={"username": "aaron", "password": "a long enough password"})
    assert signed_in.status_code == 200
    csrf = {"X-CSRF-Token": signed_in.json()["csrf_token"]}
    assert (await http.get("/api/secrets/consent/pending")).status_code == 200
    made = await http.post("/api/tokens", json={"agent": "code_agent_2"}, headers=csrf)
    assert made.status_code == 201 and made.json()["info"]["scopes"] == ["secrets:ask", "tasks"]
    assert (await http.get("/api/users")).status_code == 403  # still a member


def _sync_dependencies(dependant: Dependant) -> Iterator[str]:
    for sub in dependant.dependencies:
        call = inspect.unwrap(sub.call) if sub.call is not None else None
        if call is not None and not any(
            inspect.iscoroutinefunction(c) or inspect.isasyncgenfunction(c) for c in (call, type(call).__call__)
        ):
            yield getattr(sub.call, "__qualname__", repr(sub.call))
        yield from _sync_dependencies(sub)


def test_no_route_resolves_a_dependency_in_the_thread_pool() -> None:
    # FastAPI runs a plain function dependency in a thread pool: a hand-off to another thread and
    # back on every request (get_services was, and cost 6% of a submission's time on the event loop).
    for name, route in ROUTES.items():
        plain = list(_sync_dependencies(route.dependant))
        assert not plain, f"{name} resolves {plain} in the thread pool: make them async"
