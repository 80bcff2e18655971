"""The intents' and learning loop's HTTP API as an agent uses it, on both databases: the round trip,
bad input answered 422 naming the field, and another member's intent answered 404."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from grace.clock import ManualClock
from grace.config import Settings
from tests import canary
from tests.vaultkit import Cast, make_cast


@pytest.fixture
async def cast(settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cast]:
    monkeypatch.setenv("GRACE_HTM_MAX_ATTEMPTS", "1")
    built = await make_cast(settings, clock)
    yield built
    await canary.sweep(built.services)
    await built.services.close()


async def submit(http: httpx.AsyncClient, who: dict[str, str], **body: Any) -> httpx.Response:
    return await http.post("/api/intents", json={"goal": "Say it back", "handler": "echo", **body}, headers=who)


async def test_an_agent_submits_an_intent_and_follows_it_to_its_outcome(http: httpx.AsyncClient, cast: Cast) -> None:
    agent = cast.headers("agent")
    services = cast.services
    events = await services.bus.subscribe("agentic.intent.completed").open()
    r = await submit(
        http,
        agent,
        goal="Echo the folder back",
        expected_outcome="the folder, echoed",
        sla_ms=60000,
        priority="high",
        context={"folder": "/uploads"},
        confidence=0.7,
    )
    assert r.status_code == 201, r.text
    intent = r.json()["intent"]
    assert intent["status"] == "queued" and intent["agent"] == "code_agent" and intent["owner"] == "aaron"
    assert intent["task_type"] == "intent.echo" and intent["context"] == {"folder": "/uploads"}

    task = await http.get(f"/api/htm/tasks/{intent['htm_task_id']}", headers=agent)
    assert task.status_code == 200
    assert task.json()["task"]["intent_id"] == intent["intent_id"]
    assert task.json()["task"]["payload"]["context"] == {"folder": "/uploads"}

    services.intents.start()
    await services.htm.start_workers()
    event = await events.get(timeout=30)
    assert event is not None and event.payload["intent_id"] == intent["intent_id"]

    done = await http.get(f"/api/intents/{intent['intent_id']}", headers=agent)
    assert done.status_code == 200
    assert done.json()["intent"]["status"] == "completed"
    assert done.json()["intent"]["result"] == {"goal": "Echo the folder back", "context": {"folder": "/uploads"}}

    listed = await http.get("/api/intents", params={"status": "completed", "domain": "general"}, headers=agent)
    assert [i["intent_id"] for i in listed.json()["intents"]] == [intent["intent_id"]]

    outcomes = await http.get("/api/learning/outcomes", params={"intent_id": intent["intent_id"]}, headers=agent)
    [outcome] = outcomes.json()["outcomes"]
    assert outcome["action_type"] == "intent_general" and outcome["success"] is True
    assert outcome["context"]["goal"] == "Echo the folder back" and outcome["context"]["sla_met"] is True

    summary = (await http.get("/api/learning/summary", headers=cast.headers("owner"))).json()
    assert summary["by_action_type"]["intent_general"]["count"] == 1
    assert summary["by_action_type"]["intent_general"]["brier_score"] == pytest.approx(0.09)


async def test_any_caller_records_an_outcome_and_sees_it_in_the_summary(http: httpx.AsyncClient, cast: Cast) -> None:
    agent = cast.headers("agent")
    for success, confidence, seconds in ((True, 0.9, 1.0), (False, 0.9, 3.0), (True, 0.2, 2.0)):
        r = await http.post(
            "/api/learning/outcomes",
            json={
                "action_type": "send_mail",
                "success": success,
                "confidence_score": confidence,
                "execution_time": seconds,
                "domain": "mail",
                "context": {"to": "team"},
            },
            headers=agent,
        )
        assert r.status_code == 201, r.text
        assert r.json()["recorded_by"] == "code_agent@aaron"
    summary = (await http.get("/api/learning/summary", params={"domain": "mail"}, headers=agent)).json()
    group = summary["by_action_type"]["send_mail"]
    assert group["count"] == 3 and group["success_rate"] == pytest.approx(2 / 3)
    assert group["execution_time"]["p50"] == 2.0 and group["execution_time"]["max"] == 3.0
    assert group["brier_score"] == pytest.approx((0.01 + 0.81 + 0.64) / 3)
    assert [(b["lower"], b["count"]) for b in group["calibration"]] == [(0.2, 1), (0.9, 2)]
    # Another member sees none of it.
    other = (await http.get("/api/learning/outcomes", headers=cast.headers("other"))).json()
    assert other["outcomes"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"handler": "no_such_handler"}, "handler"),
        ({"sla_ms": -5}, "sla_ms"),
        ({"sla_ms": 10**15}, "sla_ms"),
        ({"confidence": 1.5}, "confidence"),
        ({"confidence": -0.1}, "confidence"),
        ({"goal": ""}, "goal"),
        ({"goal": "   "}, "goal"),
        ({"domain": "astrology"}, "domain"),
        ({"priority": "urgentest"}, "priority"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    http: httpx.AsyncClient, cast: Cast, body: dict[str, Any], field: str
) -> None:
    r = await submit(http, cast.headers("agent"), **body)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]
    assert (await http.get("/api/intents", headers=cast.headers("agent"))).json()["intents"] == []


async def test_an_unknown_filter_is_a_422_naming_the_field(http: httpx.AsyncClient, cast: Cast) -> None:
    r = await http.get("/api/intents", params={"domain": "astrology"}, headers=cast.headers("agent"))
    assert r.status_code == 422 and "domain" in r.json()["error"]["message"]
    assert r.json()["error"]["details"]["valid"] == ["general"]
    r = await http.get("/api/intents", params={"status": "dreaming"}, headers=cast.headers("agent"))
    assert r.status_code == 422 and "status" in r.json()["error"]["message"]


async def test_another_member_s_intent_is_not_found(http: httpx.AsyncClient, cast: Cast) -> None:
    r = await submit(http, cast.headers("other"))
    intent_id = r.json()["intent"]["intent_id"]
    for who in ("owner", "agent"):
        assert (await http.get(f"/api/intents/{intent_id}", headers=cast.headers(who))).status_code == 404
        cancelled = await http.post(f"/api/intents/{intent_id}/cancel", headers=cast.headers(who))
        assert cancelled.status_code == 404
    assert (await http.get(f"/api/intents/{intent_id}", headers=cast.headers("operator"))).status_code == 200
    assert (await http.get(f"/api/intents/{intent_id}", headers=cast.headers("other"))).json()["intent"]["status"] == (
        "queued"
    )


async def test_an_agent_cancels_its_intent_once(http: httpx.AsyncClient, cast: Cast) -> None:
    agent = cast.headers("agent")
    intent_id = (await submit(http, agent)).json()["intent"]["intent_id"]
    first = await http.post(f"/api/intents/{intent_id}/cancel", headers=agent)
    assert first.status_code == 200 and first.json()["intent"]["status"] == "cancelled"
    again = await http.post(f"/api/intents/{intent_id}/cancel", headers=agent)
    assert again.status_code == 409


async def test_a_taken_intent_id_is_a_409(http: httpx.AsyncClient, cast: Cast) -> None:
    agent = cast.headers("agent")
    assert (await submit(http, agent, intent_id="int_ingest_docs_123")).status_code == 201
    assert (await submit(http, agent, intent_id="int_ingest_docs_123")).status_code == 409


async def test_an_agent_may_not_submit_above_its_priority(http: httpx.AsyncClient, cast: Cast) -> None:
    r = await submit(http, cast.headers("agent"), priority="critical")
    assert r.status_code == 403
    assert (await http.get("/api/intents", headers=cast.headers("agent"))).json()["intents"] == []
