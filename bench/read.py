"""Read API throughput and latency of `conversations serve` on a 1M-event store, against a
same-run bare Starlette baseline.

    python bench/read.py [--events 1000000] [--database-url URL] [--requests 20000]
    python bench/read.py --smoke    # CI: a few thousand events, 300 requests a scenario
    python bench/read.py --store postgresql://.../db    # measure a store built before

Steps (the database and the temp dir are dropped at the end, also on Ctrl-C):

1. Build the store: `bench/_corpus.py` generates N distinct events (every channel,
   status updates, redeliveries, unread updates, merges), `bench/replay.py` prepares them
   and COPYs them into a fresh database; `python -m conversations replay` builds the
   projections; VACUUM ANALYZE and CHECKPOINT. One key per location is created.
2. `conversations serve` (one process, uvloop, httptools, no access log; the projection
   worker on, idle). Untimed, over plain HTTP: the first pages of the busiest
   conversations (their median size is the "typical messages page"), and the cursors of
   pages 21 and beyond of the conversations with the most messages, following
   `nextCursor` page after page.
3. Timed, from this process (a separate process from the servers) with the raw HTTP/1.1
   keep-alive client of `bench/ingest.py`, at concurrency 16, each request with its own
   location's key:
   - `messages, first page`: `GET /conversations/{id}/messages` over the busiest
     conversations of every location;
   - `messages, deep pages`: the same with `cursor=` of pages 21+;
   - `conversation search`: `GET /conversations/search?locationId=L` over every location,
     plain and filtered (`status=unread`, `lastMessageType=TYPE_SMS`, `sort=asc`).
   Then the same three again against a `conversations serve` with
   `CONVERSATIONS_READ_CACHE_MB=0`, "(no page cache)": every read from the database,
   what a page costs the first time it is asked for or after its location changed.
   Those rows are shown for comparison; the targets are judged on the default service.
4. Baseline: a bare Starlette endpoint (`async`, `JSONResponse`) returning a typical
   messages page (the same JSON document, re-serialised each request), served exactly
   as the service is (uvicorn, uvloop, httptools, one process, no access log).

Targets: p99 under 25 ms for each scenario, and at least 50 % of the baseline's
requests/s. Every answer must be a 200 (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/read.py` puts bench/, not the repo, first
    sys.path.insert(0, str(REPO))

from bench._corpus import write_corpus  # noqa: E402
from bench.ingest import HOST, Result, Server, measure, serving  # noqa: E402
from bench.replay import BenchFailure, prepare_rows, throwaway_database, time_copy  # noqa: E402
from conversations.cli import HTTP_SERVER  # noqa: E402
from conversations.database import create_engine  # noqa: E402
from conversations.keys import create_key  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SMOKE_EVENTS = 4_000
SMOKE_REQUESTS = 300
CONCURRENCY = 16
PAGE = 20
DEEP_FROM = 20
"""Deep pages are the 21st and later."""
SMOKE_DEEP_FROM = 3
"""A smoke store has no conversation 21 pages deep: its deep pages are the 4th and later."""
DEEP_MAX = 80
"""Pages followed per conversation while collecting deep cursors."""
UNCACHED = "(no page cache)"
"""Rows of the service run with `CONVERSATIONS_READ_CACHE_MB=0`: shown for comparison,
not judged (the targets are for the service as it runs by default)."""
P99_TARGET_MS = 25.0
RATE_TARGET = 0.50
SEARCH_FILTERS: tuple[dict[str, str], ...] = (
    {},
    {"status": "unread"},
    {"lastMessageType": "TYPE_SMS"},
    {"sort": "asc"},
)


def _note(text: str) -> None:
    """Progress on stderr (with the load average: the machine may be shared)."""
    print(f"{text}  [load {os.getloadavg()[0]:.1f}]", file=sys.stderr, flush=True)


# --- the store ----------------------------------------------------------------------------


def build_store(url: str, events: int, seed: int, tmp: Path) -> None:
    """Generate, COPY and replay `events` events into the (migrated) database `url`."""
    corpus, rows = tmp / "webhooks.jsonl", tmp / "events.copy"
    started = time.perf_counter()
    stats = write_corpus(corpus, events, seed)
    prepared = prepare_rows(corpus, rows)
    corpus.unlink()
    if prepared.rejected or prepared.events != stats.events:
        raise BenchFailure(f"prepared {prepared.events} of {stats.events}: {prepared.rejected}")
    _note(f"  generated and prepared {prepared.events:,} events in {_since(started)}")
    started = time.perf_counter()
    time_copy(url, rows, prepared.events)
    rows.unlink()
    _note(f"  COPY in {_since(started)}")
    started = time.perf_counter()
    replay = subprocess.run(
        [sys.executable, "-m", "conversations", "replay"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url, "CONVERSATIONS_LOG_LEVEL": "warning"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if replay.returncode != 0:
        raise BenchFailure(f"replay exited {replay.returncode}:\n{replay.stderr[-3000:]}")
    _note(f"  replay in {_since(started)}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    print(
        f"store: {prepared.events:,} events, {stats.messages:,} messages in "
        f"{stats.conversations:,} conversations of {stats.locations} locations",
        flush=True,
    )


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


@dataclass(frozen=True)
class Conversation:
    location_id: str
    conversation_id: str
    messages: int


def busiest(url: str, limit: int) -> list[Conversation]:
    """The conversations with the most messages, the busiest of each location first."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """
            SELECT location_id, conversation_id, message_count FROM (
                SELECT location_id, conversation_id, message_count,
                       row_number() OVER (PARTITION BY location_id
                                          ORDER BY message_count DESC, conversation_id) AS rank
                  FROM location_conversations) ranked
             ORDER BY rank, message_count DESC, location_id
             LIMIT %s
            """,
            (limit,),
        ).fetchall()
    return [Conversation(*row) for row in rows]


def location_keys(url: str) -> dict[str, str]:
    """One key per location (what an integrator of one location holds)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            locations = [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT DISTINCT location_id FROM location_conversations ORDER BY 1"
                )
            ]
            return {location: create_key(conn, [location]) for location in locations}
    finally:
        engine.dispose()


# --- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    location_id: str
    path: str
    """With its query string."""


def messages_path(conversation_id: str, cursor: str | None = None) -> str:
    query = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
    return f"/conversations/{conversation_id}/messages?{urlencode(query)}"


def raw_requests(
    targets: Sequence[Target], keys: dict[str, str], port: int, count: int
) -> list[bytes]:
    """`count` GETs cycling over `targets`, each with its location's key, as bytes."""
    return [
        (
            f"GET {target.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Authorization: Bearer {keys[target.location_id]}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        for target in islice(cycle(targets), count)
    ]


def _get(client: httpx.Client, keys: dict[str, str], target: Target) -> httpx.Response:
    headers = {"Authorization": f"Bearer {keys[target.location_id]}"}
    response = client.get(target.path, headers=headers)
    if response.status_code != 200:
        raise BenchFailure(f"GET {target.path}: {response.status_code} {response.text[:300]}")
    return response


def typical_page(
    client: httpx.Client, keys: dict[str, str], first_pages: Sequence[Target]
) -> tuple[Any, list[int]]:
    """The median-sized first page (as JSON) of up to 200 conversations, and the sizes."""
    pages = sorted(
        ((len(r.content), r.json()) for r in (_get(client, keys, t) for t in first_pages[:200])),
        key=lambda page: page[0],
    )
    return pages[len(pages) // 2][1], [size for size, _ in pages]


def deep_cursors(
    client: httpx.Client,
    keys: dict[str, str],
    conversations: Sequence[Conversation],
    want: int,
    after: int,
) -> tuple[list[Target], int]:
    """Requests for the pages past page `after` of the conversations with the most
    messages, found by following `nextCursor` from the first page (until `want` are
    collected), and the deepest page reached."""
    found: list[Target] = []
    deepest = 0
    for conversation in sorted(conversations, key=lambda c: -c.messages):
        if len(found) >= want:
            break
        cursor: str | None = None
        for number in range(1, DEEP_MAX + 1):
            target = Target(
                conversation.location_id, messages_path(conversation.conversation_id, cursor)
            )
            if number > after:
                found.append(target)
            deepest = max(deepest, number)
            cursor = _get(client, keys, target).json()["messages"]["nextCursor"]
            if cursor is None:
                break
    return found, deepest


def search_targets(locations: Sequence[str]) -> list[Target]:
    return [
        Target(location, "/conversations/search?" + urlencode({"locationId": location, **extra}))
        for extra in SEARCH_FILTERS
        for location in locations
    ]


# --- the baseline server --------------------------------------------------------------------


def serve_baseline(document_path: Path, host: str, port: int) -> int:
    """A bare Starlette app: `GET /page` answers the document (re-serialised each time)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    document = json.loads(document_path.read_text())

    async def page(request: Request) -> JSONResponse:
        return JSONResponse(document)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/page", page, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        **HTTP_SERVER,
    )
    return 0


# --- measurement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    targets: Sequence[Target]


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def run_scenarios(
    server: Server,
    scenarios: Sequence[Scenario],
    keys: dict[str, str],
    requests: int,
    warmup: int,
    log: Path,
) -> list[Result]:
    port = _port()
    results = []
    with serving(server, port, log) as process:
        for scenario in scenarios:
            if warmup:  # uncounted: connections, caches, prepared statements
                warm = raw_requests(scenario.targets, keys, port, warmup)
                measure(scenario.name, port, process.pid, warm, CONCURRENCY)
            result = measure(
                scenario.name,
                port,
                process.pid,
                raw_requests(scenario.targets, keys, port, requests),
                CONCURRENCY,
            )
            _note(
                f"  {scenario.name:<24} {result.rate:>8,.0f}/s  p50 {result.p50_ms:6.2f} ms  "
                f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}  "
                f"CPU gen {result.generator_cpu:.0%} server {result.server_cpu:.0%} "
                f"rest {result.other_cpu:.0%}"
            )
            results.append(result)
    return results


def print_report(results: Sequence[Result], baseline: Result, page_bytes: int) -> bool:
    """The table and the targets; whether every target was met."""
    print()
    print(
        f"concurrency {CONCURRENCY}; baseline document {page_bytes:,} bytes (a typical "
        "messages page)"
    )
    print(
        "| scenario | requests | requests/s | p50 ms | p99 ms | errors | vs baseline "
        "| p99 < 25 ms | >= 50 % of baseline | CPU load gen | CPU server | CPU rest |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|---|---|--:|--:|--:|")
    met = True
    for result in [*results, baseline]:
        ratio = result.rate / baseline.rate
        fast = result.p99_ms < P99_TARGET_MS
        enough = ratio >= RATE_TARGET
        is_baseline = result is baseline
        judged = not is_baseline and UNCACHED not in result.server
        if judged:
            met &= fast and enough
        print(
            f"| {result.server} | {result.requests:,} | {result.rate:,.0f} | "
            f"{result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.errors} | "
            f"{'' if is_baseline else f'{ratio:.2f}x'} | "
            f"{('yes' if fast else 'NO') if judged else ''} | "
            f"{('yes' if enough else 'NO') if judged else ''} | "
            f"{result.generator_cpu:.0%} | {result.server_cpu:.0%} | {result.other_cpu:.0%} |"
        )
    print()
    print(f"targets: {'all met' if met else 'NOT all met'}")
    return met


# --- main -----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> bool:
    if args.store:
        url = args.store
        print(f"store: {url} as it is (built and replayed before)", flush=True)
    else:
        url = stack.enter_context(throwaway_database(args.database_url, "bench_read"))
        build_store(url, args.events, args.seed, tmp)
    keys = location_keys(url)
    conversations = busiest(url, 400)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CONVERSATIONS_LOG_LEVEL": "warning",
        "PYTHONPATH": str(REPO),
    }
    service = Server("service", "", [sys.executable, "-m", "conversations", "serve"], env)

    first_pages = [Target(c.location_id, messages_path(c.conversation_id)) for c in conversations]
    port = _port()
    with (
        serving(service, port, tmp / "collect.log"),
        httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client,
    ):
        document, sizes = typical_page(client, keys, first_pages)
        deep_from = SMOKE_DEEP_FROM if args.smoke else DEEP_FROM
        deep_pages, deepest = deep_cursors(client, keys, conversations, 400, deep_from)
    if not deep_pages:
        raise BenchFailure(f"no conversation has more than {deep_from} pages")
    page_bytes = sizes[len(sizes) // 2]
    _note(
        f"  {len(first_pages)} first pages, {len(deep_pages)} deep pages (pages "
        f"{deep_from + 1}..{deepest}); "
        f"first page sizes {sizes[0]:,}..{sizes[-1]:,} bytes, median {page_bytes:,}"
    )

    scenarios = [
        Scenario("messages, first page", first_pages),
        Scenario(f"messages, pages {deep_from + 1}+", deep_pages),
        Scenario("conversation search", search_targets(sorted(keys))),
    ]
    warmup = min(args.requests, 1000)
    results = run_scenarios(service, scenarios, keys, args.requests, warmup, tmp / "serve.log")
    # The same without the page cache: what every read costs when it needs the database
    # (a page asked for the first time, or after a change to its location).
    uncached = Server("service", "", service.command, {**env, "CONVERSATIONS_READ_CACHE_MB": "0"})
    results += run_scenarios(
        uncached,
        [Scenario(f"{s.name} (no page cache)", s.targets) for s in scenarios],
        keys,
        args.requests,
        warmup,
        tmp / "serve-uncached.log",
    )

    page = tmp / "page.json"
    page.write_text(json.dumps(document))
    bare = Server(
        "bare Starlette (baseline)",
        "/page",
        [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(page)],
        {**os.environ, "PYTHONPATH": str(REPO)},
    )
    any_location = next(iter(keys))
    baseline = run_scenarios(
        bare,
        [Scenario(bare.name, [Target(any_location, "/page")])],
        keys,
        args.requests,
        warmup,
        tmp / "bare.log",
    )[0]

    met = print_report(results, baseline, page_bytes)
    errors = sum(result.errors for result in [*results, baseline])
    if errors:
        raise BenchFailure(f"{errors} requests were not answered 200")
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Read API benchmark: conversations serve vs a bare Starlette endpoint."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="distinct events")
    parser.add_argument("--requests", type=int, default=20_000, help="per scenario")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help="a server where this may CREATE and DROP a database",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--store",
        metavar="URL",
        help="measure an existing, replayed store instead of building one (kept; keys are "
        "added to it)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_EVENTS:,} events, {SMOKE_REQUESTS} requests a scenario; exit 1 on errors",
    )
    parser.add_argument("--serve-baseline", type=Path, metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--host", default=HOST, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline is not None:
        return serve_baseline(args.serve_baseline, args.host, args.port)
    if args.smoke:
        args.events, args.requests = SMOKE_EVENTS, SMOKE_REQUESTS
    if args.events < 100 or args.requests < 1:
        parser.error("--events must be at least 100 and --requests at least 1")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{args.events:,} events, {args.requests:,} requests a scenario, concurrency "
        f"{CONCURRENCY}",
        flush=True,
    )
    try:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_read_")))
            met = run(args, tmp, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and the database dropped", file=sys.stderr)
        return 130
    except BenchFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    if not met and not args.smoke:
        print("(targets are reported, not enforced: see docs/performance.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
