"""Every error the HTTP API answers is an RFC 9457 problem document, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("conversations.api")

PROBLEM_JSON = "application/problem+json"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def problem_response(
    status: int,
    kind: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    document = {
        "type": f"urn:conversations:problem:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        **highlevel_error(status, detail),
        **extra,
    }
    return ProblemResponse(document, status_code=status, headers=headers)


def highlevel_error(status: int, detail: str) -> dict[str, Any]:
    """The members of HighLevel's own error body (`BadRequestDTO`, `UnauthorizedDTO`:
    `{"statusCode", "message"}`), so a client written against HighLevel that reads
    `error.message` or `error.statusCode` finds them in our problem documents too."""
    return {"statusCode": status, "message": detail}


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed"}
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    if detail == _phrase(exc.status_code):  # Starlette's routing says no more than that
        detail = _routing_detail(request, exc.status_code, headers.get("Allow"))
    return problem_response(
        exc.status_code,
        kinds.get(exc.status_code, "http_error"),
        _phrase(exc.status_code),
        detail,
        headers=headers,
    )


def _routing_detail(request: Request, status: int, allow: str | None) -> str:
    """What a 404 or 405 of the router refused: its detail was only "Not Found" or
    "Method Not Allowed", which a client reading `detail` (or HighLevel's `message`)
    could not act on."""
    path = request.url.path
    shown = path if len(path) <= 200 else f"{path[:200]}…"
    if status == 405 and allow:
        return f"{request.method} is not allowed on {shown!r}; it allows {allow}."
    if status == 404:
        return f"There is no endpoint at {shown!r} (GET /openapi.json lists them)."
    return _phrase(status)


DATABASE_AWAY: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    # psycopg's own, from the async read pool (its PoolTimeout is an OperationalError).
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
"""A lost, refused or timed-out connection (or no pooled connection in time), as
opposed to an error in a query or in the data."""


class ReadOutage:
    """Reads that find no database: one warning when they start answering 503, one when
    a read works again, as the writer and the event streams report their outages; the
    503s between are logged at debug level (a warning per read was a line per request,
    thousands a minute under load, each three lines long)."""

    def __init__(self) -> None:
        self.failing = False

    def failed(self, request: str, why: str) -> None:
        if self.failing:
            log.debug("database unavailable on %s: %s", request, why)
            return
        self.failing = True
        log.warning("reads answering 503, database unavailable (on %s): %s", request, why)

    def answered(self) -> None:
        """A read was answered from the database."""
        if self.failing:
            self.failing = False
            log.warning("reads work again")


READS = ReadOutage()
"""This process's reads (one app a process)."""


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


async def database_away(request: Request, exc: Exception) -> Response:
    """A read (or a key lookup) that found no database: the client may retry, as a
    webhook is told to. Registered for `DATABASE_AWAY`, so the connection stays usable
    (an error left to the `Exception` handler is re-raised to the server, which then
    drops the connection)."""
    READS.failed(f"{request.method} {request.url.path}", first_line(exc))
    return unavailable_response(
        "The database did not answer; retry later.",
        request.app.state.conversations.settings.retry_after,
    )


def unavailable_response(detail: str, retry_after: int) -> Response:
    """503: the client may retry after `retry_after` seconds, as a webhook is told to."""
    return problem_response(
        503,
        "unavailable",
        "Database unavailable",
        detail,
        headers={"Retry-After": str(retry_after)},
    )


def schema_missing(exc: Exception) -> bool:
    """A query that found no table, column or function it needs: the database has no
    schema yet, or one older than this release (`serve --no-migrate`, a downgrade)."""
    cause = getattr(exc, "orig", exc)
    return isinstance(cause, _UNDEFINED)


_UNDEFINED = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
)


async def server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DATABASE_AWAY):  # raised where no other handler sees it
        return await database_away(request, exc)
    if schema_missing(exc):  # not a bug of this service: say what to do
        log.warning("database schema missing or behind on %s: %s", request.url.path, exc)
        return unavailable_response(
            "The database schema is missing or older than this release: run "
            "`conversations migrate`.",
            request.app.state.conversations.settings.retry_after,
        )
    # Anything else unexpected stays a 500 (a bug to see).
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500, "internal_error", "Internal error", "The service failed; the error is logged."
    )


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
