"""The task manager's SQL files: named blocks as the loader reads them, and migrations that never read them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import grace.storage
from grace.htm import sql

VERSIONS = Path(grace.storage.__file__).parent / "migrations" / "versions"


def test_named_blocks_are_read_without_their_notes_or_final_semicolon() -> None:
    text = (
        "-- A header the loader skips.\n\n"
        "-- name: first\n"
        "-- What the first block is for.\n"
        "-- More about it.\n"
        "SELECT 1\n  FROM t; -- kept: it is part of the statement\n\n"
        "-- name: second\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n-- a comment inside a body is kept\nSELECT 2;\n$$;\n\n"
        "-- A section heading before the next block is no part of this one.\n"
    )
    assert sql.parse(text) == {
        "first": "SELECT 1\n  FROM t; -- kept: it is part of the statement",
        "second": (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n-- a comment inside a body is kept\nSELECT 2;\n$$"
        ),
    }


def test_a_block_name_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'twice' is defined twice"):
        sql.parse("-- name: twice\nSELECT 1;\n-- name: twice\nSELECT 2;\n")


def test_the_package_files_hold_the_blocks_the_queue_sends() -> None:
    schema, queries = sql.schema(), sql.queries()
    assert {"htm_claim", "htm_finish_claim", "ix_htm_tasks_claim"} <= set(schema)
    assert schema["htm_claim"].startswith("CREATE OR REPLACE FUNCTION htm_claim(")
    assert schema["htm_claim"].endswith("$fn$")
    assert queries["pg_claim"] == "SELECT * FROM htm_claim($1, $2, $3, $4, $5, $6, $7, true)"
    assert all(name.startswith(("pg_", "sqlite_")) for name in queries)


def test_no_migration_reads_the_current_sql() -> None:
    # A migration keeps a frozen copy of what it creates: were it to read grace/htm/sql (or anything
    # of the task manager's), changing the current definitions would change what old migrations do.
    readers = []
    for path in sorted(VERSIONS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            readers += [
                f"{path.name}: {name}" for name in names if name == "grace.htm" or name.startswith("grace.htm.")
            ]
    assert readers == []
