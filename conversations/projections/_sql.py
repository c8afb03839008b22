"""Set-based SQL helpers the projections share: a batch as one table (`unnest`), key
filters, multi-row upserts (rows staged by COPY), COPY for rebuilds, and the order that
breaks ties between summaries' last messages.

Every statement here takes a whole batch in a fixed number of parameters (arrays) or
from a staging table, so its text is the same for every batch: SQLAlchemy compiles it
once and PostgreSQL's 65,535-parameter limit never applies.

The statements live catch-up runs for every batch are built once per table and reused
(`cached`), the batch's values bound at execution: building a statement and computing
its cache key cost SQLAlchemy more CPU than executing it, about half a millisecond each,
a fixed cost of every batch the worker folds.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

from psycopg.errors import UniqueViolation
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Float,
    Integer,
    Result,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import TableValuedAlias
from sqlalchemy.sql import column as sql_column
from sqlalchemy.sql import table as sql_table
from sqlalchemy.types import TypeEngine

from conversations import json_codec

Key = tuple[str, str]
"""(location_id, a second key column's value)"""

F = TypeVar("F", bound=Callable[..., Any])


def cached(build: F) -> F:
    """Memoise a statement builder by its (hashable: tables, names) arguments. Bounded:
    a rebuild's side tables are new objects each time."""
    return lru_cache(maxsize=256)(build)  # type: ignore[return-value]


def bound_unnest(prefix: str, **types: TypeEngine[Any]) -> TableValuedAlias:
    """`unnest(CAST(:<prefix>_a AS t[]), ...) AS anon(a, ...)`, its arrays bound at
    execution as array literals (see `arrays`): a statement that uses it can be built once."""
    columns = [
        cast(bindparam(f"{prefix}_{name}", type_=Text()), ARRAY(kind))
        for name, kind in types.items()
    ]
    return func.unnest(*columns).table_valued(*types).render_derived()


def arrays(prefix: str, **values: Sequence[Any]) -> dict[str, str]:
    """The parameters of a `bound_unnest` with the same prefix and names: each array as
    the text of a PostgreSQL array literal. Bound as lists, SQLAlchemy's ARRAY type and
    psycopg's list dumper handled every element in Python, ~2 µs each (a batch binds a
    few thousand keys); one string costs a join."""
    return {f"{prefix}_{name}": array_text(column) for name, column in values.items()}


def array_text(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of strings (None for NULL) or integers."""
    try:
        joined = '","'.join(values)
    except TypeError:  # None or integers among them
        return _array_literal(values)
    if "\\" in joined or joined.count('"') != 2 * max(len(values) - 1, 0):
        return _array_literal(values)  # a quote or backslash to escape
    return '{"' + joined + '"}' if values else "{}"


def key_arrays(prefix: str, keys: Iterable[Key], second: str) -> dict[str, str]:
    """`arrays` of keys, sorted, as `location_id` and `second`."""
    ordered = sorted(keys)
    return arrays(prefix, location_id=[k[0] for k in ordered], **{second: [k[1] for k in ordered]})


def unnest(**arrays: tuple[Sequence[Any], TypeEngine[Any]]) -> TableValuedAlias:
    """`unnest(CAST(:a AS t[]), ...) AS anon(a, ...)`: a whole batch as one table."""
    columns = [cast(literal(list(v), ARRAY(kind)), ARRAY(kind)) for v, kind in arrays.values()]
    return func.unnest(*columns).table_valued(*arrays).render_derived()


def keys_table(keys: Iterable[Key], second: str) -> TableValuedAlias:
    """The keys, sorted, as a table of `location_id` and `second`."""
    ordered = sorted(keys)
    return unnest(
        location_id=([k[0] for k in ordered], Text()), **{second: ([k[1] for k in ordered], Text())}
    )


def in_keys(table: Table, second: str, keys: Iterable[Key]) -> ColumnElement[bool]:
    """`(table.location_id, table.<second>) IN (the keys)`."""
    wanted = keys_table(keys, second)
    return tuple_(table.c.location_id, table.c[second]).in_(
        select(wanted.c.location_id, wanted.c[second])
    )


@cached
def _load_statement(table: Table, second: str) -> Any:
    wanted = bound_unnest("k", location_id=Text(), **{second: Text()})
    return select(table).where(
        tuple_(table.c.location_id, table.c[second]).in_(
            select(wanted.c.location_id, wanted.c[second])
        )
    )


def load(conn: Connection, table: Table, second: str, keys: Iterable[Key]) -> dict[Key, Any]:
    """The rows of `table` with those keys, by key (dicts by column name)."""
    keys = list(keys)
    if not keys:
        return {}
    rows = dicts(conn.execute(_load_statement(table, second), key_arrays("k", keys, second)))
    return {(row["location_id"], row[second]): row for row in rows}


def dicts(result: Result[Any]) -> list[dict[str, Any]]:
    """A result's rows as plain dicts, keyed by plain `str` names: cheaper than row
    mappings, and SQLAlchemy's names are a `str` subclass, which a row written back as
    JSON (`json_codec.dumps`) would have to serialise the slow way, name by name."""
    names = [str(name) for name in result.keys()]  # noqa: SIM118 (a Result, not a dict)
    return [dict(zip(names, row, strict=True)) for row in result]


def upsert(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], update: Sequence[str] | None
) -> None:
    """One multi-row `INSERT ... ON CONFLICT (primary key)`; on a conflict set the `update`
    columns (None: every other column; empty: do nothing).

    The rows reach PostgreSQL by binary COPY into a temporary staging table of this
    session (`_Stage`), and the INSERT takes them from there. psycopg writes COPY rows in
    C; binding one array per column instead made it dump every element in Python, about
    4x the client CPU (12-14 against 2.5-3.4 µs per 30-column row, the same PostgreSQL
    CPU). Array and JSON columns travel as text (an array literal, a JSON document) and
    are cast back in the statement."""
    if not rows:
        return
    stage = _stage(table)
    conn.exec_driver_sql(stage.create)
    encoders = _encoders(table)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(stage.copy) as copy:
        copy.set_types(stage.types)
        for row in rows:
            copy.write_row(
                [
                    value if encode is None or value is None else encode(value)
                    for name, encode in encoders
                    for value in (row[name],)
                ]
            )
    conn.execute(_upsert_statement(table, _names(update)))


def insert_new(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> bool:
    """Append rows whose primary keys `table` should not have yet, by binary COPY straight
    into it, in a savepoint; False, with nothing written, when one of the keys is taken
    (the caller then upserts them: the primary key is the proof, not the caller's guess).

    The usual batch is new messages, and for them this costs PostgreSQL about half of
    `upsert`'s staging table, `INSERT ... SELECT` and speculative insertion (heap rows
    written in pages, each index probed once). Sort `rows` by key, as for `upsert`."""
    if not rows:
        return True
    direct = _direct(table)
    savepoint = conn.begin_nested()
    try:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        # By type oid (`set_types`), bytea picks the DB-API `Binary` dumper, in Python.
        cursor.adapters.register_dumper(bytes, BytesBinaryDumper)
        with cursor.copy(direct.copy) as copy:
            copy.set_types(direct.types)
            values, encoders = direct.values, direct.encoders
            for row in rows:
                fields = list(values(row))
                for index, encode in encoders:
                    if fields[index] is not None:
                        fields[index] = encode(fields[index])
                copy.write_row(fields)
    except UniqueViolation:
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def write_rows(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], new: Collection[Any], key: Any
) -> None:
    """Upsert `rows` (every column), appending those whose `key(row)` is in `new` (keys
    `table` should not have yet) with `insert_new`, or upserting them too should one be
    there after all."""
    fresh = [row for row in rows if key(row) in new]
    if not insert_new(conn, table, fresh):
        upsert(conn, table, rows, update=None)
        return
    upsert(conn, table, [row for row in rows if key(row) not in new], update=None)


class _Direct:
    """`insert_new`'s COPY of every column of `table`, the types psycopg dumps them as,
    and what makes a value one of those (None: as it is).

    Binary COPY carries no types: each field must be what the column's binary input
    takes. psycopg's dumpers of JSON and lists are Python code, a third of the COPY's
    client CPU, so JSON and array fields are encoded here (`_jsonb_binary`,
    `_array_binary`) and sent as `bytea`, whose dumper passes bytes through."""

    def __init__(self, table: Table) -> None:
        quote = _QUOTE.quote
        columns = ", ".join(quote(c.name) for c in table.columns)
        self.copy = f"COPY {quote(table.name)} ({columns}) FROM STDIN (FORMAT BINARY)"
        self.values = operator.itemgetter(*(c.name for c in table.columns))
        self.types: list[str] = []
        self.encoders: list[tuple[int, Callable[[Any], Any]]] = []
        for index, c in enumerate(table.columns):
            if isinstance(c.type, JSONB):
                self.types.append("bytea")
                self.encoders.append((index, _jsonb_binary))
            elif isinstance(c.type, ARRAY):
                self.types.append("bytea")
                self.encoders.append((index, _array_encoder(c.type.item_type)))
            else:
                self.types.append(_COPY_TYPES[_copy_kind(c.type)])
                if isinstance(c.type, Float):
                    self.encoders.append((index, float))


@cached
def _direct(table: Table) -> _Direct:
    return _Direct(table)


_JSONB_EMPTY_LIST = b"\x01[]"


def _jsonb_binary(value: Any) -> bytes:
    """A JSON value in jsonb's binary input format: version 1, then the text."""
    if isinstance(value, list | tuple) and not value:
        return _JSONB_EMPTY_LIST
    return b"\x01" + json_codec.dumps(value).encode()


_INT8_OID, _TEXT_OID = 20, 25


def _array_encoder(item: TypeEngine[Any]) -> Callable[[Any], bytes]:
    if isinstance(item, BigInteger):
        return _int8_array
    if isinstance(item, String):
        return _text_array
    raise TypeError(f"insert_new cannot send an array of {item!r}")


def _int8_array(values: Sequence[int]) -> bytes:
    """A one-dimensional int8[] in the binary format of `array_recv` (no NULLs)."""
    count = len(values)
    if not count:
        return struct.pack(">iiI", 0, 0, _INT8_OID)
    fields = [field for value in values for field in (8, value)]
    return struct.pack(f">iiIii{'iq' * count}", 1, 0, _INT8_OID, count, 1, *fields)


def _text_array(values: Sequence[str | None]) -> bytes:
    """A one-dimensional text[] in the binary format of `array_recv`."""
    if not values:
        return struct.pack(">iiI", 0, 0, _TEXT_OID)
    parts = [struct.pack(">iiIii", 1, int(None in values), _TEXT_OID, len(values), 1)]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            data = value.encode()
            parts.append(struct.pack(">i", len(data)) + data)
    return b"".join(parts)


class _Stage:
    """A temporary table (this session's; emptied at every commit) with `table`'s columns
    as `upsert` sends them, and the statements that create and fill it."""

    def __init__(self, table: Table) -> None:
        name = f"stage_{table.name}"
        if len(name.encode()) > 63:  # PostgreSQL's limit: a rebuild's side tables are long
            name = "stage_" + hashlib.sha256(table.name.encode()).hexdigest()[:24]
        self.name = name
        columns = [(c.name, _COPY_TYPES[_copy_kind(c.type)]) for c in table.columns]
        quote = _QUOTE.quote
        self.create = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(name)} ("
            + ", ".join(f"{quote(n)} {kind}" for n, kind in columns)
            + ") ON COMMIT DELETE ROWS"
        )
        self.copy = f"COPY pg_temp.{quote(name)} FROM STDIN (FORMAT BINARY)"
        self.types = [kind for _, kind in columns]
        self.source = sql_table(
            name, *(sql_column(c.name, _sent_as(c.type)) for c in table.columns), schema="pg_temp"
        )


@cached
def _stage(table: Table) -> _Stage:
    return _Stage(table)


_QUOTE = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]

# PostgreSQL's name for each kind of column `upsert` stages (psycopg dumps by it).
_COPY_TYPES = {
    "text": "text",
    "bigint": "int8",
    "integer": "int4",
    "float": "float8",
    "timestamptz": "timestamptz",
    "boolean": "bool",
}


def _copy_kind(kind: TypeEngine[Any]) -> str:
    if _as_text(kind) or isinstance(kind, String):
        return "text"
    if isinstance(kind, BigInteger):  # before Integer: a subclass of it
        return "bigint"
    if isinstance(kind, Integer):
        return "integer"
    if isinstance(kind, Float):
        return "float"
    if isinstance(kind, DateTime) and kind.timezone:
        return "timestamptz"
    if isinstance(kind, Boolean):
        return "boolean"
    raise TypeError(f"upsert cannot stage a column of type {kind!r}")


@cached
def _upsert_statement(table: Table, update: tuple[str, ...] | None) -> Any:
    """INSERT from the staging table, which it empties in the same statement (`upsert`
    may stage rows for one table more than once in a transaction)."""
    stage = _stage(table).source
    staged = delete(stage).returning(*stage.c).cte("staged")
    values = [
        cast(staged.c[c.name], c.type) if _as_text(c.type) else staged.c[c.name]
        for c in table.columns
    ]
    statement = pg_insert(table).from_select([c.name for c in table.columns], select(*values))
    return _on_conflict(table, statement, update)


@cached
def _encoders(table: Table) -> list[tuple[str, Callable[[Any], Any] | None]]:
    """Each column's name, and what makes its values what `upsert` stages (None: as
    they are). A binary float column takes no integers: they become floats."""
    encoders: list[tuple[str, Callable[[Any], Any] | None]] = []
    for c in table.columns:
        if isinstance(c.type, JSONB):
            encoders.append((c.name, _json_text))
        elif isinstance(c.type, ARRAY):
            encoders.append((c.name, _array_literal))
        elif isinstance(c.type, Float):
            encoders.append((c.name, float))
        else:
            encoders.append((c.name, None))
    return encoders


def _as_text(kind: TypeEngine[Any]) -> bool:
    return isinstance(kind, ARRAY | JSONB)


def _sent_as(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    return Text() if _as_text(kind) else kind


def _array_literal(values: Iterable[Any]) -> str:
    return "{" + ",".join(map(_array_element, values)) + "}"


def _array_element(value: Any) -> str:
    """One element of a PostgreSQL array literal (text or integer arrays)."""
    if value is None:
        return "NULL"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"{type(value).__name__} in an array column")


def _names(update: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if update is None else tuple(update)


def _on_conflict(table: Table, statement: Any, update: tuple[str, ...] | None) -> Any:
    keys = [c.name for c in table.primary_key.columns]
    if update is None:
        update = tuple(c.name for c in table.columns if c.name not in keys)
    if update:
        return statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in update}
        )
    return statement.on_conflict_do_nothing(index_elements=keys)


def copy_rows(conn: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows (dicts of every column) to `table` with `COPY ... FROM STDIN`; JSON
    columns are serialised here. For rebuilds, into tables nothing else writes. Returns
    how many rows were sent."""
    names = [c.name for c in table.columns]
    as_json = [isinstance(c.type, JSONB) for c in table.columns]
    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY {quote(table.name)} ({', '.join(map(quote, names))}) FROM STDIN"
    count = 0
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(
                [
                    _json_text(row[name]) if is_json else row[name]
                    for name, is_json in zip(names, as_json, strict=True)
                ]
            )
            count += 1
    return count


def _json_text(value: Any) -> str:
    if isinstance(value, list | tuple) and not value:  # the usual attachments, cc, bcc
        return "[]"
    return json_codec.dumps(value)


# --- the last message of a summary ---------------------------------------------------------

NO_TIME = datetime.min.replace(tzinfo=UTC)
"""Where a message without a date sorts: before every dated one."""


def date_order(date: datetime | None) -> tuple[bool, datetime]:
    """A message's date as summaries order them, newest first: a missing date lowest
    (the message key breaks ties: `rank_ties`)."""
    return date is not None, date or NO_TIME


_KEY_ORDER = text("SELECT key FROM unnest(CAST(:keys AS TEXT[])) AS key ORDER BY key").columns(
    key=Text
)


def rank_ties(
    conn: Connection,
    rows: Mapping[Any, Mapping[str, Any]],
    joining: Iterable[tuple[Any, str, datetime | None]],
) -> dict[str, int]:
    """Ranks of the message keys that may break a tie on a summary row's last message
    date, in the database's default collation: the order the summaries' recomputes, the
    timeline and the conversation lists sort keys in, so every read agrees on which
    message is last whatever the collation (Python's code point order is that of "C"
    only). `joining`: (row key, message key, date) of messages new to a stored row of
    `rows` ("last_message_key", "last_message_at"); the keys ranked are those dated as
    the row's last message or as another message joining it. One query for the batch,
    only when there is a tie: recomputing instead would read every message of the row,
    and all of them may share a date (or have none)."""
    joining = list(joining)
    # Only a date two of them share, or the one of its row's last message, can tie: the
    # others (nearly all) are left out at once (grouping every one cost ~2 µs each).
    shared = Counter(date for _, _, date in joining)
    tied: dict[tuple[Any, tuple[bool, datetime]], set[str]] = defaultdict(set)
    for row_key, message_key, date in joining:
        row = rows.get(row_key)
        if row is None:
            continue
        if shared[date] > 1 or (
            row["last_message_key"] is not None and row["last_message_at"] == date
        ):
            tied[(row_key, date_order(date))].add(message_key)
    for (row_key, order), keys in tied.items():
        row = rows[row_key]
        if row["last_message_key"] is not None and date_order(row["last_message_at"]) == order:
            keys.add(row["last_message_key"])
    return key_ranks(conn, {key for keys in tied.values() if len(keys) > 1 for key in keys})


def key_ranks(conn: Connection, keys: Iterable[str]) -> dict[str, int]:
    """Each key's rank in the database's default collation (0 the lowest), the order the
    read models' SQL sorts keys in: where Python must order keys the way a query does
    (Python compares code points, the order of "C" only). One query; none for no keys."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    return dict(zip(conn.scalars(_KEY_ORDER, {"keys": wanted}), itertools.count()))
