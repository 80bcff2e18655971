"""Row seals (grace.integrity): a seal vouches for one row's content, in one table, under one key."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table

from grace import errors
from grace.clock import ManualClock
from grace.integrity import RowSeal, Sealed

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", String, primary_key=True),
    Column("owner", String),
    Column("level", Integer),
    Column("on", Boolean),
    Column("until", String),
    Column("seal", String),
)
others = Table("others", metadata, *(Column(c.name, c.type) for c in things.columns))
THINGS = Sealed(things, "id", ("owner", "level", "on", "until"))
OTHERS = Sealed(others, "id", ("owner", "level", "on", "until"))
NOW = ManualClock().now()


def sealed_row(seal: RowSeal, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"id": "t_1", "owner": "alice", "level": 3, "on": True, "until": NOW, **changes}
    row["seal"] = seal.seal(THINGS, row)
    return row


def test_a_row_matches_its_own_seal() -> None:
    seal = RowSeal(os.urandom(32))
    row = sealed_row(seal)
    assert seal.matches(THINGS, row)
    assert len(row["seal"]) == 64


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("owner", "mallory"),
        ("level", 1),
        ("on", False),
        ("until", NOW + timedelta(microseconds=1)),
        ("until", None),
        ("id", "t_2"),
        ("seal", None),
        ("seal", "0" * 64),
    ],
)
def test_changing_any_sealed_column_the_key_or_the_seal_breaks_it(column: str, value: Any) -> None:
    seal = RowSeal(os.urandom(32))
    row = {**sealed_row(seal), column: value}
    assert not seal.matches(THINGS, row)
    with pytest.raises(errors.RowTampered) as refused:
        seal.require(THINGS, row)
    assert refused.value.details == {"table": "things", "id": row["id"]}
    assert refused.value.code == "row_tampered"


def test_a_seal_cannot_move_to_another_table_or_key() -> None:
    seal = RowSeal(os.urandom(32))
    row = sealed_row(seal)
    assert not seal.matches(OTHERS, row)
    # Another row with the same content but another id: the seal names the row.
    assert not seal.matches(THINGS, {**row, "id": "t_2"})


def test_another_key_does_not_vouch_for_a_row() -> None:
    row = sealed_row(RowSeal(os.urandom(32)))
    assert not RowSeal(os.urandom(32)).matches(THINGS, row)


def test_the_same_instant_in_another_zone_seals_alike() -> None:
    seal = RowSeal(os.urandom(32))
    row = sealed_row(seal)
    moved = row["until"].astimezone(datetime.now(UTC).astimezone().tzinfo)
    assert seal.matches(THINGS, {**row, "until": moved})


def test_naive_times_and_unknown_types_are_refused() -> None:
    seal = RowSeal(os.urandom(32))
    with pytest.raises(ValueError):
        sealed_row(seal, until=datetime(2026, 1, 1))  # noqa: DTZ001 - the naive time is the point
    with pytest.raises(TypeError):
        sealed_row(seal, level=1.5)


def test_the_key_is_never_shown() -> None:
    key = os.urandom(32)
    seal = RowSeal(key)
    assert key.hex() not in repr(seal) and "hidden" in repr(seal)
    with pytest.raises(ValueError):
        RowSeal(b"short")


async def test_a_mismatch_is_reported_once_to_every_listener_and_still_refused() -> None:
    seal = RowSeal(os.urandom(32))
    heard: list[tuple[str, str]] = []

    async def listener(exc: errors.RowTampered) -> None:
        heard.append((exc.table, exc.row_id))

    async def broken(exc: errors.RowTampered) -> None:
        raise RuntimeError("the audit is down")

    seal.on_tamper(broken)
    seal.on_tamper(listener)
    row = {**sealed_row(seal), "level": 0}
    with pytest.raises(errors.RowTampered):
        async with seal.reporting():
            await seal.check(THINGS, row)  # reported here, not again by the outer block
    assert heard == [("things", "t_1")]
