"""Every read needs `Authorization: Bearer <key>`; the key's scope limits what it sees."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request

from conversations.api.state import app_state
from conversations.keys import Scope


def require_scope(request: Request) -> Scope:
    """The caller's scope; 401 (problem+json, with WWW-Authenticate) otherwise.

    Call from sync endpoints: the key lookup may query the database.
    """
    scope = app_state(request).keys.scope(_token(request))
    if scope is None:
        raise HTTPException(401, "The API key is unknown or revoked.", _CHALLENGE)
    return scope


async def require_scope_async(request: Request) -> Scope:
    """`require_scope` for async endpoints (a key lookup uses the async pool)."""
    state = app_state(request)
    scope = await state.keys.scope_async(_token(request), state.read_pool)
    if scope is None:
        raise HTTPException(401, "The API key is unknown or revoked.", _CHALLENGE)
    return scope


def _token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "An API key is required: Authorization: Bearer <key>.", _CHALLENGE)
    return token.strip()


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="conversations"'}
