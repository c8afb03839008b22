"""HighLevel-compatible conversation and message reads: the same paths,
parameters and response shapes as HighLevel's Conversations API (shapes: `dialect`).

- `GET /conversations/search` -> `{"conversations", "total", "nextCursor"}`
- `GET /conversations/{conversationId}` -> GetConversationByIdResponse
- `GET /conversations/{conversationId}/messages` ->
  `{"messages": {"lastMessageId", "nextPage", "nextCursor", "messages"}}`
- `GET /conversations/messages/{id}` -> GetMessageResponseDto
- `GET /conversations/messages/email/{id}` -> GetEmailMessageResponseDto
- `GET /conversations/messages/export` -> `{"messages", "nextCursor", "total"}`

Pagination. Lists are keyset pages over a total order: conversations by (last message
time, id), messages by (`dateAdded`, message key). HighLevel's own cursors work as
HighLevel defines them: `lastMessageId` continues after that message (stable: it is the
message's place in the order, not an offset); `startAfterDate` continues after that last
message time in epoch ms (conversations sharing that millisecond are skipped, as at
HighLevel). Our opaque `cursor` (returned as `nextCursor`) continues after the exact
position, is bound to the endpoint, its filters and the key, and is the stable choice.

Tenancy. A key reads only its locations: a conversation or message of another location
answers the same 404 as an id that does not exist, and a `locationId` outside the key
reads as a location without data (empty list, total 0).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from conversations import dialect, reads
from conversations.api.auth import require_scope, require_scope_async
from conversations.api.cursors import MAX_CURSOR
from conversations.api.page_cache import kept
from conversations.api.params import Params, bad
from conversations.api.state import app_state
from conversations.keys import Scope
from conversations.messages import channel_of
from conversations.payloads import MAX_ID_BYTES
from conversations.pool import run
from conversations.projections import location_conversations as catalogue
from conversations.projections import timeline
from conversations.projections.location_conversations import ConversationSummary
from conversations.projections.timeline import TimelineMessage

Position = tuple[datetime | None, str]

# HighLevel documents these search parameters; honouring them needs data the webhooks
# never carry (assignment, followers, full text, scoring), so they are refused by name.
_UNSUPPORTED_SEARCH = (
    "assignedTo",
    "followers",
    "mentions",
    "query",
    "id",
    "lastMessageAction",
    "sortScoreProfile",
    "scoreProfile",
    "scoreProfileMin",
    "scoreProfileMax",
)
_MAX_ID = MAX_ID_BYTES  # every stored id fits (ingest refuses longer ones)
_STATUSES: dict[str, catalogue.Status] = {status: status for status in catalogue.STATUSES}


# --- shared helpers -------------------------------------------------------------------------


def _path_id(request: Request, name: str, kind: str) -> str:
    value: str = request.path_params[name]
    if not value or len(value) > _MAX_ID or "\x00" in value:
        raise _not_found(kind, value)
    return value


def _not_found(kind: str, value: str) -> HTTPException:
    # One detail for "does not exist" and "another location's": nothing tells them apart.
    return HTTPException(404, f"no {kind} {value[:_MAX_ID]!r}")


def _within(scope: Scope, location_id: str | None) -> frozenset[str] | None:
    """The locations an id lookup searches (None: every location)."""
    if location_id is not None:
        return frozenset({location_id}) if scope.allows(location_id) else frozenset()
    return None if scope.all_locations else scope.locations


def _list_location(params: Params, scope: Scope) -> tuple[str, bool]:
    """The location a list reads and whether the key may read it; `locationId` may be
    left out when the key has exactly one location."""
    given = params.text("locationId")
    if given is None:
        if not scope.all_locations and len(scope.locations) == 1:
            return next(iter(scope.locations)), True
        raise bad("locationId", "required (this key reads more than one location)")
    return given, scope.allows(given)


# Each name a type filter accepts -> the channel it selects: the channel a message of that
# type is folded into, so `TYPE_CAMPAIGN_SMS` selects SMS and `TYPE_ACTIVITY_*` "Other".
_TYPE_FILTERS: dict[str, str] = {
    name: channel_of(None, name, None) for name in dialect.FILTER_TYPE_NAMES
}


# `lastMessageType` -> the name it matches exactly (HighLevel's messages filter spells
# internal comments in the plural; a message shows the singular) and that name's channel.
_LAST_TYPE_FILTERS: dict[str, tuple[str, str]] = {
    name: (shown, _TYPE_FILTERS[shown])
    for name in dialect.FILTER_TYPE_NAMES
    for shown in [{"TYPE_INTERNAL_COMMENTS": "TYPE_INTERNAL_COMMENT"}.get(name, name)]
}


def _type_channels(params: Params, name: str) -> list[str] | None:
    names = params.choices(name, list(_TYPE_FILTERS))
    return None if names is None else sorted({_TYPE_FILTERS[n] for n in names})


def _both(first: list[str] | None, second: list[str] | None) -> list[str] | None:
    if first is None or second is None:
        return first if second is None else second
    return sorted(set(first) & set(second))


def _date_range(params: Params) -> tuple[datetime | None, datetime | None]:
    since, until = params.timestamp("startDate"), params.timestamp("endDate")
    if since is not None and until is not None and until < since:
        raise bad("endDate", "is before startDate")
    return since, until


def _encode(request: Request, position: Position, context: str) -> str:
    date, key = position
    return app_state(request).cursors.encode([date.isoformat() if date else None, key], context)


def _decode(request: Request, token: str, context: str) -> Position:
    body = app_state(request).cursors.decode(token, context, "cursor")
    try:
        date, key = body
        if not isinstance(key, str) or not (date is None or isinstance(date, str)):
            raise ValueError
        return (datetime.fromisoformat(date) if date else None), key
    except (TypeError, ValueError):
        raise bad("cursor", "not a cursor this service gave for this query") from None


def _context(*parts: object) -> str:
    return "|".join("" if part is None else str(part) for part in parts)


def _one_cursor(params: Params, native: str) -> tuple[str | None, str | None]:
    token, other = params.text("cursor", max_length=MAX_CURSOR), params.text(native)
    if token is not None and other is not None:
        raise bad("cursor", f"give either cursor or {native}, not both")
    return token, other


# --- GET /conversations/search --------------------------------------------------------------


async def search_conversations(request: Request) -> Response:
    state = app_state(request)
    scope = await require_scope_async(request)
    for name in _UNSUPPORTED_SEARCH:
        # Empty is absent, as for every parameter (an SDK sends `query=` for an empty box).
        if any(value.strip() for value in request.query_params.getlist(name)):
            raise bad(name, "HighLevel's filter is not supported by this service")
    params = Params(
        request,
        allowed=[
            "locationId",
            "contactId",
            "limit",
            "startAfterDate",
            "startAfterDate[]",  # HighLevel's JavaScript SDK (axios) sends the array so
            "cursor",
            "sort",
            "sortBy",
            "lastMessageType",
            "lastMessageDirection",
            "status",
            "startDate",
            "endDate",
            *_UNSUPPORTED_SEARCH,  # only empty ones get here
        ],
    )
    location, visible = _list_location(params, scope)
    contact = params.text("contactId")
    limit = params.integer("limit", 20, 1, 100)
    descending = params.choice("sort", ["asc", "desc"], "desc") == "desc"
    params.choice("sortBy", ["last_message_date"])
    chosen = params.choice("lastMessageType", list(_LAST_TYPE_FILTERS))
    last_type = _LAST_TYPE_FILTERS[chosen] if chosen else None
    direction = params.choice("lastMessageDirection", ["inbound", "outbound"])
    status = _STATUSES[params.choice("status", list(_STATUSES), "all") or "all"]
    since, until = _date_range(params)
    start_after = params.sort_value("startAfterDate")
    token = params.text("cursor", max_length=MAX_CURSOR)
    if token is not None and start_after is not None:
        raise bad("cursor", "give either cursor or startAfterDate, not both")
    context = _context(
        "search", scope.key_id, location, contact, last_type[0] if last_type else None,
        direction, status, since, until, descending,
    )  # fmt: skip
    await state.cursors.load(state.read_pool)
    after: Position | None = _decode(request, token, context) if token else None
    if start_after is not None:
        # After (t, ""): descending reads what sorts before t, ascending what sorts at or
        # after t (one ms past the given time): that millisecond is skipped, as at HighLevel.
        try:
            bound = start_after if descending else start_after + timedelta(milliseconds=1)
        except OverflowError:  # within 1 ms of the end of year 9999: nothing sorts after it
            bound = start_after
        after = (bound, "")
    if not visible:
        return JSONResponse({"conversations": [], "total": 0, "nextCursor": None})
    page = await run(
        state.read_pool,
        lambda conn: reads.search_page(
            conn,
            location,
            contact_id=contact,
            last_message_type=last_type,
            last_message_direction=direction,
            status=status,
            since=since,
            until=until,
            descending=descending,
            limit=limit,
            after=after,
        ),
    )
    following = (
        _encode(request, page.last_position, context) if page.more and page.last_position else None
    )
    return _json_body(
        '{"conversations":',
        page.conversations_json,
        f',"total":{page.total},"nextCursor":{_json_string(following)}}}',
    )


def _json_string(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def _json_body(*parts: str) -> Response:
    """A JSON document assembled from JSON texts (the database's and ours), sent as is."""
    return Response("".join(parts).encode(), media_type="application/json")


# --- GET /conversations/{conversationId} ----------------------------------------------------


def _find_conversation(
    conn: Connection, scope: Scope, conversation_id: str, location_id: str | None
) -> ConversationSummary:
    within = _within(scope, location_id)
    if within is None or within:
        for location in catalogue.conversation_locations(conn, conversation_id, within):
            summary = catalogue.get(conn, location, conversation_id)
            if summary is not None:
                return summary
    raise _not_found("conversation", conversation_id)


def get_conversation(request: Request) -> Response:
    scope = require_scope(request)
    conversation_id = _path_id(request, "conversationId", "conversation")
    params = Params(request, allowed=["locationId"])
    location = params.text("locationId")
    with app_state(request).read_engine.connect() as conn:
        summary = _find_conversation(conn, scope, conversation_id, location)
    return JSONResponse(dialect.conversation_by_id_json(summary))


# --- GET /conversations/{conversationId}/messages -------------------------------------------


async def conversation_messages(request: Request) -> Response:
    state = app_state(request)
    scope = await require_scope_async(request)
    conversation_id = _path_id(request, "conversationId", "conversation")
    params = Params(
        request,
        allowed=[
            "locationId",
            "lastMessageId",
            "cursor",
            "limit",
            "type",
            "channel",
            "startDate",
            "endDate",
            "sort",
        ],
    )
    location_param = params.text("locationId")
    limit = params.integer("limit", 20, 1, 100)
    channels = _both(_type_channels(params, "type"), params.channels("channel"))
    since, until = _date_range(params)
    descending = params.choice("sort", ["asc", "desc"], "desc") == "desc"
    token, last_id = _one_cursor(params, "lastMessageId")
    context = _context(
        "messages", scope.key_id, conversation_id, location_param, channels, since, until,
        descending,
    )  # fmt: skip
    await state.cursors.load(state.read_pool)
    after = _decode(request, token, context) if token else None
    within = _within(scope, location_param)
    if within is not None and not within:
        raise _not_found("conversation", conversation_id)
    locations = None if within is None else sorted(within)
    if last_id is not None:
        found, after = await run(
            state.read_pool,
            lambda conn: reads.message_anchor(conn, conversation_id, locations, last_id),
        )
        if not found:
            raise _not_found("conversation", conversation_id)
        if after is None:
            raise bad("lastMessageId", "not a message of this conversation")
    page = await run(
        state.read_pool,
        lambda conn: reads.message_page(
            conn,
            conversation_id,
            locations,
            limit=limit,
            after=after,
            descending=descending,
            channels=channels,
            since=since,
            until=until,
        ),
    )
    if page is None:
        raise _not_found("conversation", conversation_id)
    following = (
        _encode(request, page.last_position, context) if page.more and page.last_position else None
    )
    return _json_body(
        f'{{"messages":{{"lastMessageId":{_json_string(page.last_message_id)},'
        f'"nextPage":{"true" if page.more else "false"},'
        f'"nextCursor":{_json_string(following)},"messages":',
        page.messages_json,
        "}}",
    )


# --- GET /conversations/messages/{id} and /conversations/messages/email/{id} ----------------


def _find_message(
    conn: Connection, scope: Scope, message_id: str, location_id: str | None
) -> tuple[TimelineMessage, str] | None:
    """The message and the conversation id it reads under."""
    within = _within(scope, location_id)
    if within is not None and not within:
        return None
    for location in timeline.message_locations(conn, message_id, within):
        message = timeline.get_message(conn, location, message_id)
        if message is not None:
            roots = timeline.resolve_conversations(conn, location, [message.conversation_id])
            return message, roots[message.conversation_id]
    return None


def get_message(request: Request) -> Response:
    scope = require_scope(request)
    message_id = _path_id(request, "id", "message")
    location = Params(request, allowed=["locationId"]).text("locationId")
    with app_state(request).read_engine.connect() as conn:
        found = _find_message(conn, scope, message_id, location)
    if found is None:
        raise _not_found("message", message_id)
    return JSONResponse(dialect.message_json(*found))


def get_email(request: Request) -> Response:
    scope = require_scope(request)
    message_id = _path_id(request, "id", "email message")
    location = Params(request, allowed=["locationId"]).text("locationId")
    with app_state(request).read_engine.connect() as conn:
        found = _find_message(conn, scope, message_id, location)
    if found is None or found[0].channel != "Email":
        raise _not_found("email message", message_id)
    return JSONResponse(dialect.email_json(*found))


# --- GET /conversations/messages/export -----------------------------------------------------


def export_messages(request: Request) -> Response:
    scope = require_scope(request)
    params = Params(
        request,
        allowed=[
            "locationId",
            "conversationId",
            "contactId",
            "channel",
            "startDate",
            "endDate",
            "sortBy",
            "sortOrder",
            "limit",
            "cursor",
        ],
    )
    location, visible = _list_location(params, scope)
    conversation = params.text("conversationId")
    contact = params.text("contactId")
    channels = params.channels("channel")
    since, until = _date_range(params)
    if params.choice("sortBy", ["createdAt", "updatedAt"]) == "updatedAt":
        raise bad("sortBy", "updatedAt is not supported; follow changes with GET /events")
    descending = params.choice("sortOrder", ["asc", "desc"], "desc") == "desc"
    limit = params.integer("limit", 100, 10, 500)
    token = params.text("cursor", max_length=MAX_CURSOR)
    context = _context(
        "export", scope.key_id, location, conversation, contact, channels, since, until,
        descending,
    )  # fmt: skip
    after = _decode(request, token, context) if token else None
    if not visible:
        return JSONResponse({"messages": [], "nextCursor": None, "total": 0})
    filters: dict[str, Any] = {
        "conversation_id": conversation,
        "contact_id": contact,
        "channels": channels,
        "since": since,
        "until": until,
    }
    with app_state(request).read_engine.connect() as conn:
        page = timeline.filter_messages(
            conn, location, limit=limit + 1, after=after, descending=descending, **filters
        )
        total = timeline.count_messages(conn, location, **filters)
        roots = timeline.resolve_conversations(conn, location, {m.conversation_id for m in page})
    more = len(page) > limit
    page = page[:limit]
    return JSONResponse(
        {
            "messages": [dialect.message_json(m, roots[m.conversation_id]) for m in page],
            "nextCursor": _encode(request, page[-1].cursor, context) if more else None,
            "total": total,
        }
    )


# Order matters: the literal paths before `/conversations/{conversationId}`.
ROUTES: list[BaseRoute] = [
    Route("/conversations/search", kept(search_conversations), methods=["GET"]),
    Route("/conversations/messages/export", export_messages, methods=["GET"]),
    Route("/conversations/messages/email/{id}", get_email, methods=["GET"]),
    Route("/conversations/messages/{id}", get_message, methods=["GET"]),
    Route("/conversations/{conversationId}/messages", kept(conversation_messages), methods=["GET"]),
    Route("/conversations/{conversationId}", get_conversation, methods=["GET"]),
]
