"""The raw event feed of the caller's locations: paged (GET /events) and live
(Server-Sent Events, GET /events/stream).

`GET /events?after=P&limit=N` answers `{"events": [...], "next": P'}`: the events of the
key's locations with a position above `P`, in position order, at most `N` (default 100,
1..1000; fewer when their bodies pass 4 MiB, but never none while any is there). Each
event carries its `payload` exactly as HighLevel sent it: the response is built around
the stored body's own text, never a re-serialisation, so numbers, key order and
whitespace are what was received. `next` is the last returned event's position, or `P`
itself when nothing matched (so it never hints at other tenants' events). Reading again
with `after=next` is complete: positions become visible in order (docs/ordering.md), and
filtering by location keeps that true. `locationId` narrows an all-locations key (or a
multi-location one) to one location; a location outside the key reads as empty.

Both take the key as `?access_token=<key>` instead of the Authorization header (RFC 6750
2.3): a browser's EventSource cannot send headers. Cross-origin pages also need
`CONVERSATIONS_CORS_ORIGINS` (see api/app.py).

`GET /events/stream` (text/event-stream) follows the same feed live:

- It starts after the `Last-Event-ID` header (what a reconnecting EventSource sends),
  else after the `after` parameter, else at 0 (the whole feed, then live).
- Each event is one SSE message: `id: <position>`, `event: <type>`, `data: <the event
  JSON as in GET /events>` on one line. SSE data is line-based, so a payload whose body
  had line breaks between its JSON tokens has them sent as spaces (JSON strings cannot
  hold raw line breaks, so the payload means the same; GET /events has the exact bytes).
- The first thing sent is `retry: 1000` (reconnect after a second); when nothing happens
  for `heartbeat` seconds (default 15, 1..300) a comment line `: heartbeat` is sent, which
  keeps proxies from closing an idle connection and tells a client the stream is alive.
- It wakes on PostgreSQL `NOTIFY conversations_events`, which every append sends when it
  commits. One LISTEN connection per process is shared by all open streams (it opens with
  the first stream and closes with the last). After a wake-up the newest events are read
  once for all the streams that have caught up (FeedTail); a stream further behind reads
  on its own. While that connection is down, streams read again at every heartbeat, so
  a notification lost meanwhile costs at most one heartbeat of delay, never an event.
- The stream is bounded by the key: only its locations, and it ends (the client
  reconnects and gets 401) within 3 s of the key's revocation, idle or not (the key is
  checked before a read at most every `KEY_RECHECK` seconds, and every `KEY_CHECK_EVERY`
  seconds while the stream waits).
- A client that goes away ends its stream: its reads stop, its subscription to the
  shared listener is dropped, nothing is left running (the listener's connection closes
  with the last stream).
- While the database is unreachable, or hangs (a read not answered), a stream stays open
  and keeps sending heartbeats; it reads again at each heartbeat (or waits on the read
  that hangs) and catches up once the database is back. A stream asked for while the
  database does not answer its key lookup within `CONVERSATIONS_DB_TIMEOUT` is a 503
  with `Retry-After`, as any read.
- A client that does not read holds little: a stream buffers about 200 KiB for it, then
  waits (reading and sending nothing), and after `CONVERSATIONS_STREAM_STALL_TIMEOUT`
  seconds of waiting its connection is reset (see EventStreamResponse).
- When the server is told to stop (SIGTERM or SIGINT), every stream ends at once, so the
  server does not wait out its graceful timeout on clients that never leave; they
  reconnect (to another instance) with Last-Event-ID and miss nothing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import signal
import socket
import struct
import threading
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any, TypeVar

import anyio.to_thread
import psycopg
from sqlalchemy import Connection
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from conversations.api.auth import ACCESS_TOKEN, bearer_token, require_scope
from conversations.api.params import Params
from conversations.api.problems import unavailable_response
from conversations.api.protocol import TRANSPORT
from conversations.api.state import AppState, app_state
from conversations.dialect import iso
from conversations.keys import KeyCache
from conversations.keys import Scope as KeyScope
from conversations.projections.worker import CHANNEL, libpq_url
from conversations.store import FEED_PAGE_BYTES, FeedEvent, head_position, read_feed

log = logging.getLogger("conversations.api.feed")

APPLICATION_NAME = "conversations event feed"
"""The listener connection's name in pg_stat_activity."""

_Handler = Callable[[int, FrameType | None], Any]
_T = TypeVar("_T")

MAX_POSITION = 2**63 - 1
STREAM_BATCH = 100
"""Events a stream reads per query while catching up."""
KEY_CHECK_EVERY = 1.0
"""Seconds between checks of an idle stream's key: a revoked key's stream ends within
this and the key cache's 2 s."""


# --- the feed, as JSON text -----------------------------------------------------------------


def payload_text(event: FeedEvent) -> str:
    """The body as received. Ingest and import accept strict UTF-8 JSON only, so it
    decodes; a row that does not (a damaged store) is sent as a JSON string with
    replacement characters, so the response stays valid JSON."""
    try:
        return event.raw.decode("utf-8")
    except UnicodeDecodeError:  # pragma: no cover - ingest and import refuse such bodies
        return json.dumps(event.raw.decode("utf-8", "replace"))


def event_json(event: FeedEvent) -> str:
    """One feed event as JSON text, its payload spliced in verbatim."""
    head = json.dumps(
        {
            "position": event.position,
            "eventId": str(event.event_id),
            "locationId": event.location_id,
            "streamId": event.stream_id,
            "version": event.version,
            "type": event.event_type,
            "occurredAt": iso(event.occurred_at),
            "recordedAt": iso(event.recorded_at),
        },
        ensure_ascii=False,
    )
    return f'{head[:-1]}, "payload": {payload_text(event)}, "metadata": {event.metadata_json}}}'


def _locations(scope: KeyScope, location_id: str | None) -> list[str] | None:
    """The locations a read covers: None for every location, [] for none."""
    if location_id is not None:
        return [location_id] if scope.allows(location_id) else []
    return None if scope.all_locations else sorted(scope.locations)


# --- GET /events ----------------------------------------------------------------------------


def list_events(request: Request) -> Response:
    scope = require_scope(request, query_token=True)
    params = Params(request, allowed=["after", "limit", "locationId", ACCESS_TOKEN])
    after = params.integer("after", 0, 0, MAX_POSITION)
    limit = params.integer("limit", 100, 1, 1000)
    locations = _locations(scope, params.text("locationId"))
    with app_state(request).read_engine.connect() as conn:
        events = read_feed(conn, after, limit, locations)
        if not events:
            _refuse_unseen(conn, after)
    following = events[-1].position if events else after
    body = '{"events": [' + ", ".join(map(event_json, events)) + f'], "next": {following}}}'
    return Response(body, media_type="application/json")


def _refuse_unseen(conn: Connection, after: int) -> None:
    """409 for a position past the newest event: this store never handed it out (it
    came from another store, or from this one before it was recreated). Read on, the
    reader would wait in silence and then skip every event up to it. (The newest
    position is no secret: /projections shows it without a key.)"""
    if after > head_position(conn):
        raise HTTPException(
            409,
            f"position {after} is past the newest event: it comes from another store, or"
            " from this one before it was recreated; read again from after=0",
        )


# --- the shared listener --------------------------------------------------------------------


TAIL_EVENTS = 1000
"""Newest events the shared tail keeps (and reads at most at once)."""
TAIL_BYTES = 8 * 1024 * 1024
"""Framed bytes the shared tail keeps at most."""
KEY_RECHECK = 2.0
"""Seconds between a stream's checks that its key still stands (KeyCache's ttl)."""


@dataclass(frozen=True)
class _Entry:
    position: int
    location_id: str
    frame: bytes


class FeedTail:
    """The newest events of every location, read once after each wake-up for every stream
    that has caught up, and framed once.

    Each stream used to read the feed itself after every append: with hundreds of streams
    open (read or not), an append cost hundreds of queries and frames, and webhook intake
    slowed down with them. The tail holds every event in (base, top] (complete, since
    committed positions form a prefix: docs/ordering.md), at most TAIL_EVENTS and
    TAIL_BYTES of them; a stream at a position below `base` reads on its own until it has
    caught up. Streams asking while a read is in flight share it; a wake-up after it
    began (or a listener that is down, which may lose notifications) starts the next.
    """

    def __init__(self) -> None:
        self._positions: list[int] = []
        self._entries: list[_Entry] = []
        self._bytes = 0
        self._base: int | None = None
        self._read: asyncio.Future[None] | None = None
        self._stale = True

    def mark_stale(self) -> None:
        self._stale = True

    async def refresh(self, state: AppState, force: bool) -> None:
        """Once this returns, the tail holds what was committed when it was called (or
        the read failed: its error is raised)."""
        if self._stale or force or self._read is None:
            self._stale = False
            self._read = asyncio.ensure_future(self._read_after(self._read, state))
            self._read.add_done_callback(_drop_result)
        await asyncio.shield(self._read)

    async def _read_after(self, previous: asyncio.Future[None] | None, state: AppState) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # reads add to the tail one after the other
        try:
            if self._base is None:
                self._base = await _in_thread(partial(_read_head, state))
            while True:
                top = self._positions[-1] if self._positions else self._base
                entries = await _in_thread(partial(_read_tail, state, top))
                self._add(entries)
                size = sum(len(entry.frame) for entry in entries)
                if len(entries) < TAIL_EVENTS and size < FEED_PAGE_BYTES // 2:
                    return
        except BaseException:
            self._stale = True  # the next stream asking reads again
            raise

    def _add(self, entries: list[_Entry]) -> None:
        self._entries += entries
        self._positions += [entry.position for entry in entries]
        self._bytes += sum(len(entry.frame) for entry in entries)
        dropped = 0
        while len(self._entries) - dropped > TAIL_EVENTS or (
            self._bytes > TAIL_BYTES and dropped < len(self._entries) - 1
        ):
            self._bytes -= len(self._entries[dropped].frame)
            dropped += 1
        if dropped:
            self._base = self._positions[dropped - 1]
            del self._entries[:dropped], self._positions[:dropped]

    @property
    def top(self) -> int:
        """The newest position the tail has read up to (0 before its first read)."""
        return self._positions[-1] if self._positions else (self._base or 0)

    def after(self, position: int, locations: frozenset[str] | None) -> list[_Entry] | None:
        """The events above `position` of `locations` (every one when None), or None when
        the tail does not reach back that far."""
        if self._base is None or position < self._base:
            return None
        start = bisect.bisect_right(self._positions, position)
        return [
            entry
            for entry in self._entries[start:]
            if locations is None or entry.location_id in locations
        ]


class EventNotifier:
    """One `LISTEN conversations_events` connection per process, fanned out to every open
    stream through an asyncio.Event each. It connects when the first stream subscribes
    and disconnects when the last one leaves, so an idle process holds no connection."""

    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        self._waiters: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._watching = False
        self.connected = False
        """Whether LISTEN is active now (for diagnostics)."""
        self.closing = False
        """The server is shutting down: every stream ends."""
        self._closed = asyncio.Event()
        self._reads_failing = False
        self._listen_failing = False
        self.tail = FeedTail()

    @property
    def subscribers(self) -> int:
        return len(self._waiters)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        """An Event set whenever appends may have committed (and once the listener is
        up, in case one committed before). Clear it before reading, then wait on it."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        self._watch_shutdown()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)
            if not self._waiters:
                # Nothing keeps the tail current now: the next stream, maybe a million
                # appends later, would wait while it read up through every one of them.
                self.tail = FeedTail()
            if not self._waiters and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                # Keep a reference until it has closed its connection.
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def _watch_shutdown(self) -> None:
        """End every stream as soon as the server is told to stop.

        A stream never ends by itself, and uvicorn waits for open responses before it
        shuts down (for its graceful timeout, then it cancels them with an error). So the
        first stream chains a handler onto the server's SIGTERM and SIGINT handlers that
        ends all streams at once; the server's own handler still runs. Only where the
        server installed handlers (uvicorn does so in the main thread, which runs the
        event loop); elsewhere streams end when they are cancelled.
        """
        if self._watching or threading.current_thread() is not threading.main_thread():
            return
        self._watching = True
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def handler(
                number: int, frame: FrameType | None, previous: _Handler = previous
            ) -> None:
                loop.call_soon_threadsafe(self.close)
                previous(number, frame)

            signal.signal(signum, handler)

    def close(self) -> None:
        """End every stream (they see `closing` when woken)."""
        self.closing = True
        self._closed.set()
        self._wake_all()

    def read_failed(self, error: Exception) -> None:
        """A stream's read failed: one warning per outage for all streams (each retries at
        every heartbeat: hundreds of streams would log hundreds of lines a minute)."""
        if self._reads_failing:
            log.debug("event stream read failed, retrying: %s", error)
            return
        self._reads_failing = True
        log.warning("event stream reads failing, streams retry at each heartbeat: %s", error)

    def read_worked(self) -> None:
        if self._reads_failing:
            self._reads_failing = False
            log.warning("event stream reads work again")

    async def until_closed(self) -> None:
        """Returns once `close` was called (a stream waiting on a read watches this)."""
        await self._closed.wait()

    def _wake_all(self) -> None:
        self.tail.mark_stale()
        for waiter in self._waiters:
            waiter.set()

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            listening_since: float | None = None
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=APPLICATION_NAME,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    listening_since = time.monotonic()
                    self.connected = True
                    if self._listen_failing:
                        self._listen_failing = False
                        log.warning("event listener reconnected")
                    backoff = 0.5
                    self._wake_all()  # an append may have committed before LISTEN
                    async for _ in conn.notifies():
                        self._wake_all()
            except Exception as error:
                if _closed_after_a_while(listening_since) and not self._listen_failing:
                    # Its connection closed after listening a while: PostgreSQL's
                    # idle_session_timeout or a proxy's idle limit closes it every few
                    # seconds while no append commits (a warning each time was noise), or
                    # the database went away. Listening again at once tells which: only a
                    # failure to do so is an outage worth a warning.
                    log.debug("event listener's connection closed, listening again: %s", error)
                    continue
                # One warning per outage; its retries (backing off to 30 s) at debug level.
                level = logging.DEBUG if self._listen_failing else logging.WARNING
                self._listen_failing = True
                log.log(level, "event listener failed, reconnecting: %s", error)
            finally:
                self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)


def _closed_after_a_while(listening_since: float | None) -> bool:
    """Whether a listener's connection closed half a second or more after it began
    listening (one closed sooner is retried with backoff, so a database that keeps
    dropping new connections is not reconnected to in a tight loop)."""
    return listening_since is not None and time.monotonic() - listening_since >= 0.5


def notifier(app: Starlette, state: AppState) -> EventNotifier:
    """The app's notifier, made on first use (in the event loop, so without a lock)."""
    found: EventNotifier | None = getattr(app.state, "event_notifier", None)
    if found is None:
        url = state.read_engine.url.render_as_string(hide_password=False)
        found = EventNotifier(url)
        app.state.event_notifier = found
    return found


# --- GET /events/stream ---------------------------------------------------------------------


def _frame(event: FeedEvent) -> str:
    data = event_json(event).replace("\r", " ").replace("\n", " ")
    kind = event.event_type.replace("\r", " ").replace("\n", " ")
    return f"id: {event.position}\nevent: {kind}\ndata: {data}\n\n"


def _start(request: Request, params: Params) -> int:
    """Where a stream starts: `Last-Event-ID` (a reconnection) wins over `after`."""
    after = params.integer("after", 0, 0, MAX_POSITION)
    header = request.headers.get("last-event-id", "").strip()
    if not header:
        return after
    if not (header.isascii() and header.isdigit() and len(header) <= 19) or (
        int(header) > MAX_POSITION
    ):
        raise HTTPException(400, f"header 'Last-Event-ID': {header[:40]!r} is not a position")
    return int(header)


STREAM_SEND_BUFFER = 64 * 1024
"""Bytes a stream's connection buffers for its client, in the kernel (SO_SNDBUF, which
Linux doubles) and in the transport: what a client that stops reading can hold."""


class _Stalled(Exception):
    """The client did not take what was sent within the stall timeout."""


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its iterator, however the response ends
    (a client gone mid-send leaves a plain async generator suspended until the garbage
    collector finds it; its subscription must end now).

    A client that does not read: its connection's buffers are kept small, so it blocks
    the stream (which then reads and sends nothing) after a few hundred KiB rather than
    after the kernel's default of up to 4 MiB per socket, each event until then read and
    sent as for a client that reads; once a send has waited `stall_timeout` seconds for
    room, the connection is aborted (closing it would wait for the buffer to drain)."""

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[str | bytes], stall_timeout: float, headers: dict[str, str]
    ) -> None:
        super().__init__(content, headers=headers)
        self.stall_timeout = stall_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = _transport(scope)
        if transport is not None:
            _bound_buffers(transport)
            send = partial(self._send_or_abort, send, transport)
        try:
            await super().__call__(scope, receive, send)
        except _Stalled:
            log.info("event stream closed: the client read nothing for %g s", self.stall_timeout)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()

    async def _send_or_abort(
        self, send: Send, transport: asyncio.Transport, message: Message
    ) -> None:
        if not transport.get_write_buffer_size():  # the client keeps up: no timer
            await send(message)
            return
        try:
            await asyncio.wait_for(send(message), self.stall_timeout)
        except TimeoutError:
            _reset(transport)
            raise _Stalled from None


def _transport(scope: Scope) -> asyncio.Transport | None:
    """The connection's transport, where the server offers it (api/protocol.py)."""
    extension = scope.get("extensions", {}).get(TRANSPORT)
    return None if extension is None else extension.get("transport")


def _reset(transport: asyncio.Transport) -> None:
    """Drop the connection and what it still buffers: a reset (SO_LINGER 0), since even an
    aborted socket is otherwise kept by the kernel with its unsent bytes while it probes
    a client that does not read, for minutes."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _bound_buffers(transport: asyncio.Transport) -> None:
    transport.set_write_buffer_limits(high=STREAM_SEND_BUFFER)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)


async def _frames(
    request: Request,
    state: AppState,
    token: str,
    locations: Sequence[str] | None,
    after: int,
    heartbeat: float,
) -> AsyncIterator[str | bytes]:
    shared = notifier(request.app, state)
    allowed = None if locations is None else frozenset(locations)
    pending: asyncio.Task[_Batch | None] | None = None
    closed = asyncio.ensure_future(shared.until_closed())
    key_checked = time.monotonic()  # by _stream_setup, just now
    with shared.subscribe() as wake:
        try:
            yield "retry: 1000\n\n"
            position = after
            idle_since = time.monotonic()
            while not shared.closing:
                wake.clear()
                recheck = time.monotonic() - key_checked >= KEY_RECHECK
                if recheck:
                    key_checked = time.monotonic()
                # A hung database holds a read for as long as its socket lives: heartbeats go
                # on meanwhile (a proxy would close a silent stream), and the same read is
                # awaited again rather than another started beside it.
                pending = asyncio.ensure_future(
                    _next_batch(state, shared, token, locations, allowed, position, recheck)
                )
                while not pending.done() and not shared.closing:
                    remaining = heartbeat - (time.monotonic() - idle_since)
                    await asyncio.wait(
                        [pending, closed], timeout=max(remaining, 0.0), return_when=FIRST_COMPLETED
                    )
                    if not pending.done():
                        yield ": heartbeat\n\n"
                        idle_since = time.monotonic()
                if shared.closing:
                    return
                try:
                    batch = pending.result()
                    shared.read_worked()
                except Exception as error:
                    # The database is away: keep the stream (heartbeats go on) and read again
                    # at the next wake-up or heartbeat.
                    shared.read_failed(error)
                    batch = _Batch([], reached=position, more=False)
                if batch is None:
                    return  # revoked: the client's reconnection is answered 401
                for frame in batch.frames:
                    yield frame
                position = batch.reached
                if batch.frames:
                    idle_since = time.monotonic()
                    if batch.more:
                        continue
                remaining = heartbeat - (time.monotonic() - idle_since)
                woken = await _idle(wake, max(remaining, 0.0), state.keys, token)
                if woken is None:
                    return  # revoked while idle
                if not woken:
                    yield ": heartbeat\n\n"
                    idle_since = time.monotonic()
        finally:
            closed.cancel()
            if pending is not None:
                pending.cancel()  # a read still hanging is abandoned, not waited for


async def _idle(wake: asyncio.Event, seconds: float, keys: KeyCache, token: str) -> bool | None:
    """Wait up to `seconds` for `wake`: True when woken, False when the time ran out, None
    once the key is found revoked.

    Reads check the key, but an idle stream reads only at its heartbeat (up to 300 s):
    so the key is checked every `KEY_CHECK_EVERY` seconds meanwhile, from the key cache
    when it is fresh, else in a worker thread (a lookup may query the database; one that
    hangs is waited for beside `wake`, never repeated, and never holds up the heartbeat).
    """
    until = time.monotonic() + seconds
    next_check = time.monotonic() + KEY_CHECK_EVERY
    woken = asyncio.ensure_future(wake.wait())
    lookup: asyncio.Task[KeyScope | None] | None = None
    try:
        while not woken.done():
            now = time.monotonic()
            if now >= until:
                return False
            if lookup is None and now >= next_check:
                fresh, scope = keys.cached(token)
                if fresh and scope is None:
                    return None
                if not fresh:
                    lookup = _in_thread(partial(keys.scope, token))
                next_check = now + KEY_CHECK_EVERY
            waits: list[asyncio.Future[Any]] = [woken] if lookup is None else [woken, lookup]
            end = until if lookup is not None else min(until, next_check)
            await asyncio.wait(waits, timeout=end - now, return_when=FIRST_COMPLETED)
            if lookup is not None and lookup.done():
                # A lookup that failed (the database away) decides nothing: reads retry.
                if lookup.exception() is None and lookup.result() is None:
                    return None
                lookup = None
        return True
    finally:
        woken.cancel()
        if lookup is not None:
            lookup.cancel()


@dataclass(frozen=True)
class _Batch:
    frames: Sequence[str | bytes]
    """SSE messages, in position order."""
    reached: int
    """The position the stream has read up to: its last event's, or beyond it when no
    event of its locations lies between (so the stream of a quiet location catches up
    with the shared tail, instead of reading on its own after every append)."""
    more: bool
    """Read on at once: there may be more."""


async def _next_batch(
    state: AppState,
    shared: EventNotifier,
    token: str,
    locations: Sequence[str] | None,
    allowed: frozenset[str] | None,
    after: int,
    check_key: bool,
) -> _Batch | None:
    """The stream's next events, from the shared tail once it has caught up, else read
    on its own; None once the key is revoked. The listener being down may lose
    notifications, so the tail is read again then rather than only after a wake-up."""
    if check_key and await _in_thread(partial(state.keys.scope, token)) is None:
        return None
    await shared.tail.refresh(state, force=not shared.connected)
    entries = shared.tail.after(after, allowed)
    if entries is not None:
        frames = [entry.frame for entry in entries]
        return _Batch(frames, reached=max(after, shared.tail.top), more=False)
    head, events = await _in_thread(partial(_read_batch, state, locations, after))
    if not events:  # none of its locations' in (after, head]: the stream is at `head`
        return _Batch([], reached=max(after, head), more=False)
    # Cut by the count or by the bytes (read_feed does not say which): read on at once.
    return _Batch([_frame(event) for event in events], reached=events[-1].position, more=True)


def _in_thread(call: Callable[[], _T]) -> asyncio.Task[_T]:
    """`call()` in a worker thread, as a task that can be abandoned: cancelling it frees
    its waiter (and its worker-thread slot) at once, leaving a call that hangs on the
    database to finish or fail on its own; its late result or error is dropped."""
    task = asyncio.ensure_future(anyio.to_thread.run_sync(call, abandon_on_cancel=True))
    task.add_done_callback(_drop_result)
    return task


def _drop_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a read left behind is not logged as unhandled


def _read_head(state: AppState) -> int:
    with state.read_engine.connect() as conn:
        return head_position(conn)


def _read_tail(state: AppState, after: int) -> list[_Entry]:
    """Every location's events after `after`, framed (here, in the worker thread)."""
    with state.read_engine.connect() as conn:
        events = read_feed(conn, after, TAIL_EVENTS, None)
    return [_Entry(e.position, e.location_id, _frame(e).encode()) for e in events]


def _read_batch(
    state: AppState, locations: Sequence[str] | None, after: int
) -> tuple[int, list[FeedEvent]]:
    """The newest position, then the events after `after`: every event up to that
    position is visible to the read that follows (committed positions form a prefix)."""
    with state.read_engine.connect() as conn:
        head = head_position(conn)
        return head, read_feed(conn, after, STREAM_BATCH, locations)


def _stream_setup(request: Request) -> tuple[str, list[str] | None, int, float]:
    """Authentication and parameters (sync: the key lookup may query the database)."""
    scope = require_scope(request, query_token=True)
    params = Params(request, allowed=["after", "locationId", "heartbeat", ACCESS_TOKEN])
    after = _start(request, params)
    if after:
        with app_state(request).read_engine.connect() as conn:
            _refuse_unseen(conn, after)
    heartbeat = params.integer("heartbeat", 15, 1, 300)
    locations = _locations(scope, params.text("locationId"))
    token = bearer_token(request, query_token=True)
    return token, locations, after, float(heartbeat)


async def stream_events(request: Request) -> Response:
    state = app_state(request)
    # Bounded as every other read is (api/deadlines.py leaves the stream alone, as it never
    # ends): a key lookup that hangs on the database is a 503, not a request unanswered.
    seconds = state.settings.db_timeout
    try:
        setup = await asyncio.wait_for(_in_thread(partial(_stream_setup, request)), seconds)
    except TimeoutError:
        detail = f"The database did not answer within {seconds:g} s; retry later."
        return unavailable_response(detail, state.settings.retry_after)
    token, locations, after, heartbeat = setup
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        # The stream's head, checked as a GET's is, then the answer ends. The stream
        # itself never ends, and sent no byte of it: a HEAD held its connection (and its
        # subscription) for ever, and the requests after it there went unanswered.
        head = Response(media_type=EventStreamResponse.media_type, headers=headers)
        del head.headers["content-length"]  # a GET's has none: its length is unknown
        return head
    # A location outside the key (locations == []) streams heartbeats only, exactly as a
    # location without events does.
    return EventStreamResponse(
        _frames(request, state, token, locations, after, heartbeat),
        stall_timeout=state.settings.stream_stall_timeout,
        headers=headers,
    )


ROUTES: list[BaseRoute] = [
    Route("/events", list_events, methods=["GET"]),
    Route("/events/stream", stream_events, methods=["GET"]),
]
