"""`conversations quarantine list | show ID | retry (ID | --all)`: the operator's view of
the bodies kept aside, and their second chance once a fix has shipped.

A retry runs the body through the webhook endpoint's steps again, with the headers kept
with it: its Content-Encoding undone (`ingest.decoded`: a body kept as received, still
encoded, kept that header), its signature headers checked against the configured keys
and the result recorded in the event's metadata as the endpoint does (never refused:
the body was accepted at receipt, or verification was off), then `ingest.prepare`. A body
that now parses is appended, and its row marked `ingested` with the event's position in
the same transaction; a body that still fails stays `pending` with the current reason
(still `bad_encoding` for one that still does not decode). Every function returns the exit
status: 0 done, 1 no such body or still failing, 2 the database failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conversations.database import create_async_engine, describe_error
from conversations.events import NewEvent
from conversations.ingest import Rejection, Source, check_signature, decoded, prepare
from conversations.progress import output_failed, size
from conversations.signatures import SignatureVerifier
from conversations.store import append_events, is_unavailable

_LIST = text(
    """
    SELECT id, received_at, attempts, source, reason, location_id, headers,
           octet_length(body) AS size, status
      FROM quarantine
     WHERE CAST(:everything AS boolean) OR status = 'pending'
     ORDER BY id DESC
     LIMIT :limit
    """
)
_COUNT = text(
    "SELECT count(*) FROM quarantine WHERE CAST(:everything AS boolean) OR status = 'pending'"
)
_ONE = text("SELECT * FROM quarantine WHERE id = :id")
_LOCK = text(
    "SELECT id, status, source, headers, body, resolved_position"
    " FROM quarantine WHERE id = :id FOR UPDATE"
)
_PENDING = text(
    "SELECT id FROM quarantine WHERE status = 'pending' AND id > :after ORDER BY id LIMIT 500"
)
_RESOLVE = text(
    """
    UPDATE quarantine
       SET status = 'ingested', resolved_position = :position, resolved_at = clock_timestamp()
     WHERE id = :id
    """
)
_STILL_FAILING = text(
    """
    UPDATE quarantine
       SET reason = :reason, detail = :detail, errors = CAST(:errors AS jsonb),
           location_id = coalesce(:location_id, location_id)
     WHERE id = :id
    """
)


def _run(url: str, db_timeout: float, work: Callable[[AsyncEngine], Awaitable[int]]) -> int:
    async def main() -> int:
        engine = create_async_engine(url, pool_size=1, timeout=db_timeout)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except DBAPIError as error:
        print(f"conversations: {describe_error(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of stdout went away (`quarantine list | head -1`): the CLI's quiet
        # 141, as for every command. It is an OSError, but no database error.
        raise
    except OSError as error:
        if output_failed(error):  # `quarantine show 7 > file` on a full disk: the CLI says so
            raise
        print(f"conversations: database error: {_first_line(error)}", file=sys.stderr)
        return 2


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --- list ------------------------------------------------------------------------------------


def list_bodies(url: str, db_timeout: float, *, everything: bool, limit: int) -> int:
    """A table of the pending bodies (with `everything`, the ingested ones too), newest
    first, at most `limit`."""
    if limit < 1:
        print("conversations: --limit must be at least 1", file=sys.stderr)
        return 2

    async def work(engine: AsyncEngine) -> int:
        params = {"everything": everything, "limit": limit}
        async with engine.connect() as conn:
            rows = (await conn.execute(_LIST, params)).all()
            count = int(await conn.scalar(_COUNT, params) or 0)
        _print_list(rows, count, everything)
        return 0

    return _run(url, db_timeout, work)


def _print_list(rows: Sequence[Row[Any]], count: int, everything: bool) -> None:
    kind = "" if everything else "pending "
    if not rows:
        print("the quarantine is empty" if everything else "no pending bodies in the quarantine")
        return
    header = ["ID", "RECEIVED", "ATTEMPTS", "SOURCE", "REASON", "LOCATION", "SIZE", "STATUS"]
    table = [
        [
            str(row.id),
            _time(row.received_at),
            str(row.attempts),
            _origin(row.source, row.headers),
            row.reason,
            row.location_id or "-",
            size(row.size),
            row.status,
        ]
        for row in rows
    ]
    for line in _table(header, table, right={0, 2, 6}):
        print(line)
    if count > len(rows):
        print(f"{len(rows)} of {count} {kind}bodies shown (--limit N for more)")
    else:
        print(f"{count} {kind}{'body' if count == 1 else 'bodies'}")


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    rows = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]


_CELL_CHARS = 40
"""The widest a table cell is shown: a location id from the internet can be 512 bytes
(more in a body that failed for it), which would pad every line of the table."""


def _cell(value: str) -> str:
    """`value` on one line (escaped: a body's text must not fake rows), cut to
    `_CELL_CHARS` with an ellipsis; `show ID` has it whole."""
    value = one_line(value)
    return value if len(value) <= _CELL_CHARS else value[: _CELL_CHARS - 1] + "…"


def _time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _origin(source: str, headers: Mapping[str, Any]) -> str:
    """`webhook`, or `import FILE:LINE` / `import FILE[ELEMENT]` for an imported payload."""
    file = headers.get("x-import-file")
    if source != "import" or not isinstance(file, str):
        return source
    if "x-import-line" in headers:
        return f"import {file}:{headers['x-import-line']}"
    if "x-import-element" in headers:
        return f"import {file}[{headers['x-import-element']}]"
    return f"import {file}"


# --- show ------------------------------------------------------------------------------------


def show(url: str, db_timeout: float, qid: int) -> int:
    """Everything about one body, the body last; 1 when there is no such id."""

    async def work(engine: AsyncEngine) -> int:
        async with engine.connect() as conn:
            row = (await conn.execute(_ONE, {"id": qid})).one_or_none()
        if row is None:
            print(f"conversations: no quarantined body with id {qid}", file=sys.stderr)
            return 1
        _print_body(row)
        return 0

    return _run(url, db_timeout, work)


def _print_body(row: Row[Any]) -> None:
    """Every field on its line; what the sender wrote (the location, the headers, the
    detail and errors quoting the body) escaped like the body, so none drives the
    terminal or fakes a line."""
    status = row.status
    if row.resolved_position is not None:
        status += f" (event at position {row.resolved_position}, {_time(row.resolved_at)})"
    print(f"id: {row.id}")
    print(f"status: {status}")
    print(f"source: {one_line(_origin(row.source, row.headers))}")
    print(f"reason: {row.reason}")
    print(f"detail: {one_line(row.detail)}")
    print(f"location: {one_line(row.location_id or '-')}")
    print(f"attempts: {row.attempts}")
    print(f"received: {_time(row.received_at)} (first), {_time(row.last_received_at)} (last)")
    print(f"sha256: {row.body_sha256}")
    print("headers:" + ("" if row.headers else " none"))
    for name, value in row.headers.items():
        print(f"  {one_line(name)}: {one_line(str(value))}")
    print("errors:" + ("" if row.errors else " none"))
    for error in row.errors:
        print(f"  {one_line(json.dumps(error, ensure_ascii=False, sort_keys=True))}")
    body = bytes(row.body)
    try:
        shown = body.decode("utf-8")
    except UnicodeDecodeError:
        print(f"body ({len(body)} bytes, not UTF-8, hex dump):")
        for line in hex_dump(body):
            print(line)
        return
    escaped = escape_controls(shown)
    note = ", control characters escaped" if escaped != shown else ""
    print(f"body ({len(body)} bytes, UTF-8{note}):")
    print(escaped)


_NOT_PLAIN = re.compile(r"[^\x20-\x7e]")
_ESCAPED = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Control and format characters (escape sequences, bidi overrides) and the Unicode line
and paragraph separators: what can drive a terminal or start a line of its own."""


def escape_controls(shown: str, *, keep: str = "\n\t") -> str:
    """Text from the internet (a body, a label) must not drive the operator's terminal
    nor fake lines of output: control, format and line-separator characters are shown as
    \\xNN / \\uNNNN / \\UNNNNNNNN, but for those in `keep` (a body shown over several lines
    keeps its newlines and tabs; a table cell passes `keep=""`, so each row is one line)."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep or unicodedata.category(char) not in _ESCAPED:
            return char
        code = ord(char)
        if code < 0x100:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return _NOT_PLAIN.sub(escape, shown)


def one_line(text: str) -> str:
    """`text` escaped onto one line."""
    return escape_controls(text, keep="")


def hex_dump(data: bytes) -> list[str]:
    """`xxd`-like lines: offset, 16 bytes in hex, the printable ASCII."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hexed = " ".join(f"{byte:02x}" for byte in chunk)
        ascii_ = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
        lines.append(f"{offset:08x}  {hexed:<47}  |{ascii_}|")
    return lines


# --- retry -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """What the webhook endpoint checks a body with: the signature keys, the size limit
    (`CONVERSATIONS_MAX_BODY_BYTES`) a body is decoded to at most."""

    verifier: SignatureVerifier
    limit: int


def retry(url: str, db_timeout: float, qid: int | None, *, endpoint: Endpoint) -> int:
    """Retry one pending body (`qid`) or all of them (None) as `endpoint` takes them; 0
    when every retried body is now in the store, 1 otherwise."""

    async def work(engine: AsyncEngine) -> int:
        if qid is None:
            return await _retry_all(engine, endpoint)
        return await _retry_id(engine, qid, endpoint)

    return _run(url, db_timeout, work)


async def _retry_id(engine: AsyncEngine, qid: int, endpoint: Endpoint) -> int:
    outcome, message = await _retry_one(engine, qid, endpoint)
    if outcome == "missing":
        print(f"conversations: {message}", file=sys.stderr)
        return 1
    print(message)
    return 1 if outcome == "failing" else 0


async def _retry_all(engine: AsyncEngine, endpoint: Endpoint) -> int:
    counts = {"stored": 0, "duplicate": 0, "failing": 0}
    after = 0
    while True:
        async with engine.connect() as conn:
            ids = list((await conn.scalars(_PENDING, {"after": after})).all())
        if not ids:
            break
        for qid in ids:
            outcome, message = await _retry_one(engine, qid, endpoint)
            if outcome in counts:  # not one that went away or was ingested meanwhile
                counts[outcome] += 1
                print(message)
        after = ids[-1]
    total = sum(counts.values())
    if not total:
        print("nothing to retry: no pending bodies")
        return 0
    print(
        f"retried {total}: {counts['stored']} stored, {counts['duplicate']} duplicate, "
        f"{counts['failing']} still failing"
    )
    return 1 if counts["failing"] else 0


async def _retry_one(engine: AsyncEngine, qid: int, endpoint: Endpoint) -> tuple[str, str]:
    """(outcome, message): outcome is stored, duplicate, failing, done (nothing to do) or
    missing. The row is locked, so two retries of one body cannot both append it."""
    async with engine.begin() as conn:
        row = (await conn.execute(_LOCK, {"id": qid})).one_or_none()
        if row is None:
            return "missing", f"no quarantined body with id {qid}"
        if row.status != "pending":
            position = row.resolved_position
            return "done", f"quarantine {qid}: already {row.status} (position {position})"
        prepared = _prepare(bytes(row.body), row.headers, row.source, endpoint)
        if isinstance(prepared, Rejection):
            return await _still_failing(conn, qid, prepared)
        event = dataclasses.replace(prepared, metadata={**prepared.metadata, "quarantineId": qid})
        try:
            async with conn.begin_nested():
                [result] = await append_events(conn, [event])
        except (DBAPIError, UnicodeEncodeError) as error:
            if is_unavailable(error):
                raise
            refused = Rejection("rejected_by_database", _first_line(error), [], event.location_id)
            return await _still_failing(conn, qid, refused)
        await conn.execute(_RESOLVE, {"id": qid, "position": result.position})
    if result.duplicate:
        return (
            "duplicate",
            f"quarantine {qid}: duplicate of the event at position {result.position}",
        )
    return "stored", f"quarantine {qid}: stored at position {result.position}"


def _prepare(
    body: bytes, headers: Mapping[str, str], source: str, endpoint: Endpoint
) -> NewEvent | Rejection:
    """What the endpoint would make of `body` received with `headers`."""
    kind: Source = "import" if source == "import" else "webhook"
    try:
        plain = decoded(body, headers, endpoint.limit)
        if isinstance(plain, Rejection):
            return plain
        if kind == "import":  # no headers, no signature
            return prepare(plain, kind, None)
        return prepare(plain, kind, check_signature(endpoint.verifier, plain, headers))
    except Exception as error:  # still a bug: keep the body, say what failed
        return Rejection("internal_error", f"{type(error).__name__}: {error}")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # as store.quarantine_body: text must store


async def _still_failing(conn: AsyncConnection, qid: int, rejection: Rejection) -> tuple[str, str]:
    def clean(value: str) -> str:
        return _UNSTORABLE.sub("\ufffd", value)

    await conn.execute(
        _STILL_FAILING,
        {
            "id": qid,
            "reason": rejection.reason,
            "detail": clean(rejection.detail),
            "errors": clean(json.dumps(list(rejection.errors), default=str)),
            "location_id": clean(rejection.location_id) if rejection.location_id else None,
        },
    )
    return "failing", f"quarantine {qid}: still failing: {rejection.reason}: {rejection.detail}"
