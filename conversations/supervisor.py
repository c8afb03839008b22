"""A child process `serve` keeps running: started with it, restarted with backoff when it
dies, stopped with it.

`serve` runs the projection catch-up worker this way (`conversations work` as a child)
so that folding never competes with the HTTP event loop for one interpreter lock. The
child inherits stderr, so its log lines join the server's, in the same format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

log = logging.getLogger("conversations.supervisor")


class Supervisor:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        """`backoff` doubles after each early death up to `max_backoff`, and is reset once
        a child has run `stable_after` seconds; `stop` waits `stop_timeout` seconds for
        the child to end after SIGTERM, then kills it."""
        self.name = name
        self._command = list(command)
        self._env = dict(env) if env is not None else None
        self._min_backoff = backoff
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between restarts)."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after the timeout) and stop restarting."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self._min_backoff
        while not self._stopping.is_set():
            started = loop.time()
            returncode = await self._run_once()
            if self._stopping.is_set():
                break
            if loop.time() - started >= self._stable_after:
                backoff = self._min_backoff
            # A SIGTERM to the whole process group (systemd, `timeout`) reaches the child
            # first: its exit is part of the shutdown, not a failure to report, if a stop
            # follows within a moment. Otherwise it is reported then, not after a backoff
            # of up to 30 s with the projections stalled and nothing said.
            grace = min(backoff, 1.0)
            if await self._stopped_within(grace):
                break
            log.warning(
                "%s exited (status %s); restarting in %.1f s",
                self.name,
                returncode,
                backoff,
            )
            if await self._stopped_within(backoff - grace):
                break
            backoff = min(backoff * 2, self._max_backoff)

    async def _stopped_within(self, seconds: float) -> bool:
        """Whether `stop` is called within `seconds` (waits that long at most)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _run_once(self) -> int | None:
        """Start the child and wait until it exits, or until `stop` (then end it)."""
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command, env=self._env, stdin=subprocess.DEVNULL
            )
        except OSError as error:
            log.error("cannot start %s: %s", self.name, error)
            return None
        self._process = process
        log.info("%s started", self.name, extra={"pid": process.pid})
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not exited.done():
            await self._end(process, exited)
        self._process = None
        return await exited

    async def _end(self, process: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._stop_timeout)
        except TimeoutError:
            log.warning("%s did not stop in %g s; killing it", self.name, self._stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await exited


def parent_gone(parent: int) -> bool:
    """True once the process `parent` is no longer this process's parent (it died and the
    child was re-parented)."""
    return os.getppid() != parent
