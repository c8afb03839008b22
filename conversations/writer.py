"""Group commit: concurrent webhooks share one transaction, and so one durable flush.

Appending transactions follow each other (the price of gap-safe positions), so the
service keeps one writer task per process. While a transaction commits, new webhooks
queue up; the next transaction takes all of them at once. Under load a commit carries
many webhooks; alone, a webhook waits for nobody. Every waiting request is answered only
after its transaction committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from psycopg import AsyncConnection

from conversations.events import NewEvent
from conversations.store import (
    AppendResult,
    EventRejected,
    StoreUnavailable,
    append_batch,
    is_unavailable,
)

log = logging.getLogger("conversations.writer")


Connect = Callable[[], Awaitable[AsyncConnection[Any]]]


@dataclass(slots=True)
class _Pending:
    event: NewEvent
    deadline: float
    """Loop time after which the webhook is answered 503 if not committed."""
    future: asyncio.Future[AppendResult]


class GroupCommitWriter:
    """`connect` opens the writer's connection (`pool.append_connection`): one psycopg
    connection, not an engine, as SQLAlchemy's per-batch work cost about 11 µs of CPU per
    webhook. It is opened at the first batch and again after one that failed for want of
    the database, so an outage is answered 503 until a connection succeeds."""

    def __init__(
        self,
        connect: Connect,
        *,
        batch_max: int,
        timeout: float,
        queue_max: int = 10_000,
        sweep_interval: float = 0.05,
    ) -> None:
        self._connect = connect
        self._connection: AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_max = batch_max
        self._timeout = timeout
        self._sweep_interval = min(sweep_interval, timeout / 4)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_max)
        # Every webhook waiting for an answer, oldest first (same timeout for all, so
        # deadlines are in order too); completed ones leave it when they reach the front.
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def timeout(self) -> float:
        """Seconds a webhook waits for the database before it is answered 503."""
        return self._timeout

    async def start(self) -> None:
        # Kept: asyncio.get_running_loop() costs a getpid() system call on each call.
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")
        self._sweeper = asyncio.create_task(self._expire(), name="group-commit-deadlines")

    async def stop(self) -> None:
        """Finish what is queued (bounded by the timeout), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), self._timeout)
        for task in (self._task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._sweeper = None
        await self._disconnect()

    async def append(self, event: NewEvent) -> AppendResult:
        """Store one event; returns after its transaction committed.

        Raises StoreUnavailable when the database does not confirm in time (the event may
        still commit later: a retry is then answered as a duplicate) and EventRejected
        when the database refuses this event's data.
        """
        # One future per webhook and no timer of its own: `_expire` enforces every
        # deadline (asyncio.wait_for and shield cost more than the rest of the wait).
        loop = self._loop or asyncio.get_running_loop()
        pending = _Pending(event, loop.time() + self._timeout, loop.create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise StoreUnavailable("too many webhooks are waiting for the database") from None
        self._waiting.append(pending)
        return await pending.future

    async def _expire(self) -> None:
        """Answer 503 to every webhook whose deadline passed; a batch that commits after
        that finds its future done and leaves it (a retry is then a duplicate), and one
        not taken yet is skipped."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        while True:
            await asyncio.sleep(self._sweep_interval)
            now = loop.time()
            while waiting and (waiting[0].future.done() or waiting[0].deadline <= now):
                pending = waiting.popleft()
                if not pending.future.done():
                    failure = StoreUnavailable(
                        f"the database did not confirm the write within {self._timeout:g} s"
                    )
                    self._note_unavailable(failure)
                    pending.future.set_exception(failure)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [p for p in batch if not p.future.done()]
            try:
                if live:
                    await self._commit(live)
            except Exception as error:  # the writer must outlive any one batch
                log.exception("group commit failed")
                self._fail(live, error)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: Sequence[_Pending]) -> None:
        # One row per delivery key; equal deliveries in one batch share the answer.
        unique: dict[str, list[_Pending]] = {}
        for pending in batch:
            unique.setdefault(pending.event.dedup_key, []).append(pending)
        groups = list(unique.values())
        try:
            results = await self._append([group[0].event for group in groups])
        except Exception as error:
            if is_unavailable(error) or len(groups) == 1:
                self._fail(batch, error)
                return
            # One event's data spoiled the batch: store the others one by one.
            for group in groups:
                await self._commit(group)
            return
        for group, result in zip(groups, results, strict=True):
            for index, pending in enumerate(group):
                if not pending.future.done():
                    # The first of a group gets the result itself; the others (redeliveries
                    # in the same batch) are duplicates of it.
                    answer = result if index == 0 else replace(result, duplicate=True)
                    pending.future.set_result(answer)

    async def _append(self, events: list[NewEvent]) -> list[AppendResult]:
        # The connection autocommits: the INSERT is one durable statement (one round
        # trip); a duplicate's original, looked up after it, is committed already.
        kept = self._connection is not None and not self._connection.closed
        try:
            results = await self._append_on_connection(events)
        except Exception as error:
            if not (kept and is_unavailable(error)):
                raise
            # The connection kept from an earlier batch was dead (PostgreSQL restarted,
            # an idle timeout, a failover): once more on a new one before answering 503,
            # which would cost the sender a retry for an outage already over. Safe: should
            # the first attempt have committed, this one finds its events as duplicates.
            results = await self._append_on_connection(events)
        if self._failing:
            log.warning("database available again")
            self._failing = False
        return results

    async def _append_on_connection(self, events: list[NewEvent]) -> list[AppendResult]:
        """`append_batch` on the kept connection, or a new one; a connection that fails
        for want of the database is dropped (the next attempt opens another)."""
        try:
            conn = self._connection
            if conn is None or conn.closed:
                conn = self._connection = await self._connect()
            return await append_batch(conn, events)
        except Exception as error:
            if is_unavailable(error):
                await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is being dropped for failing
                await conn.close()

    def _note_unavailable(self, error: Exception) -> None:
        """Say once per outage that webhooks are answered 503: when the database fails
        them, and also when it hangs (a frozen server, a lock held by another session),
        where no error comes, only the deadline. The next batch that commits says it is
        available again (`_append`)."""
        if not self._failing:  # one line per outage, not one per batch
            log.warning("database unavailable, answering 503: %s", _first_line(error))
        self._failing = True

    def _fail(self, batch: Sequence[_Pending], error: Exception) -> None:
        if is_unavailable(error):
            self._note_unavailable(error)
            failure: Exception = StoreUnavailable(_first_line(error))
        else:
            failure = EventRejected(_first_line(error))
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(failure)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
