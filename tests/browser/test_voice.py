"""The voice notes pages: a note recorded through Chromium's fake microphone (an espeak-ng WAV) is
consented to, followed live through its stages, transcribed, found by search, and the hit seeks the
recording; subtitles download; a member never sees another's notes; delete leaves nothing.

Chromium is launched once for this module with ``--use-file-for-fake-audio-capture``, so
``getUserMedia`` hears the WAV (looped) and MediaRecorder records it as a real browser would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect

from tests.browser.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    Grace,
    Session,
    axe_violations,
    screenshot,
    sign_in,
)
from tests.browser.test_security import InlineFinder
from tests.voicekit import compose

# Each sentence at a known offset in a 10.5 s recording; the second is what the search finds.
FIRST = "The quarterly budget review moves to Thursday afternoon."
SECOND = "Please send the revised spreadsheet to Maria before noon."
PROCESSED_TIMEOUT_MS = 240_000  # the first note loads both models into grace serve on a shared machine


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("fake-mic")
    spoken = compose("Budget", [(0.5, FIRST), (5.5, SECOND)], workdir, tail=1.5)
    path = workdir / "budget.wav"
    path.write_bytes(spoken.wav)
    return path


@pytest.fixture(scope="module")
def mic_browser(playwright: Playwright, speech: Path) -> Iterator[Browser]:
    fake_mic = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + fake_mic)
    yield launched
    launched.close()


@pytest.fixture
def open_mic_session(grace: Grace, mic_browser: Browser) -> Iterator[Any]:
    opened = []

    def _open(username: str, *, viewport: Any = None) -> Session:
        context = mic_browser.new_context(viewport=viewport or DESKTOP, permissions=["microphone"])
        opened.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        session = Session(context, page, grace, errors)
        sign_in(session, username)
        return session

    yield _open
    for context in opened:
        context.close()


def _current_time(page: Page) -> float:
    return float(page.locator("#player").evaluate("a => a.currentTime"))


def _shoot(page: Page, grace: Grace, name: str, found: dict[str, Any]) -> None:
    """Screenshots and axe-core at 375 and 1280 px, light and dark, on the page as it is."""
    for viewport in (PHONE, DESKTOP):
        page.set_viewport_size(viewport)
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            shot = f"{name}-{viewport['width']}-{scheme}"
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{shot} scrolls sideways by {overflow}px"
            screenshot(page, f"{grace.backend}-{shot}")
            found[shot] = axe_violations(page)
    page.set_viewport_size(DESKTOP)
    page.emulate_media(color_scheme="light")


def test_a_recorded_note_is_transcribed_found_by_search_and_the_hit_seeks_the_audio(
    grace: Grace, open_mic_session: Any
) -> None:
    session: Session = open_mic_session("aaron")
    page = session.go("/voice")
    title = f"Budget call {grace.backend}"
    page.get_by_label("Title").fill(title)
    page.get_by_label("Purpose (optional)").fill("meeting")
    page.get_by_role("button", name="Record", exact=True).click()
    expect(page.locator("#rec-status")).to_have_text("Recording")
    # Record the whole WAV once (10.5 s): wait for the page's own clock, then stop.
    page.wait_for_function("() => document.getElementById('rec-time').textContent >= '0:10'", timeout=30_000)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#recorder")).to_have_attribute("data-recorded", "true")
    assert page.locator("#v-file").evaluate("i => i.files[0].size") > 1000
    page.get_by_role("button", name="Save and continue").click()

    # The consent step: three scopes, recording and transcription chosen, learning left out.
    expect(page.get_by_role("heading", name="What may Grace do with this recording?")).to_be_visible()
    expect(page.get_by_label("Keep the recording")).to_be_checked()
    expect(page.get_by_label("Transcribe it")).to_be_checked()
    expect(page.get_by_label("Learn from it")).not_to_be_checked()
    note_url = page.url
    note_id = note_url.rsplit("/", 1)[1]
    # Watch the progress stream's messages (the page itself is never reloaded by the test).
    seen: list[str] = []
    page.expose_function("graceSaw", lambda kind: seen.append(kind))
    page.add_init_script("document.addEventListener('htmx:sseMessage', e => window.graceSaw(e.detail.type))")
    page.get_by_role("button", name="Allow and start").click()
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#note-status")).to_have_text("ready", timeout=PROCESSED_TIMEOUT_MS)
    assert "progress" in seen  # the stages arrived over the stream, and its "done" reloaded the page
    # tiny.en hears a browser's Opus recording of espeak-ng well but not perfectly ("spreadsheet" has
    # come back as "grant sheet"): the test leans on the words it always got right.
    expect(page.locator("#transcript")).to_contain_text("Maria")
    expect(page.get_by_text("not fed to the learning loop")).to_be_visible()

    # Clicking a line plays the recording from that line's start.
    line = page.locator("button.line", has_text="Maria")
    start = float(line.get_attribute("data-start") or "nan")
    assert 3.0 < start < 9.0  # the second sentence, not the beginning
    line.click()
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {start}) < 0.6")

    # Subtitles download, in both formats, with the words and their times.
    for fmt, arrow in (("SRT", "-->"), ("VTT", "WEBVTT")):
        with page.expect_download() as download:
            page.get_by_role("link", name=fmt).click()
        text = Path(download.value.path()).read_text(encoding="utf-8")
        assert arrow in text and "Maria" in text
        assert download.value.suggested_filename == f"{title}.{fmt.lower()}"

    # Search across notes: the hit names the moment, and following it seeks the audio there.
    page = session.go("/voice")
    page.get_by_label("Words or meaning").fill("what should I send to Maria")
    page.get_by_role("button", name="Search").click()
    hit = page.locator(f".hit a[href^='/voice/{note_id}?t=']").first
    expect(hit).to_contain_text(title)
    at = float(hit.get_attribute("data-start") or "nan")
    assert 3.0 < at < 9.0
    inline = InlineFinder()  # the hits' markup, like every page's, has nothing a strict CSP would block
    inline.feed(page.content())
    assert inline.found == []
    found: dict[str, Any] = {}
    _shoot(page, grace, "voice", found)
    hit.click()
    page.wait_for_url(f"**/voice/{note_id}?t=*")
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {at}) < 0.6")
    expect(page.locator("button.line.playing")).to_contain_text("Maria")
    _shoot(page, grace, "voice-note", found)
    assert found == {shot: [] for shot in found}
    session.check_clean()

    # Another member sees nothing of it: not listed, not found, not openable, not playable.
    bella: Session = open_mic_session("bella")
    page_b = bella.go("/voice?q=" + "what should I send to Maria")
    expect(page_b.get_by_text("Nothing you said matches")).to_be_visible()
    assert title not in page_b.content()
    cookies = {c["name"]: c["value"] for c in bella.context.cookies()}
    with httpx.Client(base_url=grace.url, cookies=cookies) as http:
        assert http.get(f"/voice/{note_id}").status_code == 404
        assert http.get(f"/api/voice-notes/{note_id}/audio").status_code == 404
        assert http.get(f"/voice/{note_id}/progress").status_code == 404

    # Delete: gone from the list, the search and the audio route.
    page = session.go(f"/voice/{note_id}")
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Deleted: the recording")).to_be_visible()
    expect(page.locator(".note-item", has_text=title)).to_have_count(0)
    page = session.go("/voice?q=send+to+Maria")
    expect(page.locator(f".hit a[href^='/voice/{note_id}']")).to_have_count(0)
    cookies = {c["name"]: c["value"] for c in session.context.cookies()}
    with httpx.Client(base_url=grace.url, cookies=cookies) as http:
        assert http.get(f"/api/voice-notes/{note_id}/audio").status_code == 404


def test_an_uploaded_file_asks_for_consent_and_a_file_that_is_not_audio_is_refused(
    grace: Grace, open_mic_session: Any, speech: Path, tmp_path: Path
) -> None:
    session: Session = open_mic_session("bella")
    page = session.go("/voice")
    fake = tmp_path / "notes.wav"
    fake.write_text("these are not sounds")
    page.get_by_label("Title").fill("Not audio")
    page.get_by_label("Audio file (WAV").set_input_files(str(fake))
    page.get_by_role("button", name="Save and continue").click()
    expect(page.locator(".notice.error")).to_contain_text("not audio")
    expect(page.locator(".note-list")).to_have_count(0)  # nothing was left behind

    page.get_by_label("Title").fill("Uploaded budget")
    page.get_by_label("Audio file (WAV").set_input_files(str(speech))
    page.get_by_role("button", name="Save and continue").click()
    expect(page.get_by_role("group", name="Your consent")).to_be_visible()
    for label in ("Keep the recording", "Transcribe it", "Learn from it"):
        expect(page.get_by_label(label)).to_be_visible()
    found: dict[str, Any] = {}
    _shoot(page, grace, "voice-consent", found)
    assert found == {shot: [] for shot in found}
    # Consenting to nothing is refused in words; the note still waits.
    for label in ("Keep the recording", "Transcribe it"):
        page.get_by_label(label).uncheck()
    page.get_by_role("button", name="Allow and start").click()
    expect(page.get_by_text("choose what Grace may do")).to_be_visible()
    page = session.go("/voice")
    expect(page.locator(".note-item", has_text="Uploaded budget")).to_contain_text("waiting for your consent")
    page.locator(".note-item a", has_text="Uploaded budget").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".note-item", has_text="Uploaded budget")).to_have_count(0)
    # The two refusals above were answered 422, which Chromium logs; anything else logged is a fault.
    session.errors[:] = [e for e in session.errors if "status of 422" not in e]
    session.check_clean()
