"""The browser suite: Debian's Chromium, driven by Playwright, against a real ``grace serve``.

One server per database (SQLite, and PostgreSQL when configured) and one browser for the whole
package; each test opens its own browser contexts (cookies apart). ``playwright install`` cannot
download here, so Chromium is the system's (``/usr/bin/chromium``, installed by ``make test``).
Screenshots go to ``tests/browser/artifacts/`` (git ignores it).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright
from sqlalchemy.engine import make_url

from grace.auth import Role
from grace.config import load_settings
from grace.services import build
from tests.backends import PostgresTestDatabase, SqliteTemplate, wanted_backends

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
GRACE = str(Path(sys.executable).with_name("grace"))

# A page must show what it should, not show it within Playwright's default 5 s: on a busy machine (the
# suite beside other work on two cores) a live update can take longer to arrive and render.
expect.set_options(timeout=20_000)
CHROMIUM = os.environ.get("GRACE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
AXE = (Path(__file__).resolve().parent / "vendor" / "axe.min.js").read_text(encoding="utf-8")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PASSWORD = "a long and correct password"
PHONE: Any = {"width": 375, "height": 740}
DESKTOP: Any = {"width": 1280, "height": 900}
# Who is on the server: (username, role), and their tokens: name -> (username, agent or None).
PEOPLE = (
    ("aaron", "member"),
    ("bella", "member"),
    ("olga", "operator"),
    ("adam", "admin"),
    ("carla", "member"),  # tries wrong passwords
    ("dana", "member"),  # poses for the screenshots
    ("erin", "member"),  # runs the dashboard's known workload
)
TOKENS = {
    "aaron": ("aaron", None),
    "code_agent": ("aaron", "code_agent"),
    "bella": ("bella", None),
    "bella_agent": ("bella", "mail_agent"),
    "dana": ("dana", None),
    "dana_agent": ("dana", "code_agent"),
    "erin": ("erin", None),
    "olga": ("olga", None),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Grace:
    """A running ``grace serve`` with its people and their API tokens."""

    url: str
    backend: str
    tokens: dict[str, str]
    log: Path
    shown_values: set[str] = field(default_factory=set)
    keys_of: dict[str, list[str]] = field(default_factory=dict)
    # The server's playbooks: a copy of the shipped ones; a test may add one and remove it after.
    playbooks_dir: Path | None = None

    def api(self, who: str) -> httpx.Client:
        """An HTTP client with ``who``'s bearer token (an agent's when ``who`` names one)."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)

    def store(self, who: str, key: str, *, secret_type: str = "api_key", service: str = "github") -> str:
        """Store a secret for ``who`` through the API; return its value (kept to check no page shows it)."""
        value = "val-" + secrets.token_hex(16)
        with self.api(who) as http:
            made = http.post(
                "/api/secrets/store",
                json={"secret_key": key, "secret_value": value, "secret_type": secret_type, "service": service},
            )
        assert made.status_code == 201, made.text
        self.shown_values.add(value)
        self.keys_of.setdefault(who, []).append(key)
        return value

    def ask(self, agent: str, key: str, action: str = "git_push", purpose: str = "Push code to repository") -> str:
        """Ask for a secret as ``agent``; return the pending consent's id."""
        with self.api(agent) as http:
            asked = http.post(
                f"/api/secrets/{key}/access",
                json={"requested_action": action, "requested_for": purpose, "context": {"repo": "grace_2"}},
            )
        assert asked.status_code == 202, asked.text
        return str(asked.json()["consent_id"])

    def collect(self, agent: str, key: str, consent_id: str) -> httpx.Response:
        with self.api(agent) as http:
            return http.post(f"/api/secrets/{key}/access", json={"consent_id": consent_id, "wait_seconds": 10})


async def _cast(settings: Any) -> dict[str, str]:
    services = await build(settings)
    try:
        accounts = services.accounts
        users = {}
        for username, role in PEOPLE:
            users[username], _ = await accounts.create_user(username, Role(role), PASSWORD)
        tokens = {}
        for name, (username, agent) in TOKENS.items():
            _, tokens[name] = await accounts.create_token(users[username].id, agent=agent, name=name)
        return tokens
    finally:
        await services.close()


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end on a thread of its own (Playwright's sync API holds this thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _pg(admin_url: str, statement: str) -> None:
    conn = await asyncpg.connect(make_url(admin_url).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="package", params=wanted_backends())
def grace(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: SqliteTemplate,
    postgres_database: PostgresTestDatabase | None,
) -> Iterator[Grace]:
    backend = str(request.param)
    data = tmp_path_factory.mktemp(f"web-{backend}")
    dropped = ""
    if backend == "sqlite":
        url = sqlite_template.copy_to(data)
    else:
        if postgres_database is None:
            pytest.skip("PostgreSQL not configured or unreachable (set GRACE_TEST_DATABASE_URL)")
        name = f"{postgres_database.name}_web"
        run_async(_pg(postgres_database.admin_url, f'CREATE DATABASE "{name}"'))
        dropped = name
        url = make_url(postgres_database.url).set(database=name).render_as_string(hide_password=False)
    port = _free_port()
    playbooks = data / "playbooks"
    shutil.copytree(ROOT / "playbooks", playbooks)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACE_")}
    env.update(
        GRACE_PLAYBOOKS_DIR=str(playbooks),
        GRACE_DATABASE_URL=url,
        GRACE_DATA_DIR=str(data / "data"),
        GRACE_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        GRACE_PORT=str(port),
        GRACE_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    settings = load_settings(
        data_dir=data / "data", database_url=url, master_key=env["GRACE_MASTER_KEY"], log_json=True
    )
    tokens = run_async(_cast(settings))
    log = data / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([GRACE, "serve"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a budget
        while True:
            assert proc.poll() is None, f"grace serve exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "grace serve did not become ready"
            time.sleep(0.1)
        yield Grace(base, backend, tokens, log, playbooks_dir=playbooks)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if dropped and postgres_database is not None:
            run_async(_pg(postgres_database.admin_url, f'DROP DATABASE IF EXISTS "{dropped}" WITH (FORCE)'))


@pytest.fixture(scope="package")
def playwright(postgres_database: PostgresTestDatabase | None) -> Iterator[Playwright]:
    # postgres_database is made first: its set-up runs an event loop, which Playwright's would forbid.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does it)", pytrace=False)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@dataclass
class Session:
    """A browser context signed in (or not) as one person, with its console errors collected."""

    context: BrowserContext
    page: Page
    grace: Grace
    errors: list[str]

    def go(self, path: str) -> Page:
        self.page.goto(self.grace.url + path)
        return self.page

    def check_clean(self) -> None:
        """Fail on console errors (a CSP violation is one) and on any stored value in the page."""
        assert not self.errors, self.errors
        html = self.page.content()
        leaked = [v for v in self.grace.shown_values if v in html]
        assert not leaked, "a secret value was rendered into the page"


@pytest.fixture
def open_session(grace: Grace, browser: Browser) -> Iterator[Any]:
    opened: list[BrowserContext] = []

    def _open(username: str | None = None, *, viewport: Any = None, **options: Any) -> Session:
        context = browser.new_context(viewport=viewport or DESKTOP, **options)
        opened.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        session = Session(context, page, grace, errors)
        if username is not None:
            sign_in(session, username)
        return session

    yield _open
    for context in opened:
        context.close()


def sign_in(session: Session, username: str, password: str = PASSWORD) -> None:
    page = session.go("/signin")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(session.grace.url + "/")


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Run axe-core (vendored) on the page; return the serious and critical violations."""
    page.evaluate(AXE + "\n;undefined")
    result = page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag',"
        " values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})).violations"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # caret="initial": hiding the caret injects a <style> element, which the page's CSP (rightly) refuses.
    page.screenshot(path=str(path), full_page=True, caret="initial")
    return path
