"""`POST /webhooks/highlevel`: the only way events come in over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from conversations.api.body_deadlines import BodyDeadlines
from conversations.api.problems import PROBLEM_JSON, problem_response
from conversations.api.state import app_state

log = logging.getLogger("conversations.webhooks")


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    """The body did not arrive in time; `received` bytes of it did."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


def plain_headers(request: Request) -> dict[str, str]:
    """The request's headers as a dict. A name sent on several lines gets its values
    joined with ", " in the order sent, which is what RFC 9110 5.3 says they mean:
    `Content-Encoding: identity` then `Content-Encoding: gzip` is `identity, gzip`, and a
    quarantined body keeps every value. Built in one pass: the handful of lookups a
    webhook makes cost twice as much in Starlette's `Headers` (a scan of the list each,
    a KeyError for each absent one)."""
    headers: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        key = name.decode("latin-1")  # a token: ASCII, lowercased by the server
        text = header_text(value)
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous}, {text}"
    return headers


def header_text(value: bytes) -> str:
    """A header value as text: UTF-8, which is what senders put in headers today (a
    `User-Agent: café-bot`), and Latin-1 (RFC 9110 5.5's obs-text) for just the bytes
    that are not valid UTF-8. Never fails: every byte is Latin-1."""
    try:
        return value.decode()  # ASCII nearly always: as cheap as Latin-1
    except UnicodeDecodeError:
        pass
    parts: list[str] = []
    while True:
        try:
            parts.append(value.decode())
            return "".join(parts)
        except UnicodeDecodeError as error:
            parts.append(value[: error.start].decode())
            parts.append(value[error.start : error.end].decode("latin-1"))
            value = value[error.end :]


async def read_body(
    request: Request, headers: Mapping[str, str], limit: int, deadlines: BodyDeadlines
) -> bytes:
    """The body, refusing to read past `limit` bytes (declared or streamed) or past its
    deadline (BodyTimeout)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    reading = deadlines.begin()
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    except asyncio.CancelledError:
        if not deadlines.expired(reading):
            raise
        raise BodyTimeout(size) from None
    finally:
        deadlines.end(reading)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> Response:
    state = app_state(request)
    limit = state.settings.max_body_bytes
    headers = plain_headers(request)
    try:
        raw = await read_body(request, headers, limit, state.body_deadlines)
    except BodyTooLarge:
        return _too_large(request, f"The body is larger than {limit} bytes.")
    except BodyTimeout as timeout:
        return _body_timeout(request, timeout.received)
    except ClientDisconnect:
        state.metrics.webhooks.inc("client_disconnected")
        return Response(status_code=400)
    outcome = await state.ingestor.receive(raw, headers)
    return Response(
        _JSON.encode(outcome.document).encode(),
        status_code=outcome.status,
        headers=outcome.headers,
        media_type=PROBLEM_JSON if outcome.problem else JSON,
    )


def _body_timeout(request: Request, received: int) -> Response:
    """408 for a body still incomplete at its deadline: nothing is stored, and the
    connection is closed (the rest of the body, if it comes, is not a next request)."""
    state = app_state(request)
    seconds = state.body_deadlines.seconds
    log.warning(
        "webhook refused: the body did not arrive within %g s",
        seconds,
        extra={"bytes": received, "declared": request.headers.get("content-length")},
    )
    state.metrics.webhooks.inc("body_timeout")
    return problem_response(
        408,
        "body_timeout",
        "Request timeout",
        f"The body did not arrive within {seconds:g} s (CONVERSATIONS_BODY_TIMEOUT); "
        f"{received} bytes of it did. Nothing was stored.",
        headers={"Connection": "close"},
        outcome="body_timeout",
    )


def _too_large(request: Request, detail: str) -> Response:
    app_state(request).metrics.webhooks.inc("too_large")
    return problem_response(
        413,
        "too_large",
        "Payload too large",
        detail,
        headers={"Connection": "close"},
        outcome="too_large",
    )


JSON = "application/json"
# The bytes JSONResponse would render, from an encoder built once instead of per answer.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


PATH = "/webhooks/highlevel"
ROUTES = [
    Route(PATH, receive_webhook, methods=["POST"]),
    # With a trailing slash too: Starlette would answer it 307, which a webhook sender
    # may not follow (or follow with a GET). The same operation, so not in the schema.
    Route(f"{PATH}/", receive_webhook, methods=["POST"], include_in_schema=False),
]
ROUTE_LABELS = {f"{PATH}/": PATH}
"""The route a request is counted under in the latency metric, where it is not its own."""


class WebhookRoute:
    """`POST /webhooks/highlevel` (either spelling) handed straight to `receive_webhook`.

    What is outside this middleware (RequestLog's log line and latency metric, CORS, the
    500/503 of an unhandled error) applies as to any request. What it skips is
    ReadDeadline (which leaves webhooks alone), Starlette's ExceptionMiddleware, the router
    and the endpoint wrapper, for an endpoint none of whose exception handlers apply: it
    answers every error itself, and an unexpected one is answered by RequestLog, database
    errors included, as the handlers would. Any other method, path or a mounted root path
    takes the router as before (405 with `Allow: POST` for a GET, say).

    Those layers cost more than their calls: a webhook's coroutines are suspended while
    its body arrives and while its batch commits, and each resumption goes back down
    through every layer. With them: about 12 µs more of the HTTP process's CPU per webhook
    at concurrency 64 (167 against 155, a real server, alternated runs).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = {route.path: route for route in ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self.routes.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        # As the router sets them: RequestLog names the latency metric by the route.
        scope["route"] = route
        scope["endpoint"] = receive_webhook
        scope["path_params"] = {}
        response = await receive_webhook(Request(scope, receive, send))
        await response(scope, receive, send)
