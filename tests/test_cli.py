"""The `conversations` command as a user meets it: one clear line and a documented exit
status when the database is away, has no schema, or a revision is unknown (never a
traceback), and SIGTERM stopping `serve` cleanly, embedded PostgreSQL included."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conversations import migrate
from conversations.database import create_database, create_engine, drop_database
from tests.conftest import REPO, free_port, run_cli, run_cli_into_closed_pipe, start_server
from tests.helpers import KeyPair

COMMANDS = [
    ("status",),
    ("keys", "list"),
    ("keys", "create", "--location", "loc"),
    ("keys", "revoke", "abc"),
    ("replay",),
    ("verify",),
    ("migrate",),
    ("quarantine", "list"),
    ("import", "-"),  # nothing to import: the database is reached all the same
    ("serve", "--port", "0"),
]


def conversations(
    *argv: str, env: dict[str, str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conversations", *argv],
        env={**os.environ, "CONVERSATIONS_LOG_LEVEL": "warning", **env},
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == "", result.stdout  # no table header, no partial output
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("conversations: "), result.stderr
    for word in words:
        assert word in message, result.stderr


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_an_unreachable_database_is_one_line_and_exit_2(argv: tuple[str, ...]) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = conversations(*argv, env={"DATABASE_URL": closed})
    assert_one_line_error(result, "database error", "connection")


@pytest.fixture(scope="module")
def empty_database(server_url: str) -> Iterator[str]:
    """A database no migration ran on, as a fresh install before `migrate` or `serve`."""
    name = f"conversations_empty_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    yield url
    drop_database(server_url, name)


@pytest.mark.parametrize(
    "argv", [argv for argv in COMMANDS if argv[0] not in ("migrate", "serve")], ids=" ".join
)
def test_a_database_without_schema_says_to_migrate(
    argv: tuple[str, ...], empty_database: str
) -> None:
    result = conversations(*argv, env={"DATABASE_URL": empty_database})
    assert_one_line_error(result, "conversations migrate")


def test_import_into_a_database_without_schema_says_to_migrate(empty_database: str) -> None:
    result = conversations("import", "-", env={"DATABASE_URL": empty_database}, stdin="{}\n")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "run `conversations migrate`" in result.stderr


def test_work_on_a_database_without_schema_says_to_migrate(empty_database: str) -> None:
    """`work` keeps running there (README: it retries); it logged "catch-up failed" with
    an UndefinedTable traceback, where the other commands say to run `migrate`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "conversations", "work"],
        env={**os.environ, "DATABASE_URL": empty_database, "CONVERSATIONS_LOG_FORMAT": "json"},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[dict[str, str]] = []
    try:
        while not any("catch-up" in line["message"] for line in lines):
            text = process.stderr.readline()
            assert text, f"work ended: {lines}"
            lines.append(json.loads(text))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    warnings = [line for line in lines if line["level"] == "warning"]
    assert warnings and all("run `conversations migrate`" in w["message"] for w in warnings), lines
    assert not any("exception" in line for line in lines), lines


@pytest.mark.parametrize("option", ["--revision", "--downgrade"])
@pytest.mark.parametrize("revision", ["", " "])
def test_migrate_to_a_blank_revision_is_refused(
    option: str, revision: str, database_url: str
) -> None:
    """`--revision ""` was alembic's AssertionError traceback; `--downgrade ""` upgraded."""
    result = conversations("migrate", option, revision, env={"DATABASE_URL": database_url})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "a revision is needed" in result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.parametrize("option", ["--revision", "--downgrade"])
def test_migrate_to_an_unknown_revision_names_it(option: str, database_url: str) -> None:
    result = conversations("migrate", option, "nosuchrevision", env={"DATABASE_URL": database_url})
    assert_one_line_error(result, "nosuchrevision")


@pytest.fixture
def old_schema_database(server_url: str) -> Iterator[str]:
    """A store a release before 0014 wrote, with one message, before `conversations migrate`."""
    name = f"conversations_old_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            migrate.upgrade(conn, "0013")
    finally:
        engine.dispose()
    sms = (
        '{"type":"InboundMessage","locationId":"loc","conversationId":"conv","messageId":"m1",'
        '"messageType":"SMS","direction":"inbound","body":"hi","dateAdded":"2026-11-20T10:00:00Z"}'
    )
    imported = conversations("import", "-", env={"DATABASE_URL": url}, stdin=sms + "\n")
    assert imported.returncode == 0, imported.stderr
    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # as the old release's worker left them: caught up
            conn.exec_driver_sql(
                "INSERT INTO projection_checkpoints (name, position) VALUES"
                " ('timeline', 1), ('contact_channels', 1), ('location_conversations', 1)"
                " ON CONFLICT (name) DO UPDATE SET position = 1"
            )
    finally:
        engine.dispose()
    yield url
    drop_database(server_url, name)


@pytest.mark.parametrize("argv", [("verify",), ("replay",)], ids=" ".join)
def test_a_rebuild_on_a_schema_not_migrated_yet_says_to_migrate(
    argv: tuple[str, ...], old_schema_database: str
) -> None:
    """New code before `conversations migrate`: the rebuild's COPY into the side tables
    failed with psycopg's own error, which was not taken for a database problem, and
    `verify` and `replay` ended in a traceback (exit 1)."""
    result = conversations(*argv, env={"DATABASE_URL": old_schema_database})
    assert_one_line_error(result, "an old one", "run `conversations migrate`")


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """The projection workers (`conversations work`) `pid` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid == pid and b"work" in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.mark.smoke
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_serve_and_its_embedded_postgresql(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """systemd, docker and `kill` stop a service with SIGTERM, a closed terminal or ssh
    session with SIGHUP: the embedded server must stop with it, as it does on Ctrl-C, not
    be left running; so must the projection worker."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    port = free_port()
    env.update(CONVERSATIONS_DATA_DIR=str(tmp_path / "data"), CONVERSATIONS_LOG_LEVEL="warning")
    pgdata = tmp_path / "data" / "postgres"
    process = subprocess.Popen(
        [sys.executable, "-m", "conversations", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert _running(postmaster)

        worker = _children(process.pid)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        deadline = time.monotonic() + 10
        while _running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(postmaster), "the embedded PostgreSQL outlived `serve`"
        assert worker and not any(_running(pid) for pid in worker), "the worker outlived it"
        assert not (pgdata / "postmaster.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        pid_file = pgdata / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("serve", "--port", "99999"), {}),
        (("serve", "--port", "-1"), {}),
        (("serve",), {"CONVERSATIONS_PORT": "70000"}),
    ],
    ids=["flag", "negative flag", "setting"],
)
def test_a_port_out_of_range_is_refused_not_wrapped_around(
    argv: tuple[str, ...], env: dict[str, str], database_url: str
) -> None:
    """Port 99999 used to be served on 99999 - 65536 = 34463, silently."""
    result = conversations(*argv, env={"DATABASE_URL": database_url, **env}, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "65535" in result.stderr


def _signalled_while_loading(
    argv: list[str], env: dict[str, str], signum: signal.Signals
) -> tuple[int, str]:
    """Run `conversations ARGV` and send it `signum` while SQLAlchemy is being imported
    (`-X importtime` tells when: one of its modules is done); its status and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "conversations", *argv],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not inherited
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if line.rpartition("|")[2].strip().startswith("sqlalchemy."):
                break
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err


@pytest.mark.parametrize("argv", [("status",), ("replay",)], ids=" ".join)
def test_ctrl_c_while_the_command_loads_is_one_line_not_a_traceback(
    argv: tuple[str, ...], database_url: str
) -> None:
    """SQLAlchemy takes a third of a second to import, and it was imported with the
    command: a Ctrl-C then was a KeyboardInterrupt traceback. Interrupted while it loads
    (`-X importtime` tells when: one of its modules is done), a command says so."""
    returncode, err = _signalled_while_loading(
        list(argv),
        {"DATABASE_URL": database_url, "CONVERSATIONS_LOG_LEVEL": "warning"},
        signal.SIGINT,
    )
    assert returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "conversations: interrupted", err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("serve", "--port", "١٨٣٠١"), "is not an integer"),  # Arabic-Indic digits
        (("quarantine", "list", "--limit", "0"), "must be at least 1"),
        (("quarantine", "list", "--limit", "٣"), "is not an integer"),
        (("quarantine", "list", "--limit", "9" * 23), "must be at most"),  # not a bigint
        (("quarantine", "show", "-1"), "must be at least 1"),
        (("quarantine", "retry", "٣"), "is not an integer"),
    ],
    ids=["port", "limit 0", "limit digits", "limit huge", "show -1", "retry digits"],
)
def test_command_line_numbers_are_ascii_and_in_range(
    argv: tuple[str, ...], says: str, database_url: str
) -> None:
    """As the settings: int() read `--port ١٨٣٠١` as 18301, and a `--limit` past a bigint
    reached the database ("database error: bigint out of range")."""
    result = conversations(*argv, env={"DATABASE_URL": database_url}, timeout=20)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert says in result.stderr.strip().splitlines()[-1], result.stderr


def test_a_signing_key_of_the_wrong_kind_is_one_line_and_exit_2(
    database_url: str, tmp_path: Path
) -> None:
    from tests.helpers import KeyPair

    ed25519_pem = KeyPair.generate().ed25519_public_pem
    result = conversations(
        "serve",
        "--port",
        str(free_port()),
        env={"DATABASE_URL": database_url, "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY": ed25519_pem},
        timeout=20,
    )
    assert_one_line_error(result, "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY", "not an RSA key")


def test_a_reader_that_goes_away_stops_a_command_quietly(database_url: str) -> None:
    """`conversations status | head -1`: the pipe closes under the command. It stops with
    the shell's 141, no traceback, as Unix tools do."""
    process = run_cli_into_closed_pipe(["status"], database_url)
    assert process.returncode == 141, process.stderr
    assert "Traceback" not in process.stderr and "BrokenPipe" not in process.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("argv", [("status",), ("keys", "list"), ("quarantine", "list")])
def test_an_output_that_cannot_be_written_is_one_line_not_a_traceback(
    argv: tuple[str, ...], database_url: str
) -> None:
    """`conversations status > report` on a full disk: one line saying so, status 2. It
    was an OSError traceback (then Python's complaint again as it flushed stdout at exit),
    and for `quarantine` "database error: [Errno 28] No space left on device"."""
    with open("/dev/full", "w") as full:
        process = run_cli(argv, database_url, full)
    assert process.returncode == 2, process.stderr
    assert process.stderr == "conversations: cannot write the output: No space left on device\n"


def test_serve_on_a_port_in_use_says_so_and_exits_2(database_url: str) -> None:
    """Not "serving on ..." and uvicorn's undocumented status 3: one line saying it cannot
    serve there and why (uvicorn's own reason, logged lines before it at the info level),
    status 2 like any setting that cannot be used.
    With verification off, a warning says what that means."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CONVERSATIONS_LOG_LEVEL": "warning",
            "CONVERSATIONS_WEBHOOK_VERIFY": "off",
            "CONVERSATIONS_PROJECTION_WORKER": "false",
        }
        result = subprocess.run(
            [sys.executable, "-m", "conversations", "serve", "--port", str(port)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"conversations: cannot serve on http://127.0.0.1:{port} ("), last
    assert "address already in use" in last  # the line read first says why
    assert "Traceback" not in result.stderr
    assert "signatures are not required (checked and recorded when sent)" in result.stderr


@pytest.mark.parametrize("revision", ["0013", None], ids=["older", "none"])
def test_serve_without_migrations_says_when_the_schema_is_behind(
    revision: str | None, server_url: str
) -> None:
    """With migrations left to `migrate`, a database at an older revision (or none) is
    named at start: reads of what changed answer 503 and the projection worker fails
    until it is migrated, and only /readyz said why."""
    name = f"conversations_behind_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    try:
        if revision:
            engine = create_engine(url)
            with engine.connect() as conn:
                migrate.upgrade(conn, revision)
            engine.dispose()
        with socket.socket() as taken:  # serve stops at once, after its start-up lines
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = conversations(
                "serve", "--no-migrate", "--port", str(port), env={"DATABASE_URL": url}
            )
    finally:
        drop_database(server_url, name)
    assert result.returncode == 2, result.stderr
    head = migrate.head_revision()
    assert (
        f"the database schema is at {revision or 'no migration'}, this release needs {head}:"
        " run `conversations migrate`"
    ) in result.stderr


def test_serve_without_migrations_on_a_current_schema_says_nothing_of_it(
    database_url: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = conversations(
            "serve", "--no-migrate", "--port", str(port), env={"DATABASE_URL": database_url}
        )
    assert result.returncode == 2, result.stderr
    assert "schema" not in result.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_logs_are_plain_lines_at_a_terminal_and_json_elsewhere(
    database_url: str, terminal: bool
) -> None:
    """`CONVERSATIONS_LOG_FORMAT=auto` (the default): a person running a command sees
    plain lines; systemd, docker or a file get JSON."""
    env = {k: v for k, v in os.environ.items() if k != "CONVERSATIONS_LOG_FORMAT"}
    env.update(DATABASE_URL=database_url, CONVERSATIONS_LOG_LEVEL="info")
    reader, writer = os.openpty() if terminal else os.pipe()
    with os.fdopen(reader, "rb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "conversations", "status"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=writer,
        )
        os.close(writer)
        assert process.wait(timeout=60) == 0
        logged = b""
        with contextlib.suppress(OSError):  # a pty's reader gets EIO once the writer is gone
            while chunk := output.read1(65536):
                logged += chunk
    first = logged.decode().splitlines()[0]
    if terminal:
        assert " INFO conversations.database Using PostgreSQL at " in first, first
    else:
        assert first.startswith('{"time": '), first


def test_a_request_unfinished_when_serve_stops_gets_a_503_to_retry(
    database_url: str, keys: KeyPair
) -> None:
    """A webhook whose body is still arriving when SIGTERM comes is waited for (10 s),
    then answered 503 with Retry-After, as any request the service could not finish;
    not uvicorn's text/plain 500, with an error and a traceback in the log."""
    server = start_server(database_url, keys, CONVERSATIONS_PROJECTION_WORKER="false")
    try:
        with socket.create_connection(("127.0.0.1", int(server.url.rpartition(":")[2]))) as sock:
            sock.sendall(
                b"POST /webhooks/highlevel HTTP/1.1\r\nHost: conversations\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"type":'
            )
            time.sleep(0.5)  # the request is in the app, reading its body
            server.process.send_signal(signal.SIGTERM)
            sock.settimeout(30)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    assert b"\r\nretry-after: " in head.lower() and b"application/problem+json" in head
    assert json.loads(body)["type"] == "urn:conversations:problem:shutting_down"
    assert "Exception in ASGI application" not in server.output
    assert "Traceback" not in server.output


def test_status_says_when_the_schema_is_not_this_releases(old_schema_database: str) -> None:
    """`status` read the counts of a schema not migrated yet and said all was well
    (nothing behind) while the projections could not fold a new event."""
    result = conversations("status", env={"DATABASE_URL": old_schema_database})
    assert result.returncode == 0, result.stderr
    head = migrate.head_revision()
    assert f"schema:      0013, this release needs {head}: run `conversations migrate`" in (
        result.stdout
    )
    engine = create_engine(old_schema_database)
    try:
        with engine.connect() as conn:
            migrate.upgrade(conn)
    finally:
        engine.dispose()
    result = conversations("status", env={"DATABASE_URL": old_schema_database})
    assert f"schema:      {head}\n" in result.stdout


def _readme_synopsis() -> dict[str, str]:
    """The README's CLI block: each command's line, by command."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## CLI\n", 1)[1].split("```\n", 2)[1]
    lines = [line.partition("#")[0].strip() for line in block.splitlines()]
    return {line.split()[1]: line for line in lines if line.startswith("conversations ")}


def _helps(parser: argparse.ArgumentParser) -> str:
    """`--help` of `parser` and of every subcommand under it."""
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            text += "".join(_helps(sub) for sub in action.choices.values())
    return text


@pytest.mark.parametrize("command", sorted(_readme_synopsis()))
def test_the_readme_synopsis_names_options_as_help_does(command: str) -> None:
    """Each option of the README's CLI block, with its argument's name, is in the
    command's `--help` (`--limit N` was `--limit LIMIT`, with no help at all, and its
    default of 50 said nowhere), and each option `--help` shows is in the README."""
    from conversations.cli import _parser

    synopsis = _readme_synopsis()[command]
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = _helps(commands.choices[command])
    for option, argument in re.findall(r"(--[a-z-]+)(?: ([A-Z]+)\b)?", synopsis):
        assert f"{option} {argument}".strip() in helps, (option, argument, helps)
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", helps)) - {"--help"}
    assert shown <= set(re.findall(r"--[a-z-]+", synopsis)), (shown, synopsis)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("::1", "http://[::1]:8000"),
        ("::", "http://[::]:8000"),
    ],
)
def test_serve_names_its_url_with_an_ipv6_address_in_brackets(host: str, url: str) -> None:
    from conversations.cli import _base_url

    assert _base_url(host, 8000) == url


def test_a_replay_refused_as_busy_ends_with_its_reason(database_url: str) -> None:
    """The refusal is the last line: the progress bar's final line used to follow it."""
    from conversations.projections import runner
    from conversations.projections.registry import select

    engine = create_engine(database_url)
    try:
        with runner._exclusive(engine, "replay", select(["timeline"])):
            result = conversations(
                "replay", "--projection", "timeline", env={"DATABASE_URL": database_url}
            )
    finally:
        engine.dispose()
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "conversations: another replay of projection 'timeline' is running", (
        result.stderr
    )


@pytest.mark.parametrize("command", ["serve", "work"])
def test_serve_and_work_stopped_while_starting_exit_0(command: str, database_url: str) -> None:
    """README: SIGTERM stops `serve` and `work` with status 0; while they were still
    starting (here: loading, `-X importtime` tells when) it was 130 and "interrupted"."""
    argv = ["serve", "--port", "0"] if command == "serve" else ["work"]
    returncode, err = _signalled_while_loading(
        argv, {"DATABASE_URL": database_url, "CONVERSATIONS_LOG_FORMAT": "json"}, signal.SIGTERM
    )
    assert returncode == 0, err
    assert "Traceback" not in err and "interrupted" not in err, err
    assert json.loads(err.strip().splitlines()[-1])["message"] == (
        f"{command} stopped before it was running"
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "mysql://user@db/app"}, "DATABASE_URL"),
        ({"DATABASE_URL": "db.example.com"}, "DATABASE_URL"),
        ({"DATABASE_URL": "", "CONVERSATIONS_DATA_DIR": "/etc/passwd"}, "CONVERSATIONS_DATA_DIR"),
        ({"DATABASE_URL": "", "CONVERSATIONS_DATA_DIR": "/proc/nothing"}, "CONVERSATIONS_DATA_DIR"),
    ],
    ids=["another scheme", "not a URL", "a file", "a directory that cannot be made"],
)
def test_a_database_setting_that_cannot_be_used_is_named(env: dict[str, str], named: str) -> None:
    """As every other setting's error names it: "cannot open the database: [Errno 20] Not
    a directory: '/etc/passwd/postgres'" left the operator to guess which setting."""
    result = conversations("status", env=env)
    assert_one_line_error(result, "cannot open the database", f"Setting {named}")


@pytest.mark.parametrize("command", ["replay", "verify"])
def test_an_unknown_projection_is_refused_before_the_database_is_opened(
    command: str, tmp_path: Path
) -> None:
    """A typo in `--projection` is the line, not a database error met first (nor an
    embedded PostgreSQL started, or initialised in a directory where there was none)."""
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = conversations(command, "--projection", "timline", env={"DATABASE_URL": closed})
    assert_one_line_error(result, "unknown projection 'timline'", "known: timeline")

    data_dir = tmp_path / "data"
    embedded = conversations(
        command,
        "--projection",
        "timline",
        env={"DATABASE_URL": "", "CONVERSATIONS_DATA_DIR": str(data_dir)},
    )
    assert_one_line_error(embedded, "unknown projection 'timline'")
    assert not data_dir.exists()


def test_serve_logs_where_it_serves_once_it_does(database_url: str) -> None:
    """ "serving on URL" was logged before uvicorn bound the port: ":0" for `--port 0`, and
    a port another process held (followed by "cannot serve on" it). It now comes once the
    server listens, with the port it got."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CONVERSATIONS_LOG_LEVEL": "info",
        "CONVERSATIONS_LOG_FORMAT": "json",
        "CONVERSATIONS_PROJECTION_WORKER": "false",
    }
    command = [sys.executable, "-m", "conversations", "serve", "--port", "0"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if json.loads(line)["message"].startswith("serving on "):
                url = json.loads(line)["message"].removeprefix("serving on ")
                break
        else:
            raise AssertionError("no `serving on` line")
        assert not url.endswith(":0"), url
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused = subprocess.run(
            [*command[:-1], port], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
    assert refused.returncode == 2, refused.stderr
    assert "serving on" not in refused.stderr, refused.stderr
