"""A webhook's body must arrive within `CONVERSATIONS_BODY_TIMEOUT` seconds.

A client that declares a Content-Length and sends less, or trickles a chunked body, would
otherwise hold its request (and a connection) open for as long as it likes: the server
has no timeout of its own while a body is read. Past the deadline the request is
answered 408 and nothing is stored.

One sweeper task enforces every deadline, as the group-commit writer does for its waits:
a request only appends itself to a queue, with no timer of its own (every webhook pays
for this: about 0.5 µs a request, where `asyncio.timeout` cost 4 µs). All requests have
the same timeout, so deadlines are in queue order. The sweeper cancels a reading task
whose deadline passed; `BodyDeadlines.expired` tells that cancellation from any other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any


class Reading:
    """One body being read: `task` is None once the read is over (it may not be
    cancelled any more), `expired` once its deadline cancelled it."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any] | None, deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


class BodyDeadlines:
    def __init__(self, seconds: float, sweep_interval: float = 0.25) -> None:
        self.seconds = seconds
        self._interval = min(sweep_interval, seconds / 4)
        # Bodies being read, oldest first; finished ones leave when they reach the front.
        self._reading: collections.deque[Reading] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep(), name="body-deadlines")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def begin(self) -> Reading:
        """Start the clock on the current task's body. Call `end` as soon as the read is
        over (in a `finally`), before the task awaits anything else."""
        loop = self._loop
        if loop is None:  # not started (an app without its lifespan): no deadline
            return Reading(None, 0.0)
        reading = Reading(asyncio.current_task(loop), loop.time() + self.seconds)
        self._reading.append(reading)
        return reading

    @staticmethod
    def end(reading: Reading) -> None:
        reading.task = None  # also drops the reference, so the task can go

    @staticmethod
    def expired(reading: Reading) -> bool:
        """Call when the read raised CancelledError: True when that was the deadline
        (the cancellation is then withdrawn, and the request may still answer), False
        for any other cancellation, which must go on."""
        task = reading.task
        if not reading.expired or task is None:
            return False
        # Another cancellation at the same time (the server stopping) still counts.
        return task.uncancel() == 0

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        reading = self._reading
        while True:
            await asyncio.sleep(self._interval)
            now = loop.time()
            while reading and (reading[0].task is None or reading[0].deadline <= now):
                late = reading.popleft()
                if late.task is not None:
                    late.expired = True
                    late.task.cancel()
