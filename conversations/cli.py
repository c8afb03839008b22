"""The `conversations` command: `main(argv) -> exit status`, so tests call it directly."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeAlias

from conversations import __version__
from conversations.settings import MAX_PORT, Settings, SettingsError

# conversations.database (SQLAlchemy, ~0.3 s to import) is imported where it is used,
# once `main` catches a Ctrl-C: pressed while it loaded, it was a KeyboardInterrupt
# traceback. This module stays quick to import (the `conversations` script imports it).
if TYPE_CHECKING:
    import socket

    import uvicorn

    from conversations.database import DatabaseHandle
    from conversations.keys import KeyInfo
    from conversations.projections.worker import CatchUpWorker

log = logging.getLogger("conversations.cli")

_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conversations",
        description="An event-sourced store for HighLevel conversation webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"conversations {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service (webhooks in, reads out)")
    serve.add_argument("--host", help="address to listen on (default: CONVERSATIONS_HOST)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: CONVERSATIONS_PORT)")
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply pending migrations on start (CONVERSATIONS_AUTO_MIGRATE=false)",
    )

    work = commands.add_parser(
        "work", help="keep the projections current (what `serve` runs beside itself)"
    )
    # Given by `serve` to the worker it starts: stop when that process is gone.
    work.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)

    migrate = commands.add_parser("migrate", help="apply schema migrations")
    direction = migrate.add_mutually_exclusive_group()
    direction.add_argument(
        "--revision", type=_revision, default="head", help="target revision (default: head)"
    )
    direction.add_argument(
        "--downgrade",
        type=_revision,
        metavar="REVISION",
        help="go back down to REVISION (e.g. base)",
    )

    importer = commands.add_parser(
        "import",
        help="append exported webhook payloads (JSON lines, a JSON array or pretty-printed"
        " objects; gzipped or not)",
    )
    importer.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for stdin")

    replay = commands.add_parser(
        "replay", help="rebuild projections from the first event, then switch over atomically"
    )
    replay.add_argument(
        "--projection", action="append", metavar="NAME", help="only this one (repeatable)"
    )

    verify = commands.add_parser(
        "verify", help="rebuild projections aside and compare them with the live ones"
    )
    verify.add_argument(
        "--projection", action="append", metavar="NAME", help="only this one (repeatable)"
    )

    commands.add_parser("status", help="events, projection positions and lag, quarantine")

    keys = commands.add_parser("keys", help="API keys for the read API, scoped to locations")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_actions.add_parser(
        "create", help="make a key; prints it alone on stdout, once and never again"
    )
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--location",
        action="append",
        metavar="ID",
        help="a location it may read (repeatable, or comma-separated)",
    )
    scope.add_argument("--all-locations", action="store_true", help="every location")
    create.add_argument(
        "--label", metavar="TEXT", help="a note to recognise the key by in `keys list`"
    )
    key_actions.add_parser("list", help="every key: id, scope, label, created, revoked")
    revoke = key_actions.add_parser("revoke", help="revoke a key (by its id or the key itself)")
    revoke.add_argument("key", metavar="KEY", help="its key id (from `keys list`), or the key")

    quarantine = commands.add_parser("quarantine", help="bodies kept aside, and their retry")
    actions = quarantine.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="what is kept aside")
    listing.add_argument("--all", action="store_true", help="also the ones already re-ingested")
    listing.add_argument(
        "--limit", type=_count, default=50, metavar="N", help="the newest N (default: 50)"
    )
    show = actions.add_parser("show", help="one body, with its reason and headers")
    show.add_argument("id", type=_count, metavar="ID", help="its id (from `quarantine list`)")
    retry = actions.add_parser("retry", help="ingest again (after a fix)")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=_count, nargs="?", metavar="ID", help="one body, by its id")
    target.add_argument("--all", action="store_true", help="every pending body")
    return parser


def _integer(text: str) -> int:
    """`text` as an integer in ASCII digits, as the settings are: int() takes any
    script's digits (`--port ١٨٣٠١` served on 18301)."""
    try:
        if not text.isascii():
            raise ValueError(text)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _port(text: str) -> int:
    """A TCP port; the event loop would silently take 99999 as 99999 - 65536."""
    port = _integer(text)
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} is not between 0 and {MAX_PORT}")
    return port


def _revision(text: str) -> str:
    """A migration revision, not blank: alembic failed on `--revision ""` with an
    AssertionError traceback, and `--downgrade ""` (falsy) upgraded instead."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a revision is needed (e.g. head, base, 0014)")
    return text


_BIGINT_MAX = 2**63 - 1


def _count(text: str) -> int:
    """A `--limit` or a quarantine id: at least 1, and no more than PostgreSQL's bigint
    holds (a larger limit was "database error: bigint out of range")."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    if value > _BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {_BIGINT_MAX}, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"conversations: {error}", file=sys.stderr)
        return 2
    from conversations.logs import configure

    configure(settings.log_level, settings.log_format)
    previous = _interrupt_on_stop_signals()
    try:
        if not _projections_known(args):
            return 2
        from conversations.database import open_database

        try:
            handle = open_database(settings)
        except Exception as error:
            print(f"conversations: cannot open the database: {error}", file=sys.stderr)
            return 2  # as for every other setting that cannot be used
        return _run(args, settings, handle)
    except KeyboardInterrupt:
        if args.command in LONG_RUNNING:
            # Stopped while still starting (connecting, migrating): a stop all the same,
            # exit 0 as once running. It was "interrupted" and 130, a failed unit to
            # systemd, and a plain line in the JSON logs of a `serve` that stopped the
            # worker it had just started.
            log.info("%s stopped before it was running", args.command)
            return 0
        print("conversations: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`conversations verify | head -1`): stop quietly,
        # as Unix tools do, and keep Python from complaining again when it flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a tool
    except OSError as error:
        from conversations.progress import output_failed

        if not output_failed(error):
            raise
        # `conversations status > report` on a full disk: one line, not a traceback (and
        # not Python's complaint again when it flushes stdout at exit).
        print(f"conversations: cannot write the output: {error.strerror}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 2
    except Exception as error:
        message = _database_problem(error)
        if message is None:
            raise
        print(f"conversations: {message}", file=sys.stderr)
        return 2
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _projections_known(args: argparse.Namespace) -> bool:
    """Whether every `--projection` of `replay` or `verify` names one, said before the
    database is opened: a typo started the embedded PostgreSQL (initialised a new one in
    another directory) or met an unreachable server, and was told only after that."""
    names: list[str] | None = getattr(args, "projection", None)
    if not names:
        return True
    from conversations.projections.registry import select

    try:
        select(names)
    except ValueError as error:
        print(f"conversations: {error}", file=sys.stderr)
        return False
    return True


LONG_RUNNING = frozenset({"serve", "work"})
"""Commands that run until stopped: a stop signal or Ctrl-C ends them with status 0."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Besides Ctrl-C: SIGTERM (systemd, docker, `kill`), SIGHUP (the terminal or the ssh
session that ran the command went away)."""


def _interrupt_on_stop_signals() -> dict[int, _Handler]:
    """Make the `STOP_SIGNALS` stop a command as Ctrl-C does.

    Python's default is to die at once, skipping exit handlers, and one of those stops the
    embedded PostgreSQL: `serve` stopped by SIGTERM left it running. uvicorn re-raises the
    signal once its graceful shutdown is done, and swallows the KeyboardInterrupt.
    Returns the previous handlers, to restore (tests call `main` in-process).
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, _Handler] = {}
    for number in STOP_SIGNALS:
        handler = signal.signal(number, signal.default_int_handler)
        previous[number] = signal.SIG_DFL if handler is None else handler
    return previous


def _database_problem(error: Exception) -> str | None:
    """A one-line message for an error about the database (unreachable, no schema, an
    unknown revision), or None for anything else (a bug, which keeps its traceback)."""
    import psycopg
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    from conversations.database import describe_error

    if isinstance(error, CommandError):
        return f"migration failed: {error}"
    # psycopg's own errors too: a rebuild copies rows on the driver's connection, and
    # fails there first on a schema `migrate` has not brought up to date.
    if isinstance(error, DBAPIError | psycopg.Error):
        return describe_error(error)
    return None


def _run(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    command: str = args.command
    if command == "serve":
        return _serve(args, settings, handle)
    if command == "work":
        return _work(args, settings, handle)
    if command == "migrate":
        return _migrate(args, handle)
    if command == "import":
        return _import(args, settings, handle)
    if command == "quarantine":
        return _quarantine(args, settings, handle)
    if command == "keys":
        return _keys(args, handle)
    if command in ("replay", "verify", "status"):
        from conversations import operations

        handler = {
            "replay": operations.replay,
            "verify": operations.verify,
            "status": operations.status,
        }[command]
        return handler(args, settings, handle)
    raise AssertionError(command)


def _keys(args: argparse.Namespace, handle: DatabaseHandle) -> int:
    from conversations import keys
    from conversations.database import create_engine

    engine = create_engine(handle.url)
    created = None
    try:
        with engine.begin() as conn:
            if args.action == "create":
                # HighLevel ids hold no comma: "A,B" is two locations, not one nothing matches.
                locations = [part for given in args.location or [] for part in given.split(",")]
                created = keys.create_key(
                    conn, locations, all_locations=args.all_locations, label=args.label
                )
            elif args.action == "list":
                _print_keys(keys.list_keys(conn))
            elif not keys.revoke_key(conn, args.key):
                print(f"conversations: no live key {keys.shown(args.key)}", file=sys.stderr)
                return 1
    except ValueError as error:
        print(f"conversations: {error}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if created:  # only once it is committed
        print(created)
    return 0


def _print_keys(found: Sequence[KeyInfo]) -> None:
    """The `keys list` table; printed once the query succeeded, so a database that fails
    it (no schema, gone) leaves stdout empty rather than a header above the error."""
    from conversations.quarantine import one_line

    print(f"{'key id':<14} {'created':<25} {'revoked':<25} {'label':<16} locations")
    for key in found:
        where = "(all locations)" if key.all_locations else ", ".join(key.locations)
        label, where = one_line(key.label or ""), one_line(where)
        revoked = key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else ""
        print(
            f"{key.key_id:<14} {key.created_at.isoformat(timespec='seconds'):<25}"
            f" {revoked:<25} {label:<16} {where}"
        )


def _import(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    from conversations import importer

    return importer.run(
        args.files, handle.url, limit=settings.max_body_bytes, db_timeout=settings.db_timeout
    )


def _quarantine(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    from conversations import quarantine
    from conversations.signatures import SignatureVerifier

    timeout = settings.db_timeout
    if args.action == "list":
        return quarantine.list_bodies(handle.url, timeout, everything=args.all, limit=args.limit)
    if args.action == "show":
        return quarantine.show(handle.url, timeout, args.id)
    qid = None if args.all else args.id
    try:
        verifier = SignatureVerifier(settings.ed25519_public_key, settings.rsa_public_key)
    except ValueError as error:  # a signing key that cannot be used
        print(f"conversations: {_key_setting(str(error))}", file=sys.stderr)
        return 2
    endpoint = quarantine.Endpoint(verifier, settings.max_body_bytes)
    return quarantine.retry(handle.url, timeout, qid, endpoint=endpoint)


def _migrate(args: argparse.Namespace, handle: DatabaseHandle) -> int:
    from conversations import migrate
    from conversations.database import create_engine

    engine = create_engine(handle.url)
    try:
        with engine.connect() as conn:
            if args.downgrade:
                before, after = migrate.downgrade(conn, args.downgrade)
            else:
                before, after = migrate.upgrade(conn, args.revision)
    finally:
        engine.dispose()
    _log_migration(before, after, downgrade=bool(args.downgrade), database=handle.describe())
    return 0


def _log_migration(
    before: str | None, after: str | None, *, downgrade: bool, database: str
) -> None:
    """Say what changed: from which revision to which, or that nothing did (a second
    `serve` starting beside the first finds the migrations done), and what an upgrade
    leaves to `conversations replay`."""
    from conversations import migrate

    extra = {"database": database, "from_revision": before, "to_revision": after}
    if before == after:
        log.info("schema already at %s: no migration to apply", after or "base", extra=extra)
        return
    moved = "downgraded" if downgrade else "upgraded"
    log.info("schema %s from %s to %s", moved, before or "base", after or "base", extra=extra)
    replay = migrate.replay_needed(before, after)
    if replay:
        log.warning(
            "run `conversations replay` once (serve keeps serving meanwhile): projection rows"
            " written before migration %s read as before, and `verify` reports them as"
            " differing from a fresh rebuild, until then",
            ", ".join(replay),
            extra=extra,
        )


class _Stop(BaseException):
    """SIGTERM (or SIGINT) asked the worker to stop."""


def _stopper(worker: CatchUpWorker) -> Callable[[int, object], None]:
    """The worker's handler of stop signals: it raises `_Stop` to interrupt even a fold
    waiting on the database, and first asks the worker to stop. A library may catch the
    interruption and raise another error in its place (SQLAlchemy, restoring a pinged
    connection's autocommit mid-statement, raised ProgrammingError), which the worker's
    loop takes for a failure to retry: the SIGTERM was lost, and the worker ran on until
    it was killed. Asked to stop, the loop ends there."""

    def stop(signum: int, frame: object) -> None:
        worker.stop()
        raise _Stop

    return stop


def _work(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    import os

    from conversations.database import create_engine
    from conversations.gc_tuning import freeze_startup_heap
    from conversations.projections.registry import PROJECTIONS
    from conversations.projections.worker import CatchUpWorker, plan_folds
    from conversations.supervisor import parent_gone

    parent: int | None = args.parent_pid
    if parent is None:  # `serve` has said so already for the worker it starts
        _warn_if_schema_behind(handle)
    engine = create_engine(
        handle.url, connect_args={"connect_timeout": int(max(2, settings.db_timeout))}
    )
    plan_folds(engine)
    worker = CatchUpWorker(
        engine,
        handle.url,
        PROJECTIONS,
        orphaned=(lambda: parent_gone(parent)) if parent is not None else (lambda: False),
    )
    # A stop signal interrupts even a fold in progress: its batch and checkpoint commit
    # together, so the rolled back transaction is simply folded again by the next worker.
    stop = _stopper(worker)
    for number in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(number, stop)
    try:
        freeze_startup_heap()
        log.info(
            "projection worker running",
            extra={"database": handle.describe(), "pid": os.getpid()},
        )
        worker.run()
    except _Stop:
        pass
    finally:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        engine.dispose()
    log.info("projection worker stopped")
    return 0


HTTP_SERVER: dict[str, Any] = {
    "loop": "uvloop",
    "http": "conversations.api.protocol:Http11Protocol",  # httptools, upgrade offers ignored
    "ws": "none",
    "access_log": False,
    "server_header": False,
}
"""How `serve` runs uvicorn; the benchmarks serve their baselines the same way."""


def _serve(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    import uvicorn

    from conversations.api.app import create_app
    from conversations.database import embedded_kept_running

    try:
        app = create_app(settings, handle.url)
    except ValueError as error:  # a signing key that cannot be used
        print(f"conversations: {_key_setting(str(error))}", file=sys.stderr)
        return 2
    if settings.auto_migrate and not args.no_migrate:
        _migrate(argparse.Namespace(downgrade=None, revision="head"), handle)
    else:
        _warn_if_schema_behind(handle)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    if settings.webhook_verify == "off":
        log.warning(
            "CONVERSATIONS_WEBHOOK_VERIFY=off: webhook signatures are not required (checked"
            " and recorded when sent), so anyone who can reach /webhooks/highlevel can store"
            " events (for local trials only)"
        )
    from conversations.api.protocol import Http11Protocol

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=10,
        **{**HTTP_SERVER, "http": Http11Protocol.with_head_timeout(settings.body_timeout)},
    )
    server = _server(config, handle.describe())
    # uvicorn shuts down gracefully on SIGINT and SIGTERM only: a SIGHUP does the same.
    signal.signal(signal.SIGHUP, lambda _, frame: server.handle_exit(signal.SIGTERM, frame))
    why = _LastError()
    logging.getLogger("uvicorn.error").addHandler(why)
    with embedded_kept_running(handle), contextlib.suppress(KeyboardInterrupt):
        try:
            server.run()  # re-raises the SIGINT or SIGTERM it stopped on: swallowed
        except SystemExit:  # it could not start: exits with a status of its own
            if server.started:
                raise
        finally:
            logging.getLogger("uvicorn.error").removeHandler(why)
    if not server.started:  # uvicorn logged why (the port is taken, say): repeated last
        reason = f" ({why.message})" if why.message else ""
        print(f"conversations: cannot serve on {_base_url(host, port)}{reason}", file=sys.stderr)
        return 2
    return 0


class _LastError(logging.Handler):
    """Keeps the last error uvicorn logged, so the line `serve` ends on when it cannot
    listen says why: uvicorn's own line (the port taken) came two shutdown lines before
    it, and a user reads the last line first."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


def _server(config: uvicorn.Config, database: str) -> uvicorn.Server:
    """uvicorn's server, logging "serving on URL" once it listens, with the port it got.
    Logged before, the line said "serving on http://127.0.0.1:8000" of a port another
    process held (then "cannot serve on" it), and ":0" for `--port 0`."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = [s.getsockname()[1] for srv in self.servers for s in srv.sockets]
                port = bound[0] if bound else config.port
                log.info(
                    "serving on %s", _base_url(config.host, port), extra={"database": database}
                )

    return Server(config)


def _base_url(host: str, port: int) -> str:
    """The URL `serve` answers on; an IPv6 address in brackets (`http://::1:8000` was
    logged, which no client takes)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _warn_if_schema_behind(handle: DatabaseHandle) -> None:
    """With migrations left to `migrate`, say at start when the schema is not this
    release's: until it is, reads of what changed answer 503 and the projection worker
    retries in vain, and only /readyz said why. A database that cannot be reached is
    not this check's to report (/readyz and the first requests do)."""
    from sqlalchemy.exc import SQLAlchemyError

    from conversations import migrate
    from conversations.database import create_engine

    engine = create_engine(handle.url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            current = migrate.current_revision(conn)
    except (SQLAlchemyError, OSError):
        return
    finally:
        engine.dispose()
    head = migrate.head_revision()
    newer = migrate.newer_than_this_release(current)
    if newer is not None:
        log.warning("%s", newer)
    elif current != head:
        log.warning(
            "the database schema is at %s, this release needs %s: run `conversations migrate`"
            " (migrations are not applied on start)",
            current or "no migration",
            head,
        )


def _key_setting(message: str) -> str:
    """`message` about a signing key, naming the setting that gave it."""
    for kind, setting in (
        ("Ed25519", "CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY"),
        ("RSA", "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY"),
    ):
        if message.startswith(f"{kind} public key"):
            return f"Setting {setting}: {message}"
    return message
