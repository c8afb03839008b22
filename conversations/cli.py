"""The `conversations` command: `main(argv) -> exit status`, so tests call it directly."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from conversations import __version__
from conversations.database import DatabaseHandle, create_engine, open_database
from conversations.settings import Settings, SettingsError

log = logging.getLogger("conversations.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conversations",
        description="An event-sourced store for HighLevel conversation webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"conversations {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service (webhooks in, reads out)")
    serve.add_argument("--host", help="address to listen on (default: CONVERSATIONS_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (default: CONVERSATIONS_PORT)")
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not apply pending migrations on start (CONVERSATIONS_AUTO_MIGRATE=false)",
    )

    migrate = commands.add_parser("migrate", help="apply schema migrations")
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.add_argument(
        "--downgrade", metavar="REVISION", help="go back down to REVISION (e.g. base)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"conversations: {error}", file=sys.stderr)
        return 2
    from conversations.logs import configure

    configure(settings.log_level, settings.log_format)
    try:
        handle = open_database(settings)
    except Exception as error:
        print(f"conversations: cannot open the database: {error}", file=sys.stderr)
        return 1
    command: str = args.command
    if command == "serve":
        return _serve(args, settings, handle)
    if command == "migrate":
        return _migrate(args, handle)
    raise AssertionError(command)


def _migrate(args: argparse.Namespace, handle: DatabaseHandle) -> int:
    from conversations import migrate

    engine = create_engine(handle.url)
    try:
        with engine.connect() as conn:
            if args.downgrade:
                migrate.downgrade(conn, args.downgrade)
            else:
                migrate.upgrade(conn, args.revision)
    finally:
        engine.dispose()
    log.info("migrations applied", extra={"database": handle.describe()})
    return 0


def _serve(args: argparse.Namespace, settings: Settings, handle: DatabaseHandle) -> int:
    import uvicorn

    from conversations.api.app import create_app

    if settings.auto_migrate and not args.no_migrate:
        _migrate(argparse.Namespace(downgrade=None, revision="head"), handle)
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    log.info("serving on http://%s:%d", host, port, extra={"database": handle.describe()})
    uvicorn.run(
        create_app(settings, handle.url),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0
