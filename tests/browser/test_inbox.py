"""The consent inbox: requests arrive live, are answered with a click, and the agent gets its answer."""

from __future__ import annotations

import re
import secrets
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import Grace


def _key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def test_a_request_appears_live_and_an_approval_releases_the_value(grace: Grace, open_session: Any) -> None:
    key = _key("github_api_token")
    value = grace.store("aaron", key)
    session = open_session("aaron")
    page = session.page
    expect(page.locator(".inbox")).to_be_visible()
    page.wait_for_function("() => document.querySelector('[sse-connect]') !== null")

    consent_id = grace.ask("code_agent", key)
    card = page.locator(f"#consent-{consent_id}")
    expect(card).to_be_visible(timeout=20_000)  # live, without a reload
    expect(card.get_by_role("heading")).to_have_text(
        re.compile(r"Grace wants to use your github credentials to push code\. Allow\?")
    )
    expect(card.locator(".facts")).to_contain_text("Service: github • Action: git_push • MEDIUM RISK")
    expect(card).to_contain_text("Push code to repository")
    expect(card).to_contain_text("code_agent")
    expect(card).to_contain_text("repo: grace_2")
    expect(card).to_have_class(re.compile("risk-medium"))
    expect(card.locator(".countdown")).to_have_text(re.compile(r"in [45]:\d\d"))

    card.get_by_role("button", name="Approve").click()
    expect(page.locator("#flash")).to_contain_text(f"Approved: code_agent may use {key}")
    expect(card).to_have_count(0)
    expect(page.locator(f"#h-{consent_id}")).to_contain_text("Approved")

    collected = grace.collect("code_agent", key, consent_id)
    assert collected.status_code == 200 and collected.json()["secret_value"] == value
    session.check_clean()


def test_a_denial_with_a_reason_shows_in_the_history_and_refuses_the_agent(grace: Grace, open_session: Any) -> None:
    key = _key("deploy_key")
    grace.store("aaron", key, service="fly")
    consent_id = grace.ask("code_agent", key, action="deploy", purpose="Deploy the staging app")
    session = open_session("aaron")
    page = session.page
    card = page.locator(f"#consent-{consent_id}")
    card.get_by_label("Reason (optional)").fill("not during the freeze")
    card.get_by_role("button", name="Deny").click()
    expect(card).to_have_count(0)
    entry = page.locator(f"#h-{consent_id}")
    expect(entry).to_contain_text("Denied")
    expect(entry).to_contain_text("not during the freeze")
    expect(entry).to_contain_text("fly: Deploy the staging app")

    page.get_by_label("Status").select_option("denied")
    expect(page.locator("#history-list .status").filter(has_not_text="Denied")).to_have_count(0)
    expect(page.locator(f"#h-{consent_id}")).to_be_visible()
    assert grace.collect("code_agent", key, consent_id).status_code == 403
    session.check_clean()


def test_a_critical_secret_needs_a_second_approver_from_another_browser(grace: Grace, open_session: Any) -> None:
    key = _key("prod_ssh")
    value = grace.store("aaron", key, secret_type="ssh_key", service="prod")
    owner = open_session("aaron")
    operator = open_session("olga")
    consent_id = grace.ask("code_agent", key, action="ssh_connect", purpose="Restart the web server")

    card = owner.page.locator(f"#consent-{consent_id}")
    expect(card).to_have_class(re.compile("risk-critical"))
    expect(card).to_contain_text("a second person (an operator or admin) must approve too")
    card.get_by_role("button", name="Approve").click()
    expect(card).to_contain_text("You approved this")
    expect(card).to_contain_text("Approved so far: aaron")
    expect(card.get_by_role("button")).to_have_count(0)  # the owner cannot be the second approver
    assert grace.collect("code_agent", key, consent_id).status_code == 202  # still waiting

    second = operator.page.locator(f"#consent-{consent_id}")
    expect(second).to_contain_text("aaron approved this", timeout=20_000)
    second.get_by_role("button", name="Approve as second approver").click()
    expect(second).to_have_count(0)
    expect(card).to_have_count(0)  # gone from the owner's page too, live

    collected = grace.collect("code_agent", key, consent_id)
    assert collected.status_code == 200 and collected.json()["secret_value"] == value
    owner.check_clean()
    operator.check_clean()


def test_a_member_never_sees_another_members_requests(grace: Grace, open_session: Any) -> None:
    key = _key("mailbox")
    grace.store("aaron", key, secret_type="password", service="mail")
    bella = open_session("bella")
    theirs = grace.ask("code_agent", key, action="send_email", purpose="Send the weekly report")
    own_key = _key("bella_token")
    grace.store("bella", own_key, service="calendar")
    own = grace.ask("bella_agent", own_key, action="read_events", purpose="Plan the week")
    expect(bella.page.locator(f"#consent-{own}")).to_be_visible(timeout=20_000)
    expect(bella.page.locator(f"#consent-{theirs}")).to_have_count(0)
    assert theirs not in bella.page.content()
    bella.go("/?status=pending")
    assert theirs not in bella.page.content()


# A hidden tab and granted permission, with a named fake Notification that records what it is given,
# and a flag raised when the inbox's event stream has opened.
_HIDDEN_TAB_WITH_RECORDING_NOTIFICATION = """
    Object.defineProperty(document, 'hidden', {get: () => true});
    Object.defineProperty(document, 'visibilityState', {get: () => 'hidden'});
    window.shownNotifications = [];
    window.streamOpen = false;
    document.addEventListener('htmx:sseOpen', () => { window.streamOpen = true; });
    class RecordingNotification {
      static permission = 'granted';
      static requestPermission() { return Promise.resolve('granted'); }
      constructor(title, options) { window.shownNotifications.push({title, body: options.body, tag: options.tag}); }
      close() {}
    }
    window.Notification = RecordingNotification;
"""


def test_a_new_request_is_announced_when_the_tab_is_in_the_background(grace: Grace, open_session: Any) -> None:
    key = _key("notify_key")
    grace.store("aaron", key, service="github")
    session = open_session()
    session.context.add_init_script(_HIDDEN_TAB_WITH_RECORDING_NOTIFICATION)
    from tests.browser.conftest import sign_in

    sign_in(session, "aaron")
    page = session.page
    page.wait_for_function("() => window.streamOpen")
    consent_id = grace.ask("code_agent", key)
    expect(page.locator(f"#consent-{consent_id}")).to_be_attached(timeout=20_000)
    page.wait_for_function("() => window.shownNotifications.length > 0")
    shown = page.evaluate("() => window.shownNotifications")
    assert shown == [
        {
            "title": "Grace asks",
            "body": "Grace wants to use your github credentials to push code. Allow?",
            "tag": f"consent-{consent_id}",
        }
    ]
    assert not page.locator("#notify").is_visible()  # permission already decided: nothing to ask


def test_a_request_that_arrives_before_the_stream_opens_is_announced_and_one_already_shown_is_not(
    grace: Grace, open_session: Any
) -> None:
    key = _key("notify_late_key")
    grace.store("aaron", key, service="github")
    earlier = grace.ask("code_agent", key)  # on the page when it is drawn: the person can see it
    session = open_session()
    session.context.add_init_script(_HIDDEN_TAB_WITH_RECORDING_NOTIFICATION)
    from tests.browser.conftest import sign_in

    asked: list[str] = []

    def ask_then_open(route: Any) -> None:
        # The request arrives after the page is drawn and before its stream opens: the stream's first
        # message (the whole list) is the only place the page learns of it.
        if not asked:
            asked.append(grace.ask("code_agent", key))
        route.continue_()

    session.page.route("**/consents/stream*", ask_then_open)
    sign_in(session, "aaron")
    page = session.page
    expect(page.locator(f"#consent-{earlier}")).to_be_attached()
    page.wait_for_function("() => window.streamOpen")
    expect(page.locator(f"#consent-{asked[0]}")).to_be_attached(timeout=20_000)
    page.wait_for_function("() => window.shownNotifications.length > 0")
    shown = page.evaluate("() => window.shownNotifications")
    assert [n["tag"] for n in shown] == [f"consent-{asked[0]}"]
    assert shown[0]["body"] == "Grace wants to use your github credentials to push code. Allow?"
