"""A throwaway database per test session, migrated to head, on the server DATABASE_URL
names (or on an embedded PostgreSQL when it is unset), and a `conversations serve`
subprocess for end-to-end tests. Tests use random ids, so they never clean up."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from conversations import migrate
from conversations.database import create_database, create_engine, drop_database, open_database
from conversations.settings import Settings
from tests.helpers import KeyPair, Server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A URL of the PostgreSQL server the tests may create databases on."""
    given = os.environ.get("DATABASE_URL")
    if given:
        return given
    data_dir = tmp_path_factory.mktemp("embedded")
    handle = open_database(Settings.from_env({"CONVERSATIONS_DATA_DIR": str(data_dir)}))
    return handle.url


@contextlib.contextmanager
def migrated_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh database named `<prefix>_<random>`, migrated to head, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    engine = create_engine(url)
    with engine.connect() as conn:
        migrate.upgrade(conn)
    engine.dispose()
    try:
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for this test session, migrated to head."""
    with migrated_database(server_url, "conversations_test") as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def keys() -> KeyPair:
    return KeyPair.generate()


def run_cli(
    argv: list[str] | tuple[str, ...], database_url: str, stdout: Any
) -> subprocess.CompletedProcess[str]:
    """`conversations ARGV...` in a process of its own, its output into `stdout` (a file
    or descriptor: what a shell redirection gives it), its stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "conversations", *argv],
        env={**os.environ, "DATABASE_URL": database_url, "CONVERSATIONS_LOG_LEVEL": "warning"},
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def run_cli_into_closed_pipe(
    argv: list[str] | tuple[str, ...], database_url: str
) -> subprocess.CompletedProcess[str]:
    """`run_cli` writing into a pipe nobody reads (`conversations ... | head -1`, once
    `head` has gone)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return run_cli(argv, database_url, write)
    finally:
        os.close(write)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(database_url: str, keys: KeyPair, **env: str) -> Server:
    """`conversations serve` in a subprocess, exactly as a user runs it."""
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY": keys.ed25519_public_pem,
        "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY": keys.rsa_public_pem,
        "CONVERSATIONS_LOG_LEVEL": "warning",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "conversations", "serve", "--port", str(port)],
        env=environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, f"http://127.0.0.1:{port}", keys)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()  # reaps it and reads the rest of its output
            raise RuntimeError(f"conversations serve exited early:\n{server.output}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("conversations serve did not start within 30 s")


@pytest.fixture(scope="session")
def server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    """One shared `conversations serve` for the end-to-end tests."""
    server = start_server(database_url, keys)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lenient_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    """A server with signature verification off (CONVERSATIONS_WEBHOOK_VERIFY=off)."""
    server = start_server(database_url, keys, CONVERSATIONS_WEBHOOK_VERIFY="off")
    yield server
    server.stop()
