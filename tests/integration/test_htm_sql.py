"""What `upgrade head` leaves in the database for the queue's hot path is what grace/htm/sql/schema.sql says.

Each definition in the file is applied, inside a transaction that is rolled back, over what the
migrations left, and the database's own rendering of the object (``pg_get_functiondef``,
``pg_get_indexdef``, SQLite's ``sqlite_master``) is compared before and after: any difference, in
a body, a setting, a signature or a predicate, is a migration and the file disagreeing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from grace import storage
from grace.htm import sql

_FUNCTION = re.compile(r"^CREATE OR REPLACE FUNCTION (\w+)\(", re.IGNORECASE)
_INDEX = re.compile(r"^CREATE INDEX (\w+) ON ", re.IGNORECASE)

# Every function of the task manager, each overload with its full definition as PostgreSQL renders it.
_PG_FUNCTIONS = text(
    "SELECT p.oid::regprocedure::text AS signature, pg_get_functiondef(p.oid) AS definition "
    "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    "WHERE n.nspname = current_schema() AND p.proname LIKE 'htm\\_%' ORDER BY 1"
)
_PG_INDEX = text(
    "SELECT pg_get_indexdef(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind = 'i' AND c.relname = :name"
)
_SQLITE_INDEX = text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name")


def _blocks(pattern: re.Pattern[str]) -> dict[str, str]:
    """Return schema.sql's blocks of one kind, by the name of the object each creates."""
    found = {}
    for block in sql.schema().values():
        match = pattern.match(block)
        if match:
            found[match.group(1)] = block
    return found


async def _applied_then_rolled_back(
    db: storage.Database, read: Callable[[AsyncConnection], Awaitable[object]], apply: list[str]
) -> tuple[object, object]:
    """Return what ``read`` sees as the migrations left it, and after running ``apply`` over it (undone)."""
    async with db.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            before = await read(conn)
            for statement in apply:
                await conn.exec_driver_sql(statement)
            after = await read(conn)
        finally:
            await transaction.rollback()
    return before, after


async def test_the_claim_functions_upgrade_head_leaves_are_those_of_schema_sql(
    db: storage.Database, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("the claim functions are PostgreSQL's; SQLite's claim is Python on its own thread")
    functions = _blocks(_FUNCTION)
    assert set(functions) == {"htm_claim", "htm_finish_claim", "htm_submit"}

    async def read(conn: AsyncConnection) -> object:
        return {r.signature: r.definition for r in await conn.execute(_PG_FUNCTIONS)}

    migrated, from_file = await _applied_then_rolled_back(db, read, list(functions.values()))
    assert isinstance(migrated, dict) and isinstance(from_file, dict)
    # No function the migrations left is missing from the file, and none has an overload the file lacks.
    assert {signature.partition("(")[0] for signature in migrated} == set(functions)
    for signature in sorted(set(migrated) | set(from_file)):
        left, right = migrated.get(signature, ""), from_file.get(signature, "")
        diff = difflib.unified_diff(left.splitlines(True), right.splitlines(True), "migrations", "schema.sql")
        assert right == left, f"{signature} differs from what the migrations created:\n{''.join(diff)}"


async def test_the_hot_path_indexes_upgrade_head_leaves_are_those_of_schema_sql(db: storage.Database) -> None:
    indexes = _blocks(_INDEX)
    assert set(indexes) == {"ix_htm_tasks_claim", "ix_htm_tasks_waiting", "ix_htm_tasks_running"}
    definition = _SQLITE_INDEX if db.is_sqlite else _PG_INDEX
    for name, block in indexes.items():

        async def read(conn: AsyncConnection, name: str = name) -> object:
            return (await conn.execute(definition, {"name": name})).scalar()

        migrated, from_file = await _applied_then_rolled_back(db, read, [f"DROP INDEX {name}", block])
        assert migrated is not None, f"the migrations left no index {name}"
        assert from_file == migrated, f"schema.sql's {name} differs from what the migrations created"
