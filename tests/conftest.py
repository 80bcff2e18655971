"""Fixtures shared by the whole suite.

Every fixture that touches storage is parametrised over the backends in use, so
one suite runs on SQLite and on real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from grace import storage
from grace.api import create_app
from grace.auth import BootstrapCredentials
from grace.clock import ManualClock
from grace.config import Settings, load_settings
from grace.services import Services, build
from tests import canary, hashing
from tests.backends import ADMIN_URL_ENV, PostgresTestDatabase, SqliteTemplate, in_ci, wanted_backends

BACKENDS = wanted_backends()

# Property tests judge behaviour, never speed: on a busy machine generating an example may be slow.
hypothesis_settings.register_profile("grace", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("grace")

# In-process services hash passwords at a test cost (tests/hashing.py says why and what keeps the real one).
hashing.use_test_cost()

# The vault tests' cast of users and agents (fixtures `cast` and `http`).
pytest_plugins = ["tests.vaultkit", "tests.voicekit"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    template = SqliteTemplate(tmp_path_factory.mktemp("sqlite-template"))
    template.create()
    return template


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[PostgresTestDatabase | None]:
    admin_url = os.environ.get(ADMIN_URL_ENV)
    if "postgresql" not in BACKENDS or not admin_url:
        yield None
        return
    database = PostgresTestDatabase(admin_url)
    try:
        asyncio.run(database.create())
    except (OSError, Exception) as exc:
        message = f"PostgreSQL at {ADMIN_URL_ENV} is unreachable ({type(exc).__name__}: {exc})"
        if in_ci():
            pytest.fail(message + "; under CI=true this fails the run", pytrace=False)
        yield None
        return
    yield database
    asyncio.run(database.drop())


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(
    backend: str,
    tmp_path: Path,
    sqlite_template: SqliteTemplate,
    postgres_database: PostgresTestDatabase | None,
) -> str:
    """A clean, migrated database for one test, on the parametrised backend."""
    if backend == "sqlite":
        return sqlite_template.copy_to(tmp_path)
    if postgres_database is None:
        pytest.skip("PostgreSQL not configured or unreachable (set GRACE_TEST_DATABASE_URL)")
    asyncio.run(postgres_database.truncate())
    return postgres_database.url


@pytest.fixture
async def empty_database_url(
    backend: str, tmp_path: Path, postgres_database: PostgresTestDatabase | None
) -> AsyncIterator[str]:
    """A database no migration has touched yet, on the parametrised backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    if postgres_database is None:
        pytest.skip("PostgreSQL not configured or unreachable (set GRACE_TEST_DATABASE_URL)")
    async with postgres_database.empty_sibling("empty") as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[storage.Database]:
    database = storage.Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url, log_json=True)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The real composition root on the test database, with the real clock."""
    built = await build(settings, migrate=False)
    await canary.plant(built)
    yield built
    await canary.sweep(built)
    await built.close()


@pytest.fixture
def admin(services: Services) -> BootstrapCredentials:
    assert services.bootstrap is not None
    return services.bootstrap


@pytest.fixture
async def client(settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the real app in-process (no principal attached)."""
    app = create_app(settings, services=services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://grace.test", event_hooks={"response": [canary.SESSION.record_response]}
    ) as http:
        yield http


@pytest.fixture
def admin_headers(admin: BootstrapCredentials) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin.token}"}


# -- the vault's canary (tests/canary.py): collect everything, fail the run on a leak --------------


def pytest_configure(config: pytest.Config) -> None:
    canary.install()
    # The shipped playbooks' schedules and event triggers would queue tasks in every served test;
    # the playbook tests start a scheduler of their own.
    os.environ.setdefault("GRACE_PLAYBOOKS_SCHEDULER", "false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The canary check runs after everything else, so it sees the whole session.
    last = [i for i in items if i.name.startswith("test_canary_never_leaked")]
    items[:] = [i for i in items if i not in last] + last


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and report.longrepr is not None:
        canary.SESSION.add(f"report:{report.nodeid}", str(report.longrepr))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    canary.scan_live_objects(canary.SESSION)
    leaks = canary.SESSION.leaks()
    if leaks:
        print("\nCANARY LEAKED (a secret value appeared outside its authorised retrieval):")
        for leak in leaks[:20]:
            print("  " + leak)
        session.exitstatus = 1
