"""Every page on a 375 px phone and a 1280 px desktop, light and dark: screenshots, axe-core, the keyboard.

Screenshots are saved under ``tests/browser/artifacts/`` (git ignores it) to be looked at; axe-core
(vendored in ``tests/browser/vendor``) must find no serious or critical violation on any of them.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DESKTOP, PHONE, Grace, Session, axe_violations, screenshot


def _with_requests(grace: Grace, owner: str, agent: str) -> str:
    """Leave ``owner`` an answered request and a pending one of two colours, so the inbox shows them."""
    suffix = secrets.token_hex(2)
    for risk_type, service in (("api_key", "github"), ("password", "mail"), ("ssh_key", "prod")):
        grace.store(owner, f"shot_{risk_type}_{suffix}", secret_type=risk_type, service=service)
    denied = grace.ask(agent, f"shot_password_{suffix}", action="send_email", purpose="Send the weekly report")
    with grace.api(owner) as http:
        http.post(
            "/api/secrets/consent/respond", json={"consent_id": denied, "approved": False, "denial_reason": "not now"}
        )
    grace.ask(agent, f"shot_ssh_key_{suffix}", action="ssh_connect", purpose="Restart the web server")
    return grace.ask(agent, f"shot_api_key_{suffix}")


PAGES = {"signin": "/signin", "inbox": "/", "secrets": "/secrets"}


def test_every_page_reads_well_and_passes_axe_on_a_phone_and_a_desktop_light_and_dark(
    grace: Grace, open_session: Any
) -> None:
    pending = _with_requests(grace, "dana", "dana_agent")
    pages = {**PAGES, "secret": "/secrets/" + grace.keys_of["dana"][0]}
    found = {}
    for viewport in (PHONE, DESKTOP):
        for scheme in ("light", "dark"):
            signed_out: Session = open_session(viewport=viewport, color_scheme=scheme)
            signed_in: Session = open_session("dana", viewport=viewport, color_scheme=scheme)
            for name, path in pages.items():
                session = signed_out if name == "signin" else signed_in
                page = session.go(path)
                if name == "inbox":
                    expect(page.locator(f"#consent-{pending}")).to_be_visible()
                shot = f"{name}-{viewport['width']}-{scheme}"
                overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{shot} scrolls sideways by {overflow}px"
                screenshot(page, f"{grace.backend}-{shot}")
                found[shot] = axe_violations(page)
                session.check_clean()
    assert found == {shot: [] for shot in found}


def test_the_inbox_is_usable_with_the_keyboard_alone(grace: Grace, open_session: Any) -> None:
    pending = _with_requests(grace, "aaron", "code_agent")
    session = open_session("aaron")
    page = session.page
    card = page.locator(f"#consent-{pending}")
    expect(card).to_be_visible()
    approve = card.get_by_role("button", name="Approve")
    for _ in range(60):
        page.keyboard.press("Tab")
        if approve.evaluate("b => b === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the Approve button")
    page.keyboard.press("Enter")
    expect(card).to_have_count(0)
    expect(page.locator("#flash")).to_contain_text("Approved")
