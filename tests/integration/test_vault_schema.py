"""The vault's Table definitions and its migration describe the same tables, on both databases."""

from __future__ import annotations

from sqlalchemy import Table, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import ReflectedIndex

from grace import storage
from grace.vault import tables

VAULT_TABLES = [table for name in tables.__all__ if isinstance(table := getattr(tables, name), Table)]


async def test_tables_match_the_migration(db: storage.Database) -> None:
    def reflect(conn: Connection) -> dict[str, dict[str, bool]]:
        inspector = inspect(conn)
        return {t.name: {c["name"]: bool(c["nullable"]) for c in inspector.get_columns(t.name)} for t in VAULT_TABLES}

    async with db.engine.connect() as conn:
        reflected = await conn.run_sync(reflect)
    for table in VAULT_TABLES:
        declared = {c.name: bool(c.nullable) for c in table.columns}
        primary = {c.name for c in table.primary_key.columns}
        migrated = {name: nullable and name not in primary for name, nullable in reflected[table.name].items()}
        declared = {name: nullable and name not in primary for name, nullable in declared.items()}
        assert migrated == declared, table.name


async def test_one_active_key_is_a_unique_index(db: storage.Database) -> None:
    def indexes(conn: Connection) -> list[ReflectedIndex]:
        return list(inspect(conn).get_indexes("vault_keys"))

    async with db.engine.connect() as conn:
        found = await conn.run_sync(indexes)
    assert any(i["name"] == "uq_vault_keys_one_active" and i["unique"] for i in found)
