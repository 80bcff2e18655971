"""Apply Alembic migrations programmatically (at start-up and by ``grace db upgrade``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from grace.storage import locks
from grace.storage.database import Database

__all__ = ["current_revision", "head_revision", "revision_module", "upgrade"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The lock that serialises migrations across processes.
MIGRATION_LOCK = "grace.storage.migrate"


def _config(connection: Connection | None = None, seal_key: bytes | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    if seal_key is not None:
        cfg.attributes["seal_key"] = seal_key
    return cfg


def revision_module(name: str) -> ModuleType:
    """Load migration ``name`` (say ``0006_htm_lean_claim``): a later one's downgrade restores what it made.

    Revision files are loaded by path, as Alembic does (the folder is not a package).
    """
    path = MIGRATIONS_DIR / "versions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"grace_revision_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def head_revision() -> str:
    """Return the newest migration's revision id."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(db: Database) -> str | None:
    """Return the revision the database is at, or None if it has never been migrated."""

    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(db: Database, revision: str = "head", *, seal_key: bytes | None = None) -> tuple[str | None, str]:
    """Migrate the database to ``revision``; return (before, after). Re-running is a no-op.

    ``seal_key`` is the row-seal key (``grace.integrity``), derived from the master key: the migration
    that adds row seals needs it to seal the rows already stored (a new database has none).

    Processes starting together on a new database take turns: the first migrates while the others
    wait, then find nothing to do: the transaction is serialised (:func:`locks.serialise`; on
    SQLite it begins with ``BEGIN IMMEDIATE``, the write lock) before it reads the current revision.
    """

    def _upgrade(connection: Connection) -> str | None:
        before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(_config(connection, seal_key), revision)
        return before

    await db.reach()  # a database that cannot be reached is a clear message, not a traceback
    async with db.engine.connect() as conn:
        if db.is_sqlite:
            conn = await conn.execution_options(sqlite_immediate=True)
        async with conn.begin():
            await locks.serialise(conn, MIGRATION_LOCK)
            before = await conn.run_sync(_upgrade)
    after = await current_revision(db)
    assert after is not None
    return before, after
