"""The catch-up worker `serve` runs: woken by NOTIFY when appends commit, it folds new
events into every projection, and polls now and then in case a notification was lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from conversations.projections.base import Projection
from conversations.projections.runner import catch_up_all, ensure_checkpoints

log = logging.getLogger("conversations.projections")

CHANNEL = "conversations_events"


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
    ) -> None:
        self._engine = engine
        self._url = libpq_url(url)
        self._projections = tuple(projections)
        self._poll = poll_interval
        self._gather = gather
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="catch-up", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._listen_and_fold()
                backoff = 0.5
            except Exception as error:
                log.warning("projection catch-up failed, retrying: %s", error, exc_info=True)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _listen_and_fold(self) -> None:
        with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            with self._engine.begin() as conn:
                ensure_checkpoints(conn, self._projections)
            while not self._stopping.is_set():
                catch_up_all(self._engine, self._projections)
                # Sleep until an append commits (or the poll interval passes), then let
                # more arrive for a moment: under load a fold then covers many events
                # (one transaction for a batch, not one per webhook), within the lag
                # budget of a second.
                for _ in listener.notifies(timeout=self._poll, stop_after=1):
                    self._stopping.wait(self._gather)
