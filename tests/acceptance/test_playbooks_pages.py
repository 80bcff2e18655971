"""The playbooks pages in-process (the browser suite drives them in Chromium): what they answer and refuse."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from grace.services import Services

PLAYBOOKS = Path(__file__).parent.parent.parent / "playbooks"


@pytest.fixture(autouse=True)
def shipped(services: Services) -> None:
    services.playbooks.directory = PLAYBOOKS


async def test_the_list_a_playbook_and_a_dry_run_page(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    listed = await client.get("/playbooks", headers=admin_headers)
    assert listed.status_code == 200
    for name in ("crypto_key_persistence", "htm_timing_and_sizing", "recording_to_learning"):
        assert f'id="playbook-{name}"' in listed.text
    assert "never run" in listed.text

    ran = await client.post(
        "/playbooks/crypto_key_persistence/run", data={"mode": "dry_run", "input_force": "true"}, headers=admin_headers
    )
    assert ran.status_code == 303
    page = await client.get(ran.headers["location"], headers=admin_headers)
    assert page.status_code == 200 and 'data-status="succeeded"' in page.text
    assert 'data-step="rotate" data-phase="step" data-outcome="run"' in page.text
    assert 'data-step="verify" data-phase="step" data-outcome="unknown"' in page.text
    assert "hx-trigger" not in page.text  # finished: nothing polls

    history = await client.get("/playbooks/crypto_key_persistence", headers=admin_headers)
    assert ran.headers["location"].rsplit("/", 1)[1] in history.text


async def test_a_bad_input_or_a_forbidden_second_run_stays_on_the_form_with_the_reason(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    bad = await client.post(
        "/playbooks/htm_timing_and_sizing/run",
        data={"mode": "run", "input_max_queue_depth": "lots"},
        headers=admin_headers,
    )
    assert bad.status_code == 422
    assert "input &#39;max_queue_depth&#39; must be a int" in bad.text and 'value="lots"' in bad.text
    first = await client.post("/playbooks/htm_timing_and_sizing/run", data={"mode": "run"}, headers=admin_headers)
    assert first.status_code == 303
    queued = await client.get(first.headers["location"], headers=admin_headers)
    assert 'data-status="queued"' in queued.text and 'hx-trigger="every 2s"' in queued.text  # it follows the run
    second = await client.post("/playbooks/htm_timing_and_sizing/run", data={"mode": "run"}, headers=admin_headers)
    assert second.status_code == 409 and "forbids a second run" in second.text
    no_mode = await client.post("/playbooks/htm_timing_and_sizing/run", data={}, headers=admin_headers)
    assert no_mode.status_code == 422


async def test_unknown_names_are_404_pages_and_an_unknown_status_is_shown_in_words(
    client: httpx.AsyncClient, admin_headers: dict[str, str], services: Services
) -> None:
    assert (await client.get("/playbooks/no_such_playbook", headers=admin_headers)).status_code == 404
    assert (await client.get("/playbooks/runs/pbr_nope", headers=admin_headers)).status_code == 404
    assert (await client.post("/playbooks/nope/run", data={"mode": "run"}, headers=admin_headers)).status_code == 404
    # A status a later engine may write (a run waiting for an approval) is written out, and followed.
    run_id = await services.playbooks.history.create(
        "crypto_key_persistence", digest="x", trigger="manual", who="olga", inputs={}, status="waiting_for_approval"
    )
    page = await client.get(f"/playbooks/runs/{run_id}", headers=admin_headers)
    assert page.status_code == 200 and "waiting for approval" in page.text and "hx-trigger" in page.text
    fragment = await client.get(f"/playbooks/runs/{run_id}", headers={**admin_headers, "HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<div id="run-live"')
    listed = await client.get("/playbooks/crypto_key_persistence", headers=admin_headers)
    assert listed.status_code == 200 and "waiting for approval" in listed.text


async def test_cancel_run_on_a_queued_run_and_on_a_finished_one(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    first = await client.post("/playbooks/htm_timing_and_sizing/run", data={"mode": "run"}, headers=admin_headers)
    run_url = first.headers["location"]
    queued = await client.get(run_url, headers=admin_headers)
    assert f'action="{run_url}/cancel"' in queued.text and "Cancel run" in queued.text
    cancelled = await client.post(f"{run_url}/cancel", headers=admin_headers)
    assert cancelled.status_code == 303 and cancelled.headers["location"] == run_url
    page = await client.get(run_url, headers=admin_headers)
    assert 'data-status="cancelled"' in page.text and "cancelled by admin" in page.text
    assert "Cancel run" not in page.text  # nothing left to cancel
    again = await client.post(f"{run_url}/cancel", headers=admin_headers)
    assert again.status_code == 409 and "has already finished (cancelled)" in again.text
    missing = await client.post("/playbooks/runs/pbr_nope/cancel", headers=admin_headers)
    assert missing.status_code == 404
