"""`POST /webhooks/highlevel`: the only way events come in over HTTP."""

from __future__ import annotations

import json

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from conversations.api.problems import PROBLEM_JSON, problem_response
from conversations.api.state import app_state


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing to read past `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> Response:
    state = app_state(request)
    limit = state.settings.max_body_bytes
    try:
        raw = await read_body(request, limit)
    except BodyTooLarge:
        state.metrics.webhooks.inc("too_large")
        return problem_response(
            413,
            "too_large",
            "Payload too large",
            f"The body is larger than {limit} bytes.",
            headers={"Connection": "close"},
            outcome="too_large",
        )
    except ClientDisconnect:
        state.metrics.webhooks.inc("client_disconnected")
        return Response(status_code=400)
    outcome = await state.ingestor.receive(raw, request.headers)
    return Response(
        _JSON.encode(outcome.document).encode(),
        status_code=outcome.status,
        headers=outcome.headers,
        media_type=PROBLEM_JSON if outcome.problem else JSON,
    )


JSON = "application/json"
# The bytes JSONResponse would render, from an encoder built once instead of per answer.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
