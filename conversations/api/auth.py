"""Every read needs `Authorization: Bearer <key>`; the key's scope limits what it sees.

The event feed also takes the key as `?access_token=<key>` (RFC 6750 2.3), because a
browser's EventSource cannot send headers. The access log writes the path only, never
the query string, so such a key is not logged here (a proxy in front may log it: prefer
the header wherever the client can send one).
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request

from conversations.api.state import app_state
from conversations.keys import Scope

ACCESS_TOKEN = "access_token"
"""The query parameter that may carry the key (RFC 6750 2.3), where allowed."""


def require_scope(request: Request, *, query_token: bool = False) -> Scope:
    """The caller's scope; 401 (problem+json, with WWW-Authenticate) otherwise.

    Call from sync endpoints: the key lookup may query the database. `query_token`:
    the key may come as `?access_token=` instead of the header.
    """
    scope = app_state(request).keys.scope(bearer_token(request, query_token=query_token))
    if scope is None:
        raise HTTPException(401, "The API key is unknown or revoked.", _CHALLENGE)
    return scope


async def require_scope_async(request: Request) -> Scope:
    """`require_scope` for async endpoints (a key lookup uses the async pool)."""
    state = app_state(request)
    scope = await state.keys.scope_async(bearer_token(request), state.read_pool)
    if scope is None:
        raise HTTPException(401, "The API key is unknown or revoked.", _CHALLENGE)
    return scope


def bearer_token(request: Request, *, query_token: bool = False) -> str:
    """The key the request presents: the Authorization header, or (where `query_token`)
    the `access_token` parameter; 400 when both are given (RFC 6750 2: one method only)."""
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:  # which one would count is anybody's guess: refuse, do not pick
        raise HTTPException(400, "Give the API key once: one Authorization header.")
    header = headers[0] if headers else None
    # An empty `access_token=` is absent, as an empty value is for every parameter.
    queried = [v for v in request.query_params.getlist(ACCESS_TOKEN) if v] if query_token else []
    if queried:
        if header is not None or len(queried) > 1:
            raise HTTPException(
                400, "Give the API key once: the Authorization header or access_token."
            )
        if queried[0].strip():
            return queried[0].strip()
    kind, _, token = (header or "").partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "An API key is required: Authorization: Bearer <key>.", _CHALLENGE)
    return token.strip()


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="conversations"'}
