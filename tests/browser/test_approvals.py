"""A playbook's approval step in the consent inbox: it arrives live, and approving it resumes the run."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Grace

PLAYBOOK = """
version: 1
name: {name}
description: publish an event once the operator approves
steps:
  - id: act
    action: bus.publish
    with: {{topic: playbooks.demo.done}}
    approval: {{message: "Restart the ingestion workers? Two of them stopped answering.", timeout: 600}}
"""


def _run_status(grace: Grace, who: str, run_id: str, until: tuple[str, ...]) -> dict[str, Any]:
    """Read the run until it reaches one of ``until`` (the worker takes it up in its own time)."""
    with grace.api(who) as http:
        for _ in range(600):
            run: dict[str, Any] = http.get(f"/api/playbooks/runs/{run_id}").json()["run"]
            if run["status"] in until:
                return run
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} stayed {run['status']}")


def test_an_approval_appears_in_the_inbox_and_approving_resumes_the_run(grace: Grace, open_session: Any) -> None:
    assert grace.playbooks_dir is not None
    name = f"approve_{secrets.token_hex(3)}"
    path = grace.playbooks_dir / f"{name}.yaml"
    path.write_text(PLAYBOOK.format(name=name))
    try:
        session = open_session("olga")
        page = session.page
        expect(page.locator(".inbox")).to_be_visible()
        page.wait_for_function("() => document.querySelector('[sse-connect]') !== null")
        with grace.api("olga") as http:
            started = http.post(f"/api/playbooks/{name}/run", json={})
        assert started.status_code == 202, started.text
        run_id = started.json()["run"]["id"]
        waiting = _run_status(grace, "olga", run_id, ("waiting", "failed", "succeeded"))
        assert waiting["status"] == "waiting", waiting["reason"]

        card = page.locator(f"#consent-{waiting['approval_id']}")
        expect(card).to_be_visible()  # live, without a reload
        expect(card.get_by_role("heading")).to_have_text(
            re.compile(rf"Grace wants to run step 'act' \(bus\.publish\) of playbook {name}\. Allow\?")
        )
        expect(card.locator(".facts")).to_contain_text(f"Playbook: {name} • Step: act • Action: bus.publish")
        expect(card.locator(".why")).to_have_text("Restart the ingestion workers? Two of them stopped answering.")
        expect(card).to_contain_text(f"playbook.{name}, run {run_id} started by olga")

        card.get_by_role("button", name="Approve").click()
        expect(page.locator("#flash")).to_contain_text("Approved: the playbook run goes on")
        expect(card).to_have_count(0)
        expect(page.locator(f"#h-{waiting['approval_id']}")).to_contain_text("Approved")

        done = _run_status(grace, "olga", run_id, ("succeeded", "failed", "timed_out"))
        assert done["status"] == "succeeded", done["reason"]
        [act] = done["steps"]
        assert act["approval"]["answer"] == "approved" and act["outcome"] == "succeeded"
        session.check_clean()
    finally:
        path.unlink()


CANCELLABLE = """
version: 1
name: {name}
description: prepare, ask the operator, and clean up whatever happens
steps:
  - id: prepare
    action: bus.publish
    with: {{topic: playbooks.demo.prepared}}
    rollback: {{action: bus.publish, with: {{topic: playbooks.demo.undone}}}}
  - id: act
    action: bus.publish
    with: {{topic: playbooks.demo.done}}
    approval: {{message: "Drain the ingestion queue?", timeout: 600}}
always:
  - id: tidy
    action: bus.publish
    with: {{topic: playbooks.demo.tidied}}
"""


def test_cancel_on_a_waiting_run_withdraws_its_approval_and_cleans_up(grace: Grace, open_session: Any) -> None:
    assert grace.playbooks_dir is not None
    name = f"cancel_{secrets.token_hex(3)}"
    path = grace.playbooks_dir / f"{name}.yaml"
    path.write_text(CANCELLABLE.format(name=name))
    try:
        session = open_session("olga")
        page = session.page
        with grace.api("olga") as http:
            started = http.post(f"/api/playbooks/{name}/run", json={})
        assert started.status_code == 202, started.text
        run_id = started.json()["run"]["id"]
        waiting = _run_status(grace, "olga", run_id, ("waiting", "failed", "succeeded"))
        assert waiting["status"] == "waiting", waiting["reason"]

        page.goto(f"{grace.url}/playbooks/runs/{run_id}")
        live = page.locator("#run-live")
        expect(live).to_have_attribute("data-status", "waiting")
        expect(live.locator(".run-summary")).to_contain_text("waiting for approval")
        live.get_by_role("button", name="Cancel run").click()

        expect(live).to_have_attribute("data-status", "cancelled")
        expect(live).to_contain_text("cancelled by olga")
        expect(live.get_by_role("button", name="Cancel run")).to_have_count(0)  # nothing left to cancel
        expect(live.locator(".step-card[data-step='act']")).to_have_attribute("data-outcome", "cancelled")
        expect(live.locator(".step-card[data-step='prepare'][data-phase='rollback']")).to_have_attribute(
            "data-outcome", "rolled_back"
        )
        expect(live.locator(".step-card[data-step='tidy'][data-phase='always']")).to_have_attribute(
            "data-outcome", "succeeded"
        )

        # The approval left olga's inbox.
        page.goto(f"{grace.url}/")
        expect(page.locator(".inbox")).to_be_visible()
        expect(page.locator(f"#consent-{waiting['approval_id']}")).to_have_count(0)
        with grace.api("olga") as http:
            pending = http.get("/api/secrets/consent/pending").json()
        assert waiting["approval_id"] not in str(pending)
        session.check_clean()
    finally:
        path.unlink()
