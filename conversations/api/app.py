"""The Starlette application: routes, error handlers and the lifespan that owns the
database engine and the group-commit writer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conversations import pool
from conversations.api import contacts, conversations, feed, health, openapi, webhooks
from conversations.api.body_deadlines import BodyDeadlines
from conversations.api.cursors import Cursors
from conversations.api.deadlines import ReadDeadline
from conversations.api.page_cache import PageCache, ProjectionChanges
from conversations.api.problems import (
    DATABASE_AWAY,
    READS,
    database_away,
    http_exception,
    problem_response,
    server_error,
)
from conversations.api.state import AppState
from conversations.database import Severable, create_async_engine, create_engine
from conversations.gc_tuning import freeze_startup_heap
from conversations.ingest import Ingestor
from conversations.keys import KeyCache
from conversations.logs import access_log
from conversations.metrics import Metrics
from conversations.settings import Settings
from conversations.signatures import SignatureVerifier
from conversations.supervisor import Supervisor
from conversations.writer import GroupCommitWriter


def create_app(settings: Settings, database_url: str) -> Starlette:
    verifier = SignatureVerifier(settings.ed25519_public_key, settings.rsa_public_key)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_async_engine(
            database_url, pool_size=settings.db_pool_size, timeout=settings.db_timeout
        )
        writer = GroupCommitWriter(
            functools.partial(pool.append_connection, database_url, settings.db_timeout),
            batch_max=settings.batch_max,
            timeout=settings.db_timeout,
        )
        await writer.start()
        body_deadlines = BodyDeadlines(settings.body_timeout)
        await body_deadlines.start()
        read_engine = create_engine(
            database_url,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_timeout,
            connect_args={"connect_timeout": int(max(2, settings.db_timeout))},
        )
        read_connections = Severable(read_engine)
        read_pool = pool.read_pool(database_url, settings.db_pool_size, settings.db_timeout)
        await read_pool.open(wait=False)  # the service starts even if the database is late
        pages, changes = None, None
        if settings.read_cache_mb:
            pages = PageCache(settings.read_cache_mb * 1024 * 1024)
            changes = ProjectionChanges(database_url, settings.db_timeout)
            await changes.start()
        worker = None
        if settings.projection_worker:
            worker = projection_worker(database_url)
            await worker.start()
        app.state.conversations = AppState(
            settings=settings,
            engine=engine,
            writer=writer,
            ingestor=Ingestor(
                engine=engine,
                writer=writer,
                verifier=verifier,
                enforce_signatures=settings.webhook_verify == "enforce",
                retry_after=settings.retry_after,
                metrics=metrics,
                max_body_bytes=settings.max_body_bytes,
            ),
            metrics=metrics,
            read_engine=read_engine,
            read_pool=read_pool,
            keys=KeyCache(read_engine),
            cursors=Cursors(read_engine),
            body_deadlines=body_deadlines,
            pages=pages,
            changes=changes,
        )
        freeze_startup_heap()  # see gc_tuning: the p99 at concurrency 64
        try:
            yield
        finally:
            await body_deadlines.stop()
            await writer.stop()
            await engine.dispose()
            if worker is not None:
                await worker.stop()
            read_engine.dispose()
            # Reads still running now are past their deadline (answered 503) and wait on
            # a database that hangs: their threads would keep the process from exiting.
            read_connections.sever()
            await read_pool.close()
            if changes is not None:
                await changes.stop()

    app = Starlette(
        routes=[
            *webhooks.ROUTES,
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", health.metrics, methods=["GET"]),
            Route("/projections", health.projections, methods=["GET"]),
            *conversations.ROUTES,
            *contacts.ROUTES,
            *feed.ROUTES,
            *openapi.ROUTES,
        ],
        exception_handlers={
            HTTPException: http_exception,
            **dict.fromkeys(DATABASE_AWAY, database_away),
            Exception: server_error,
        },
        middleware=[
            Middleware(RequestLog, metrics=metrics, retry_after=settings.retry_after),
            *cors(settings),
            # Before ReadDeadline, which leaves webhooks alone anyway: one layer fewer for
            # every resumption of a webhook's coroutines (see WebhookRoute).
            Middleware(webhooks.WebhookRoute),
            Middleware(ReadDeadline, seconds=settings.db_timeout, retry_after=settings.retry_after),
        ],
        lifespan=lifespan,
    )
    # A path with a stray trailing slash is a 404 problem like any unknown path, not a
    # bare 307 answered before authentication (the webhook has both spellings as routes).
    app.router.redirect_slashes = False
    return app


CORS_HEADERS = (
    "Authorization",
    "Accept",
    "Cache-Control",
    "Last-Event-ID",
    # HighLevel's SDKs send these on every call (the JS one `X-SDK-Version`, the Python
    # one `GHL-SDK-Version`): a page written against HighLevel would otherwise be refused.
    "Version",
    "X-SDK-Version",
    "GHL-SDK-Version",
)
"""Request headers a preflight allows, beyond the CORS-safelisted ones (`Content-Type`,
`Accept-Language`, ...), which Starlette allows anyway."""


def cors(settings: Settings) -> list[Middleware]:
    """CORS for browser pages on `CONVERSATIONS_CORS_ORIGINS` (none when unset).

    Keys are bearer tokens (a header, or `access_token` for EventSource), never cookies,
    so credentials are not allowed and `*` exposes nothing a page could not read with a
    key it holds anyway. Preflights are answered for reads with the headers the API,
    EventSource and HighLevel's SDKs use; inside RequestLog, so preflights are logged too.
    """
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            ProblemCORS,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD"],
            allow_headers=list(CORS_HEADERS),
            expose_headers=["Retry-After", "WWW-Authenticate"],
            allow_credentials=False,
            max_age=600,
        )
    ]


class ProblemCORS(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as every other error is: a
    problem document saying what was refused (Starlette's is a bare `text/plain` line)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        return problem_response(
            400,
            "cors_refused",
            "CORS preflight refused",
            self._refusal(request_headers),
            headers=kept,
        )

    def _refusal(self, request_headers: Headers) -> str:
        """Which of the origin, method and headers asked for are not allowed."""
        reasons = []
        origin = request_headers["origin"]
        if not self.is_allowed_origin(origin):
            reasons.append(f"origin {origin!r} is not one of CONVERSATIONS_CORS_ORIGINS")
        method = request_headers["access-control-request-method"]
        if method not in self.allow_methods:
            reasons.append(f"method {method!r} is not allowed (only GET and HEAD)")
        requested = request_headers.get("access-control-request-headers") or ""
        names = [name.strip().lower() for name in requested.split(",")]
        refused = [name for name in names if name not in self.allow_headers]
        if refused:
            allowed = ", ".join(self.allow_headers)
            reasons.append(f"headers {', '.join(map(repr, refused))} are not allowed ({allowed})")
        if not reasons:  # what else Starlette refuses (a private-network request)
            reasons.append("the request is not allowed from a browser on another origin")
        return "; ".join(reasons) + "."


def projection_worker(database_url: str) -> Supervisor:
    """`conversations work` as a supervised child process, on this process's database
    (given by URL, so an embedded PostgreSQL is not opened a second time)."""
    command = [sys.executable, "-m", "conversations", "work", "--parent-pid", str(os.getpid())]
    return Supervisor(
        "projection worker", command, env={**os.environ, "DATABASE_URL": database_url}
    )


class RequestLog:
    """One structured log line and one latency observation per HTTP request.

    An unhandled error is answered here (503 when the database is away, else 500) so the
    log line carries the status the client got, and the error does not travel on to the
    server, which would print a second, unstructured traceback.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, retry_after: int) -> None:
        self.app = app
        self.metrics = metrics
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        responded = False

        async def send_status(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = message["status"]
                responded = True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs 10 s into a graceful shutdown (a body still
            # arriving, a database that hangs). Left to it, the client got a text/plain 500
            # and the log an error with a traceback; it gets the 503 a retry needs instead.
            if responded:
                raise
            response = problem_response(
                503,
                "shutting_down",
                "Shutting down",
                "The service stopped before this request was done; retry later (a webhook "
                "that was stored after all is then answered as a duplicate).",
                headers={"Retry-After": str(self.retry_after)},
            )
            await response(scope, receive, send_status)
        except Exception as error:
            if responded:  # too late for an error document; the server drops the connection
                raise
            response = await server_error(Request(scope), error)
            await response(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            name = webhooks.ROUTE_LABELS.get(name, name)
            self.metrics.request_seconds.observe(name, elapsed)
            if (200 <= status < 300 or status == 404) and name not in NOT_READS:
                READS.answered()  # found, or looked up and not found: the database answered
            access_log(scope["method"], scope["path"], status, elapsed)


NOT_READS = frozenset(
    {"/healthz", "/metrics", "/openapi.json", "/events/stream", "unmatched"}
    | set(webhooks.ROUTE_LABELS.values())
)
"""Routes whose 2xx says nothing of the read pools: no database (`/healthz`), always 200
(`/metrics`), a stream started before it reads, or the writer's (it reports its own)."""
