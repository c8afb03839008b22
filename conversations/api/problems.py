"""Every error the HTTP API answers is an RFC 9457 problem document, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

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
        **extra,
    }
    return ProblemResponse(document, status_code=status, headers=headers)


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed"}
    return problem_response(
        exc.status_code,
        kinds.get(exc.status_code, "http_error"),
        _phrase(exc.status_code),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )


async def server_error(request: Request, exc: Exception) -> Response:
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
