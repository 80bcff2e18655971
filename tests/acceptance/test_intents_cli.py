"""``grace intents`` and ``grace learning summary`` as an operator uses them, on both databases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from grace.cli.main import app
from grace.config import load_settings
from grace.services import build
from tests import canary


@pytest.fixture
def grace(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    return CliRunner()


def _run(grace: CliRunner, *args: str) -> Result:
    result = grace.invoke(app, list(args))
    canary.SESSION.add("cli:" + " ".join(args[:2]), result.output)
    return result


async def _serve_until_finished(intent_id: str) -> str:
    """Run what `grace serve` runs (workers, the intents' listener) until the intent finishes."""
    services = await build(load_settings(), migrate=False, bootstrap=False)
    try:
        events = await services.bus.subscribe("agentic.intent.*").open()
        services.intents.start()
        await services.htm.start_workers()
        while True:
            event = await events.get(timeout=30)
            assert event is not None, "the intent did not finish within 30 s"
            if event.payload.get("intent_id") == intent_id and event.topic != "agentic.intent.created":
                return event.topic
    finally:
        await services.close()


def test_submit_follow_and_summarise_an_intent(grace: CliRunner) -> None:
    assert _run(grace, "users", "create", "aaron").exit_code == 0
    submitted = _run(
        grace,
        "intents",
        "submit",
        "Say the folder back",
        "--handler",
        "echo",
        "--user",
        "aaron",
        "--agent",
        "code_agent",
        "--context",
        '{"folder": "/uploads"}',
        "--confidence",
        "0.6",
        "--sla-ms",
        "60000",
        "--json",
    )
    assert submitted.exit_code == 0, submitted.output
    intent = json.loads(submitted.output)
    assert intent["status"] == "queued" and intent["agent"] == "code_agent" and intent["htm_task_id"]

    listed = _run(grace, "intents", "list", "--domain", "general")
    assert intent["intent_id"] in listed.output and "code_agent@aaron" in listed.output
    assert _run(grace, "intents", "list", "--domain", "astrology").exit_code == 1

    assert asyncio.run(_serve_until_finished(intent["intent_id"])) == "agentic.intent.completed"
    shown = _run(grace, "intents", "show", intent["intent_id"], "--json")
    assert json.loads(shown.output)["status"] == "completed" and json.loads(shown.output)["learned"] is True

    summary = _run(grace, "learning", "summary", "--json")
    data = json.loads(summary.output)
    assert data["by_action_type"]["intent_general"]["count"] == 1
    assert data["by_action_type"]["intent_general"]["brier_score"] == pytest.approx(0.16)
    table = _run(grace, "learning", "summary")
    assert table.exit_code == 0 and "intent_general" in table.output and "intent.echo" in table.output


def test_cancel_an_intent_and_refuse_bad_input(grace: CliRunner) -> None:
    assert _run(grace, "users", "create", "aaron").exit_code == 0
    submitted = _run(grace, "intents", "submit", "Later", "--handler", "wait", "--user", "aaron", "--json")
    intent_id = json.loads(submitted.output)["intent_id"]
    cancelled = _run(grace, "intents", "cancel", intent_id)
    assert cancelled.exit_code == 0 and f"intent {intent_id} cancelled" in cancelled.output
    again = _run(grace, "intents", "cancel", intent_id)
    assert again.exit_code == 1 and "already cancelled" in again.output

    bad = _run(grace, "intents", "submit", "Go", "--handler", "echo", "--user", "aaron", "--confidence", "2")
    assert bad.exit_code == 1 and "confidence must be between 0 and 1" in bad.output
    unknown = _run(grace, "intents", "submit", "Go", "--handler", "teleport", "--user", "aaron")
    assert unknown.exit_code == 1 and "handler: no intent handler named 'teleport'" in unknown.output
