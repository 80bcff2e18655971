"""Every page's headers and markup: a strict CSP with no inline script or style, no framing, CSRF on every form."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import numpy as np
import pytest

from grace.web import CSP
from tests.browser.conftest import PASSWORD, Grace
from tests.voicekit import RATE, to_wav

PAGES = ["/signin", "/", "/consents/history", "/?status=denied", "/secrets", "/voice", "/dashboard"]


class InlineFinder(HTMLParser):
    """Collect what a strict CSP would block: inline scripts, event-handler and style attributes, style elements."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script":
            if "src" not in names:
                self.found.append("<script> without src")
            self._in_script = True
        if tag == "style":
            self.found.append("<style> element")
        self.found += [f"<{tag} {k}=...>" for k in names if k.startswith("on") or k == "style"]
        self.found += [
            f"<{tag} {k}=javascript:>" for k, v in attrs if v and v.strip().lower().startswith("javascript:")
        ]

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("inline script text")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


@contextlib.contextmanager
def signed_in_client(grace: Grace, username: str) -> Iterator[httpx.Client]:
    """A plain HTTP client that signs in through the form, as a browser would."""
    with httpx.Client(base_url=grace.url, timeout=30) as http:
        form = http.get("/signin").text
        token = re.search(r'name="form_token" value="([^"]+)"', form)
        assert token is not None
        done = http.post("/signin", data={"username": username, "password": PASSWORD, "form_token": token.group(1)})
        assert done.status_code == 303 and done.headers["location"] == "/"
        yield http


def csrf_of(http: httpx.Client) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/").text)
    assert found is not None
    return found.group(1)


# Pages for operators and admins (a member is refused them), scanned as Olga, an operator.
OPERATOR_PAGES = ["/playbooks", "/playbooks/crypto_key_persistence", "/playbooks/runs/{run}"]


def _a_dry_run(grace: Grace) -> str:
    with grace.api("olga") as api:
        made = api.post("/api/playbooks/crypto_key_persistence/run", json={"dry_run": True})
    assert made.status_code == 202, made.text
    return str(made.json()["run"]["id"])


@pytest.mark.parametrize(("path", "who"), [(p, "aaron") for p in PAGES] + [(p, "olga") for p in OPERATOR_PAGES])
def test_every_page_has_a_strict_policy_and_nothing_inline(grace: Grace, path: str, who: str) -> None:
    if "{run}" in path:
        path = path.format(run=_a_dry_run(grace))
    with signed_in_client(grace, who) as http:
        page = http.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "frame-ancestors 'none'" in CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    finder = InlineFinder()
    finder.feed(page.text)
    assert finder.found == []
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere


def test_a_form_post_without_the_csrf_token_is_refused(grace: Grace) -> None:
    key = "csrf_probe"
    grace.store("aaron", key)
    consent_id = grace.ask("code_agent", key)
    with signed_in_client(grace, "aaron") as http:
        url = f"/consents/{consent_id}/answer"
        missing = http.post(url, data={"decision": "approve"})
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = http.post(url, data={"decision": "approve", "csrf_token": "x" * 43})
        assert wrong.status_code == 403
        assert http.post("/signout", data={}).status_code == 403
        assert http.get("/").status_code == 200  # still signed in: the refused sign-out did nothing
        still = grace.collect("code_agent", key, consent_id)
        assert still.status_code == 202  # nothing was approved

        token = csrf_of(http)
        answered = http.post(url, data={"decision": "deny", "reason": "probe", "csrf_token": token})
        assert answered.status_code == 303
    assert grace.collect("code_agent", key, consent_id).status_code == 403


def test_the_sign_in_form_is_refused_without_its_own_token(grace: Grace) -> None:
    with httpx.Client(base_url=grace.url) as http:
        forged = http.post("/signin", data={"username": "aaron", "password": PASSWORD})
        assert forged.status_code == 403 and "grace_session" not in forged.cookies
        assert "This sign-in form had expired" in forged.text


def test_an_agent_token_gets_no_page_that_answers_consents(grace: Grace) -> None:
    grace.store("aaron", "agent_probe")
    consent_id = grace.ask("code_agent", "agent_probe")
    with grace.api("code_agent") as agent:
        for method, path in (("GET", "/"), ("GET", "/consents/history"), ("GET", "/consents/stream")):
            refused = agent.request(method, path)
            assert refused.status_code == 403, path
            assert 'data-policy="consents"' in refused.text
            assert "an agent (code_agent) cannot" in refused.text
        answer = agent.post(f"/consents/{consent_id}/answer", data={"decision": "approve"})
        assert answer.status_code == 403
    assert grace.collect("code_agent", "agent_probe", consent_id).status_code == 202


def test_pages_are_not_for_strangers(grace: Grace) -> None:
    with httpx.Client(base_url=grace.url) as http:
        home = http.get("/")
        assert home.status_code == 303 and home.headers["location"] == "/signin"
        deep = http.get("/?status=denied")
        assert deep.headers["location"] == "/signin?next=%2F%3Fstatus%3Ddenied"
        fragment = http.get("/consents/history", headers={"HX-Request": "true"})
        assert fragment.status_code == 401 and fragment.headers["hx-redirect"].startswith("/signin")


def _tone() -> bytes:
    """A second of a 440 Hz tone: audio enough for an upload (nothing here is transcribed)."""
    samples = 8000 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    return to_wav(samples.astype(np.int16))


def test_every_post_form_carries_the_csrf_token_and_a_voice_upload_without_it_is_refused(grace: Grace) -> None:
    with grace.api("bella") as api:
        note_id = api.post("/api/voice-notes/start", json={"title": "Tone"}).json()["session_id"]
        uploaded = api.post(f"/api/voice-notes/{note_id}/upload", files={"file": ("tone.wav", _tone(), "audio/wav")})
        assert uploaded.status_code == 200, uploaded.text
    with signed_in_client(grace, "bella") as http:
        for path in ("/", "/secrets", "/voice", f"/voice/{note_id}"):
            forms = FormFinder()
            forms.feed(http.get(path).text)
            assert forms.posts, path
            assert forms.posts == [True] * len(forms.posts), f"{path}: a POST form without csrf_token"
        refused = http.post("/voice", data={"title": "Forged"}, files={"file": ("tone.wav", _tone(), "audio/wav")})
        assert refused.status_code == 403 and "CSRF" in refused.text
        assert "Forged" not in http.get("/voice").text
        consent = http.post(f"/voice/{note_id}/consent", data={"scopes": ["recording", "transcription"]})
        assert consent.status_code == 403
        assert "waiting for your consent" in http.get(f"/voice/{note_id}").text
        token = csrf_of(http)
        assert http.post(f"/voice/{note_id}/delete", data={"csrf_token": token}).status_code == 303
        assert http.get(f"/voice/{note_id}").status_code == 404


def test_a_playbook_run_without_the_csrf_token_is_refused_and_starts_nothing(grace: Grace) -> None:
    def runs() -> int:
        with grace.api("olga") as api:
            return len(api.get("/api/playbooks/runs?playbook=crypto_key_persistence&limit=200").json()["runs"])

    before = runs()
    with signed_in_client(grace, "olga") as http:
        page = http.get("/playbooks/crypto_key_persistence")
        forms = FormFinder()
        forms.feed(page.text)
        assert forms.posts and forms.posts == [True] * len(forms.posts)  # sign-out and the run form
        url = "/playbooks/crypto_key_persistence/run"
        missing = http.post(url, data={"mode": "dry_run"})
        assert missing.status_code == 403 and "CSRF" in missing.text
        wrong = http.post(url, data={"mode": "dry_run", "csrf_token": "x" * 43})
        assert wrong.status_code == 403
        assert runs() == before
        done = http.post(url, data={"mode": "dry_run", "csrf_token": csrf_of(http)})
        assert done.status_code == 303 and done.headers["location"].startswith("/playbooks/runs/pbr_")
    assert runs() == before + 1


class FormFinder(HTMLParser):
    """For each POST form, whether it holds a csrf_token field."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[bool] = []
        self._in_post = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self._in_post = (values.get("method") or "get").lower() == "post"
            if self._in_post:
                self.posts.append(False)
        if tag == "input" and self._in_post and values.get("name") == "csrf_token" and values.get("value"):
            self.posts[-1] = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_post = False
