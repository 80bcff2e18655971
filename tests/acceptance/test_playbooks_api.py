"""The playbooks over HTTP and the CLI, as an operator would use them, on both databases."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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
    assert crypto["valid"] and [(s["cron"], s["timezone"]) for s in crypto["schedules"]] == [("0 2 * * 0", "UTC")]
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


ASKS = """
version: 1
name: asks
description: one step that waits for the person the run is for
steps:
  - id: act
    action: bus.publish
    with: {topic: playbooks.test.acted}
    approval: {message: "Publish the test event?", timeout: 600}
"""


def test_cli_execute_as_a_user_asks_that_user_and_waits_and_cancel_withdraws_it(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRACE_DATABASE_URL", database_url)
    monkeypatch.setenv("GRACE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRACE_PLAYBOOKS_DIR", str(tmp_path / "playbooks"))  # a serving Grace would find it there
    (tmp_path / "playbooks").mkdir()
    path = tmp_path / "playbooks" / "asks.yaml"
    path.write_text(ASKS)
    runner = CliRunner()
    alone = runner.invoke(app, ["playbook", "execute", str(path), "--json"])
    assert alone.exit_code == 1 and "the person the run is for" in alone.output  # no person, no owner
    nobody = runner.invoke(app, ["playbook", "execute", str(path), "--as", "nobody.here"])
    assert nobody.exit_code == 1 and "no active user" in nobody.output
    asked = runner.invoke(app, ["playbook", "execute", str(path), "--as", "admin", "--json"])
    assert asked.exit_code == 3, asked.output  # waiting for the approval
    run = json.loads(asked.output.splitlines()[0])
    assert run["status"] == "waiting" and "approve step 'act'" in run["reason"]
    shown = json.loads(runner.invoke(app, ["playbook", "history", run["run_id"]]).output)
    assert shown["who"] == "cli as admin" and shown["approval_id"]
    pending = runner.invoke(app, ["secrets", "pending", "--user", "admin"])
    assert shown["approval_id"] in pending.output, pending.output

    cancelled = runner.invoke(app, ["playbook", "cancel", run["run_id"]])
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled (cancelled by cli)" in cancelled.output
    assert shown["approval_id"] not in runner.invoke(app, ["secrets", "pending", "--user", "admin"]).output
    again = runner.invoke(app, ["playbook", "cancel", run["run_id"]])
    assert again.exit_code == 1 and "already finished (cancelled)" in again.output
    missing = runner.invoke(app, ["playbook", "cancel", "pbr_nope"])
    assert missing.exit_code == 1 and "no " in missing.output


async def _dry_runs(client: httpx.AsyncClient, headers: dict[str, str], name: str, count: int) -> list[str]:
    made = []
    for _ in range(count):
        r = await client.post(f"/api/playbooks/{name}/run", json={"dry_run": True}, headers=headers)
        assert r.status_code == 202, r.text
        made.append(r.json()["run"]["id"])
    return made


async def test_runs_are_listed_newest_first_page_by_page_with_their_steps(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    htm = await _dry_runs(client, admin_headers, "htm_timing_and_sizing", 3)
    crypto = await _dry_runs(client, admin_headers, "crypto_key_persistence", 2)

    everything = await client.get("/api/playbooks/runs", headers=admin_headers)
    assert everything.status_code == 200, everything.text
    assert [r["id"] for r in everything.json()["runs"]] == [*reversed(crypto), *reversed(htm)]
    assert everything.json()["next_before"] is None

    url = "/api/playbooks/runs?playbook=htm_timing_and_sizing&limit=2"
    first = (await client.get(url, headers=admin_headers)).json()
    assert [r["id"] for r in first["runs"]] == [htm[2], htm[1]]
    assert first["next_before"] == htm[1]
    assert first["runs"][0]["steps"][0]["id"].startswith("monitor:")  # each run with its steps
    second = await client.get(
        f"/api/playbooks/runs?playbook=htm_timing_and_sizing&limit=2&before={first['next_before']}",
        headers=admin_headers,
    )
    assert [r["id"] for r in second.json()["runs"]] == [htm[0]] and second.json()["next_before"] is None

    only = await client.get("/api/playbooks/runs?status=succeeded&status=failed&limit=200", headers=admin_headers)
    assert {r["status"] for r in only.json()["runs"]} == {"succeeded"}
    assert (await client.get("/api/playbooks/runs?status=queued", headers=admin_headers)).json()["runs"] == []


async def test_the_catalogue_carries_each_playbooks_last_run_and_next_firing(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    before = (await client.get("/api/playbooks", headers=admin_headers)).json()["playbooks"]
    assert all(p["last_run"] is None for p in before)
    made = await _dry_runs(client, admin_headers, "crypto_key_persistence", 2)
    found = {p["name"]: p for p in (await client.get("/api/playbooks", headers=admin_headers)).json()["playbooks"]}
    crypto = found["crypto_key_persistence"]
    assert crypto["last_run"]["id"] == made[-1] and crypto["last_run"]["status"] == "succeeded"
    assert found["htm_timing_and_sizing"]["last_run"] is None
    weekly = datetime.fromisoformat(crypto["schedules"][0]["next_at"])
    now = services.clock.now()
    assert weekly > now and weekly - now <= timedelta(days=7)
    assert (weekly.weekday(), weekly.hour, weekly.minute, weekly.utcoffset()) == (6, 2, 0, timedelta(0))  # Sunday
    every_five = datetime.fromisoformat(found["htm_timing_and_sizing"]["schedules"][0]["next_at"])
    assert timedelta(0) < every_five - now <= timedelta(minutes=5) and every_five.minute % 5 == 0


async def test_listing_runs_names_a_bad_field_and_an_unknown_playbook(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for query, field in (
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=many", "limit"),
        ("playbook=Not-A-Name", "playbook"),
        ("status=waiting_forever", "status"),
        ("before=" + "x" * 61, "before"),
        ("before=pbr_nope", "before"),
    ):
        r = await client.get(f"/api/playbooks/runs?{query}", headers=admin_headers)
        assert r.status_code == 422, (query, r.text)
        assert field in r.json()["error"]["message"], (query, r.json())
    missing = await client.get("/api/playbooks/runs?playbook=no_such_playbook", headers=admin_headers)
    assert missing.status_code == 404 and "no_such_playbook" in missing.json()["error"]["message"]
    known = await client.get("/api/playbooks/runs?playbook=recording_to_learning", headers=admin_headers)
    assert known.status_code == 200 and known.json() == {"runs": [], "next_before": None}


async def test_an_edited_playbook_file_is_listed_as_it_now_reads(
    services: Services, client: httpx.AsyncClient, admin_headers: dict[str, str], tmp_path: Path
) -> None:
    """The catalogue keeps what checking a file gave, but never past an edit of that file."""
    services.playbooks.directory = tmp_path
    path = tmp_path / "check_once.yaml"
    good = (PLAYBOOKS / "htm_timing_and_sizing.yaml").read_text()
    path.write_text(good)

    async def listed() -> dict[str, Any]:
        r = await client.get("/api/playbooks", headers=admin_headers)
        assert r.status_code == 200, r.text
        [only] = r.json()["playbooks"]
        return dict(only)

    assert (await listed())["valid"] is True
    assert (await listed())["valid"] is True  # the same text: what checking it gave the first time
    path.write_text(good.replace("steps:", "stepz:", 1))  # an operator's typo
    broken = await listed()
    assert broken["valid"] is False
    assert any("stepz" in str(p) for p in broken["problems"]), broken["problems"]
    path.write_text(good)
    assert (await listed())["valid"] is True
