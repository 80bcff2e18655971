"""The canary: a secret planted in every test's vault that must never leak anywhere.

One random value per test session is stored (as the bootstrap admin's secret
``canary_token``) in the vault of every test that builds the services. A
:class:`Collector` gathers, for the whole session:

- every log record (a root handler, formatted as Grace formats them, plus
  every attribute of the record),
- every HTTP response the ``client`` fixture receives (headers and body),
- every event left on the bus and the vault's tables at rest when a test ends
  (the SQLite file with its WAL, or the PostgreSQL rows),
- the text of every failed test's report (errors and tracebacks),
- the ``repr`` of every live object from a ``grace`` module at session end,
  and of everything the vault returns while planting.

The one authorised retrieval (a consented access over HTTP) is marked with
:meth:`Collector.authorise`. Anything else that contains the value is a leak:
``tests/acceptance/test_vault_zz_canary.py`` fails on it, and so does the
session end hook.
"""

from __future__ import annotations

import gc
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, text

from grace.auth import Principal, Role
from grace.logs import JsonFormatter

CANARY_KEY = "canary_token"
CANARY_VALUE = "cnry-" + secrets.token_hex(20)
VAULT_TABLES = (
    "vault_secrets",
    "vault_secret_versions",
    "secret_consent_records",
    "vault_audit",
    "vault_audit_checkpoints",
    "vault_usage",
    "events",
    "playbook_runs",
)


@dataclass
class Collector:
    """Everything seen during a session that must not contain ``needle``."""

    needle: str
    texts: list[tuple[str, str]] = field(default_factory=list)
    responses: list[tuple[httpx.Response, str]] = field(default_factory=list)
    authorised: set[int] = field(default_factory=set)
    planted: int = 0
    scanned: dict[str, int] = field(default_factory=dict)

    def add(self, where: str, value: str | bytes) -> None:
        kind = where.split(":", 1)[0]
        self.scanned[kind] = self.scanned.get(kind, 0) + 1
        if isinstance(value, bytes):
            if self.needle.encode() in value:
                self.texts.append((where, "<bytes containing the needle>"))
            return
        if self.needle in value:
            self.texts.append((where, value))

    async def record_response(self, response: httpx.Response) -> None:
        """An httpx response hook: keep the headers and body of every response.

        A live event stream cannot be read to its end here; its events are scanned by the test reading it.
        """
        if response.headers.get("content-type", "").startswith("text/event-stream") and not response.is_closed:
            self.scanned["stream"] = self.scanned.get("stream", 0) + 1
            return
        await response.aread()
        body = "\n".join(f"{k}: {v}" for k, v in response.headers.items()) + "\n\n" + response.text
        self.scanned["response"] = self.scanned.get("response", 0) + 1
        if self.needle in body:
            self.responses.append((response, f"{response.request.method} {response.request.url.path}"))

    def authorise(self, response: httpx.Response) -> None:
        """Mark the one response allowed to carry the value."""
        self.authorised.add(id(response))

    def leaks(self) -> list[str]:
        found = [f"{where}: {text[:300]}" for where, text in self.texts]
        found += [f"response {label}" for response, label in self.responses if id(response) not in self.authorised]
        return found


class CapturingHandler(logging.Handler):
    """Send every log record, fully formatted and with all its attributes, to a collector."""

    def __init__(self, collector: Collector) -> None:
        super().__init__(logging.DEBUG)
        self.collector = collector
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.formatter_.format(record)
        except Exception:  # a record that cannot be formatted still gets scanned by its parts
            line = ""
        self.collector.add(f"log:{record.name}", line + " " + repr(record.__dict__))


SESSION = Collector(CANARY_VALUE)
_handler = CapturingHandler(SESSION)


def install() -> None:
    """Start collecting log records for the session."""
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)
    logging.getLogger("grace").setLevel(logging.DEBUG)


async def plant(services: Any) -> None:
    """Store the canary in this test's vault, as the bootstrap admin's api_key."""
    vault = services.vault
    if vault is None or services.bootstrap is None:
        return
    admin = await services.accounts.get_user(services.bootstrap.username)
    principal = Principal(admin.id, admin.username, Role.ADMIN)
    info = await vault.store(principal, CANARY_KEY, CANARY_VALUE, secret_type="api_key", service="canary")
    SESSION.add("repr:planted", repr(info) + repr(vault) + repr(info.as_dict()))
    SESSION.planted += 1


async def sweep(services: Any) -> None:
    """Scan what a test left behind: bus events, and the vault's tables at rest."""
    for event in await services.bus.replay("#", since=0, limit=100_000):
        SESSION.add(f"bus:{event.topic}", repr(event.as_dict()))
    db = services.db
    if db.is_sqlite:
        path = Path(db.engine.url.database or "")
        for candidate in (path, Path(str(path) + "-wal")):
            if candidate.exists():
                SESSION.add(f"at-rest:{candidate.name}", candidate.read_bytes())
        return
    async with db.read() as conn:
        for table in VAULT_TABLES:
            rows = (await conn.execute(select(text("*")).select_from(text(table)))).all()
            for row in rows:
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        SESSION.add(f"at-rest:{table}", bytes(value))
                    else:
                        SESSION.add(f"at-rest:{table}", str(value))


def scan_live_objects(collector: Collector) -> None:
    """Add the repr of every live object defined in a ``grace`` module."""
    for obj in gc.get_objects():
        module = getattr(type(obj), "__module__", "")
        if not isinstance(module, str) or not module.startswith("grace.") or isinstance(obj, type):
            continue
        try:
            collector.add(f"repr:{type(obj).__name__}", repr(obj))
        except Exception:  # a half-torn-down object may not repr; it cannot leak either
            continue
