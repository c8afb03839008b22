"""Finished pages of the hot reads (a conversation's messages, conversation search), kept
in memory until the projections change them.

Integrators poll: they ask for the same pages again and again while nothing changes.
A page answered from memory costs no query, no pooled connection and no round trip.

Why a kept page is never staler than the projections (by more than one notification):
- Every projection transaction NOTIFYs the locations it changed when it commits
  (`projections.changes`). This process LISTENs on its own connection and counts the
  changes of each location.
- A page is stored with the *stamp* taken before its query: the listener's epoch and the
  change counts of every location its key may read. It is served only while the stamp
  is the same, so the first change to any of those locations drops it. A page read while
  a change commits carries the stamp from before that change: it is dropped at the
  change's notification even if it saw the change.
- Before each lookup the listener reads what notifications have arrived, so a page is
  served after its change committed only until that change's notification reaches this
  process (microseconds on one host).
- Not listening (not connected yet, connection lost), nothing is served or stored, and
  every reconnection starts a new epoch: notifications missed meanwhile cannot leave a
  page behind. A connection that stays open but stops answering (a hung server, a
  network that drops packets) is found by a probe every `PROBE_EVERY` seconds: nothing
  is served once the last answer is older than `MAX_SILENCE`. Pages also expire after
  `MAX_AGE` seconds whatever happens.

A page depends only on the key (its locations, and the cursors it signs for itself), the
path and the query string: that triple is the cache key, so no key is ever sent a page
read for another. The key is checked before every lookup, so a revoked key is refused
as before. Only 200 answers are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from starlette.requests import Request
from starlette.responses import Response

from conversations.api.auth import require_scope_async
from conversations.api.state import app_state
from conversations.database import LIVENESS, libpq_url
from conversations.keys import Scope
from conversations.projections import changes

log = logging.getLogger("conversations.api.page_cache")

MAX_AGE = 60.0
"""Seconds a page is kept at most, whatever the notifications say."""
PROBE_EVERY = 0.5
"""Seconds between the listener's probes of its connection (`SELECT 1`)."""
MAX_SILENCE = 1.5
"""Seconds since the listener's connection last answered a probe after which no page is
served (the notifications may not be arriving)."""
_OVERHEAD = 200
"""Bytes counted per page beyond its body (key, stamp, bookkeeping)."""

Stamp = tuple[int, ...]
Key = tuple[str, str, bytes]
"""(key id, path, query string)."""
Endpoint = Callable[[Request], Awaitable[Response]]


class ProjectionChanges:
    """Counts the projections' changes by location, from their notifications."""

    def __init__(self, database_url: str, connect_timeout: float) -> None:
        self._url = libpq_url(database_url)
        self._connect_timeout = int(max(2, connect_timeout))
        self._conn: psycopg.Connection[Any] | None = None
        self._fd = -1
        """The listener's socket (asked of the connection once: a lost one cannot tell)."""
        self._heard = 0.0
        """When the connection last answered (monotonic)."""
        self._probing = False
        self._epoch = 0
        self._any = 0
        self._counts: dict[str, int] = {}
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._off_since: float | None = None
        """When the cache went off (None while it is on): `_off` logs the first time only."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep_listening(), name="page-cache-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop()

    @property
    def hearing(self) -> bool:
        """Whether pages may be served: listening, and the connection answered lately."""
        return self._conn is not None and time.monotonic() - self._heard <= MAX_SILENCE

    def stamp(self, scope: Scope) -> Stamp | None:
        """The stamp of what `scope` may read, as of now; None while not listening."""
        if self._conn is None:
            return None
        self._drain()
        if not self.hearing:
            return None
        if scope.all_locations:
            return (self._epoch, self._any)
        counts = self._counts
        return (self._epoch, *[counts.get(location, 0) for location in sorted(scope.locations)])

    async def _keep_listening(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.5
        while True:
            try:
                conn = await asyncio.to_thread(self._connect)
            except psycopg.Error as error:
                self._off(f"cannot listen for projection changes: {error}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if self._off_since is not None:
                log.warning("page cache on again: listening for projection changes")
                self._off_since = None
            self._epoch += 1  # what was missed while not listening cannot match any more
            self._lost.clear()
            self._conn, self._fd = conn, conn.fileno()
            self._heard, self._probing = time.monotonic(), False
            loop.add_reader(self._fd, self._drain)
            while not self._lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), PROBE_EVERY)
                self._probe()

    def _connect(self) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {
            **LIVENESS,
            "connect_timeout": self._connect_timeout,
            "application_name": "conversations page cache",
        }
        conn = psycopg.connect(self._url, autocommit=True, **options)
        conn.execute(f"LISTEN {changes.CHANNEL}")
        return conn

    def _probe(self) -> None:
        """Send `SELECT 1` unless one is unanswered; give up on a connection that has not
        answered for `MAX_SILENCE` (a new one is made)."""
        conn = self._conn
        if conn is None:
            return
        if self._probing:
            if time.monotonic() - self._heard > MAX_SILENCE:
                self._lose(f"no answer for {MAX_SILENCE:g} s")
            return
        try:
            conn.pgconn.send_query(b"SELECT 1")
            conn.pgconn.flush()
        except psycopg.Error as error:
            self._lose(str(error))
            return
        self._probing = True

    def _drain(self) -> None:
        """Count every notification that has arrived, and take a probe's answer (never
        waits)."""
        conn = self._conn
        if conn is None:
            return
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
            while (notify := pgconn.notifies()) is not None:
                self._changed(changes.decode(notify.extra.decode("utf-8", "replace")))
            if self._probing and not pgconn.is_busy():
                while pgconn.get_result() is not None:
                    pass
                self._heard, self._probing = time.monotonic(), False
        except psycopg.Error as error:
            self._lose(str(error))

    def _lose(self, reason: str) -> None:
        self._off(f"until its listener reconnects: {reason}")
        self._drop()

    def _off(self, why: str) -> None:
        """One warning when the cache goes off, not one per reconnection attempt (an
        outage would log one every few seconds); `_keep_listening` says when it is on
        again."""
        if self._off_since is None:
            self._off_since = time.monotonic()
            log.warning("page cache off %s", why)
        else:
            log.debug("page cache still off %s", why)

    def _changed(self, locations: list[str] | None) -> None:
        self._any += 1
        if locations is None:
            self._epoch += 1
            return
        counts = self._counts
        for location in locations:
            counts[location] = counts.get(location, 0) + 1

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._epoch += 1
        # (No loop any more, or the socket is gone already: nothing to stop reading.)
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._fd)
        self._fd = -1
        conn.close()
        self._lost.set()


@dataclass(slots=True)
class _Page:
    stamp: Stamp
    body: bytes
    born: float


class PageCache:
    """Pages by key, least recently used first out, within `max_bytes`."""

    def __init__(self, max_bytes: int, max_age: float = MAX_AGE) -> None:
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._pages: OrderedDict[Key, _Page] = OrderedDict()
        self._bytes = 0

    def get(self, key: Key, stamp: Stamp) -> bytes | None:
        page = self._pages.get(key)
        if page is None:
            return None
        if page.stamp != stamp or time.monotonic() - page.born > self._max_age:
            self._forget(key)
            return None
        self._pages.move_to_end(key)
        return page.body

    def put(self, key: Key, stamp: Stamp, body: bytes) -> None:
        if _size(key, body) > self._max_bytes // 4:
            return  # one page must not push out most of the others
        self._forget(key)
        self._pages[key] = _Page(stamp, body, time.monotonic())
        self._bytes += _size(key, body)
        while self._bytes > self._max_bytes:
            self._forget(next(iter(self._pages)))

    def _forget(self, key: Key) -> None:
        page = self._pages.pop(key, None)
        if page is not None:
            self._bytes -= _size(key, page.body)

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def bytes(self) -> int:
        """Memory counted against `max_bytes`."""
        return self._bytes


def _size(key: Key, body: bytes) -> int:
    return len(body) + len(key[0]) + len(key[1]) + len(key[2]) + _OVERHEAD


def kept(endpoint: Endpoint) -> Endpoint:
    """`endpoint`, its 200 answers kept in the page cache while they are current."""

    @functools.wraps(endpoint)
    async def read(request: Request) -> Response:
        state = app_state(request)
        if state.pages is None or state.changes is None:
            return await endpoint(request)
        scope = await require_scope_async(request)
        stamp = state.changes.stamp(scope)
        if stamp is None:
            return await endpoint(request)
        key = (scope.key_id, request.scope["path"], request.scope["query_string"])
        body = state.pages.get(key, stamp)
        if body is not None:
            state.metrics.read_cache.inc("hit")
            return Response(body, media_type="application/json")
        response = await endpoint(request)
        if response.status_code == 200:
            state.pages.put(key, stamp, bytes(response.body))
        state.metrics.read_cache.inc("miss")
        return response

    return read
