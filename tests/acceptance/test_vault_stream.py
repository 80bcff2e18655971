"""The consent stream over a real HTTP server: events arrive one by one while the connection stays open."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn

from grace.api import create_app
from grace.config import Settings
from tests import canary
from tests.vaultkit import Cast

TOKEN = "glpat-" + "M3n4B5v6C7" * 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server(cast: Cast, settings: Settings) -> AsyncIterator[str]:
    port = _free_port()
    app = create_app(settings, services=cast.services)
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    serving = asyncio.create_task(instance.serve())
    for _ in range(500):
        if instance.started:
            break
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    await serving


async def _next_event(lines: AsyncIterator[str]) -> tuple[str, dict[str, object]]:
    name, data = "", ""
    async for line in lines:
        canary.SESSION.add("stream:consent", line)
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and name:
            return name, json.loads(data)
    raise AssertionError("the stream ended")


@pytest.mark.slow
async def test_the_owner_and_a_second_approver_see_requests_live(cast: Cast, server: str) -> None:
    hooks = {"response": [canary.SESSION.record_response]}
    async with httpx.AsyncClient(base_url=server, timeout=10, event_hooks=hooks) as http:
        stored = await http.post(
            "/api/secrets/store",
            json={"secret_key": "deploy_key", "secret_value": TOKEN, "secret_type": "ssh_key", "service": "gitlab"},
            headers=cast.headers("owner"),
        )
        assert stored.status_code == 201
        async with (
            http.stream("GET", "/api/secrets/consent/stream", headers=cast.headers("owner")) as owner_stream,
            http.stream("GET", "/api/secrets/consent/stream", headers=cast.headers("operator")) as operator_stream,
        ):
            assert owner_stream.headers["content-type"].startswith("text/event-stream")
            owner_lines = owner_stream.aiter_lines()
            operator_lines = operator_stream.aiter_lines()
            asked = await http.post(
                "/api/secrets/deploy_key/access", json={"requested_action": "deploy"}, headers=cast.headers("agent")
            )
            consent_id = asked.json()["consent_id"]
            name, data = await asyncio.wait_for(_next_event(owner_lines), 10)
            assert (name, data["consent_id"], data["risk_level"]) == ("consent.request", consent_id, "critical")
            await http.post(
                "/api/secrets/consent/respond",
                json={"consent_id": consent_id, "approved": True},
                headers=cast.headers("owner"),
            )
            name, data = await asyncio.wait_for(_next_event(owner_lines), 10)
            assert name == "consent.response" and data["awaiting_second_approval"] is True
            # The operator's stream skipped the owner's request and shows the call for a second approval.
            name, data = await asyncio.wait_for(_next_event(operator_lines), 10)
            assert name == "consent.response" and data["consent_id"] == consent_id
    assert TOKEN not in json.dumps(data)
