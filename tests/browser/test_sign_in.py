"""Signing in and out in a real browser, and the sign-in limit's message as a person reads it."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, Grace


def test_a_person_signs_in_lands_on_the_inbox_and_signs_out(grace: Grace, open_session: Any) -> None:
    session = open_session()
    page = session.go("/")
    expect(page).to_have_url(re.compile(r"/signin"))  # not signed in: sent to the sign-in page
    page.get_by_label("Username").fill("aaron")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Password").press("Enter")  # the keyboard is enough
    page.wait_for_url(grace.url + "/")
    expect(page.get_by_role("heading", name="Waiting for your answer")).to_be_visible()
    expect(page.locator(".who .user")).to_contain_text("aaron")
    cookies = {c["name"]: c for c in session.context.cookies()}
    assert cookies["grace_session"]["httpOnly"] and cookies["grace_session"]["sameSite"] == "Strict"
    assert cookies["grace_csrf"]["httpOnly"]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    session.go("/")
    expect(page).to_have_url(re.compile(r"/signin"))  # the session is over on the server too
    session.check_clean()


def test_a_wrong_password_says_so_and_keeps_the_username(grace: Grace, open_session: Any) -> None:
    session = open_session()
    page = session.go("/signin")
    page.get_by_label("Username").fill("bella")
    page.get_by_label("Password").fill("not her password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("username and password don't match"))
    expect(page.get_by_label("Username")).to_have_value("bella")
    expect(page.get_by_label("Password")).to_be_focused()


def test_after_too_many_wrong_passwords_the_page_says_when_to_try_again(grace: Grace, open_session: Any) -> None:
    session = open_session()
    page = session.go("/signin")
    for _ in range(5):
        page.get_by_label("Username").fill("carla")
        page.get_by_label("Password").fill("wrong guess")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_be_visible()
    # Even the right password is refused now, in words, with the time to wait.
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("paused signing in here")
    expect(alert).to_contain_text(
        re.compile(r"Try again in (5 minutes|\d+ seconds) \(after \d{4}-\d\d-\d\d \d\d:\d\d UTC\)")
    )
    expect(alert).to_contain_text("Other devices are not affected")
    assert "429" not in alert.inner_text() and "rate" not in alert.inner_text().lower()
