"""The projections' multi-row upsert on real PostgreSQL: array and JSON columns travel as
text and must come back exactly as given, whatever the strings hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, DateTime, Double, MetaData, Table, Text, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from conversations.projections._sql import upsert


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
    with engine.connect() as conn:
        return {row.key: dict(row._mapping) for row in conn.execute(select(table))}


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


def test_array_and_json_columns_round_trip(engine: sqlalchemy.Engine, table: Table) -> None:
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
        upsert(conn, table, rows, update=None)
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
def test_any_strings_round_trip(
    engine: sqlalchemy.Engine, table: Table, names: list[str | None], document: Any
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
        upsert(conn, table, [row], update=None)
    stored = _stored(engine, table)["k"]
    assert stored["names"] == names
    assert stored["doc"] == document  # (None: SQL NULL)
