"""Reads answered in bounded time when the database hangs instead of failing.

A refused or reset connection fails fast and is answered 503 by the error handlers; a
database that keeps its connections open and stops answering would hold a read for as
long as the socket lives. So a read that has not started its answer within
`CONVERSATIONS_DB_TIMEOUT` is answered 503 here, and its work is left to finish (or fail)
in the background (`deadline.within`), its late answer discarded. Webhooks bound their own
waits (the writer, the quarantine); the live event stream never ends by design.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conversations.api.problems import unavailable_response
from conversations.deadline import within

UNBOUNDED = frozenset({"/webhooks/highlevel", "/events/stream"})


class ReadDeadline:
    def __init__(self, app: ASGIApp, seconds: float, retry_after: int) -> None:
        self.app = app
        self.seconds = seconds
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNBOUNDED:
            await self.app(scope, receive, send)
            return
        started = False
        abandoned = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if abandoned:
                return  # answered 503 already: the late answer goes nowhere
            started = True
            await send(message)

        async def answer() -> None:
            await self.app(scope, receive, guarded)

        try:
            await within(answer(), self.seconds)
        except TimeoutError:
            if started:
                raise  # too late for a 503: the server drops the connection
            abandoned = True
            response = unavailable_response(
                f"The database did not answer within {self.seconds:g} s; retry later.",
                self.retry_after,
            )
            await response(scope, receive, send)
