"""The hot reads of the HTTP API as single SQL statements that return finished JSON.

`GET /conversations/{id}/messages` and `GET /conversations/search` are what integrators
poll. Answering them with one statement each, where PostgreSQL also builds the JSON of
the rows (`json_build_object`, `json_agg`), leaves the service little Python to run per
request: it adds the envelope and the signed cursor around text it does not parse.

The JSON must be exactly what `conversations.dialect` writes for the same rows (the
tests compare them message by message): the SQL expressions below are generated from the
same tables of names and codes (`dialect.CHANNEL_TYPES`, `dialect.MESSAGE_TYPE_CODES`).

The statements read the projections' tables with the same semantics as
`projections.timeline` and `projections.location_conversations` (keyset order, merged
conversations, the dated and undated segments of a timeline); see those modules for the
rules. Every statement text is built once per variant (filters present or not, cursor or
not, sort direction) and cached, so psycopg prepares it on each pooled connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from psycopg import AsyncConnection, AsyncRawCursor

from conversations import dialect
from conversations.projections._sql import NO_TIME
from conversations.projections.location_conversations import Status

__all__ = [
    "ConversationPage",
    "MessagePage",
    "conversation_json_sql",
    "message_anchor",
    "message_json_sql",
    "message_page",
    "search_page",
]

Position = tuple[datetime | None, str]


_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Statement:
    """An SQL text with `$n` placeholders (written with `%(name)s` ones), run on a raw
    cursor: psycopg parses a `%(name)s` query on every execution when it is longer than
    its cache allows (4 kB), and these are longer; a `$n` query is sent as it is."""

    sql: bytes
    """Bytes, as psycopg sends it: not encoded again, and its hash (the key of psycopg's
    prepared statements) computed once."""
    names: tuple[str, ...]

    @classmethod
    def of(cls, named: str) -> Statement:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        # Line breaks and indentation out (never inside a literal): less to send and parse.
        compact = re.sub(r"\s*\n\s*", " ", named).strip()
        return cls(_NAMED.sub(number, compact).replace("%%", "%").encode(), tuple(names))

    async def one(self, conn: AsyncConnection[Any], params: Mapping[str, Any]) -> Any:
        """The first row (a tuple) or None."""
        cursor = AsyncRawCursor(conn)
        await cursor.execute(self.sql, [params[name] for name in self.names])
        return await cursor.fetchone()


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _case(expression: str, mapping: dict[str, Any]) -> str:
    """`CASE expression WHEN k THEN v ... END` (NULL when none matches)."""
    whens = " ".join(
        f"WHEN {_quote(k)} THEN {_quote(v) if isinstance(v, str) else int(v)}"
        for k, v in mapping.items()
    )
    return f"CASE {expression} {whens} END"


def _iso(column: str) -> str:
    """`dialect.iso`: UTC, milliseconds (truncated, as `microsecond // 1000`), `Z`."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


def _epoch_ms(column: str) -> str:
    """`dialect.epoch_ms`: milliseconds since the epoch, floored (exact: numeric)."""
    return f"floor(extract(epoch FROM {column}) * 1000)::bigint"


def _type_name(m: str) -> str:
    """`dialect.message_type`: the first of messageTypeString, messageType that is a
    `TYPE_*` name (upper-cased), else the name of the channel."""
    parts = []
    for column in (f"{m}.message_type_string", f"{m}.message_type"):
        parts.append(f"WHEN upper({column}) LIKE 'TYPE\\_%%' THEN upper({column})")
    return f"CASE {' '.join(parts)} ELSE {_case(f'{m}.channel', dialect.CHANNEL_TYPES)} END"


def _last_type(s: str) -> str:
    """`dialect.last_message_type` of row alias `s` (a `location_conversations` row)."""
    by_channel = _case(f"{s}.last_message_channel", dialect.CHANNEL_TYPES)
    return f"coalesce({s}.last_message_type, {by_channel})"


def _object(alias: str, fields: dict[str, str]) -> str:
    """`CROSS JOIN LATERAL (SELECT value AS "key", ...) alias`: `row_to_json(alias)` (or
    `json_agg(alias)`) is then the JSON object of `fields`, in that order. Cheaper than
    `json_build_object`, which works out the JSON kind of every key and value anew for
    every row (PostgreSQL 15)."""
    columns = ", ".join(f'{value} AS "{key}"' for key, value in fields.items())
    return f"CROSS JOIN LATERAL (SELECT {columns}) {alias}"


def message_json_sql(m: str, conversation_id: str, alias: str = "j") -> str:
    """Lateral joins after row alias `m` (a `timeline_messages` row) that make row
    `alias` the `dialect.message_json` of it, read under `conversation_id` (an SQL
    expression): select `row_to_json(alias)` or aggregate `json_agg(alias)`."""
    email = (
        f"CASE WHEN {m}.channel = 'Email' THEN json_build_object("
        f"'messageIds', CASE WHEN coalesce({m}.email_message_id, '') <> '' "
        f"THEN json_build_array({m}.email_message_id) ELSE '[]'::json END, "
        f"'threadId', {m}.thread_id, 'subject', {m}.subject, 'from', {m}.from_, "
        f"""'to', {m}."to", 'cc', {m}.cc, 'bcc', {m}.bcc) END"""
    )
    name = f"{alias}_type.type_name"
    fields = {
        "id": f"coalesce(nullif({m}.message_id, ''), {m}.message_key)",
        "type": f"coalesce({m}.message_type_id, {_case(name, dialect.MESSAGE_TYPE_CODES)})",
        "messageType": name,
        "locationId": f"{m}.location_id",
        "contactId": f"{m}.contact_id",
        "conversationId": conversation_id,
        "dateAdded": _iso(f"{m}.date_added"),
        "body": f"{m}.body",
        "direction": f"{m}.direction",
        "status": f"{m}.status",
        "contentType": f"{m}.content_type",
        "attachments": f"{m}.attachments",
        "meta": f"json_build_object('callDuration', {m}.call_duration, "
        f"'callStatus', {m}.call_status, 'email', {email})",
        "source": f"{m}.source",
        "userId": f"{m}.user_id",
        "conversationProviderId": f"{m}.conversation_provider_id",
        "chatWidgetId": f"{m}.chat_widget_id",
    }
    # The type name in a lateral of its own, named: two fields use it (written once).
    return f"CROSS JOIN LATERAL (SELECT {_type_name(m)} AS type_name) {alias}_type " + _object(
        alias, fields
    )


def conversation_json_sql(s: str, alias: str = "j") -> str:
    """A lateral join after row alias `s` (a `location_conversations` row) that makes row
    `alias` the `dialect.conversation_json` of it."""
    channels = f"{s}.channels"
    for channel in sorted(dialect.NOT_WITH_THE_CONTACT):  # as `dialect.conversation_type`
        channels = f"array_remove({channels}, '{channel}')"
    kind = (
        f"CASE WHEN cardinality({channels}) > 0 AND {channels} <@ ARRAY['Email']::text[] "
        "THEN 'TYPE_EMAIL' "
        f"WHEN cardinality({channels}) > 0 "
        f"AND {channels} <@ ARRAY['Facebook', 'Instagram']::text[] THEN 'TYPE_FB_MESSENGER' "
        "ELSE 'TYPE_PHONE' END"
    )
    last = _epoch_ms(f"{s}.last_message_at")
    return _object(
        alias,
        {
            "id": f"{s}.conversation_id",
            "contactId": f"{s}.contact_id",
            "locationId": f"{s}.location_id",
            "lastMessageBody": f"{s}.last_message_preview",
            "lastMessageType": _last_type(s),
            "lastMessageDate": last,
            "lastMessageDirection": f"{s}.last_message_direction",
            "unreadCount": f"coalesce({s}.unread_count, 0)",
            "starred": f"coalesce({s}.starred, false)",
            "inbox": f"coalesce({s}.inbox, true)",
            "deleted": f"coalesce({s}.deleted, false)",
            "dateAdded": _epoch_ms(f"{s}.first_message_at"),
            "dateUpdated": last,
            "type": kind,
            **dict.fromkeys(dialect.CONTACT_FIELDS, "NULL::text"),
            "sort": f"json_build_array({last})",
        },
    )


# --- a conversation's messages --------------------------------------------------------------


_CONVERSATION = """
conv AS (
    SELECT s.location_id, s.conversation_id AS root
      FROM {candidates}
     CROSS JOIN LATERAL (
           SELECT coalesce((SELECT r.root_id FROM location_conversation_roots r
                             WHERE r.location_id = c.location_id
                               AND r.conversation_id = %(id)s), %(id)s) AS root) x
      JOIN location_conversations s
        ON s.location_id = c.location_id AND s.conversation_id = x.root
     ORDER BY s.location_id COLLATE "C"
     LIMIT 1
),
troot AS (
    SELECT conv.location_id, coalesce(tr.root_id, conv.root) AS root
      FROM conv
      LEFT JOIN timeline_conversation_roots tr
        ON tr.location_id = conv.location_id AND tr.conversation_id = conv.root
),
grp AS (
    SELECT location_id, root AS cid FROM troot
    UNION ALL
    SELECT r.location_id, r.conversation_id
      FROM troot JOIN timeline_conversation_roots r
        ON r.location_id = troot.location_id AND r.root_id = troot.root
       AND r.conversation_id <> troot.root
)"""
"""The conversation an id names among the allowed locations (`catalogue.get` in the
first location, in code point order, where the id names one), and the timeline group
its messages are read from (`timeline.conversation_ids`)."""

_SCOPED_CANDIDATES = "unnest(%(locations)s::text[]) AS c(location_id)"
"""A key's locations: where the id is neither a conversation nor a merged one, the join
finds no summary row, as `conversation_locations` would not list the location."""

_ANY_CANDIDATES = """(SELECT location_id FROM location_conversation_roots
        WHERE conversation_id = %(id)s
       UNION
       SELECT location_id FROM location_conversations WHERE conversation_id = %(id)s) c"""
"""Every location where the id names a conversation (a key for every location)."""


def _text_array(values: list[str] | None) -> str | None:
    """A `text[]` literal: psycopg sends a str as is, where a list goes through its array
    dumper machinery on every request."""
    if values is None:
        return None
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


def _conversation_cte(all_locations: bool) -> str:
    return _CONVERSATION.format(candidates=_ANY_CANDIDATES if all_locations else _SCOPED_CANDIDATES)


_MESSAGE_COLUMNS = ", ".join(
    f"t.{name}"
    for name in (
        "location_id", "message_key", "contact_id", "direction", "channel", "message_type",
        "message_type_string", "message_type_id", "status", "call_status", "call_duration",
        "body", "content_type", "attachments", "from_", '"to"', "cc", "bcc", "subject",
        "thread_id", "email_message_id", "message_id", "user_id", "source",
        "conversation_provider_id", "chat_widget_id", "date_added", "doc",
    )
)  # fmt: skip
"""What the JSON of a message needs."""


def _segments(
    after: Position | None, descending: bool, since: bool, until: bool
) -> list[tuple[str, ...]]:
    """`timeline._segments` as SQL conditions on alias `t` (the same rules)."""
    dated = ["t.date_added IS NOT NULL"]
    undated = ["t.date_added IS NULL"]
    if since:
        dated.append("t.date_added >= %(since)s")
    if until:
        dated.append("t.date_added < %(until)s")
    with_undated = not (since or until)
    with_dated = True
    op = "<" if descending else ">"
    if after is None and with_undated:
        # From either end of the whole order: one index scan in the index's own order
        # (NULLS LAST ascending, so backwards undated first), no segments to join.
        return [()]
    if after is not None:
        if after[0] is not None:
            dated.append(f"(t.date_added, t.message_key) {op} (%(after_date)s, %(after_key)s)")
            with_undated = with_undated and not descending
        else:
            undated.append(f"t.message_key {op} %(after_key)s")
            with_dated = descending
    segments: list[tuple[str, ...]] = []
    if with_dated:
        segments.append(tuple(dated))
    if with_undated:
        segments.append(tuple(undated))
    return segments[::-1] if descending else segments


@cache
def _messages_statement(*variant: Any) -> Statement:
    return Statement.of(_messages_sql(*variant))


def _messages_sql(
    all_locations: bool,
    after_kind: str,
    descending: bool,
    channels: bool,
    since: bool,
    until: bool,
) -> str:
    after: Position | None = None
    if after_kind == "dated":
        after = (NO_TIME, "")
    elif after_kind == "undated":
        after = (None, "")
    direction = "DESC" if descending else "ASC"
    nulls = "FIRST" if descending else "LAST"  # undated sort last (see `timeline`)
    order = f"date_added {direction} NULLS {nulls}, message_key {direction}"
    extra = " AND t.channel = ANY(%(channels)s)" if channels else ""
    parts = []
    for number, segment in enumerate(_segments(after, descending, since, until)):
        parts.append(
            f"""(SELECT {number} AS seg, m.* FROM grp CROSS JOIN LATERAL (
                   SELECT {_MESSAGE_COLUMNS} FROM timeline_messages t
                    WHERE t.location_id = grp.location_id AND t.conversation_id = grp.cid
                          {"".join(f" AND {c}" for c in segment)}{extra}
                    ORDER BY t.{order.replace(", ", ", t.")}
                    LIMIT %(fetch)s) m
                 ORDER BY m.{order.replace(", ", ", m.")}
                 LIMIT %(fetch)s)"""
        )
    # The last row of the page by `rn = least(n, limit)`, not by aggregates with their
    # own ORDER BY: each of those sorts its input again.
    page_order = order if len(parts) == 1 else f"seg, {order}"
    return f"""
WITH {_conversation_cte(all_locations)},
page AS (
    SELECT v.*, count(*) OVER () AS n
      FROM (SELECT u.*, row_number() OVER (ORDER BY {page_order}) AS rn
              FROM ({" UNION ALL ".join(parts)}) u
             ORDER BY {page_order}
             LIMIT %(fetch)s) v
)
SELECT (SELECT root FROM conv),
       '[' || coalesce(string_agg({_stored_or_built("p")}, ',' ORDER BY p.rn)
                       FILTER (WHERE p.rn <= %(limit)s), '') || ']',
       count(*) > %(limit)s,
       max(p.date_added) FILTER (WHERE p.rn = least(p.n, %(limit)s)),
       max(p.message_key) FILTER (WHERE p.rn = least(p.n, %(limit)s)),
       max(coalesce(nullif(p.message_id, ''), p.message_key))
           FILTER (WHERE p.rn = least(p.n, %(limit)s))
  FROM page p
"""


def _stored_or_built(m: str) -> str:
    """The JSON text of message row `m` read under the page's conversation: its stored
    document with `conversationId` put in front, or (a row stored before documents were)
    built here by `message_json_sql`, which only such a row pays for."""
    root = "(SELECT root FROM conv)"
    built = f"(SELECT row_to_json(j)::text FROM (SELECT) one {message_json_sql(m, root)})"
    stored = f"""'{{"conversationId":' || to_json({root})::text || ',' || right({m}.doc, -1)"""
    return f"CASE WHEN {m}.doc IS NOT NULL THEN {stored} ELSE {built} END"


@dataclass(frozen=True)
class MessagePage:
    conversation_id: str
    """The id the messages read under (the conversation's merge root)."""
    messages_json: str
    """A JSON array of `GetMessageResponseDto`s."""
    more: bool
    last_position: Position | None
    """The cursor position of the page's last message (None: an empty page)."""
    last_message_id: str | None


async def message_page(
    conn: AsyncConnection[Any],
    conversation_id: str,
    locations: list[str] | None,
    *,
    limit: int,
    after: Position | None,
    descending: bool,
    channels: list[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> MessagePage | None:
    """A page of a conversation's messages (`timeline.list_messages` on the conversation
    `_find_conversation` finds), or None when no allowed location has that conversation.

    `locations` None: every location."""
    after_kind = "none" if after is None else ("undated" if after[0] is None else "dated")
    statement = _messages_statement(
        locations is None,
        after_kind,
        descending,
        channels is not None,
        since is not None,
        until is not None,
    )
    params = {
        "id": conversation_id,
        "locations": _text_array(locations),
        "fetch": limit + 1,
        "limit": limit,
        "after_date": after[0] if after else None,
        "after_key": after[1] if after else None,
        "channels": channels,
        "since": since,
        "until": until,
    }
    row = await statement.one(conn, params)
    if row is None or row[0] is None:  # one aggregate row; no root: no conversation
        return None
    root, body, more, last_date, last_key, last_id = row
    return MessagePage(
        root, body, bool(more), (last_date, last_key) if last_key is not None else None, last_id
    )


_ANCHOR = """
WITH {conversation}
SELECT a.date_added, a.message_key, a.conversation_id IN (SELECT cid FROM grp)
  FROM conv
  LEFT JOIN LATERAL (
       SELECT t.date_added, t.message_key, t.conversation_id
         FROM timeline_messages t
        WHERE t.location_id = conv.location_id
          AND (t.message_key = %(message)s OR t.message_id = %(message)s
               OR t.email_message_id = %(message)s)
        ORDER BY CASE WHEN t.message_key = %(message)s THEN 0
                      WHEN t.message_id = %(message)s THEN 1 ELSE 2 END, t.message_key
        LIMIT 1) a ON true
"""


@cache
def _anchor_statement(all_locations: bool) -> Statement:
    return Statement.of(_ANCHOR.format(conversation=_conversation_cte(all_locations)))


async def message_anchor(
    conn: AsyncConnection[Any], conversation_id: str, locations: list[str] | None, message: str
) -> tuple[bool, Position | None]:
    """For HighLevel's `lastMessageId`: whether the conversation is found, and the cursor
    position of that message when it is one of the conversation's (else None)."""
    row = await _anchor_statement(locations is None).one(
        conn, {"id": conversation_id, "locations": _text_array(locations), "message": message}
    )
    if row is None:
        return False, None
    date_added, key, member = row
    return True, ((date_added, key) if member else None)


# --- conversation search --------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationPage:
    total: int
    conversations_json: str
    """A JSON array of `ConversationSchema`s."""
    more: bool
    last_position: Position | None


_STATUS_WHERE: dict[str, str] = {
    "all": "",
    "read": " AND s.unread IS FALSE",
    "unread": " AND s.unread IS TRUE",
    "starred": " AND s.starred IS TRUE",
}


@cache
def _search_statement(*variant: Any) -> Statement:
    return Statement.of(_search_sql(*variant))


def _search_sql(
    contact: bool,
    channel: bool,
    direction: bool,
    status: str,
    since: bool,
    until: bool,
    after: bool,
    descending: bool,
) -> str:
    where = "s.location_id = %(location)s"
    if contact:
        where += " AND s.contact_id = %(contact)s"
    if channel:
        # The channel first (the index), then the name shown, which is in that channel.
        where += f" AND s.last_message_channel = %(channel)s AND {_last_type('s')} = %(type)s"
    if direction:
        where += " AND s.last_message_direction = %(direction)s"
    where += _STATUS_WHERE[status]
    if since or until:
        where += " AND s.last_message_at IS NOT NULL"
    if since:
        where += " AND s.sort_at >= %(since)s"
    if until:
        where += " AND s.sort_at < %(until)s"
    op, direction_sql = ("<", "DESC") if descending else (">", "ASC")
    keyset = (
        f" AND (s.sort_at, s.conversation_id) {op} (%(after_date)s, %(after_id)s)" if after else ""
    )
    order = f"sort_at {direction_sql}, conversation_id {direction_sql}"
    return f"""
SELECT (SELECT count(*) FROM location_conversations s WHERE {where}),
       coalesce(json_agg(p.doc ORDER BY p.rn) FILTER (WHERE p.rn <= %(limit)s), '[]')::text,
       count(*) > %(limit)s,
       max(p.last_message_at) FILTER (WHERE p.rn = least(p.n, %(limit)s)),
       max(p.conversation_id) FILTER (WHERE p.rn = least(p.n, %(limit)s))
  FROM (SELECT row_to_json(j) AS doc, q.last_message_at, q.conversation_id,
               row_number() OVER (ORDER BY q.{order.replace(", ", ", q.")}) AS rn,
               count(*) OVER () AS n
          FROM (SELECT * FROM location_conversations s
                 WHERE {where}{keyset}
                 ORDER BY s.{order.replace(", ", ", s.")}
                 LIMIT %(fetch)s) q
               {conversation_json_sql("q")}) p
"""


async def search_page(
    conn: AsyncConnection[Any],
    location_id: str,
    *,
    contact_id: str | None,
    last_message_type: tuple[str, str] | None,
    last_message_direction: str | None,
    status: Status,
    since: datetime | None,
    until: datetime | None,
    descending: bool,
    limit: int,
    after: Position | None,
) -> ConversationPage:
    """`location_conversations.search` with its JSON: a page and the total.
    `last_message_type` is (the `lastMessageType` shown, the channel of that name)."""
    statement = _search_statement(
        contact_id is not None,
        last_message_type is not None,
        last_message_direction is not None,
        status,
        since is not None,
        until is not None,
        after is not None,
        descending,
    )
    params = {
        "location": location_id,
        "contact": contact_id,
        "type": last_message_type[0] if last_message_type else None,
        "channel": last_message_type[1] if last_message_type else None,
        "direction": last_message_direction,
        "since": since,
        "until": until,
        "after_date": (after[0] or NO_TIME) if after else None,
        "after_id": after[1] if after else None,
        "limit": limit,
        "fetch": limit + 1,
    }
    row = await statement.one(conn, params)
    assert row is not None  # an aggregate without GROUP BY always answers one row
    total, body, more, last_at, last_id = row
    return ConversationPage(
        int(total), body, bool(more), (last_at, last_id) if last_id is not None else None
    )
