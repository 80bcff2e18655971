"""The playbooks over HTTP and the CLI, as an operator would use them, on both databases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from grace.cli.main import app
from grace.services import Services

PLAYBOOKS = Path(__file__).parent.parent.parent / "playbooks"


@pytest.fixture(autouse=True)
def shipped(services: Services) -> None:
    services.playbooks.directory = PLAYBOOKS


async def test_the_catalogue_lists_each_playbook_with_its_triggers(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.get("/api/playbooks", headers=admin_headers)
    assert r.status_code == 200
    found = {p["name"]: p for p in r.json()["playbooks"]}
    crypto = found["crypto_key_persistence"]
    assert crypto["valid"] and crypto["schedules"] == [{"cron": "0 2 * * 0", "timezone": "UTC"}]
    assert found["htm_timing_and_sizing"]["schedules"][0]["cron"] == "*/5 * * * *"
    assert found["htm_timing_and_sizing"]["policy"]["concurrency"] == "forbid"


async def test_a_run_is_queued_as_a_task_and_its_record_read(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    r = await client.post("/api/playbooks/htm_timing_and_sizing/run", json={}, headers=admin_headers)
    assert r.status_code == 202, r.text
    run = r.json()["run"]
    assert (run["status"], run["trigger"], run["who"]) == ("queued", "manual", "admin")
    task = await services.htm.get(run["task_id"], principal=None)
    assert task.task_type == "playbooks.run" and task.origin.value == "user_request"
    again = await client.post("/api/playbooks/htm_timing_and_sizing/run", json={}, headers=admin_headers)
    assert again.status_code == 409  # concurrency forbid while the first is queued
    got = await client.get(f"/api/playbooks/runs/{run['id']}", headers=admin_headers)
    assert got.status_code == 200 and got.json()["run"]["id"] == run["id"]


async def test_a_dry_run_answers_each_step(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    r = await client.post(
        "/api/playbooks/crypto_key_persistence/run",
        json={"dry_run": True, "inputs": {"force": True}},
        headers=admin_headers,
    )
    assert r.status_code == 202, r.text
    run = r.json()["run"]
    assert run["dry_run"] and run["status"] == "succeeded"
    steps = {s["id"]: s["outcome"] for s in run["steps"]}
    assert steps["rotate"] == "run" and steps["verify"] == "unknown"


async def test_bad_input_and_unknown_names_are_4xx_naming_what(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    r = await client.post(
        "/api/playbooks/crypto_key_persistence/run", json={"inputs": {"force": "maybe"}}, headers=admin_headers
    )
    assert r.status_code == 422 and "force" in r.json()["error"]["message"]
    r = await client.post(
        "/api/playbooks/crypto_key_persistence/run", json={"inputs": {"forse": True}}, headers=admin_headers
    )
    assert r.status_code == 422 and "did you mean 'force'" in r.json()["error"]["message"]
    assert (await client.post("/api/playbooks/nope/run", json={}, headers=admin_headers)).status_code == 404
    assert (await client.get("/api/playbooks/runs/pbr_nope", headers=admin_headers)).status_code == 404


async def test_a_queued_run_executes_on_a_worker_as_the_person_who_asked(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    assert services.bootstrap is not None
    user = await services.accounts.get_user(services.bootstrap.username)
    from grace.auth import Principal

    note = await services.voice.start(Principal(user.id, user.username, user.role), title="standup")
    async with services.bus.subscribe("htm.task.*") as events:
        r = await client.post(
            "/api/playbooks/recording_to_learning/run",
            json={"inputs": {"note_id": note["session_id"]}},
            headers=admin_headers,
        )
        assert r.status_code == 202, r.text
        task_id = r.json()["run"]["task_id"]
        await services.htm.start_workers()
        while True:
            event = await asyncio.wait_for(events.get(), 60)
            assert event is not None
            if event.payload.get("task_id") == task_id and event.topic in ("htm.task.completed", "htm.task.failed"):
                break
    run = (await client.get(f"/api/playbooks/runs/{r.json()['run']['id']}", headers=admin_headers)).json()["run"]
    assert run["status"] == "succeeded", run["reason"]  # voice.note read the note as its owner
    assert [s["id"] for s in run["steps"]] == ["note", "resume", "learn"]


def test_cli_execute_dry_run_and_history(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> None:
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    dry = runner.invoke(
        app,
        ["playbook", "execute", str(PLAYBOOKS / "crypto_key_persistence.yaml"), "--dry-run", "--input", "force=true"],
    )
    assert dry.exit_code == 0, dry.output
    assert "rotate" in dry.output and "unknown" in dry.output
    listed = runner.invoke(app, ["playbook", "history", "--json"])
    assert listed.exit_code == 0 and "crypto_key_persistence" in listed.output
    ran = runner.invoke(app, ["playbook", "execute", str(PLAYBOOKS / "htm_timing_and_sizing.yaml"), "--json"])
    assert ran.exit_code == 0, ran.output
    run_id = json.loads(ran.output)["run_id"]
    shown = runner.invoke(app, ["playbook", "history", run_id])
    assert shown.exit_code == 0
    record = json.loads(shown.output)
    assert (record["status"], record["trigger"], record["who"]) == ("succeeded", "manual", "cli")
    assert record["steps"][0]["id"].startswith("monitor:") and record["duration_ms"] is not None
    bad = runner.invoke(app, ["playbook", "execute", str(PLAYBOOKS / "crypto_key_persistence.yaml"), "--input", "x"])
    assert bad.exit_code == 1 and "NAME=VALUE" in bad.output
