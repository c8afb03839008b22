"""Answering in bounded time when the database hangs instead of failing.

A refused or reset connection fails fast, and a new connection is bounded by
`connect_timeout`; but a query on an open connection to a database that stopped
answering (frozen, overloaded, a commit waiting for a lost synchronous standby) waits as
long as the socket stays open. Cancelling it does not help either: psycopg then spends up
to 10 s trying to cancel the query on the server, and `asyncio.wait_for` waits for that.
So a request stops waiting after its deadline and the work is left to finish (or fail)
in the background. Only work that may safely complete after its request gave up belongs
here: the writes are idempotent (a retried body finds what the first attempt stored).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# The loop keeps only weak references to tasks: this keeps abandoned work alive.
_running: set[asyncio.Task[Any]] = set()


async def within(work: Coroutine[Any, Any, T], seconds: float) -> T:
    """`await work`, but raise TimeoutError after `seconds` without cancelling it."""
    task = asyncio.create_task(work)
    _running.add(task)
    task.add_done_callback(_settled)
    return await asyncio.wait_for(asyncio.shield(task), seconds)


def _settled(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled():
        # Retrieved, so an error of abandoned work is not reported as "never retrieved":
        # its request was already answered 503, and the client retries.
        task.exception()
