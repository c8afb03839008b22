"""Reads answered in bounded time when the database hangs instead of failing.

A refused or reset connection fails fast and is answered 503 by the error handlers; a
database that keeps its connections open and stops answering would hold a read for as
long as the socket lives. So a read that has not started its answer within
`CONVERSATIONS_DB_TIMEOUT` is answered 503 here, from a timer: its work is not cancelled
(psycopg would then spend up to 10 s cancelling the query on the server) but left to
finish or fail, and its late answer, or error, goes nowhere. The server goes on with the
connection's next request as soon as the 503 is sent. Webhooks bound their own waits
(the writer, the quarantine), and so do `/readyz` and `/metrics`, which answer a hung
database themselves (not ready; a scrape with `conversations_database_reachable 0` and
every counter, which a 503 would lose); the live event stream never ends by design.

A timer, not a task per request (`deadline.within`): every read pays for this, and a
task with `wait_for` and `shield` around it cost about three times as much CPU.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conversations.api.problems import READS, unavailable_response

UNBOUNDED = frozenset(
    {"/webhooks/highlevel", "/webhooks/highlevel/", "/events/stream", "/metrics", "/readyz"}
)

# The loop keeps only weak references to tasks: this keeps the 503s being sent alive.
_answering: set[asyncio.Task[None]] = set()


class _Read:
    __slots__ = ("abandoned", "started")

    def __init__(self) -> None:
        self.started = False
        self.abandoned = False


class ReadDeadline:
    def __init__(self, app: ASGIApp, seconds: float, retry_after: int) -> None:
        self.app = app
        self.seconds = seconds
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNBOUNDED:
            await self.app(scope, receive, send)
            return
        read = _Read()

        async def guarded(message: Message) -> None:
            if read.abandoned:
                return  # answered 503 already: the late answer goes nowhere
            read.started = True
            await send(message)

        timer = asyncio.get_running_loop().call_later(
            self.seconds, self._expire, read, scope, receive, send
        )
        try:
            await self.app(scope, receive, guarded)
        except Exception:
            if not read.abandoned:
                raise
            # Its request was answered 503 already, and the client retries.
        finally:
            timer.cancel()

    def _expire(self, read: _Read, scope: Scope, receive: Receive, send: Send) -> None:
        if read.started:
            return  # the answer is on its way: let it finish
        read.abandoned = True
        READS.failed(f"{scope['method']} {scope['path']}", f"no answer within {self.seconds:g} s")
        response = unavailable_response(
            f"The database did not answer within {self.seconds:g} s; retry later.",
            self.retry_after,
        )
        task = asyncio.ensure_future(response(scope, receive, send))
        _answering.add(task)
        task.add_done_callback(_sent)


def _sent(task: asyncio.Task[None]) -> None:
    _answering.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a client gone meanwhile is nothing to report
