"""The task manager's hot-path SQL, kept as named blocks in ``.sql`` files beside this module.

- ``schema.sql``: the current definitions of what the migrations leave in the database for the
  claims (PostgreSQL's claim functions, the partial indexes both backends' claims read). Each
  migration keeps a frozen copy of its own version; ``tests/integration/test_htm_sql.py`` checks
  that an upgraded database matches this file.
- ``queries.sql``: the statements the queue sends on its hot path, per backend.

A block starts at a line ``-- name: <name>``; the comment lines right after it describe the block
and are left out of its SQL, as are a final ``;`` and the comment lines after the statement (a
heading for what follows). Blocks whose SQL holds ``{placeholders}`` are
templates, filled once from the package's constants (origins, column names), never from input.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["parse", "queries", "schema"]

_BLOCK = re.compile(r"^-- name: ([a-z0-9_]+)[ \t]*\n(?:--.*\n)*", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Return the named blocks of a ``.sql`` file's text, in file order, by name."""
    parts = _BLOCK.split(text)
    blocks: dict[str, str] = {}
    # parts: the header before the first block, then (name, sql) pairs.
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"SQL block {name!r} is defined twice")
        lines = body.strip().splitlines()
        while lines and (not lines[-1].strip() or lines[-1].startswith("--")):
            lines.pop()  # a comment after the statement introduces what follows it
        blocks[name] = "\n".join(lines).removesuffix(";").rstrip()
    return blocks


@functools.cache
def _load(filename: str) -> dict[str, str]:
    return parse(resources.files(__name__).joinpath(filename).read_text(encoding="utf-8"))


def schema() -> dict[str, str]:
    """Return ``schema.sql``'s blocks: the current definitions the migrations must leave in place."""
    return dict(_load("schema.sql"))


def queries() -> dict[str, str]:
    """Return ``queries.sql``'s blocks: the statements the queue sends."""
    return dict(_load("queries.sql"))
