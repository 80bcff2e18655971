"""Row seals: a MAC over the columns of a row that decide a release or a privilege.

Some rows decide who may do what: a user's role, a token's scopes, a secret's owner and risk, a
consent's status. Each carries a ``seal`` column, an HMAC-SHA256 under a key derived from the master
key (HKDF, label ``row-seal``) over a canonical encoding of the table's name, the row's primary key
and its sealed columns, in that order. Someone who can write the database but does not hold the
master key can change such a row, insert one, or copy a seal from another row or table, and every
one of those is found: the seal no longer matches.

Every write of a sealed column computes the new seal in the same statement (:meth:`RowSeal.seal`
over the values it writes); every read that decides checks it (:meth:`RowSeal.require` or
:meth:`RowSeal.check`). A mismatch raises :class:`~grace.errors.RowTampered`, which
:meth:`RowSeal.report` logs and hands to the listeners the composition root registers (the vault
puts it on the audit record). :meth:`RowSeal.find_tampered` lists every row whose seal does not
match (``grace audit verify``).

A seal authenticates a row's content, not its age: a writer can put back a whole older row with
its genuine seal (see ``docs/vault.md``, the threat model).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, TableClause, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import Label

from grace import errors

__all__ = ["SEAL_LABEL", "RowSeal", "Sealed", "TamperListener", "encode"]

log = logging.getLogger("grace.integrity")

# The HKDF label of the row-seal key (``MasterKey.derive(SEAL_LABEL)``).
SEAL_LABEL = "row-seal"
FORMAT = "grace-row-seal/1"

TamperListener = Callable[[errors.RowTampered], Awaitable[None]]
# A row as read (a RowMapping) or as about to be written (a dict), by column name.
Row = Mapping[Any, Any]


@dataclass(frozen=True)
class Sealed:
    """Which columns of ``table`` a seal covers, and its primary key (a single column)."""

    table: TableClause
    key: str
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.table.name

    def selected(self, prefix: str = "") -> list[Label[Any]]:
        """Return the key, the sealed columns and the seal, labelled ``prefix + name`` (for a join)."""
        names = (self.key, *self.columns, "seal")
        return [self.table.c[name].label(prefix + name) for name in names]


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a sealed time must be timezone-aware")
        return "t:" + value.astimezone(UTC).isoformat(timespec="microseconds")
    raise TypeError(f"a sealed column holds None, bool, int, str or datetime, not {type(value).__name__}")


def encode(table: str, key: str, columns: Iterable[tuple[str, Any]]) -> bytes:
    """Return the canonical bytes a seal covers: the format, the table, the row's key, each (column, value)."""
    body = [FORMAT, table, key, [[name, _value(value)] for name, value in columns]]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class RowSeal:
    """Seal rows and check their seals; holds the row-seal key and never shows it."""

    __slots__ = ("_key", "_listeners")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a row-seal key is 32 bytes")
        self._key = bytes(key)
        self._listeners: list[TamperListener] = []

    def __repr__(self) -> str:
        return "RowSeal(key=<hidden>)"

    # -- sealing and checking ----------------------------------------------------

    def seal(self, spec: Sealed, row: Row, prefix: str = "") -> str:
        """Return the seal of ``row`` (its key and sealed columns, read as ``prefix + name``)."""
        data = encode(spec.name, str(row[prefix + spec.key]), ((c, row[prefix + c]) for c in spec.columns))
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def matches(self, spec: Sealed, row: Row, prefix: str = "") -> bool:
        """Return whether ``row``'s stored seal is the one its content calls for."""
        stored = row[prefix + "seal"]
        return isinstance(stored, str) and hmac.compare_digest(stored, self.seal(spec, row, prefix))

    def require(self, spec: Sealed, row: Row, prefix: str = "") -> None:
        """Raise RowTampered (not yet reported: see :meth:`reporting`) unless ``row``'s seal matches."""
        if not self.matches(spec, row, prefix):
            raise errors.RowTampered(table=spec.name, row_id=str(row[prefix + spec.key]))

    async def check(self, spec: Sealed, row: Row, prefix: str = "") -> None:
        """Like :meth:`require`, and report a mismatch before raising (call it outside a write transaction)."""
        async with self.reporting():
            self.require(spec, row, prefix)

    # -- reporting ---------------------------------------------------------------

    def on_tamper(self, listener: TamperListener) -> None:
        """Call ``listener`` with each reported RowTampered (the vault audits it)."""
        self._listeners.append(listener)

    async def report(self, exc: errors.RowTampered) -> None:
        """Log a mismatch and hand it to the listeners, once per exception (never the row's values)."""
        if exc.reported:
            return
        exc.reported = True
        log.error("integrity.row_tampered", extra={"table": exc.table, "row_id": exc.row_id})
        for listener in self._listeners:
            try:
                await listener(exc)
            except Exception as failure:  # the refusal stands whether or not the report could be written
                log.error(
                    "integrity.report_failed",
                    extra={"table": exc.table, "row_id": exc.row_id, "reason": type(failure).__name__},
                )

    @contextlib.asynccontextmanager
    async def reporting(self) -> AsyncIterator[None]:
        """Report a RowTampered raised inside (after any transaction inside has ended), then let it go on.

        Wrap a write transaction in it: ``async with seal.reporting(), db.write() as conn:``.
        """
        try:
            yield
        except errors.RowTampered as exc:
            await self.report(exc)
            raise

    # -- many rows -----------------------------------------------------------------

    async def update_each(
        self, conn: AsyncConnection, spec: Sealed, where: ColumnElement[bool], values: Mapping[str, Any]
    ) -> int:
        """Write ``values`` to every row matching ``where``, locking them first; return how many.

        Genuine rows get the seal of their new content. A row whose seal did not match keeps its
        stored seal, so it stays refused and reported (``values`` is for revocations, which must
        reach a tampered row too, never launder it).
        """
        table = spec.table
        key = table.c[spec.key]
        rows = (await conn.execute(select(*spec.selected()).where(where).with_for_update())).mappings().all()
        for row in rows:
            changed = dict(values)
            if self.matches(spec, row):
                changed["seal"] = self.seal(spec, {**row, **values})
            await conn.execute(update(table).where(key == row[spec.key]).values(**changed))
        return len(rows)

    async def find_tampered(self, conn: AsyncConnection, specs: Iterable[Sealed]) -> list[tuple[str, str]]:
        """Return (table, key) for every row of ``specs`` whose seal does not match, table by table."""
        found: list[tuple[str, str]] = []
        for spec in specs:
            query = select(*spec.selected()).order_by(spec.table.c[spec.key])
            for row in (await conn.execute(query)).mappings():
                if not self.matches(spec, row):
                    found.append((spec.name, str(row[spec.key])))
        return found
