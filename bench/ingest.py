"""Ingest throughput and latency of `conversations serve`, against same-run baselines.

Three servers, each a separate `uvicorn` process (uvloop, httptools, one process, no
access log), serve one throwaway database side by side and are measured in turns: each
round runs every server once at a concurrency level, in alternate order from round to
round (`--repeat` rounds, 3 by default; each row of the table is the median), so a
machine whose speed drifts during the benchmark (a shared host) affects them alike.
Idle between its turns, a server costs nothing measurable:

- `bare`: `bench/baselines.py` `POST /bare` (read the body, `json.loads`, answer `{}`);
- `insert`: `bench/baselines.py` `POST /insert` (one autocommit `INSERT` per webhook
  through a psycopg pool of 10 connections);
- `service`: `conversations serve`, `POST /webhooks/highlevel`, every body signed; its
  projection worker (a child process) keeps folding meanwhile, its CPU shown apart.

While the service runs, a thread of this process samples each projection's lag from the
database every 0.1 s (the age of the oldest event it has not applied, as `/projections`
says), and after each run times how long the projections take to reach the newest event.

This process is the load generator: a minimal HTTP/1.1 keep-alive client over asyncio
streams (uvloop when installed) with every request's bytes built before the clock starts.
Concurrency C is C connections, each sending its next request as soon as the previous
answer is read. Every request is a distinct webhook (its own `webhookId` and `messageId`).

    python bench/ingest.py [--requests 5000] [--concurrency 1,16,64] [--repeat 3]
                           [--only bare,insert]
    python bench/ingest.py --smoke    # CI: 50 requests at concurrency 1 and 4; exit 1 on
                                      # any failed request, count mismatch or projections
                                      # that do not catch up
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import math
import os
import platform
import random
import secrets
import shlex
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

REPO = Path(__file__).resolve().parent.parent
BASELINES = Path(__file__).resolve().parent / "baselines.py"
SERVERS = ("bare", "insert", "service")
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
HOST = "127.0.0.1"
TARGET_CONCURRENCY = 64  # the spec's targets: throughput >= insert, p99 < 50 ms
T = TypeVar("T")


# --- payloads ---------------------------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits

# (messageType, messageTypeString, messageTypeId, weight)
_CHANNELS: tuple[tuple[str, str, int | None, int], ...] = (
    ("SMS", "TYPE_SMS", 2, 36),
    ("Email", "TYPE_EMAIL", None, 14),
    ("CALL", "TYPE_CALL", 1, 10),
    ("WhatsApp", "TYPE_WHATSAPP", None, 10),
    ("FB", "TYPE_FACEBOOK", None, 6),
    ("IG", "TYPE_INSTAGRAM", None, 6),
    ("Live Chat", "TYPE_LIVE_CHAT", None, 5),
    ("GMB", "TYPE_GMB", None, 3),
    ("Custom", "TYPE_CUSTOM_PROVIDER_SMS", 22, 5),
    ("InternalComment", "TYPE_INTERNAL_COMMENT", None, 5),
)
# fmt: off
_WORDS = (
    "hi", "hello", "thanks", "please", "confirm", "appointment", "tomorrow", "today",
    "booking", "price", "quote", "call", "me", "back", "order", "shipped", "invoice", "paid",
    "when", "where", "how", "much", "available", "friday", "monday", "morning", "evening",
    "great", "sounds", "good", "see", "you", "then", "can", "we", "reschedule", "address",
    "directions", "open",
)
# fmt: on


@dataclass(frozen=True)
class _Conversation:
    location_id: str
    conversation_id: str
    contact_id: str
    phone: str
    email: str


class Corpus:
    """Distinct HighLevel message webhooks over ~20 locations and ~2000 conversations."""

    def __init__(self, seed: int, locations: int = 20, conversations: int = 2000) -> None:
        self._rng = random.Random(seed)
        self._locations = [self._id() for _ in range(locations)]
        self._users = {loc: [self._id() for _ in range(3)] for loc in self._locations}
        self._business_phone = {loc: self._phone() for loc in self._locations}
        self._conversations = [
            _Conversation(
                location_id=self._rng.choice(self._locations),
                conversation_id=self._id(),
                contact_id=self._id(),
                phone=self._phone(),
                email=f"contact{n}@example.com",
            )
            for n in range(conversations)
        ]
        self._weights = [weight for *_, weight in _CHANNELS]
        self._serial = 0

    def _id(self, length: int = 20) -> str:
        return "".join(self._rng.choices(_ALNUM, k=length))

    def _phone(self) -> str:
        return f"+1555{self._rng.randrange(10**7):07d}"

    def _unique_id(self) -> str:
        """20 characters like HighLevel's ids, unique because they embed a serial."""
        self._serial += 1
        return self._id(12) + f"{self._serial:08x}"

    def _text(self) -> str:
        return " ".join(self._rng.choices(_WORDS, k=self._rng.randint(3, 30))).capitalize()

    def webhook(self, now: datetime) -> dict[str, Any]:
        rng = self._rng
        conv = rng.choice(self._conversations)
        message_type, type_string, type_id, _ = rng.choices(_CHANNELS, self._weights)[0]
        inbound = message_type != "InternalComment" and rng.random() < 0.55
        added = now - timedelta(milliseconds=rng.randrange(5_000))
        business = self._business_phone[conv.location_id]
        body: dict[str, Any] = {
            "type": "InboundMessage" if inbound else "OutboundMessage",
            "locationId": conv.location_id,
            "attachments": [],
            "contactId": conv.contact_id,
            "conversationId": conv.conversation_id,
            "dateAdded": added.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "direction": "inbound" if inbound else "outbound",
            "messageType": message_type,
            "messageId": self._unique_id(),
            "status": "delivered",
        }
        if not inbound:
            body["userId"] = rng.choice(self._users[conv.location_id])
            body["source"] = rng.choice(("app", "api", "workflow", "bulk_actions", "campaign"))
        if message_type == "CALL":
            answered = rng.random() < 0.7
            body["status"] = "completed" if answered else "voicemail"
            body["callStatus"] = "completed" if answered else "voicemail"
            body["callDuration"] = rng.randrange(5, 900) if answered else 0
            body["attachments"] = [f"https://example.com/recordings/{self._id()}.mp3"]
            type_id, type_string = (1, "TYPE_CALL") if answered else (10, "TYPE_VOICEMAIL")
        elif message_type == "Email":
            text = self._text()
            body["body"] = f'<div style="font-family: verdana;">{text}</div>'
            body["plainText"] = text
            body["contentType"] = "text/html"
            body["subject"] = " ".join(rng.choices(_WORDS, k=4)).capitalize()
            body["emailMessageId"] = body["threadId"] = self._id()
            body["provider"] = "mailgun"
            owner = f"Front Desk <desk@{conv.location_id.lower()}.example.com>"
            body["from"], body["to"] = (conv.email, owner) if inbound else (owner, conv.email)
            body["ccList"] = ["cc@example.com"] if rng.random() < 0.2 else []
            body["bccList"] = []
        else:
            body["body"] = self._text()
            body["contentType"] = "text/plain"
            body["from"], body["to"] = (conv.phone, business) if inbound else (business, conv.phone)
            if message_type == "InternalComment":
                body["mentions"] = [rng.choice(self._users[conv.location_id])]
            if rng.random() < 0.1:
                body["attachments"] = [f"https://example.com/media/{self._id()}.jpg"]
        if type_id is not None:
            body["messageTypeId"] = type_id
        body["messageTypeString"] = type_string
        body["webhookId"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body["timestamp"] = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        return body


def build_requests(
    corpus: Corpus, key: Ed25519PrivateKey, port: int, path: str, count: int
) -> list[bytes]:
    """The exact bytes of `count` signed POSTs, built before the clock starts."""
    now = datetime.now(UTC)
    requests: list[bytes] = []
    for _ in range(count):
        body = json.dumps(corpus.webhook(now), separators=(",", ":")).encode()
        signature = base64.b64encode(key.sign(body)).decode()
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {HOST}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-GHL-Signature: {signature}\r\n"
            "\r\n"
        )
        requests.append(head.encode() + body)
    return requests


# --- load generator ---------------------------------------------------------------------


class ProtocolError(Exception):
    """The server answered something this minimal client does not understand."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        raise ProtocolError(f"Status line {head[:40]!r} is not HTTP/1.x.")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        body = await reader.readexactly(int(lower[at + 17 : end]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks.append(chunk[:-2])
        body = b"".join(chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        raise ProtocolError(f"Response with status {status} has no length.")
    return status, body, b"\r\nconnection: close" in lower


@dataclass
class Load:
    requests: Sequence[bytes]
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        self.latencies = [0.0] * len(self.requests)
        self.statuses = [0] * len(self.requests)

    def take(self) -> int | None:
        if self._next >= len(self.requests):
            return None
        self._next += 1
        return self._next - 1

    def sample(self, text: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(text)


async def _connection(port: int, load: Load) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while (index := load.take()) is not None:
            start = time.perf_counter()
            try:
                writer.write(load.requests[index])
                status, body, close = await read_response(reader)
            except (OSError, EOFError, ValueError, ProtocolError, asyncio.LimitOverrunError) as e:
                status, body, close = 0, repr(e).encode(), True
            load.latencies[index] = time.perf_counter() - start
            load.statuses[index] = status
            if not 200 <= status < 300:
                load.sample(f"{status} {body[:300].decode(errors='replace')}")
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
    finally:
        writer.close()


async def _drive(port: int, load: Load, concurrency: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, load) for _ in range(concurrency)))
    return time.perf_counter() - started


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --- CPU accounting ---------------------------------------------------------------------


def _process_cpu(pid: int) -> float:
    """Seconds of CPU a process has used (Linux /proc), 0.0 when unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc; none when unknown)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in listed.split()]
    except (OSError, ValueError):
        return []


def _database_backends(url: str) -> list[int]:
    return database_backends(urlsplit(url).path.lstrip("/"))


def backends_cpu(name: str) -> dict[int, float]:
    """Seconds of CPU each backend connected to database `name` has used."""
    return {pid: _process_cpu(pid) for pid in database_backends(name)}


def database_backends(name: str) -> list[int]:
    """The PostgreSQL backend processes connected to database `name` (Linux /proc; the
    server must run on this machine and be readable, else none)."""
    marker = f" {name} "
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith("postgres: ") and marker in cmdline:
            pids.append(int(entry.name))
    return pids


class _DatabaseCpu:
    """CPU of the backends of one database from `start` on (backends that appear later
    count from 0; ones that exit meanwhile are lost: pools keep theirs)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._start = {pid: _process_cpu(pid) for pid in _database_backends(url)}

    def spent(self) -> float:
        return sum(
            _process_cpu(pid) - self._start.get(pid, 0.0) for pid in _database_backends(self._url)
        )


def _machine_cpu() -> float:
    """Seconds of CPU the whole machine has spent busy (Linux /proc/stat), 0.0 if unknown."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- servers and database ---------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    path: str
    command: list[str]
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextmanager
def serving(server: Server, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*server.command, "--host", HOST, "--port", str(port)],
            cwd=REPO,
            env=server.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Server {server.name!r} did not come up:\n{tail}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"--database-url {url!r} is not a postgresql:// URL.")
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty database (`<prefix>_<random>`) on the server of
    `admin_url`; dropped on the way out, whatever happens. Every benchmark's throwaway."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = _with_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    with scratch_database(admin_url, "bench_ingest") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE baseline_events (id bigserial PRIMARY KEY, body jsonb NOT NULL)"
            )
        yield url


def _count(url: str, table: str) -> int | None:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    except psycopg.Error as error:
        print(f"  count of {table} failed: {error}", file=sys.stderr)
        return None
    return int(row[0]) if row else None


def _checkpoint(url: str) -> None:
    """Flush what the previous server wrote, so its checkpoint does not land in this run."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as error:
        print(f"  CHECKPOINT failed (ignored): {error}", file=sys.stderr)


# --- projection lag -----------------------------------------------------------------------

# The age of the oldest event each projection has not applied (0 when caught up): what
# `/projections`, `/readyz` and `conversations status` call its lag. Before the service's
# worker has created the checkpoint rows, nothing is applied: one row, named "(none)".
_LAG = """
    SELECT coalesce(c.name, '(none)'),
           coalesce(extract(epoch FROM clock_timestamp() - (
               SELECT recorded_at FROM events WHERE position > coalesce(c.position, 0)
                ORDER BY position LIMIT 1)), 0)::float8
      FROM (SELECT) AS one LEFT JOIN projection_checkpoints c ON true
"""
# Caught up: the checkpoint rows exist (the worker creates all of them in one
# transaction) and none is below the newest event.
_CAUGHT_UP = """
    SELECT EXISTS (SELECT FROM projection_checkpoints)
       AND NOT EXISTS (SELECT FROM projection_checkpoints
                        WHERE position < (SELECT coalesce(max(position), 0) FROM events))
"""


@dataclass
class LagSampler:
    """Samples each projection's lag from the database every `interval` seconds on a
    thread of its own (its own connection), while the load runs."""

    url: str
    interval: float = 0.1
    worst: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    failure: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _conn: psycopg.Connection[Any] = field(init=False)

    def __enter__(self) -> LagSampler:
        self._conn = psycopg.connect(self.url, autocommit=True)  # before the clock starts
        self._thread = threading.Thread(target=self._sample, name="lag-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._conn.close()

    def _sample(self) -> None:
        """From the start of the run to its end, both included."""
        try:
            while True:
                for name, lag in self._conn.execute(_LAG).fetchall():
                    self.worst[name] = max(self.worst.get(name, 0.0), float(lag))
                self.samples += 1
                if self._stop.is_set():
                    return
                self._stop.wait(self.interval)
        except psycopg.Error as error:
            self.failure = str(error)

    @property
    def max_lag(self) -> float | None:
        return max(self.worst.values()) if self.worst else None

    @property
    def by_projection(self) -> str:
        return ", ".join(f"{name} {lag:.2f}" for name, lag in sorted(self.worst.items()))


def catch_up_seconds(url: str, timeout: float = 120.0) -> float | None:
    """Seconds from now (the last webhook answered) until every projection reached the
    newest event; None when that did not happen within `timeout`."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.perf_counter() - started < timeout:
            row = conn.execute(_CAUGHT_UP).fetchone()
            if row is not None and row[0]:
                return time.perf_counter() - started
            time.sleep(0.01)
    return None


def _servers(
    url: str, public_pem: str, service_command: list[str], service_env: dict[str, str]
) -> dict[str, Server]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    baseline = [sys.executable, str(BASELINES)]
    service_env = {
        **env,
        "CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY": public_pem,
        "CONVERSATIONS_LOG_LEVEL": "warning",
        **service_env,
    }
    return {
        "bare": Server("bare", "/bare", baseline, env),
        "insert": Server("insert", "/insert", baseline, env),
        "service": Server(
            "service",
            "/webhooks/highlevel",
            service_command,
            service_env,
        ),
    }


# --- measurement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    server: str
    concurrency: int
    requests: int
    seconds: float
    acked: int
    errors: int
    p50_ms: float
    p99_ms: float
    generator_cpu: float
    server_cpu: float
    worker_cpu: float
    other_cpu: float
    database_us: float = 0.0
    """CPU of the database's backends per request (µs), through the projections' catch-up."""
    server_us: float = 0.0
    worker_us: float = 0.0
    """The same for the server and its worker process."""
    lag_max: float | None = None
    """The service's worst projection lag sampled during the run (seconds)."""
    catch_up: float | None = None
    """Seconds from the last answer until every projection had folded every event."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (NaN when empty)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(
    server: str,
    port: int,
    pid: int,
    requests: list[bytes],
    concurrency: int,
    lag_url: str | None = None,
    database_url: str | None = None,
) -> Result:
    """One run against the server process `pid`; the CPU of its child processes (the
    service's projection worker) is counted apart. With `lag_url`, the projections' lag
    is sampled during the run and their catch-up timed after it."""
    load = Load(requests)
    sampler = LagSampler(lag_url) if lag_url else None
    children = _children(pid)
    gc.collect()
    gc.disable()
    try:
        cpu_gen, cpu_server, cpu_all = time.process_time(), _process_cpu(pid), _machine_cpu()
        cpu_children = sum(map(_process_cpu, children))
        cpu_server_start, cpu_children_start = cpu_server, cpu_children
        database = _DatabaseCpu(database_url) if database_url else None
        if sampler is not None:
            with sampler:
                seconds = _run(_drive(port, load, concurrency))
        else:
            seconds = _run(_drive(port, load, concurrency))
        cpu_gen = time.process_time() - cpu_gen
        cpu_server = _process_cpu(pid) - cpu_server
        cpu_children = sum(map(_process_cpu, children)) - cpu_children
        cpu_all = _machine_cpu() - cpu_all
    finally:
        gc.enable()
    catch_up = catch_up_seconds(lag_url) if lag_url else None
    per_request = 1e6 / len(requests)
    database_us = database.spent() * per_request if database else 0.0
    server_us = (_process_cpu(pid) - cpu_server_start) * per_request
    worker_us = (sum(map(_process_cpu, children)) - cpu_children_start) * per_request
    if sampler is not None and sampler.failure:
        print(f"    lag sampling failed: {sampler.failure}", file=sys.stderr)
    for sample in load.error_samples:
        print(f"    error sample: {sample}", file=sys.stderr)
    ordered = sorted(load.latencies)
    acked = sum(1 for status in load.statuses if 200 <= status < 300)
    return Result(
        server=server,
        concurrency=concurrency,
        requests=len(requests),
        seconds=seconds,
        acked=acked,
        errors=len(requests) - acked,
        p50_ms=_percentile(ordered, 0.50) * 1000,
        p99_ms=_percentile(ordered, 0.99) * 1000,
        generator_cpu=cpu_gen / seconds,
        server_cpu=cpu_server / seconds,
        worker_cpu=cpu_children / seconds,
        other_cpu=max(0.0, cpu_all - cpu_gen - cpu_server - cpu_children) / seconds,
        lag_max=sampler.max_lag if sampler is not None else None,
        catch_up=catch_up,
        database_us=database_us,
        server_us=server_us,
        worker_us=worker_us,
    )


def _print_table(results: list[Result], repeat: int) -> None:
    insert = {r.concurrency: r.rate for r in results if r.server == "insert"}
    print()
    if repeat > 1:
        print(
            f"median run of {repeat} per row (by webhooks/s); errors summed, lag and "
            "catch-up the worst of all runs"
        )
    print(
        "| server | concurrency | requests | webhooks/s | p50 ms | p99 ms | errors "
        "| vs insert | max lag s | catch-up s | CPU load gen | CPU server | CPU worker "
        "| CPU rest |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        ratio = ""
        if r.server != "insert" and r.concurrency in insert:
            ratio = f"{r.rate / insert[r.concurrency]:.2f}x"
        print(
            f"| {r.server} | {r.concurrency} | {r.requests} | {r.rate:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.errors} | {ratio} | {_seconds(r.lag_max)} "
            f"| {_seconds(r.catch_up)} | {r.generator_cpu:.0%} | {r.server_cpu:.0%} "
            f"| {_share(r.worker_cpu)} | {r.other_cpu:.0%} |"
        )


def _worst(values: Iterable[float | None]) -> float | None:
    """The largest, None if any is None (the projections did not catch up) or none."""
    listed = list(values)
    if not listed or any(value is None for value in listed):
        return None
    return max(value for value in listed if value is not None)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _share(value: float) -> str:
    return f"{value:.0%}" if value else ""


def _print_targets(results: list[Result], concurrency: int) -> None:
    service = next(
        (r for r in results if r.server == "service" and r.concurrency == concurrency), None
    )
    insert = next(
        (r for r in results if r.server == "insert" and r.concurrency == concurrency), None
    )
    if service is None:
        return
    print()
    if insert is not None:
        met = "met" if service.rate >= insert.rate else "NOT met"
        print(
            f"target at concurrency {concurrency}: service >= INSERT baseline: {met} "
            f"({service.rate:,.0f} vs {insert.rate:,.0f} webhooks/s, "
            f"{service.rate / insert.rate:.2f}x)"
        )
    met = "met" if service.p99_ms < 50 else "NOT met"
    print(
        f"target at concurrency {concurrency}: service p99 < 50 ms: {met} ({service.p99_ms:.2f} ms)"
    )
    if service.lag_max is not None:
        met = "met" if service.lag_max < 1 else "NOT met"
        print(
            f"target at concurrency {concurrency}: projection lag < 1 s (issue 3): {met} "
            f"(worst sampled {service.lag_max:.2f} s; all caught up "
            f"{_seconds(service.catch_up) or 'NOT within 120'} s after the last answer)"
        )


def _lag_note(result: Result) -> str:
    if result.lag_max is None:
        return ""
    return f"  lag max {result.lag_max:.2f} s, caught up after {_seconds(result.catch_up)} s"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency {text!r} is not like 1,16,64") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--concurrency {text!r} is not like 1,16,64")
    return levels


def _parse_only(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SERVERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--only {text!r} names {', '.join(unknown) or 'nothing'}; choose from "
            f"{', '.join(SERVERS)}"
        )
    return [name for name in SERVERS if name in names]


def _parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--service-env {text!r} is not NAME=VALUE")
    return name, value


@dataclass
class Running:
    """A server started for the whole benchmark, and what it acknowledged so far."""

    server: Server
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    lag_url: str | None
    acked: int = 0


def _print_run(name: str, level: int, result: Result) -> None:
    print(
        f"  {name:<8} c={level:<3} {result.rate:>8,.0f}/s "
        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
        f"errors {result.errors}  CPU gen {result.generator_cpu:.0%} "
        f"server {result.server_cpu:.0%} worker "
        f"{result.worker_cpu:.0%} rest {result.other_cpu:.0%}"
        + _lag_note(result)
        + f"\n{'':13}CPU per webhook: server {result.server_us:.0f} µs"
        f", worker {result.worker_us:.0f} µs, database backends "
        f"{result.database_us:.0f} µs",
        flush=True,
    )


def _median(runs: list[Result]) -> Result:
    """The median run by throughput; errors summed, lag and catch-up the worst."""
    median = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
    return replace(
        median,
        errors=sum(r.errors for r in runs),
        lag_max=_worst(r.lag_max for r in runs),
        catch_up=_worst(r.catch_up for r in runs),
    )


def _check_count(url: str, name: str, acked: int) -> bool:
    """Whether the server's table holds exactly the rows it acknowledged (printed)."""
    table = {"insert": "baseline_events", "service": "events"}.get(name)
    if table is None:
        return True
    stored = _count(url, table)
    verdict = "ok" if stored == acked else "MISMATCH"
    print(
        f"  {name}: {table} holds {stored} rows, {acked} acknowledged "
        f"(including warm-up): {verdict}",
        flush=True,
    )
    return stored == acked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Ingest benchmark: conversations serve vs bare and INSERT baselines."
    )
    parser.add_argument("--requests", type=int, default=5000, help="per concurrency level")
    parser.add_argument("--concurrency", type=_parse_levels, default=[1, 16, 64])
    parser.add_argument("--warmup", type=int, default=200, help="uncounted, per server")
    parser.add_argument("--only", type=_parse_only, default=list(SERVERS))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help="a server where this may CREATE and DROP a database",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per level; the table shows the median"
    )
    parser.add_argument(
        "--service-command",
        default=f"{shlex.quote(sys.executable)} -m conversations serve",
        help="how to start the service; --host and --port are appended (another checkout:"
        " 'env -C DIR PYTHONPATH=DIR python -m conversations serve', since python -m puts"
        " the working directory first on sys.path)",
    )
    parser.add_argument(
        "--service-env",
        type=_parse_env,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the service, e.g. CONVERSATIONS_PROJECTION_WORKER=false",
    )
    parser.add_argument(
        "--no-lag",
        dest="lag",
        action="store_false",
        help="do not sample the service's projection lag (e.g. with its worker off)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="50 requests at concurrency 1 and 4; exit 1 on any failure",
    )
    args = parser.parse_args(argv)
    if min(args.requests, args.repeat, args.warmup + 1) < 1:
        parser.error("--requests and --repeat must be at least 1, --warmup at least 0")
    if args.smoke:
        args.requests, args.concurrency, args.warmup, args.repeat = 50, [1, 4], 10, 1
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    worker = dict(args.service_env).get("CONVERSATIONS_PROJECTION_WORKER", "true")
    lag = args.lag and worker.strip().lower() not in ("0", "false", "no", "off")
    key = Ed25519PrivateKey.generate()
    public_pem = (
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    )
    corpus = Corpus(args.seed)
    results: list[Result] = []
    failed = False
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.requests} requests per level, concurrency "
        f"{','.join(map(str, args.concurrency))}, warm-up {args.warmup}",
        flush=True,
    )
    try:
        with (
            throwaway_database(args.database_url) as url,
            tempfile.TemporaryDirectory() as tmp,
            ExitStack() as stack,
        ):
            servers = _servers(
                url, public_pem, shlex.split(args.service_command), dict(args.service_env)
            )
            print(f"  load average before start {os.getloadavg()[0]:.2f}", flush=True)
            running: dict[str, Running] = {}
            for name in args.only:
                server, port = servers[name], _free_port()
                log = Path(tmp) / f"{name}.log"
                process = stack.enter_context(serving(server, port, log))
                # Only the service has projections (and only when its worker runs).
                lag_url = url if name == "service" and lag else None
                running[name] = Running(server, port, process, log, lag_url)
            for name, run in running.items():
                if args.warmup:
                    warm = build_requests(corpus, key, run.port, run.server.path, args.warmup)
                    warmed = measure(name, run.port, run.process.pid, warm, 8)
                    if run.lag_url:  # every run starts with the projections caught up
                        catch_up_seconds(run.lag_url)
                    run.acked += warmed.acked
                    failed |= warmed.errors > 0
            runs: dict[tuple[str, int], list[Result]] = {}
            for level in args.concurrency:
                for round_ in range(args.repeat):
                    # Servers take turns, in alternate order each round: a machine that
                    # slows down or speeds up during the benchmark affects all of them.
                    order = list(running) if round_ % 2 == 0 else list(reversed(running))
                    for name in order:
                        run = running[name]
                        _checkpoint(url)
                        requests = build_requests(
                            corpus, key, run.port, run.server.path, args.requests
                        )
                        result = measure(
                            name, run.port, run.process.pid, requests, level, run.lag_url, url
                        )
                        runs.setdefault((name, level), []).append(result)
                        run.acked += result.acked
                        failed |= result.errors > 0
                        if run.lag_url and result.catch_up is None:
                            print("    projections did not catch up", file=sys.stderr)
                            failed = True
                        _print_run(name, level, result)
            for name in running:
                for level in args.concurrency:
                    results.append(_median(runs[(name, level)]))
            for name, run in running.items():
                failed |= not _check_count(url, name, run.acked)
            if "service" in running:
                log = running["service"].log
                if log.exists() and log.stat().st_size:
                    print(f"  service log tail:\n{log.read_text(errors='replace')[-1500:]}")
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and the database dropped", file=sys.stderr)
        return 130
    _print_table(results, args.repeat)
    if TARGET_CONCURRENCY in args.concurrency:
        _print_targets(results, TARGET_CONCURRENCY)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
