"""The playbooks pages: the four playbooks, a dry run step by step, a real run followed live, who may run.

Olga (an operator) sees the four shipped playbooks with their triggers and next firings, dry-runs
crypto_key_persistence with ``force`` (each step shown as would run, skipped or unknown), runs it for
real and watches the run page follow it to its outcome without a reload, then finds both runs in
its history. Aaron (a member) gets no Playbooks item, a "not allowed" page, and cannot start a run.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, PHONE, Grace, Session, axe_violations, screenshot
from tests.browser.test_security import csrf_of, signed_in_client

PLAYBOOKS = ("crypto_key_persistence", "htm_timing_and_sizing", "recording_to_learning", "secrets_capture_and_consent")
CRYPTO = "crypto_key_persistence"
RUN_URL = re.compile(r".*/playbooks/runs/(pbr_[A-Za-z0-9_-]+)$")


def _runs(grace: Grace, playbook: str) -> list[dict[str, Any]]:
    with grace.api("olga") as http:
        listed = http.get("/api/playbooks/runs", params={"playbook": playbook, "limit": 200})
    assert listed.status_code == 200, listed.text
    runs: list[dict[str, Any]] = listed.json()["runs"]
    return runs


def _wait_until_idle(grace: Grace, playbook: str) -> None:
    """A scheduled or event run may be active (concurrency forbid): wait for it to end before running."""
    deadline = time.monotonic() + 120
    while any(r["status"] in ("queued", "running") for r in _runs(grace, playbook)):
        assert time.monotonic() < deadline, f"{playbook} stayed busy"
        time.sleep(0.5)


def _press_with_the_keyboard(page: Page, name: str) -> None:
    button = page.get_by_role("button", name=name, exact=True)
    for _ in range(80):
        page.keyboard.press("Tab")
        if button.evaluate("b => b === document.activeElement"):
            break
    else:
        pytest.fail(f"Tab never reached the {name} button")
    page.keyboard.press("Enter")


def _step(page: Page, step: str) -> Any:
    return page.locator(f"#run-live .step-card[data-step='{step}'][data-phase='step']")


def test_an_operator_sees_the_playbooks_dry_runs_one_and_runs_it_for_real(grace: Grace, open_session: Any) -> None:
    olga: Session = open_session("olga")
    page = olga.page
    page.get_by_role("link", name="Playbooks").click()
    page.wait_for_url(grace.url + "/playbooks")
    cards = page.locator(".playbook-card")
    expect(cards).to_have_count(4)
    for name in PLAYBOOKS:
        expect(page.locator(f"#playbook-{name} h2")).to_have_text(name)
    crypto_card = page.locator(f"#playbook-{CRYPTO}")
    expect(crypto_card).to_contain_text("Schedule 0 2 * * 0 UTC · next")
    expect(crypto_card).to_contain_text("Event secrets.key.expiring")
    expect(crypto_card).to_contain_text("By hand")
    next_at = crypto_card.locator("time").first.get_attribute("datetime") or ""
    assert next_at.endswith("02:00:00+00:00")  # Sunday 02:00 UTC, whatever today is

    # A dry run, with the keyboard: force=true, then each step as would run, skipped or unknown.
    _wait_until_idle(grace, CRYPTO)
    crypto_card.get_by_role("link", name=CRYPTO).click()
    page.wait_for_url(grace.url + f"/playbooks/{CRYPTO}")
    page.get_by_label("force").select_option("true")
    _press_with_the_keyboard(page, "Dry run")
    page.wait_for_url(RUN_URL)
    dry_id = RUN_URL.match(page.url).group(1)  # type: ignore[union-attr]
    live = page.locator("#run-live")
    expect(live).to_have_attribute("data-status", "succeeded")
    expect(page.locator("h1")).to_have_text(f"Dry run of {CRYPTO}")
    expect(live).to_contain_text("nothing with side effects was called")
    expect(live).to_contain_text("force=true")
    expect(_step(page, "check_expiry").locator(".run-state")).to_have_text("ran (read only)")
    expect(_step(page, "rotate").locator(".run-state")).to_have_text("would run")
    expect(_step(page, "rotate")).to_contain_text("not called: it has side effects")
    expect(_step(page, "verify").locator(".run-state")).to_have_text("unknown")
    expect(_step(page, "distribute").locator(".run-state")).to_have_text("unknown")
    warn = _step(page, "warn").get_attribute("data-outcome")
    assert warn in ("skip", "run")  # known either way: keys_status was read
    olga.check_clean()

    # A real run: queued as a task, followed live on its page until it has succeeded.
    page.goto(grace.url + f"/playbooks/{CRYPTO}")
    expect(page.get_by_label("force")).to_have_value("false")
    page.get_by_role("button", name="Run now").click()
    page.wait_for_url(RUN_URL)
    run_id = RUN_URL.match(page.url).group(1)  # type: ignore[union-attr]
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    expect(page.locator("h1")).to_have_text(f"Run of {CRYPTO}")
    expect(live).to_have_attribute("data-status", "succeeded", timeout=90_000)
    assert navigations == []  # htmx replaced the run in place: no reload
    expect(_step(page, "check_expiry").locator(".run-state")).to_have_text("ran")
    expect(_step(page, "rotate").locator(".run-state")).to_have_text("skipped")  # not due, not forced
    expect(live).to_contain_text("run by hand")
    expect(live).to_contain_text("olga")
    expect(live.locator(".step-card[data-step='check_expiry']")).to_contain_text("1 attempt")
    olga.check_clean()

    # A run that fails after retries: the page follows it from queued or running to failed, in place.
    page.goto(grace.url + "/playbooks/recording_to_learning")
    page.get_by_label("note_id").fill("vn_no_such_note")
    page.get_by_role("button", name="Run now").click()
    page.wait_for_url(RUN_URL)
    failed_id = RUN_URL.match(page.url).group(1)  # type: ignore[union-attr]
    failing = page.locator("#run-live")
    assert failing.get_attribute("data-status") in ("queued", "running")  # three attempts take seconds
    navigations.clear()
    expect(failing).to_have_attribute("data-status", "failed", timeout=90_000)
    assert navigations == []
    note = _step(page, "note")
    expect(note.locator(".run-state")).to_have_text("failed")
    expect(note).to_contain_text("3 attempts")
    expect(note.locator(".attempts li")).to_have_count(3)
    expect(note.locator(".attempts li").first).to_contain_text("retried after")
    expect(failing.locator(".notice.error")).to_contain_text("step 'note'")
    olga.check_clean()

    # Both in the history, newest first, with each step's outcome; the list shows the last run.
    page.goto(grace.url + f"/playbooks/{CRYPTO}")
    items = page.locator("#runs .run-item")
    expect(items.first).to_have_attribute("data-run", run_id)
    real = page.locator(f"#runs .run-item[data-run='{run_id}']")
    expect(real.locator(".run-state")).to_have_text("succeeded")
    expect(real.locator(".chip[data-step='rotate']")).to_have_attribute("data-outcome", "skip")
    dry = page.locator(f"#runs .run-item[data-run='{dry_id}']")
    expect(dry).to_contain_text("dry run")
    expect(dry.locator(".chip[data-step='verify']")).to_have_attribute("data-outcome", "unknown")
    page.goto(grace.url + "/playbooks")
    expect(crypto_card.locator(".last-run a")).to_have_attribute("href", f"/playbooks/runs/{run_id}")
    expect(crypto_card.locator(".last-run .run-state")).to_have_text("succeeded")

    # Every playbooks page on a phone and a desktop, light and dark: no sideways scroll, axe clean.
    pages = {
        "playbooks": "/playbooks",
        "playbook": f"/playbooks/{CRYPTO}",
        "playbook-run": f"/playbooks/runs/{dry_id}",
        "playbook-run-failed": f"/playbooks/runs/{failed_id}",
    }
    found = {}
    for viewport in (PHONE, DESKTOP):
        page.set_viewport_size(viewport)
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            for name, path in pages.items():
                page.goto(grace.url + path)
                shot = f"{name}-{viewport['width']}-{scheme}"
                overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{shot} scrolls sideways by {overflow}px"
                screenshot(page, f"{grace.backend}-{shot}")
                found[shot] = axe_violations(page)
    assert found == {shot: [] for shot in found}
    olga.check_clean()


def test_a_member_sees_no_playbooks_and_cannot_run_one(grace: Grace, open_session: Any) -> None:
    aaron: Session = open_session("aaron")
    page = aaron.page
    expect(page.get_by_role("link", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("link", name="Playbooks")).to_have_count(0)
    refused = page.goto(grace.url + "/playbooks")
    assert refused is not None and refused.status == 403
    expect(page.locator("h1")).to_have_text("You can't do that here")
    expect(page.locator("[data-policy=playbooks]")).to_contain_text("this needs the operator role; you are member")
    assert page.goto(grace.url + f"/playbooks/{CRYPTO}").status == 403  # type: ignore[union-attr]

    before = len(_runs(grace, CRYPTO))
    with signed_in_client(grace, "aaron") as http:
        ran = http.post(f"/playbooks/{CRYPTO}/run", data={"mode": "dry_run", "csrf_token": csrf_of(http)})
        assert ran.status_code == 403 and 'data-policy="playbooks_run"' in ran.text
    assert len(_runs(grace, CRYPTO)) == before
    with grace.api("code_agent") as agent:
        assert agent.get("/playbooks").status_code == 403
        assert agent.get("/api/playbooks/runs").status_code == 403
