"""The secrets pages: add one with its risk shown as classified, the masked list, one secret's trail, revoke."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import Grace


def test_a_secret_added_in_the_browser_is_listed_masked_and_revoked_with_its_trail(
    grace: Grace, open_session: Any
) -> None:
    key = f"deploy_ssh_{secrets.token_hex(3)}"
    value = "ssh-ed25519-" + secrets.token_hex(20)
    grace.shown_values.add(value)
    session = open_session("aaron")
    page = session.go("/secrets")
    expect(page.locator("#classified")).to_contain_text("MEDIUM RISK")  # an API key, the default type
    page.get_by_label("Type").select_option("ssh_key")
    expect(page.locator("#classified")).to_contain_text("CRITICAL RISK")
    expect(page.locator("#classified")).to_contain_text("a second person")
    page.get_by_label("Key").fill(key)
    page.get_by_label("Service").fill("prod")
    page.get_by_label("Value").fill(value)
    page.get_by_role("button", name="Store it").click()
    expect(page.get_by_text("Stored. The value is not shown again.")).to_be_visible()
    expect(page.locator("#audit")).to_contain_text("secret.stored")
    session.check_clean()

    consent_id = grace.ask("code_agent", key, action="ssh_connect", purpose="Restart")
    page = session.go("/secrets")
    item = page.locator(f"#secret-{key}")
    expect(item).to_contain_text("prod • ssh_key • Critical risk")
    expect(item).to_contain_text("Used 0 times")
    item.get_by_role("link", name=key).click()
    page.get_by_label("Reason for revoking (optional)").fill("leaked")
    page.get_by_role("button", name="Revoke this secret").click()
    expect(page.locator(".details")).to_contain_text("revoked")
    expect(page.locator("#audit")).to_contain_text("secret.revoked")
    assert grace.collect("code_agent", key, consent_id).status_code == 403
    session.check_clean()


def test_a_member_never_sees_another_members_secrets(grace: Grace, open_session: Any) -> None:
    key = f"aarons_only_{secrets.token_hex(3)}"
    grace.store("aaron", key)
    bella = open_session("bella")
    page = bella.go("/secrets")
    expect(page.get_by_role("heading", name="Your secrets")).to_be_visible()
    assert key not in page.content()
    with httpx.Client(
        base_url=grace.url, cookies=dict((c["name"], c["value"]) for c in bella.context.cookies())
    ) as http:
        assert http.get(f"/secrets/{key}").status_code == 404
