"""The catch-up worker: woken by NOTIFY when appends commit, it folds new events into
every projection, and polls now and then in case a notification was lost.

It runs in a process of its own (`conversations work`, which `serve` starts and
supervises), never in the HTTP process: a fold is CPU work, and sharing the HTTP
process's interpreter lock with it slowed every webhook. Any number of workers may run
against one database; they coordinate through the checkpoint rows (see runner.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import psycopg
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from conversations.database import describe_error, schema_behind
from conversations.projections.base import Projection
from conversations.projections.runner import (
    FoldFailed,
    catch_up_all,
    describe,
    ensure_checkpoints,
    record_failure,
)

log = logging.getLogger("conversations.projections")

CHANNEL = "conversations_events"


def plan_folds(engine: Engine) -> None:
    """Tell the planner of every fold connection that the pages it reads are in memory
    (`random_page_cost` 1.1 instead of 4, for these sessions only), and to plan each
    execution for the tables as they are.

    A fold looks up a batch's few hundred keys in tables of tens of thousands of rows.
    With the default cost of a random page, PostgreSQL prices those index probes above a
    hash join over a sequential scan of the whole table until the tables are far larger,
    and keeps that plan for the statement (prepared: its text is the same every batch).
    Measured with `bench/ingest.py` (12,000 webhooks on a new store): the ledgers and
    summaries were read sequentially, about 430 rows per webhook and growing with the
    store, 4 with this setting; PostgreSQL's CPU per webhook fell by about 35 µs."""

    @event.listens_for(engine, "connect")
    def tune(dbapi_connection: psycopg.Connection[object], record: object) -> None:
        dbapi_connection.execute("SET random_page_cost = 1.1")
        # And a plan for the tables as they are now, at every execution: a generic plan
        # cached while a table was empty (a new store) stays a nested loop over a
        # sequential scan as the table grows; in the test suite such a plan read 1,000
        # keys against 5,700 rows in 0.5 s per statement and the projections fell minutes
        # behind. Planning each execution costs 10-15 µs per event at batches of 150.
        dbapi_connection.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_connection.commit()


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq one, for a raw psycopg connection."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class CatchUpWorker:
    def __init__(
        self,
        engine: Engine,
        url: str,
        projections: Sequence[Projection],
        poll_interval: float = 1.0,
        gather: float = 0.05,
        orphaned: Callable[[], bool] = lambda: False,
        pace: float = 0.2,
    ) -> None:
        """`orphaned` is asked at least every `poll_interval` seconds; when it says
        True the worker stops (a child whose supervisor died must not run on). Folds
        start at least `pace` seconds apart (see `_wait`)."""
        self._engine = engine
        self._url = libpq_url(url)
        self._projections = tuple(projections)
        self._poll = poll_interval
        self._gather = gather
        self._pace = pace
        self._last_fold = -pace
        self._orphaned = orphaned
        self._stopping = threading.Event()
        self._backoff = 0.5
        """Seconds to wait before the next attempt after a failure."""
        self._failing = False
        """Whether catch-up failed since it last worked (see `_log_failure`)."""
        self._retry_at: dict[str, float] = {}
        """Projections whose fold failed, and when to try them again."""
        self._delays: dict[str, float] = {}

    def stop(self) -> None:
        """Ask `run` to return (from a signal handler or another thread)."""
        self._stopping.set()

    def _done(self) -> bool:
        if not self._stopping.is_set() and self._orphaned():
            log.warning("projection worker stops: the process that started it is gone")
            self._stopping.set()
        return self._stopping.is_set()

    def run(self) -> None:
        """Fold until stopped; a failure (database away) is retried with backoff, which
        starts again from 0.5 s once a fold succeeds."""
        while not self._done():
            try:
                self._listen_and_fold()
            except Exception as error:
                if self._stopping.is_set():
                    return  # stopped mid-statement: whatever that raised is no failure
                self._log_failure(error)
                self._record(error)
                self._stopping.wait(self._backoff)
                self._backoff = min(self._backoff * 2, 30.0)

    def _log_failure(self, error: Exception) -> None:
        """One warning (with the traceback) when catch-up starts failing, not one per
        retry: an outage of a minute would otherwise log a dozen tracebacks. The retries
        log at debug level, and `_listen_and_fold` says when catch-up works again."""
        if self._failing:
            log.debug("projection catch-up still failing: %s", describe(error))
            return
        self._failing = True
        if schema_behind(error):  # not a fault to trace: the operator has a step to take
            log.warning("projection catch-up waits for the schema: %s", describe_error(error))
            return
        log.warning(
            "projection catch-up failed, retrying until it works: %s",
            describe(error),
            exc_info=error,
        )

    def _record(self, error: Exception) -> None:
        """Put a failure outside any one projection's fold (reading the events, say)
        where operators look (`runner.record_failure`): on every projection, as none can
        move. With the database away there is nowhere to put it, and /readyz says why."""
        try:
            with self._engine.begin() as conn:
                # A worker folding a projection holds its row: do not wait for long.
                conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                record_failure(conn, [p.name for p in self._projections], describe(error))
        except Exception as unrecorded:
            log.debug("projection failure not recorded: %s", unrecorded)

    def _fold(self) -> None:
        """Fold every projection that is due. One whose fold fails is left at its
        checkpoint (the failure recorded there) and tried again after a backoff of its
        own, 0.5 s doubling to 30 s, while the others go on."""
        now = time.monotonic()
        due = [p for p in self._projections if self._retry_at.get(p.name, 0.0) <= now]
        failures: dict[str, FoldFailed] = {}
        catch_up_all(self._engine, due, stop_at_head=True, failures=failures)
        for projection in due:
            name = projection.name
            failure = failures.get(name)
            if failure is None:
                self._retry_at.pop(name, None)
                self._delays.pop(name, None)
                continue
            delay = self._delays[name] = min(self._delays.get(name, 0.25) * 2, 30.0)
            self._retry_at[name] = now + delay
            log.warning(
                "projection %s failed, retrying in %g s: %s", name, delay, failure, exc_info=failure
            )

    def _listen(self) -> psycopg.Connection[object]:
        listener = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        try:
            listener.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            listener.close()
            raise
        return listener

    def _listen_and_fold(self) -> None:
        listener = self._listen()
        try:
            with self._engine.begin() as conn:
                ensure_checkpoints(conn, self._projections)
            while not self._done():
                self._last_fold = time.monotonic()
                self._fold()
                self._backoff = 0.5
                if self._failing:
                    log.warning("projection catch-up works again")
                    self._failing = False
                try:
                    self._wait(listener)
                except psycopg.OperationalError as error:
                    if not listener.closed:
                        raise
                    listener = self._relisten(listener, error)
        finally:
            listener.close()

    def _relisten(
        self, lost: psycopg.Connection[object], error: psycopg.OperationalError
    ) -> psycopg.Connection[object]:
        """A new listening connection for one that closed while it waited.

        The listener is idle between notifications, and PostgreSQL's
        `idle_session_timeout` (or a proxy's idle limit) closes idle sessions: the
        folds' own connections are checked when taken, but this one closed every few
        seconds, each time a warning with a traceback that catch-up failed. Catch-up had
        not failed: listening again is enough, and the fold that follows picks up what
        was appended meanwhile. When the database is really away, listening again fails
        and that is reported as a failure."""
        lost.close()
        log.debug("projection worker listens again: its connection closed (%s)", describe(error))
        return self._listen()

    def _wait(self, listener: psycopg.Connection[object]) -> None:
        """Sleep until an append commits (or the poll interval passes), then let more
        arrive for a moment: under load a fold then covers many events (one transaction
        for a batch, not one per webhook), within the lag budget of a second."""
        notified = False
        for _ in listener.notifies(timeout=self._poll):
            notified = True
            break
        if not notified:
            return
        # Under a steady stream of appends, folds start `pace` apart, so each covers at
        # least that long of appends: a fold has a fixed cost (a dozen statements, a
        # commit), which bigger batches share (CPU per event of the whole fold, worker
        # and PostgreSQL, at batches of 50/150/500 events: 360/245/190 µs). The lag
        # stays under `pace` plus one fold (issue 3 allows a second). After a quiet
        # spell the first append waits only `gather`.
        since = time.monotonic() - self._last_fold
        self._stopping.wait(max(self._gather, self._pace - since))
        # Every commit sends its own notification, and one read can bring dozens: the
        # fold that follows covers all of them, so they are consumed here (and not each
        # answered by another pause).
        for _ in listener.notifies(timeout=0):
            pass
