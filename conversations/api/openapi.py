"""GET /openapi.json: the OpenAPI 3.1 document of every endpoint.

The document is data, built once at import by the small helpers below, and describes
what the endpoints really do (parameter ranges and enums as `Params` checks them, the
shapes `dialect` and the route modules write). Two tests keep it honest: every route of
the app must be documented here (tests/test_openapi.py walks `app.routes`), and
schemathesis sends generated requests to a running server and checks every answer
against this document.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from conversations import __version__, dialect
from conversations.api.cursors import MAX_CURSOR, MAX_MERGED_CURSOR
from conversations.messages import CHANNELS
from conversations.payloads import MAX_ID_BYTES
from conversations.projections.location_conversations import STATUSES

Schema = dict[str, Any]

MAX_POSITION = 2**63 - 1
_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


# --- small builders -------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def obj(properties: dict[str, Schema], *, closed: bool = True, **extra: Any) -> Schema:
    """An object whose properties are all always present (`required`); `closed`: no
    others (so a field added to an endpoint without the document fails the tests)."""
    schema: Schema = {"type": "object", "properties": properties, "required": list(properties)}
    if closed:
        schema["additionalProperties"] = False
    return {**schema, **extra}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def comma_list(names: Sequence[str]) -> Schema:
    """A comma-separated list of names (what `Params.choices` and channel lists take)."""
    one = "|".join(names)
    return {
        "type": "string",
        "maxLength": 1024,
        "pattern": f"^(?:{one})(?:,(?:{one}))*$",
    }


def query(name: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    parameter: Schema = {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }
    if not required:
        # `Params` reads an empty value (`?startDate=`, as SDKs send an unset field) as
        # absent: the document must admit it, or a client trusting it refuses to send it.
        parameter["allowEmptyValue"] = True
    return parameter


def path(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        # A "/" in an id would address another path (HighLevel's ids never hold one).
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_BYTES,
            "pattern": "^[^/]+$",
        },
    }


def json_response(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def problem(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/problem+json": {"schema": ref("ProblemDetails")}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER: Schema = {"$ref": "#/components/headers/RetryAfter"}
_CHALLENGE: Schema = {"$ref": "#/components/headers/WWWAuthenticate"}


def operation(
    operation_id: str,
    tag: str,
    summary: str,
    description: str,
    responses: dict[str, Schema],
    parameters: Sequence[Schema] = (),
    *,
    secured: bool = True,
) -> Schema:
    """One operation. A secured one (a read) needs a key: it may answer 401, and 503
    while the database is unreachable; every operation that takes parameters may
    answer 400 (an unknown parameter, or a value out of range)."""
    answers = dict(responses)
    if parameters:
        answers.setdefault("400", problem("A parameter is unknown, malformed or out of range."))
    if secured:
        answers["401"] = problem(
            "No key, or a key that is unknown or revoked.", {"WWW-Authenticate": _CHALLENGE}
        )
        answers["503"] = problem(
            "The database is unreachable; retry later.", {"Retry-After": _RETRY_AFTER}
        )
    return {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "parameters": list(parameters),
        "security": [{"bearerAuth": []}] if secured else [],
        "responses": dict(sorted(answers.items())),
    }


# --- parameters -----------------------------------------------------------------------------

_ID: Schema = {"type": "string", "maxLength": MAX_ID_BYTES}
_CURSOR: Schema = {"type": "string", "maxLength": MAX_CURSOR}
_TIMESTAMP: Schema = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        # A number, not an integer: the milliseconds may have a fraction (HighLevel's
        # SDKs type them as floats: "1735787045678.0"), as `Params.timestamp` takes them.
        {"type": "number", "minimum": 0, "maximum": _MAX_EPOCH_MS},
    ]
}


def _limit(default: int, minimum: int, maximum: int) -> Schema:
    return query(
        "limit",
        {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default},
        f"Page size ({minimum}..{maximum}).",
    )


def _sort(name: str = "sort") -> Schema:
    return query(
        name,
        {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
        "Oldest first (`asc`) or newest first (`desc`).",
    )


def _location(what: str) -> Schema:
    return query(
        "locationId",
        _ID,
        f"The location {what}. A location outside the key reads exactly like a location "
        "without data.",
    )


def _list_location() -> Schema:
    return query(
        "locationId",
        _ID,
        "The location to read; may be left out when the key has exactly one location "
        "(else 400). A location outside the key reads as a location without data "
        "(empty list, total 0).",
    )


def _dates(subject: str) -> list[Schema]:
    return [
        query(
            "startDate",
            _TIMESTAMP,
            f"Only {subject} at or after this time (ISO-8601, a naive time is UTC, or epoch ms).",
        ),
        query(
            "endDate",
            _TIMESTAMP,
            f"Only {subject} before this time (ISO-8601 or epoch ms); not before startDate.",
        ),
    ]


_TYPE_NAMES = list(dialect.FILTER_TYPE_NAMES)
_CHANNEL_NAMES = list(CHANNELS)
_CHANNEL_HELP = (
    "Comma-separated channels: "
    + ", ".join(_CHANNEL_NAMES)
    + ". HighLevel's spellings are accepted too (any case, `Live_Chat`, `FB`, `IG`)."
)


# --- schemas --------------------------------------------------------------------------------

_STRING = {"type": "string"}
_NULL_STRING = nullable("string")
_NULL_INT = nullable("integer")
_DATE = nullable("string", format="date-time")
_EPOCH_MS = nullable("integer", description="Milliseconds since the epoch.")
_DIRECTION = {"type": "string", "enum": ["inbound", "outbound"]}

_MESSAGE_TYPE = nullable("string", description="`TYPE_*`, HighLevel's message type name.")


def _schemas() -> dict[str, Schema]:
    conversation_common: dict[str, Schema] = {
        "id": _STRING,
        "contactId": _NULL_STRING,
        "locationId": _STRING,
        "lastMessageBody": _NULL_STRING,
        "lastMessageType": _MESSAGE_TYPE,
        "lastMessageDate": _EPOCH_MS,
        "lastMessageDirection": _NULL_STRING,
        "unreadCount": {"type": "integer", "minimum": 0},
        "starred": {"type": "boolean"},
        "inbox": {"type": "boolean"},
        "deleted": {"type": "boolean"},
        "dateAdded": _EPOCH_MS,
        "dateUpdated": _EPOCH_MS,
    }
    address_list = array(_STRING)
    return {
        "ProblemDetails": obj(
            {
                "type": {"type": "string", "format": "uri"},
                "title": _STRING,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": _STRING,
                "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
                "message": _STRING,
            },
            closed=False,
            description="RFC 9457 problem details, with HighLevel's error members "
            "`statusCode` (the status) and `message` (the detail); a webhook problem adds "
            "`outcome` (and `quarantineId` when the body was kept aside).",
        ),
        # -- HighLevel's shapes
        "EmailMeta": obj(
            {
                "messageIds": array(_STRING),
                "threadId": _NULL_STRING,
                "subject": _NULL_STRING,
                "from": _NULL_STRING,
                "to": address_list,
                "cc": address_list,
                "bcc": address_list,
            }
        ),
        "MessageMeta": obj(
            {
                "callDuration": nullable("number", description="Seconds."),
                "callStatus": _NULL_STRING,
                "email": {"anyOf": [ref("EmailMeta"), {"type": "null"}]},
            }
        ),
        "Message": obj(
            {
                "id": _STRING,
                "type": nullable("integer", description="HighLevel's numeric message type."),
                "messageType": _MESSAGE_TYPE,
                "locationId": _STRING,
                "contactId": _NULL_STRING,
                "conversationId": {
                    "type": "string",
                    "description": "The conversation the message reads under (after merges).",
                },
                "dateAdded": _DATE,
                "body": _NULL_STRING,
                "direction": _STRING,
                "status": _NULL_STRING,
                "contentType": _NULL_STRING,
                "attachments": array({}),
                "meta": ref("MessageMeta"),
                "source": _NULL_STRING,
                "userId": _NULL_STRING,
                "conversationProviderId": _NULL_STRING,
                "chatWidgetId": nullable("string", description="The Live Chat widget, as sent."),
            },
            description="HighLevel's GetMessageResponseDto. Email bodies are included.",
        ),
        "EmailMessage": obj(
            {
                "id": _STRING,
                "altId": {"type": "null"},
                "threadId": _NULL_STRING,
                "locationId": _STRING,
                "contactId": _NULL_STRING,
                "conversationId": _STRING,
                "dateAdded": _DATE,
                "subject": _NULL_STRING,
                "body": _NULL_STRING,
                "direction": _STRING,
                "status": _NULL_STRING,
                "contentType": _NULL_STRING,
                "attachments": array({}),
                "provider": nullable("string", description="The email provider, as sent."),
                "from": _NULL_STRING,
                "to": address_list,
                "cc": address_list,
                "bcc": address_list,
                "replyToMessageId": {"type": "null"},
                "source": _NULL_STRING,
                "conversationProviderId": _NULL_STRING,
            },
            description="HighLevel's GetEmailMessageResponseDto.",
        ),
        "Conversation": obj(
            {
                **conversation_common,
                "type": {"type": "string", "enum": list(dialect.CONVERSATION_TYPE_CODES)},
                **{
                    name: {"type": "null", "description": "No webhook names the contact."}
                    for name in dialect.CONTACT_FIELDS
                },
                "sort": {
                    "type": "array",
                    "items": _EPOCH_MS,
                    "minItems": 1,
                    "maxItems": 1,
                    "description": "What `startAfterDate` continues after.",
                },
            },
            description="HighLevel's ConversationSchema (search results).",
        ),
        "ConversationById": obj(
            {
                **conversation_common,
                "type": {
                    "type": "integer",
                    "enum": sorted(dialect.CONVERSATION_TYPE_CODES.values()),
                },
                "assignedTo": {"type": "null", "description": "No webhook carries it."},
            },
            description="HighLevel's GetConversationByIdResponse.",
        ),
        "ConversationSearch": obj(
            {
                "conversations": array(ref("Conversation")),
                "total": {"type": "integer", "minimum": 0},
                "nextCursor": _NULL_STRING,
            }
        ),
        "ConversationMessages": obj(
            {
                "messages": obj(
                    {
                        "lastMessageId": _NULL_STRING,
                        "nextPage": {"type": "boolean"},
                        "nextCursor": _NULL_STRING,
                        "messages": array(ref("Message")),
                    }
                )
            },
            description="The nested shape HighLevel's API returns.",
        ),
        "MessageExport": obj(
            {
                "messages": array(ref("Message")),
                "nextCursor": _NULL_STRING,
                "total": {"type": "integer", "minimum": 0},
            }
        ),
        # -- beyond HighLevel
        "ContactMessages": obj({"messages": array(ref("Message")), "nextCursor": _NULL_STRING}),
        "ChannelSummary": obj(
            {
                "channel": {"type": "string", "enum": _CHANNEL_NAMES},
                "messageCount": {"type": "integer", "minimum": 0},
                "inboundCount": {"type": "integer", "minimum": 0},
                "outboundCount": {"type": "integer", "minimum": 0},
                "firstMessageAt": _DATE,
                "lastMessageAt": _DATE,
                "lastDirection": _NULL_STRING,
                "lastStatus": _NULL_STRING,
                "lastPreview": _NULL_STRING,
                "lastMessageId": _NULL_STRING,
            }
        ),
        "ContactChannels": obj(
            {
                "contactId": _STRING,
                "locationIds": array(_STRING),
                "messageCount": {"type": "integer", "minimum": 0},
                "inboundCount": {"type": "integer", "minimum": 0},
                "outboundCount": {"type": "integer", "minimum": 0},
                "firstMessageAt": _DATE,
                "lastMessageAt": _DATE,
                "channels": array(ref("ChannelSummary")),
            }
        ),
        "FeedEvent": obj(
            {
                "position": {"type": "integer", "minimum": 1},
                "eventId": {"type": "string", "format": "uuid"},
                "locationId": _STRING,
                "streamId": _STRING,
                "version": {"type": "integer", "minimum": 1},
                "type": _STRING,
                "occurredAt": _DATE,
                "recordedAt": {"type": "string", "format": "date-time"},
                "payload": {
                    "type": "object",
                    "description": "The webhook body exactly as received.",
                },
                "metadata": {"type": "object"},
            }
        ),
        "EventPage": obj(
            {
                "events": array(ref("FeedEvent")),
                "next": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Read on with `after=next` (the `after` given when empty).",
                },
            }
        ),
        # -- webhooks and operations
        "WebhookStored": obj(
            {
                "outcome": {"type": "string", "enum": ["stored", "duplicate"]},
                "position": {"type": "integer", "minimum": 1},
                "eventId": {"type": "string", "format": "uuid"},
                "streamId": _STRING,
                "version": {"type": "integer", "minimum": 1},
            }
        ),
        "WebhookQuarantined": obj(
            {
                "outcome": {"type": "string", "const": "quarantined"},
                "quarantineId": {"type": "integer"},
                "reason": _STRING,
                "detail": _STRING,
            }
        ),
        "Health": obj({"status": {"type": "string", "const": "ok"}}),
        "Ready": obj(
            {
                "status": {"type": "string", "const": "ready"},
                "migration": _STRING,
                "projections": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0},
                    "description": "Each projection's lag in seconds.",
                },
            }
        ),
        "ProjectionStatus": obj(
            {
                "projections": array(
                    obj(
                        {
                            "name": _STRING,
                            "position": {"type": "integer", "minimum": 0},
                            "head": {"type": "integer", "minimum": 0},
                            "behindEvents": {"type": "integer", "minimum": 0},
                            "lagSeconds": {"type": "number", "minimum": 0},
                            "updatedAt": _DATE,
                            "failure": nullable(
                                "string",
                                description="Why the projection is not moving: the fold its "
                                "worker keeps retrying, in one line; null when none fails.",
                            ),
                            "failingSince": _DATE,
                        }
                    )
                )
            }
        ),
    }


# --- operations -----------------------------------------------------------------------------


def _conversation_paths() -> dict[str, Schema]:
    conversation_id = path("conversationId", "A conversation id (a merged one reads as its root).")
    message_id = path("id", "A message id.")
    return {
        "/conversations/search": {
            "get": operation(
                "searchConversations",
                "HighLevel-compatible",
                "Search a location's conversations",
                "HighLevel's `GET /conversations/search`, newest last message first by "
                "default. `startAfterDate` continues after a last message time (as at "
                "HighLevel); `cursor` (from `nextCursor`) after the exact position. "
                "HighLevel's `assignedTo`, `followers`, `mentions`, `query`, `id`, "
                "`lastMessageAction` and score filters are refused (400): webhooks never "
                "carry what they need.",
                {"200": json_response("A page of conversations.", ref("ConversationSearch"))},
                [
                    _list_location(),
                    query("contactId", _ID, "Only this contact's conversations."),
                    _limit(20, 1, 100),
                    query(
                        "startAfterDate",
                        _TIMESTAMP,
                        "Continue after this last message time (epoch ms, or ISO-8601): "
                        "the `sort` of the last conversation read, also taken as "
                        "`startAfterDate[]` (as axios writes that array); not with `cursor`.",
                    ),
                    query("cursor", _CURSOR, "`nextCursor` of the previous page."),
                    _sort(),
                    query(
                        "sortBy",
                        {"type": "string", "enum": ["last_message_date"]},
                        "The only order there is.",
                    ),
                    query(
                        "lastMessageType",
                        {"type": "string", "enum": _TYPE_NAMES},
                        "Only conversations whose `lastMessageType` is this name "
                        "(`TYPE_INTERNAL_COMMENTS` reads as `TYPE_INTERNAL_COMMENT`).",
                    ),
                    query(
                        "lastMessageDirection",
                        _DIRECTION,
                        "Only conversations whose last message went this way.",
                    ),
                    query(
                        "status",
                        {"type": "string", "enum": list(STATUSES), "default": "all"},
                        "Read state and starred flag, from ConversationUnreadUpdate webhooks.",
                    ),
                    *_dates("conversations whose last message is"),
                ],
            )
        },
        "/conversations/messages/export": {
            "get": operation(
                "exportMessages",
                "HighLevel-compatible",
                "Export a location's messages",
                "HighLevel's `GET /conversations/messages/export`, with a total.",
                {"200": json_response("A page of messages.", ref("MessageExport"))},
                [
                    _list_location(),
                    query("conversationId", _ID, "Only this conversation's messages."),
                    query("contactId", _ID, "Only this contact's messages."),
                    query("channel", comma_list(_CHANNEL_NAMES), _CHANNEL_HELP),
                    *_dates("messages added"),
                    query(
                        "sortBy",
                        {"type": "string", "enum": ["createdAt"]},
                        "`createdAt` (HighLevel's `updatedAt` is refused: follow changes "
                        "with `GET /events`).",
                    ),
                    _sort("sortOrder"),
                    _limit(100, 10, 500),
                    query("cursor", _CURSOR, "`nextCursor` of the previous page."),
                ],
            )
        },
        "/conversations/messages/email/{id}": {
            "get": operation(
                "getEmailMessage",
                "HighLevel-compatible",
                "Get an email message",
                "HighLevel's `GET /conversations/messages/email/{id}`: by its message id "
                "(404 for a message that is not an email).",
                {
                    "200": json_response("The email.", ref("EmailMessage")),
                    "404": problem("No such email in the key's locations."),
                },
                [message_id, _location("to look in")],
            )
        },
        "/conversations/messages/{id}": {
            "get": operation(
                "getMessage",
                "HighLevel-compatible",
                "Get a message",
                "HighLevel's `GET /conversations/messages/{id}`.",
                {
                    "200": json_response("The message.", ref("Message")),
                    "404": problem("No such message in the key's locations."),
                },
                [message_id, _location("to look in")],
            )
        },
        "/conversations/{conversationId}/messages": {
            "get": operation(
                "getConversationMessages",
                "HighLevel-compatible",
                "A conversation's messages",
                "HighLevel's `GET /conversations/{conversationId}/messages` (its nested "
                "shape), newest first by default; beyond HighLevel: `sort`, dates, "
                "`channel`, and a stable `cursor`. `lastMessageId` continues after that "
                "message (as at HighLevel).",
                {
                    "200": json_response("A page of messages.", ref("ConversationMessages")),
                    "404": problem("No such conversation in the key's locations."),
                },
                [
                    conversation_id,
                    _location("to look in"),
                    query(
                        "lastMessageId",
                        _ID,
                        "Continue after this message (of this conversation); not with `cursor`.",
                    ),
                    query("cursor", _CURSOR, "`nextCursor` of the previous page."),
                    _limit(20, 1, 100),
                    query(
                        "type",
                        comma_list(_TYPE_NAMES),
                        "Comma-separated `TYPE_*` names; each selects its whole channel "
                        "(`TYPE_CAMPAIGN_SMS`: SMS).",
                    ),
                    query("channel", comma_list(_CHANNEL_NAMES), _CHANNEL_HELP),
                    *_dates("messages added"),
                    _sort(),
                ],
            )
        },
        "/conversations/{conversationId}": {
            "get": operation(
                "getConversation",
                "HighLevel-compatible",
                "Get a conversation",
                "HighLevel's `GET /conversations/{conversationId}`.",
                {
                    "200": json_response("The conversation.", ref("ConversationById")),
                    "404": problem("No such conversation in the key's locations."),
                },
                [conversation_id, _location("to look in")],
            )
        },
    }


def _contact_paths() -> dict[str, Schema]:
    contact_id = path("contactId", "A contact id.")
    return {
        "/contacts/{contactId}/messages": {
            "get": operation(
                "getContactMessages",
                "Beyond HighLevel",
                "A contact's messages across its conversations",
                "Every message of the contact in every location of the key (or the one "
                "`locationId` names), newest first by default. A contact nobody can see "
                "reads as an empty list.",
                {"200": json_response("A page of messages.", ref("ContactMessages"))},
                [
                    contact_id,
                    _location("to read"),
                    _limit(20, 1, 100),
                    query(
                        "cursor",
                        {"type": "string", "maxLength": MAX_MERGED_CURSOR},
                        "`nextCursor` of the previous page.",
                    ),
                    _sort(),
                    *_dates("messages added"),
                    query("channel", comma_list(_CHANNEL_NAMES), _CHANNEL_HELP),
                ],
            )
        },
        "/contacts/{contactId}/channels": {
            "get": operation(
                "getContactChannels",
                "Beyond HighLevel",
                "A contact's channel summary",
                "Per channel: message, inbound and outbound counts, first and last "
                "message times, the last message's direction, status and preview; with "
                "totals.",
                {
                    "200": json_response("The summary.", ref("ContactChannels")),
                    "404": problem("The key sees no message of this contact."),
                },
                [contact_id, _location("to read")],
            )
        },
    }


def _event_paths() -> dict[str, Schema]:
    after = query(
        "after",
        {"type": "integer", "minimum": 0, "maximum": MAX_POSITION, "default": 0},
        "Events after this position.",
    )
    locations = _location("to read (narrows a key with several)")
    access_token = query(
        "access_token",
        _STRING,
        "The key, for a client that cannot send the Authorization header (a browser's "
        "EventSource; RFC 6750 2.3). Not together with the header (400).",
    )
    unseen = problem(
        "The position (`after`, `Last-Event-ID`) is past the newest event: another "
        "store's, or this one's before it was recreated. Read again from `after=0`."
    )
    return {
        "/events": {
            "get": operation(
                "listEvents",
                "Beyond HighLevel",
                "The raw event feed",
                "The events of the key's locations in position order, each payload "
                "exactly as received; gap-safe: reading on with `after=next` misses "
                "nothing.",
                {"200": json_response("A page of events.", ref("EventPage")), "409": unseen},
                [after, _limit(100, 1, 1000), locations, access_token],
            )
        },
        "/events/stream": {
            "get": operation(
                "streamEvents",
                "Beyond HighLevel",
                "The event feed, live (Server-Sent Events)",
                "Follows the feed: `id: <position>`, `event: <type>`, `data: <the event "
                "JSON as in GET /events>`; resumes after `Last-Event-ID`; `: heartbeat` "
                "comments while idle. Never ends by itself.",
                {
                    "200": {
                        "description": "The stream.",
                        "content": {"text/event-stream": {"schema": _STRING}},
                    },
                    "409": unseen,
                },
                [
                    after,
                    locations,
                    access_token,
                    query(
                        "heartbeat",
                        {"type": "integer", "minimum": 1, "maximum": 300, "default": 15},
                        "Seconds of silence before a heartbeat comment.",
                    ),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this position (wins over `after`).",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                    },
                ],
            )
        },
    }


def _service_paths() -> dict[str, Schema]:
    text_plain = {"text/plain": {"schema": _STRING}}
    return {
        "/webhooks/highlevel": {
            "post": operation(
                "receiveWebhook",
                "Webhooks",
                "Receive a HighLevel webhook",
                "Keyless: authenticated by HighLevel's signature. The body is stored "
                "exactly as received (after undoing its Content-Encoding, if any: the "
                "signature covers the decoded JSON), acknowledged only once committed. "
                "Also served at `/webhooks/highlevel/` (with a trailing slash).",
                {
                    "200": json_response("A redelivery of a stored event.", ref("WebhookStored")),
                    "201": json_response("Stored.", ref("WebhookStored")),
                    "202": json_response(
                        "A JSON object that is not a usable event: kept aside.",
                        ref("WebhookQuarantined"),
                    ),
                    "400": problem(
                        "Not JSON, not UTF-8 or not an object (kept aside); or not valid "
                        "in its Content-Encoding (`bad_encoding`)."
                    ),
                    "401": problem(
                        "Signature required, and missing or wrong: not stored.",
                        {"WWW-Authenticate": {"$ref": "#/components/headers/SignatureChallenge"}},
                    ),
                    "408": problem(
                        "The body did not arrive within CONVERSATIONS_BODY_TIMEOUT seconds: "
                        "not stored; the connection is closed."
                    ),
                    "413": problem(
                        "Larger than CONVERSATIONS_MAX_BODY_BYTES, as sent or once decoded: "
                        "not read (or inflated) further."
                    ),
                    "415": problem(
                        "A Content-Encoding other than gzip, x-gzip, deflate or identity: "
                        "not stored.",
                        {"Accept-Encoding": {"$ref": "#/components/headers/AcceptEncoding"}},
                    ),
                    "503": problem(
                        "The database is unreachable: not stored; retry.",
                        {"Retry-After": _RETRY_AFTER},
                    ),
                },
                [
                    {
                        "name": name,
                        "in": "header",
                        "required": False,
                        "description": description,
                        "schema": _STRING,
                    }
                    for name, description in (
                        ("X-GHL-Signature", "Ed25519 signature of the body (base64)."),
                        ("X-WH-Signature", "RSA-SHA256 signature of the body (base64), legacy."),
                        (
                            "Content-Encoding",
                            "`gzip`, `x-gzip`, `deflate` (zlib) or `identity`, or a list; "
                            "decoded before the signature is checked.",
                        ),
                    )
                ],
                secured=False,
            )
            | {
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "description": "A HighLevel webhook body (InboundMessage, "
                                "OutboundMessage, ConversationUnreadUpdate, ...).",
                            }
                        }
                    },
                }
            }
        },
        "/healthz": {
            "get": operation(
                "healthz",
                "Operations",
                "Liveness",
                "The process is up (the database is not consulted).",
                {"200": json_response("Up.", ref("Health"))},
                secured=False,
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Operations",
                "Readiness",
                "The database answers, migrations are at head, and no projection has an "
                "unapplied event older than CONVERSATIONS_READY_MAX_LAG seconds.",
                {
                    "200": json_response("Ready.", ref("Ready")),
                    "503": problem(
                        "Not ready; the detail says why.", {"Retry-After": _RETRY_AFTER}
                    ),
                },
                secured=False,
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Operations",
                "Prometheus metrics",
                "Webhooks by outcome, request latency by route, and, read from the "
                "database at scrape time: projection lag, quarantine size.",
                {"200": {"description": "Prometheus text format 0.0.4.", "content": text_plain}},
                secured=False,
            )
        },
        "/projections": {
            "get": operation(
                "projections",
                "Operations",
                "Projection positions and lag",
                "How far behind each projection is.",
                {"200": json_response("Each projection.", ref("ProjectionStatus"))},
                secured=False,
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "Operations",
                "This document",
                "The OpenAPI 3.1 document of every endpoint.",
                {"200": json_response("OpenAPI 3.1.", {"type": "object"})},
                secured=False,
            )
        },
    }


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "conversations",
            "version": __version__,
            "description": "An event-sourced store for HighLevel conversation webhooks, and "
            "a read API that answers HighLevel's Conversations API requests with the same "
            "shapes (point an official SDK's base URL here), and more. Reads need "
            "`Authorization: Bearer <key>` (`conversations keys create --location ID`); a "
            "key sees only its locations, anything else answers as if it did not exist. "
            "Errors are `application/problem+json`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "HighLevel-compatible", "description": "HighLevel's paths and shapes."},
            {"name": "Beyond HighLevel", "description": "What HighLevel's API does not offer."},
            {"name": "Webhooks", "description": "Events in."},
            {"name": "Operations", "description": "Health, readiness, metrics."},
        ],
        "paths": {
            **_conversation_paths(),
            **_contact_paths(),
            **_event_paths(),
            **_service_paths(),
        },
        "components": {
            "schemas": _schemas(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "WWWAuthenticate": {
                    "description": '`Bearer realm="conversations"`.',
                    "schema": _STRING,
                },
                "SignatureChallenge": {
                    "description": '`Signature realm="webhooks", '
                    'headers="X-GHL-Signature X-WH-Signature"`: the headers that carry '
                    "HighLevel's signatures.",
                    "schema": _STRING,
                },
                "AcceptEncoding": {
                    "description": "The content codings a webhook body may have.",
                    "schema": _STRING,
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A key from `conversations keys create`.",
                }
            },
        },
    }


DOCUMENT = build_document()
_BODY = json.dumps(DOCUMENT, separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    return Response(_BODY, media_type="application/json")


ROUTES: list[BaseRoute] = [Route("/openapi.json", openapi_json, methods=["GET"])]
