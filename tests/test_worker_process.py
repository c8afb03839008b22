"""The projection worker runs in its own process: `serve` starts it as a supervised child
(restarted when it dies, stopped with the server, never left behind), and `conversations
work` runs the same worker standalone, any number of them beside each other.

These run on their own database, so that no other test's worker folds what these expect
to stay behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

from conversations.cli import main
from conversations.database import create_engine
from conversations.supervisor import Supervisor
from tests.conftest import REPO, migrated_database, start_server
from tests.helpers import KeyPair, Server, message, new_id
from tests.projection_support import append_documents
from tests.proxy import Proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def worker_database(server_url: str) -> Iterator[str]:
    with migrated_database(server_url, "conversations_work") as url:
        yield url


@pytest.fixture(scope="module")
def worker_engine(worker_database: str) -> Iterator[sqlalchemy.Engine]:
    engine = create_engine(worker_database)
    yield engine
    engine.dispose()


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    try:
        text_ = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text_.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it yet


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def one_child(server: Server) -> int:
    found: list[int] = []

    def has_one() -> bool:
        found[:] = children(server.process.pid)
        return len(found) == 1

    wait_for(has_one, 20, "serve has exactly one worker child")
    return found[0]


def folded(engine: sqlalchemy.Engine, location: str) -> int:
    with engine.connect() as conn:
        count = conn.scalar(
            text("SELECT count(*) FROM timeline_messages WHERE location_id = :l"), {"l": location}
        )
    return int(count or 0)


def post_new(server: Server, count: int = 1) -> str:
    location = new_id("loc")
    for _ in range(count):
        assert server.post(message(locationId=location)).status_code == 201
    return location


def start_work(database_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conversations", "work"],
        env={**os.environ, "DATABASE_URL": database_url, "CONVERSATIONS_LOG_LEVEL": "info"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


# --- serve supervises its worker --------------------------------------------------------------


def test_serve_restarts_a_worker_that_dies(
    worker_database: str, worker_engine: sqlalchemy.Engine, keys: KeyPair
) -> None:
    server = start_server(worker_database, keys, CONVERSATIONS_LOG_LEVEL="info")
    try:
        first = one_child(server)
        location = post_new(server)
        wait_for(lambda: folded(worker_engine, location) == 1, 20, "folded by the first worker")

        os.kill(first, signal.SIGKILL)
        wait_for(lambda: children(server.process.pid) not in ([], [first]), 20, "restarted")
        second = one_child(server)
        assert second != first
        location = post_new(server, 3)
        wait_for(lambda: folded(worker_engine, location) == 3, 20, "folded by the restarted one")
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()
    assert "projection worker exited (status -9); restarting" in server.output


def test_stopping_serve_stops_its_worker(worker_database: str, keys: KeyPair) -> None:
    server = start_server(worker_database, keys, CONVERSATIONS_LOG_LEVEL="info")
    worker = one_child(server)
    wait_for(lambda: "projection worker running" in server.output, 20, "the worker runs")
    server.stop()
    assert not alive(worker)
    assert '"message": "projection worker stopped"' in server.output


def test_a_worker_whose_serve_was_killed_stops_by_itself(
    worker_database: str, keys: KeyPair
) -> None:
    server = start_server(worker_database, keys)
    worker = one_child(server)
    os.kill(server.process.pid, signal.SIGKILL)
    server.stop()
    wait_for(lambda: not alive(worker), 15, "the orphaned worker exits")


def test_serve_without_the_worker_setting_starts_none(worker_database: str, keys: KeyPair) -> None:
    server = start_server(worker_database, keys, CONVERSATIONS_PROJECTION_WORKER="false")
    try:
        time.sleep(1.0)
        assert children(server.process.pid) == []
    finally:
        server.stop()


# --- conversations work --------------------------------------------------------------------------


def test_standalone_workers_fold_exactly_once_and_stop_on_sigterm(
    worker_database: str,
    worker_engine: sqlalchemy.Engine,
    keys: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_server(worker_database, keys, CONVERSATIONS_PROJECTION_WORKER="false")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        location = post_new(server, 5)
        time.sleep(0.5)
        assert folded(worker_engine, location) == 0  # nobody folds: no worker runs

        workers = [start_work(worker_database), start_work(worker_database)]
        wait_for(lambda: folded(worker_engine, location) == 5, 30, "folded by `work`")
        more = post_new(server, 20)
        wait_for(lambda: folded(worker_engine, more) == 20, 30, "new webhooks folded")
        body = httpx.get(f"{server.url}/projections", timeout=10).json()
        assert all(p["behindEvents"] == 0 for p in body["projections"]), body

        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            output = worker.communicate(timeout=15)[0].decode()
            assert worker.returncode == 0, output
            assert '"message": "projection worker stopped"' in output
            assert "Traceback" not in output
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        server.stop()
    monkeypatch.setenv("DATABASE_URL", worker_database)
    assert main(["verify"]) == 0


def test_a_fold_that_keeps_failing_is_shown_where_operators_look(
    worker_database: str,
    worker_engine: sqlalchemy.Engine,
    keys: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fold the database refuses (a constraint no timeline row passes) holds the
    projections at their checkpoints while the worker retries. `/projections`, `/readyz`,
    `/metrics` and `conversations status` say which projection fails, on which events
    and why, until a fold succeeds again."""
    server = start_server(
        worker_database,
        keys,
        CONVERSATIONS_PROJECTION_WORKER="false",
        CONVERSATIONS_READY_MAX_LAG="1",
    )
    refuse = "ALTER TABLE timeline_messages ADD CONSTRAINT test_refuse_all CHECK (false) NOT VALID"
    with worker_engine.begin() as conn:
        conn.execute(text(refuse))
    worker = None
    try:
        location = post_new(server, 2)
        worker = start_work(worker_database)

        def states() -> dict[str, dict[str, Any]]:
            body = httpx.get(f"{server.url}/projections", timeout=10).json()
            return {p["name"]: p for p in body["projections"]}

        wait_for(lambda: states()["timeline"]["failure"], 30, "the failure recorded")
        wait_for(
            lambda: all(p["behindEvents"] == 0 for n, p in states().items() if n != "timeline"),
            30,
            "the other projections folded",
        )
        timeline = states()["timeline"]
        assert timeline["failure"].startswith("timeline failed on events ("), timeline
        assert "test_refuse_all" in timeline["failure"], timeline
        assert timeline["failingSince"] and timeline["behindEvents"] >= 2, timeline
        assert folded(worker_engine, location) == 0
        assert not any(p["failure"] for n, p in states().items() if n != "timeline")

        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert 'conversations_projection_failing{projection="timeline"} 1' in metrics
        time.sleep(1.2)  # older than the readiness bound
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert "timeline failed on events" in ready.json()["detail"]
        monkeypatch.setenv("DATABASE_URL", worker_database)
        assert main(["status"]) == 0
        assert "timeline is stuck since" in capsys.readouterr().out

        with worker_engine.begin() as conn:
            conn.execute(text("ALTER TABLE timeline_messages DROP CONSTRAINT test_refuse_all"))
        wait_for(lambda: folded(worker_engine, location) == 2, 60, "folded once allowed")
        wait_for(
            lambda: not any(p["failure"] or p["failingSince"] for p in states().values()),
            30,
            "the failure cleared",
        )
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert 'conversations_projection_failing{projection="timeline"} 0' in metrics
    finally:
        with worker_engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE timeline_messages DROP CONSTRAINT IF EXISTS test_refuse_all")
            )
        if worker is not None:
            worker.kill()
            worker.wait()
        server.stop()


# --- the supervisor itself ---------------------------------------------------------------------


def test_supervisor_restarts_with_growing_backoff(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    script = f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)"

    async def scenario() -> str:
        supervisor = Supervisor(
            "failing child", [sys.executable, "-c", script], backoff=0.1, max_backoff=0.4
        )
        await supervisor.start()
        await asyncio.sleep(2.0)
        await supervisor.stop()
        return starts.read_text()

    started = asyncio.run(scenario())
    # 0.1, 0.2, 0.4, 0.4 ... of backoff plus each interpreter's start: a few restarts,
    # far fewer than without a backoff.
    assert 3 <= len(started) <= 10, started


def test_a_child_that_ends_with_the_shutdown_is_not_reported_as_restarting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A SIGTERM to the process group ends the child just before `stop`: no warning."""

    async def scenario() -> None:
        supervisor = Supervisor("quick child", [sys.executable, "-c", "pass"], backoff=2.0)
        await supervisor.start()
        await asyncio.sleep(1.0)  # it has exited (status 0); the backoff is running
        await supervisor.stop()

    with caplog.at_level("INFO", logger="conversations"):
        asyncio.run(scenario())
    assert "restarting" not in caplog.text


def test_supervisor_kills_a_child_that_ignores_sigterm() -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"

    async def scenario() -> tuple[int | None, float]:
        supervisor = Supervisor("stubborn child", [sys.executable, "-c", script], stop_timeout=0.5)
        await supervisor.start()
        await asyncio.sleep(0.5)
        pid = supervisor.pid
        started = time.monotonic()
        await supervisor.stop()
        return pid, time.monotonic() - started

    pid, took = asyncio.run(scenario())
    assert pid is not None and not alive(pid)
    assert took < 5


def test_supervisor_reports_a_dead_child_before_its_backoff_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With a backoff of 10 s (after a few quick deaths it reaches 30), the exit is logged
    within a second or so, not when the restart comes."""

    async def scenario() -> float:
        supervisor = Supervisor("dying child", [sys.executable, "-c", "exit(3)"], backoff=10.0)
        started = time.monotonic()
        await supervisor.start()
        for _ in range(160):  # 8 s at most
            if "exited (status 3)" in caplog.text:
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        await supervisor.stop()
        return took

    with caplog.at_level("INFO", logger="conversations"):
        took = asyncio.run(scenario())
    assert "dying child exited (status 3); restarting in 10.0 s" in caplog.text
    assert took < 5


def test_a_connection_lost_during_a_fold_is_logged_as_what_happened(
    worker_database: str, worker_engine: sqlalchemy.Engine
) -> None:
    """The worker's connection dies while a projection folds (PostgreSQL restarted, the
    backend terminated): the warning names that, not an error SQLAlchemy raises after
    it (`PendingRollbackError: Can't reconnect until invalid transaction is rolled
    back`, which reads as a bug), and the worker folds on by itself."""
    worker = start_work(worker_database)
    blocker = worker_engine.connect()
    try:
        wait_for(lambda: _checkpoints(worker_engine) == 3, 20, "the worker started")
        # The timeline folds last (by name): it waits on this lock, mid-fold.
        blocker.execute(text("LOCK TABLE timeline_messages IN ACCESS EXCLUSIVE MODE"))
        location = new_id("loc")
        append_documents(worker_database, worker_engine, [message(locationId=location)])
        waiting: list[int] = []

        def folding_waits() -> bool:
            with worker_engine.connect() as conn:
                waiting[:] = conn.scalars(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%timeline%'"
                    )
                ).all()
            return bool(waiting)

        wait_for(folding_waits, 20, "the fold waits on the lock")
        with worker_engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": waiting[0]})
        blocker.rollback()
        wait_for(lambda: folded(worker_engine, location) == 1, 30, "folded after the loss")
    finally:
        blocker.close()
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=15)[0].decode()
    failed = [line for line in output.splitlines() if "projection catch-up failed" in line]
    assert len(failed) == 1, output
    assert "terminating connection due to administrator command" in failed[0], failed
    assert "PendingRollbackError" not in output, output
    assert "catch-up works again" in output, output


def _checkpoints(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM projection_checkpoints")) or 0)


def test_a_listener_closed_for_idling_is_replaced_without_a_failure(
    worker_database: str, worker_engine: sqlalchemy.Engine
) -> None:
    """PostgreSQL's `idle_session_timeout` (set here for the worker's sessions only)
    closes the worker's listening connection, idle between notifications. That is no
    failure of catch-up: no warning, and what is appended later is folded."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "conversations", "work"],
        env={
            **os.environ,
            "DATABASE_URL": worker_database,
            "CONVERSATIONS_LOG_LEVEL": "info",
            "PGOPTIONS": "-c idle_session_timeout=1000",
        },
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _checkpoints(worker_engine) == 3, 20, "the worker started")
        time.sleep(3.5)  # the listener idles past the timeout, three times
        location = new_id("loc")
        append_documents(worker_database, worker_engine, [message(locationId=location)])
        wait_for(lambda: folded(worker_engine, location) == 1, 20, "folded")
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=15)[0].decode()
    assert worker.returncode == 0, output
    assert '"level": "warning"' not in output, output


def test_a_worker_stops_on_sigterm_while_the_database_hangs(worker_database: str) -> None:
    """SIGTERM interrupts a worker waiting on a database that hangs. The interruption
    came mid-statement (the check of a pooled connection), where SQLAlchemy raised
    another error in its place: the worker took it for a failure to retry, ran on and
    had to be killed (by `serve` 10 s later; a standalone `work` not at all)."""
    with Proxy.to(worker_database).running() as proxy:
        worker = start_work(proxy.url_for(worker_database))
        try:
            wait_for(lambda: proxy.open >= 2, 20, "the worker connected")
            time.sleep(0.5)
            proxy.stall()
            time.sleep(2.5)  # the next fold (a second apart at most) waits on the database
            worker.send_signal(signal.SIGTERM)
            output = worker.communicate(timeout=5)[0].decode()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
            proxy.flow()
    assert worker.returncode == 0, output
    assert "projection worker stopped" in output, output
    assert "catch-up failed" not in output, output
