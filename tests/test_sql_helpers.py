"""The projections' multi-row upsert and append on real PostgreSQL: array and JSON columns
travel as text (upsert) or in their binary formats (`insert_new`) and must come back
exactly as given, whatever the strings hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Integer,
    MetaData,
    Table,
    Text,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from conversations.projections._sql import array_text, insert_new, load, upsert, write_rows


def write(conn: sqlalchemy.Connection, table: Table, rows: list[dict[str, Any]], how: str) -> None:
    """Store new rows the way `how` says: "upsert" or "append" (`insert_new`)."""
    if how == "upsert":
        upsert(conn, table, rows, update=None)
    else:
        assert insert_new(conn, table, rows)


HOW = pytest.mark.parametrize("how", ["upsert", "append"])


@pytest.fixture
def table(engine: sqlalchemy.Engine) -> Iterator[Table]:
    metadata = MetaData()
    made = Table(
        f"upsert_{uuid.uuid4().hex[:12]}",
        metadata,
        Column("location_id", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("names", ARRAY(Text), nullable=True),
        Column("positions", ARRAY(BigInteger), nullable=False),
        Column("doc", JSONB, nullable=True),
        Column("note", Text, nullable=True),
        Column("at", DateTime(timezone=True), nullable=True),
        Column("duration", Double, nullable=True),
    )
    metadata.create_all(engine)
    yield made
    metadata.drop_all(engine)


def _stored(engine: sqlalchemy.Engine, table: Table) -> dict[str, dict[str, Any]]:
    return _stored_by(engine, table, "key")


NASTY = [
    "",
    "NULL",
    "null",
    'a "quoted" word',
    "back\\slash",
    "\\",
    '\\"',
    "comma, and {braces}",
    "  spaces  ",
    "tab\tnew\nline",
    "é ü 😀",
    "}{",
]


@HOW
def test_array_and_json_columns_round_trip(
    engine: sqlalchemy.Engine, table: Table, how: str
) -> None:
    at = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    rows: list[dict[str, Any]] = [
        {
            "location_id": "loc",
            "key": f"k{i}",
            "names": [text, None, text] if i % 2 else [text],
            "positions": [i, 2**62, -1],
            "doc": {"text": text, "list": [text, 1.5, None, True], "nested": {"k": [text]}},
            "note": text,
            "at": at,
            "duration": i if i % 2 else i + 0.5,  # ints and floats in one float column
        }
        for i, text in enumerate(NASTY)
    ]
    rows.append(
        {
            "location_id": "loc",
            "key": "empty",
            "names": [],
            "positions": [],
            "doc": [],
            "note": None,
            "at": None,
            "duration": None,
        }
    )
    rows.append(
        {
            "location_id": "loc",
            "key": "nulls",
            "names": None,
            "positions": [7],
            "doc": None,
            "note": None,
            "at": None,
            "duration": None,
        }
    )
    with engine.begin() as conn:
        write(conn, table, rows, how)
    assert _stored(engine, table) == {row["key"]: row for row in rows}


def test_a_conflict_updates_the_named_columns_only(engine: sqlalchemy.Engine, table: Table) -> None:
    first = {
        "location_id": "l",
        "key": "k",
        "names": ["a"],
        "positions": [1],
        "doc": {"v": 1},
        "note": "first",
        "at": None,
        "duration": 1.0,
    }
    second = {**first, "names": ["b", "c"], "positions": [1, 2], "note": "second"}
    with engine.begin() as conn:
        upsert(conn, table, [first], update=None)
        upsert(conn, table, [second], update=["names", "positions"])
    assert _stored(engine, table)["k"] == {**second, "note": "first"}


_TEXT = st.text(
    st.characters(
        categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Co"), exclude_characters="\x00"
    )
)
"""What PostgreSQL text and jsonb can hold (no NUL, no lone surrogate)."""


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.one_of(st.none(), _TEXT), max_size=5),
    document=st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), _TEXT),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
        max_leaves=8,
    ),
)
@HOW
def test_any_strings_round_trip(
    engine: sqlalchemy.Engine, table: Table, how: str, names: list[str | None], document: Any
) -> None:
    row = {
        "location_id": "l",
        "key": "k",
        "names": names,
        "positions": [3],
        "doc": document,
        "note": None,
        "at": None,
        "duration": None,
    }
    with engine.begin() as conn:
        conn.execute(table.delete())
        write(conn, table, [row], how)
    stored = _stored(engine, table)["k"]
    assert stored["names"] == names
    assert stored["doc"] == document  # (None: SQL NULL)


def test_rows_staged_in_a_rolled_back_transaction_are_gone(
    engine: sqlalchemy.Engine, table: Table
) -> None:
    """The staging table of a session is created, filled and emptied inside the caller's
    transaction: after a rollback (its first use included) the next upsert on that
    connection stores its own rows only."""
    row = {
        "location_id": "l",
        "key": "kept",
        "names": None,
        "positions": [1],
        "doc": None,
        "note": None,
        "at": None,
        "duration": None,
    }
    with engine.connect() as conn:
        with pytest.raises(RuntimeError), conn.begin():
            upsert(conn, table, [{**row, "key": "rolled back"}], update=None)
            raise RuntimeError("the fold failed")
        with conn.begin():
            upsert(conn, table, [row], update=None)
    assert list(_stored(engine, table)) == ["kept"]


@HOW
def test_every_column_kind_of_the_projections_stages(engine: sqlalchemy.Engine, how: str) -> None:
    """Integer and boolean columns too, in a table whose name is too long to prefix (a
    rebuild's side tables)."""
    metadata = MetaData()
    made = Table(
        f"side_{uuid.uuid4().hex}_{'x' * 24}",
        metadata,
        Column("location_id", Text, primary_key=True),
        Column("count", Integer, nullable=True),
        Column("starred", Boolean, nullable=True),
        Column("big", BigInteger, nullable=True),
    )
    metadata.create_all(engine)
    try:
        rows: list[dict[str, Any]] = [
            {"location_id": "a", "count": 3, "starred": True, "big": 2**40},
            {"location_id": "b", "count": None, "starred": False, "big": None},
        ]
        with engine.begin() as conn:
            write(conn, made, rows, how)
        assert _stored_by(engine, made, "location_id") == {r["location_id"]: r for r in rows}
    finally:
        metadata.drop_all(engine)


def test_an_append_of_a_taken_key_writes_nothing(engine: sqlalchemy.Engine, table: Table) -> None:
    """`insert_new` is all or nothing: one key taken, no row of the call is written, and
    the caller's transaction goes on (the COPY ran in a savepoint)."""
    row = {
        "location_id": "l",
        "key": "taken",
        "names": None,
        "positions": [1],
        "doc": None,
        "note": "first",
        "at": None,
        "duration": None,
    }
    with engine.begin() as conn:
        assert insert_new(conn, table, [row])
        again = [{**row, "key": "a", "note": "new"}, {**row, "note": "second"}]
        assert not insert_new(conn, table, again)
        write_rows(conn, table, again, new={"a", "taken"}, key=lambda r: r["key"])
    stored = _stored(engine, table)
    assert {key: value["note"] for key, value in stored.items()} == {"a": "new", "taken": "second"}


def test_keys_of_any_text_are_looked_up(engine: sqlalchemy.Engine, table: Table) -> None:
    """`load` binds its keys as array literals (`arrays`): quotes, backslashes, braces,
    commas and "NULL" are keys like any other."""
    rows: list[dict[str, Any]] = [
        {
            "location_id": "l",
            "key": key,
            "names": None,
            "positions": [],
            "doc": None,
            "note": None,
            "at": None,
            "duration": None,
        }
        for key in NASTY
    ]
    with engine.begin() as conn:
        upsert(conn, table, rows, update=None)
        found = load(conn, table, "key", [("l", key) for key in [*NASTY, "absent"]])
    assert sorted(found) == sorted(("l", key) for key in NASTY)
    assert array_text([]) == "{}" and array_text(["a", None, 1]) == '{"a",NULL,1}'


def test_a_column_kind_it_cannot_stage_is_refused(engine: sqlalchemy.Engine) -> None:
    metadata = MetaData()
    made = Table(
        f"odd_{uuid.uuid4().hex[:12]}",
        metadata,
        Column("location_id", Text, primary_key=True),
        Column("at", DateTime(timezone=False), nullable=True),
    )
    with engine.begin() as conn, pytest.raises(TypeError, match="cannot stage"):
        upsert(conn, made, [{"location_id": "a", "at": None}], update=None)


def _stored_by(engine: sqlalchemy.Engine, table: Table, key: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {row._mapping[key]: dict(row._mapping) for row in conn.execute(select(table))}
