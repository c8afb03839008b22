"""Set-based SQL helpers the projections share: a batch as one table (`unnest`), key
filters, multi-row upserts, and COPY for rebuilds.

Every statement here takes a whole batch in a fixed number of parameters (arrays or one
JSON document), so its text is the same for every batch: SQLAlchemy compiles it once and
PostgreSQL's 65,535-parameter limit never applies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    Text,
    bindparam,
    cast,
    column,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import TableValuedAlias
from sqlalchemy.types import TypeEngine

Key = tuple[str, str]
"""(location_id, a second key column's value)"""


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


def load(conn: Connection, table: Table, second: str, keys: Iterable[Key]) -> dict[Key, Any]:
    """The rows of `table` with those keys, by key (row mappings)."""
    query = select(table).where(in_keys(table, second, keys))
    return {(row.location_id, row._mapping[second]): row._mapping for row in conn.execute(query)}


def upsert(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], update: Sequence[str] | None
) -> None:
    """One multi-row `INSERT ... ON CONFLICT (primary key)` from arrays, one per column;
    on a conflict set the `update` columns (None: every other column; empty: do nothing).
    For tables of scalar columns (arrays of arrays do not unnest row by row)."""
    if not rows:
        return
    source = unnest(**{c.name: ([row[c.name] for row in rows], c.type) for c in table.columns})
    statement = pg_insert(table).from_select(list(source.c.keys()), select(*source.c))
    _execute_upsert(conn, table, statement, update, {})


def upsert_json(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], update: Sequence[str] | None
) -> None:
    """`upsert` with the rows as one JSON array (`jsonb_to_recordset`): for tables with
    array or JSON columns, which `unnest` cannot take row by row."""
    if not rows:
        return
    records = (
        func.jsonb_to_recordset(cast(bindparam("rows", type_=Text), JSONB))
        .table_valued(*(column(c.name, c.type) for c in table.columns))
        .render_derived(with_types=True)
    )
    statement = pg_insert(table).from_select(
        [c.name for c in table.columns], select(*(records.c[c.name] for c in table.columns))
    )
    parameters = {"rows": json.dumps(rows, default=json_default, ensure_ascii=False)}
    _execute_upsert(conn, table, statement, update, parameters)


def _execute_upsert(
    conn: Connection,
    table: Table,
    statement: Any,
    update: Sequence[str] | None,
    parameters: dict[str, Any],
) -> None:
    keys = [c.name for c in table.primary_key.columns]
    if update is None:
        update = [c.name for c in table.columns if c.name not in keys]
    if update:
        statement = statement.on_conflict_do_update(
            index_elements=keys, set_={name: statement.excluded[name] for name in update}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    conn.execute(statement, parameters)


def json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
    return json.dumps(value, default=json_default, ensure_ascii=False)
