"""`conversations import FILE...`: append exported webhook payloads.

Each payload goes through the webhook endpoint's checks (`ingest.prepare`), idempotency
(a payload stored before is a duplicate) and quarantine. Input is JSON lines, one JSON
array, or pretty-printed JSON objects one after another, any of them gzipped, read as a
stream: memory stays bounded whatever the file size. Events are appended in batches, one
transaction each; a batch the database refuses because of one event is retried event by
event and only that event is quarantined.

Exit status: 0 when every payload was stored or a duplicate, 1 when some were quarantined
(or too large to store), 2 when a file could not be read or the database failed.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import signal
import stat
import sys
import zlib
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, Literal

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conversations.database import create_async_engine, describe_error
from conversations.events import NewEvent
from conversations.ingest import Rejection, prepare
from conversations.progress import Progress
from conversations.store import AppendResult, append_events, is_unavailable, quarantine_body

CHUNK = 512 * 1024
BATCH_EVENTS = 2000
BATCH_BYTES = 16 * 1024 * 1024
LISTED = 20
GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
BOM = b"\xef\xbb\xbf"

Kind = Literal["lines", "array", "values"]


class Unreadable(Exception):
    """A file cannot be read (any further): missing, corrupt gzip, broken JSON array."""


class DatabaseFailed(Exception):
    """The database failed for another reason than one event's data: stop the import."""


@dataclass(frozen=True, slots=True)
class Record:
    """One payload: its line number (JSON lines, from 1) or element index (array, from 0)
    and its exact bytes; None when it is larger than the limit (not read)."""

    number: int
    raw: bytes | None


# --- reading ---------------------------------------------------------------------------------


class _Counted:
    """A binary file read through once, counting the bytes (the progress of a gzipped
    file too). `head` reads the first bytes ahead: the next `read` returns them again."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._head = b""
        self.done = 0

    def head(self, size: int) -> bytes:
        self._head = self._file.read(size)
        self.done += len(self._head)
        return self._head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, b""
            return head
        data = self._file.read(size)
        self.done += len(data)
        return data

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("the input is read once, as a stream")


UNREADABLE = (
    (re.compile(rb"\xfd7zXZ\x00"), "compressed as xz", "xz -dc"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "compressed as bzip2", "bzip2 -dc"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "compressed as zstd", "zstd -dc"),
    (re.compile(rb"PK\x03\x04"), "compressed as a zip archive", "unzip -p"),
    (re.compile(rb"7z\xbc\xaf\x27\x1c"), "compressed as a 7z archive", "7z x -so"),
    # What PowerShell's `>` writes: each UTF-16 newline's 0x0a cut a payload's bytes.
    (re.compile(rb"\xff\xfe|\xfe\xff"), "encoded as UTF-16", "iconv -f UTF-16 -t UTF-8"),
)
"""Files import cannot read, by their first bytes, and a command that makes them readable."""


def _decoded(counted: _Counted) -> Iterator[bytes]:
    """The file's content in chunks, gunzipped when it starts with the gzip magic. One
    compressed otherwise, or in UTF-16, is refused (Unreadable): read as text, its bytes
    were cut at every newline byte into bodies, each quarantined as `not_json`."""
    head = counted.head(10)
    if head.startswith(GZIP_MAGIC):
        return _gunzipped(counted)
    for start, why, command in UNREADABLE:
        if start.match(head):
            raise Unreadable(
                f"{why}, which import does not read (UTF-8, gzipped or not):"
                f" `{command} FILE | conversations import -`"
            )
    return iter(partial(counted.read, CHUNK), b"")


def _gunzipped(counted: _Counted) -> Iterator[bytes]:
    """Gunzip as a stream, one member after another (`cat a.gz b.gz`; zero padding after
    a member is ignored, as gzip does), at most CHUNK bytes out at a time. Unlike
    `gzip.GzipFile`, whose read of a truncated file raises and drops what it inflated in
    that call, everything inflated before a truncation or a corruption is yielded first:
    an interrupted download imports all its whole lines."""
    inflater = zlib.decompressobj(_GZIP_WBITS)
    fed = False  # whether the current member has had any input
    pending = b""
    while True:
        if not pending:
            pending = counted.read(CHUNK)
            if not pending:
                if fed and not inflater.eof:
                    raise EOFError("the gzip data ends early (truncated)")
                return
        if inflater.eof:
            inflater, fed = zlib.decompressobj(_GZIP_WBITS), False
            pending = pending.lstrip(b"\0")
            continue
        fed = True
        out = inflater.decompress(pending, CHUNK)
        pending = inflater.unconsumed_tail or inflater.unused_data
        if out:
            yield out


def records(chunks: Iterator[bytes], limit: int) -> tuple[Kind, Iterator[Record]]:
    """JSON lines, a JSON array (the first non-whitespace byte is `[`), or pretty-printed
    JSON values one after another (the first line is a lone `{`, as `jq` or a copy of a
    documented example has it; no JSON line can be that)? A UTF-8 byte order mark starting
    the file is the file's encoding mark, not the payload's: dropped."""
    seen = b""
    undecided = True  # whether the file starts with a byte order mark
    for chunk in chunks:
        seen += chunk
        if undecided:
            if len(seen) < len(BOM) and BOM.startswith(seen):
                continue
            undecided = False
            seen = seen.removeprefix(BOM)
        content = seen.lstrip()
        start = content[:1]
        if start == b"{" and b"\n" not in content and len(content) < CHUNK:
            continue  # the first line is not whole yet
        if start:
            chained = _chain(seen, chunks)
            if start == b"[":
                return "array", _elements(chained, limit)
            if content.partition(b"\n")[0].strip() == b"{":
                return "values", _values(chained, limit)
            return "lines", _lines(chained, limit)
    return "lines", _lines(iter([seen]), limit)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _lines(chunks: Iterable[bytes], limit: int) -> Iterator[Record]:
    """Each non-blank line, without its line end; a line over `limit` bytes is not kept."""
    number = 0
    carry = bytearray()  # the start of a line that spans chunks
    skipping = False  # the current line is over the limit: its bytes are dropped
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            number += 1
            if skipping:
                skipping = False
                yield Record(number, None)
            else:
                if carry:
                    carry += chunk[start:end]
                    line, carry = bytes(carry), bytearray()
                else:
                    line = chunk[start:end]
                if (record := _line(number, line, limit)) is not None:
                    yield record
            start = end + 1
        if not skipping:
            carry += chunk[start:]
            if len(carry) > limit:
                skipping, carry = True, bytearray()
    if skipping:
        yield Record(number + 1, None)
    elif (record := _line(number + 1, bytes(carry), limit)) is not None:
        yield record


def _line(number: int, line: bytes, limit: int) -> Record | None:
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line or line.isspace():
        return None
    return Record(number, line if len(line) <= limit else None)


_NON_SPACE = re.compile(r"[^ \t\r\n]")


class _ArrayText:
    """A JSON array's text, decoded as it is read. Undecodable bytes survive as lone
    surrogates (`surrogateescape`), so every element re-encodes to its exact bytes."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._json = json.JSONDecoder(strict=False)  # control characters are prepare's call
        self._text = ""
        self._pos = 0
        self._eof = False
        self._lines_before = 0  # the line ends in the text already let go of

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            self._eof = True
        text = self._decoder.decode(chunk or b"", final=chunk is None)
        self._lines_before += self._text.count("\n", 0, self._pos)
        self._text = self._text[self._pos :] + text
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end), not consumed."""
        while True:
            if match := _NON_SPACE.search(self._text, self._pos):
                self._pos = match.start()
                return self._text[self._pos]
            self._pos = len(self._text)
            if not self._more():
                return ""

    def take(self) -> None:
        self._pos += 1

    def value(self, index: int, limit: int) -> bytes | None:
        """The next JSON value's exact bytes; None when it is over `limit` bytes (then it
        is passed over without being kept)."""
        self.peek()
        while True:
            try:
                _, end = self._json.raw_decode(self._text, self._pos)
                error: Exception | None = None
            except (ValueError, RecursionError) as failure:
                end, error = self._pos, failure
            if error is None and self._complete(end):
                break
            if len(self._text) - self._pos > limit:
                self._skip()
                return None
            if not self._more():
                if error is None:
                    break
                raise Unreadable(f"element {index} is not valid JSON: {self._why(error)}")
        raw = self._text[self._pos : end].encode("utf-8", "surrogateescape")
        self._pos = end
        return raw if len(raw) <= limit else None

    def _why(self, error: Exception) -> str:
        """The decoder's reason, with the line of the file it failed on: its own position
        is in the text read so far, and its message alone read "Unterminated string
        starting at" (at what, it did not say)."""
        if not isinstance(error, json.JSONDecodeError):
            return str(error)
        line = self._lines_before + self._text.count("\n", 0, error.pos) + 1
        return f"{error.msg.removesuffix(' at')} at line {line} of the file"

    def _complete(self, end: int) -> bool:
        """Whether a value that parsed up to `end` cannot go on in text not read yet, as
        "1" goes on as "1.5"."""
        if end >= len(self._text):
            return False
        return self._text[self._pos] not in _NUMBER_START or self._text[end] not in _NUMBER_PART

    def _skip(self) -> None:
        """Pass over a value too large to keep, keeping none of it: follow strings and
        nesting to its end."""
        depth, in_string, escaped = 0, False, False
        while True:
            text = self._text
            for i in range(self._pos, len(text)):
                char = text[i]
                if in_string:
                    if escaped:
                        escaped = False
                    elif char == "\\":
                        escaped = True
                    elif char == '"':
                        in_string = False
                elif char == '"':
                    in_string = True
                elif char in "[{":
                    depth += 1
                elif depth == 0 and char in ",]} \t\r\n":  # the end of a scalar
                    self._pos = i
                    return
                elif char in "]}":
                    depth -= 1
                if depth == 0 and not in_string and char in '"]}':
                    self._pos = i + 1
                    return
            self._pos = len(text)
            if not self._more():
                raise Unreadable("the file ends inside an element")


_NUMBER_START = frozenset("-0123456789")
_NUMBER_PART = frozenset("0123456789.eE+-")


def _elements(chunks: Iterator[bytes], limit: int) -> Iterator[Record]:
    text = _ArrayText(chunks)
    text.peek()
    text.take()  # "[", as `records` saw
    if text.peek() == "]":
        text.take()
    else:
        for index in range(sys.maxsize):
            yield Record(index, text.value(index, limit))
            after = text.peek()
            text.take()
            if after == "]":
                break
            if after != ",":
                found = f"{after!r}" if after else "the end of the file"
                raise Unreadable(f"expected ',' or ']' after element {index}, found {found}")
    if text.peek():
        raise Unreadable("data after the end of the JSON array")


def _values(chunks: Iterator[bytes], limit: int) -> Iterator[Record]:
    """JSON values one after another, each a payload numbered from 0 like array elements."""
    text = _ArrayText(chunks)
    for index in range(sys.maxsize):
        if not text.peek():
            break
        yield Record(index, text.value(index, limit))


# --- results ---------------------------------------------------------------------------------


@dataclass
class Tally:
    stored: int = 0
    duplicate: int = 0
    quarantined: int = 0
    too_large: int = 0

    def add(self, other: Tally) -> None:
        self.stored += other.stored
        self.duplicate += other.duplicate
        self.quarantined += other.quarantined
        self.too_large += other.too_large

    def __str__(self) -> str:
        text = f"{self.stored} stored, {self.duplicate} duplicate, {self.quarantined} quarantined"
        return text + (f", {self.too_large} too large (not stored)" if self.too_large else "")


@dataclass
class Report:
    files: list[tuple[str, Tally]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unlisted: int = 0
    failed: bool = False

    def problem(self, where: str, reason: str, detail: str, note: str) -> None:
        if len(self.problems) < LISTED:
            self.problems.append(f"{where}: {reason}: {detail} ({note})")
        else:
            self.unlisted += 1

    def print(self) -> None:
        total = Tally()
        for name, tally in self.files:
            print(f"{name}: {tally}")
            total.add(tally)
        if len(self.files) > 1:
            print(f"total: {total}")
        if self.problems:
            print("not stored:")
            for line in self.problems:
                print(f"  {line}")
            if self.unlisted:
                print(f"  ... and {self.unlisted} more")

    def status(self) -> int:
        if self.failed:
            return 2
        return 1 if self.problems else 0


# --- writing ---------------------------------------------------------------------------------


@dataclass
class _Batch:
    name: str
    kind: Kind
    events: dict[str, tuple[int, NewEvent]] = field(default_factory=dict)
    rejected: list[tuple[int, bytes, Rejection]] = field(default_factory=list)
    too_large: list[int] = field(default_factory=list)
    folded: int = 0
    size: int = 0

    def where(self, number: int) -> str:
        return f"{self.name}:{number}" if self.kind == "lines" else f"{self.name}[{number}]"

    def headers(self, number: int) -> dict[str, str]:
        key = "x-import-line" if self.kind == "lines" else "x-import-element"
        return {"x-import-file": self.name, key: str(number)}

    def add(self, number: int, raw: bytes | None) -> None:
        if raw is None:
            self.too_large.append(number)
            return
        try:
            prepared = prepare(raw, "import", None)
        except Exception as error:  # as at the webhook: a bug must not lose the payload
            prepared = Rejection("internal_error", f"{type(error).__name__}: {error}")
        self.size += len(raw)
        if isinstance(prepared, Rejection):
            self.rejected.append((number, raw, prepared))
        elif prepared.dedup_key in self.events:
            self.folded += 1
        else:
            self.events[prepared.dedup_key] = (number, prepared)

    @property
    def full(self) -> bool:
        return len(self.events) + len(self.rejected) >= BATCH_EVENTS or self.size >= BATCH_BYTES


async def _flush(
    engine: AsyncEngine, batch: _Batch, limit: int, tally: Tally, report: Report
) -> None:
    """Append the batch and quarantine its rejected payloads, in one transaction."""
    if not (batch.events or batch.rejected or batch.too_large or batch.folded):
        return
    numbered = list(batch.events.values())
    results: Sequence[AppendResult | str]
    try:
        async with engine.begin() as conn:
            results = await append_events(conn, [event for _, event in numbered])
            kept = await _keep(conn, batch, batch.rejected)
    except _DATABASE_ERRORS as error:
        if is_unavailable(error):
            raise DatabaseFailed(_first_line(error)) from error
        results, kept = await _isolate(engine, batch, numbered)
    for result in results:
        if isinstance(result, AppendResult):
            tally.duplicate += result.duplicate
            tally.stored += not result.duplicate
    tally.duplicate += batch.folded
    tally.quarantined += len(kept)
    tally.too_large += len(batch.too_large)
    problems = [
        (n, rejection.reason, rejection.detail, f"quarantine id {q}") for n, rejection, q in kept
    ]
    problems += [(n, "too_large", f"over {limit} bytes", "not stored") for n in batch.too_large]
    for number, reason, detail, note in sorted(problems):
        report.problem(batch.where(number), reason, detail, note)


_Kept = list[tuple[int, Rejection, int]]

# What the database (or the way to it) raises; anything else is a bug, left to surface.
# Text the driver cannot encode (a lone surrogate) is one event's data, like a DataError.
_DATABASE_ERRORS = (DBAPIError, OSError, UnicodeEncodeError)


async def _isolate(
    engine: AsyncEngine, batch: _Batch, numbered: list[tuple[int, NewEvent]]
) -> tuple[list[AppendResult | str], _Kept]:
    """One event spoiled the batch: append them one by one, quarantine the refused."""
    try:
        async with engine.begin() as conn:
            results = await _append_each(conn, [event for _, event in numbered])
            refused = [
                (number, event.raw, Rejection("rejected_by_database", why, [], event.location_id))
                for (number, event), why in zip(numbered, results, strict=True)
                if isinstance(why, str)
            ]
            kept = await _keep(conn, batch, [*batch.rejected, *refused])
    except _DATABASE_ERRORS as error:
        raise DatabaseFailed(_first_line(error)) from error
    return results, kept


async def _append_each(conn: AsyncConnection, events: list[NewEvent]) -> list[AppendResult | str]:
    """Each event in its own savepoint: its result, or why the database refused it."""
    results: list[AppendResult | str] = []
    for one in events:
        try:
            async with conn.begin_nested():
                results.extend(await append_events(conn, [one]))
        except _DATABASE_ERRORS as error:
            if is_unavailable(error):
                raise
            results.append(_first_line(error))
    return results


async def _keep(
    conn: AsyncConnection, batch: _Batch, rejected: list[tuple[int, bytes, Rejection]]
) -> _Kept:
    """Quarantine the rejected payloads, in the order of their bodies' SHA-256 (the
    quarantine's unique key), as every import does: each upsert locks its key until the
    transaction ends, and two imports of the same bad payloads in different orders (an
    export read newest first, another oldest first) locked them crosswise, until
    PostgreSQL stopped one with "deadlock detected" (status 2)."""
    kept: _Kept = []
    for number, raw, rejection in sorted(
        rejected, key=lambda item: hashlib.sha256(item[1]).digest()
    ):
        qid = await quarantine_body(
            conn,
            body=raw,
            reason=rejection.reason,
            detail=rejection.detail,
            errors=rejection.errors,
            headers=batch.headers(number),
            source="import",
            location_id=rejection.location_id,
        )
        kept.append((number, rejection, qid))
    return kept


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --- the command -----------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(name: str) -> Iterator[tuple[str, BinaryIO, int | None]]:
    if name == "-":
        yield "<stdin>", sys.stdin.buffer, _size(sys.stdin.buffer)
        return
    with open(name, "rb") as file:
        yield name, file, _size(file)


def _size(file: BinaryIO) -> int | None:
    """The file's size when it is a regular file (not a pipe)."""
    try:
        status = os.fstat(file.fileno())
    except (OSError, ValueError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _batches(display: str, file: BinaryIO, limit: int, progress: Progress) -> Iterator[_Batch]:
    """The file's payloads, prepared, in batches (run in a worker thread). A read error
    ends the file, after the payloads read before it."""
    counted = _Counted(file)
    batch: _Batch | None = None
    count = 0
    try:
        kind, payloads = records(_decoded(counted), limit)
        batch = _Batch(display, kind)
        for count, record in enumerate(payloads, 1):
            batch.add(record.number, record.raw)
            if batch.full:
                yield batch
                batch = _Batch(display, kind)
            progress.update_to(counted.done, count)
    except (OSError, EOFError, zlib.error, Unreadable) as error:
        failure: BaseException | None = error
    else:
        failure = None
    progress.update_to(counted.done, count)
    if batch is not None:
        yield batch
    if isinstance(failure, Unreadable):
        raise failure
    if failure is not None:
        raise Unreadable(str(failure) or type(failure).__name__) from failure


async def _import_file(engine: AsyncEngine, name: str, limit: int, report: Report) -> None:
    """While one batch is written, the next is read and prepared in a worker thread."""
    with _opened(name) as (display, file, total):
        tally = Tally()
        report.files.append((display, tally))
        progress = Progress(f"import {display}", total, items="payloads")
        batches = _batches(display, file, limit, progress)
        writing: asyncio.Task[None] | None = None
        try:
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                await _finished(writing)
                writing = asyncio.create_task(_flush(engine, batch, limit, tally, report))
        finally:
            try:
                await _finished(writing)
            finally:
                progress.close()


async def _finished(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        await task


def _engine(url: str, db_timeout: float) -> AsyncEngine:
    return create_async_engine(url, pool_size=1, timeout=db_timeout)


async def _reachable(engine: AsyncEngine) -> None:
    """Reach the event table before reading anything: a broken DATABASE_URL (or a schema
    not migrated) fails the import even when there is nothing to import, as a nightly job
    importing an empty export must, not only once a batch is ready."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1 FROM events LIMIT 0"))
    except _DATABASE_ERRORS as error:
        raise DatabaseFailed(_first_line(error)) from error


async def _import_all(names: Sequence[str], url: str, limit: int, db_timeout: float) -> Report:
    engine = _engine(url, db_timeout)
    report = Report()
    try:
        await _reachable(engine)
        for name in names:
            try:
                await _import_file(engine, name, limit, report)
            except Unreadable as error:
                shown = "<stdin>" if name == "-" else name
                print(f"conversations: {shown}: {error}; stopped reading it", file=sys.stderr)
                report.failed = True
    except DatabaseFailed as error:
        why = describe_error(error.__cause__ or error)
        print(f"conversations: import stopped, {why}", file=sys.stderr)
        report.failed = True
    finally:
        await engine.dispose()
    return report


def run(names: Sequence[str], url: str, *, limit: int, db_timeout: float) -> int:
    """Import every file in order; print the counts; return the exit status."""
    unreadable = list(_check(names))
    if unreadable:
        for name, error in unreadable:
            print(f"conversations: cannot read {name}: {error.strerror or error}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_cancelled_by_sigterm(_import_all(names, url, limit, db_timeout)))
    except KeyboardInterrupt:
        print("conversations: interrupted; importing again skips what was stored", file=sys.stderr)
        return 130
    report.print()
    return report.status()


async def _cancelled_by_sigterm(work: Coroutine[Any, Any, Report]) -> Report:
    """`await work`, cancelled by SIGTERM as asyncio.run cancels it on Ctrl-C, then
    KeyboardInterrupt: the import stops cleanly between two batches, with the CLI's line
    and status 130.

    The CLI makes SIGTERM raise KeyboardInterrupt wherever the main thread is; inside the
    event loop that can be in a task's step, which then dies with it and is logged as
    "Task exception was never retrieved" with a traceback. (Relaying it as SIGINT to
    asyncio's own handler instead failed where SIGINT is ignored, as in a shell's
    background job: the import ran on to its end.)"""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    previous = signal.getsignal(signal.SIGTERM)
    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not main thread
        return await work
    try:
        return await work
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


def _check(names: Sequence[str]) -> Iterator[tuple[str, OSError]]:
    """Every named file that cannot be opened, before anything is imported."""
    for name in names:
        if name == "-":
            # Python leaves sys.stdin None when it started with descriptor 0 closed
            # (`conversations import - <&-`, a service manager's default): not a traceback.
            if sys.stdin is None:
                yield "<stdin>", OSError(errno.EBADF, "standard input is closed")
            continue
        try:
            with open(name, "rb"):
                pass
        except OSError as error:
            yield name, error
