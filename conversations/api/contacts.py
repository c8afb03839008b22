"""Reads beyond HighLevel's API: a contact's messages across conversations,
and its channel summary.

`GET /contacts/{contactId}/messages` pages through every message of the contact, in all
its conversations, in every location of the key where it has messages (or the one
`locationId` names). Messages come in HighLevel's `GetMessageResponseDto` shape, newest
first by default (`sort=asc|desc`), optionally bounded by `startDate` (inclusive) and
`endDate` (exclusive) and restricted to some `channel`s. A contact nobody can see reads
as an empty list, exactly like a contact that does not exist.

Pagination. Within one location the timeline's order is total, `(date_added,
message_key)`. Across locations the pages are a k-way merge of the per-location orders
(ties broken by location id), and the cursor remembers where each location stands, so no
message is repeated or skipped across pages whatever arrives meanwhile (a message posted
after a page was read shows up on a later page when it sorts after that page, and never
shifts the pages already read). A location the contact only appears in after the first
page starts from the last message returned so far.

`GET /contacts/{contactId}/channels` is the contact's channel summary: per channel the
message count, inbound and outbound counts, first and last message times and the last
message's direction, status and preview, with totals; 404 when the key sees no message
of the contact.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from conversations.api.auth import require_scope
from conversations.api.cursors import MAX_MERGED_CURSOR
from conversations.api.params import Params, bad
from conversations.api.state import app_state
from conversations.dialect import iso, message_json
from conversations.keys import Scope
from conversations.payloads import MAX_ID_BYTES
from conversations.projections import contact_channels as channels_model
from conversations.projections import timeline
from conversations.projections._sql import NO_TIME, date_order, key_ranks
from conversations.projections.contact_channels import ChannelSummary, ContactSummary
from conversations.projections.timeline import TimelineMessage

# --- cursors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Position:
    """Where a page of a contact's messages ended: per location the last message read
    (None for a location known but not read yet), and the last message overall."""

    locations: dict[str, timeline.Cursor | None]
    last: timeline.Cursor

    def after(self, location_id: str) -> timeline.Cursor | None:
        if location_id in self.locations:
            return self.locations[location_id]
        return self.last  # a location that appeared since the first page

    def encode(self) -> list[Any]:
        def point(cursor: timeline.Cursor) -> list[Any]:
            return [cursor[0].isoformat() if cursor[0] else None, cursor[1]]

        entries = [
            [loc, *point(cursor)] if cursor is not None else [loc]
            for loc, cursor in sorted(self.locations.items())
        ]
        return [point(self.last), entries]

    @classmethod
    def decode(cls, body: list[Any]) -> _Position:
        """Parse what `encode` made; ValueError for anything else (the signature makes
        that impossible, but a bug must not become a 500)."""

        def point(value: Any) -> timeline.Cursor:
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
                raise ValueError("bad point")
            date = value[0]
            if date is not None and not isinstance(date, str):
                raise ValueError("bad date")
            return (datetime.fromisoformat(date) if date else None, value[1])

        if len(body) != 2 or not isinstance(body[1], list):
            raise ValueError("bad cursor")
        locations: dict[str, timeline.Cursor | None] = {}
        for entry in body[1]:
            if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
                raise ValueError("bad entry")
            locations[entry[0]] = point(entry[1:]) if len(entry) > 1 else None
        return cls(locations, point(body[0]))


# --- GET /contacts/{contactId}/messages -----------------------------------------------------


@dataclass(frozen=True)
class _Query:
    contact_id: str
    limit: int
    descending: bool
    channels: list[str] | None
    since: datetime | None
    until: datetime | None


def _scope_locations(scope: Scope, location_id: str | None) -> list[str] | None:
    """The locations a read may cover: None for any, [] for none."""
    if location_id is not None:
        return [location_id] if scope.allows(location_id) else []
    return None if scope.all_locations else sorted(scope.locations)


def _visible_id(value: str) -> bool:
    """Ids the database can compare at all (a NUL fits no PostgreSQL text)."""
    return "\x00" not in value and len(value) <= MAX_ID_BYTES


def _read_page(
    conn: Connection, locations: Sequence[str], query: _Query, position: _Position | None
) -> tuple[list[TimelineMessage], _Position | None]:
    """One page merged across `locations`, and where the next page starts (None: the
    last page)."""
    runs: list[list[TimelineMessage]] = []
    for location_id in locations:
        runs.append(
            timeline.contact_messages(
                conn,
                location_id,
                query.contact_id,
                limit=query.limit + 1,
                after=position.after(location_id) if position else None,
                descending=query.descending,
                channels=query.channels,
                since=query.since,
                until=query.until,
            )
        )
    ranks = _tie_ranks(conn, runs)

    def comparable(message: TimelineMessage) -> tuple[bool, datetime, int, str]:
        """The timeline order (undated last, then the key as the database orders it),
        then the location."""
        date = message.date_added
        return date is None, date or NO_TIME, ranks.get(message.message_key, 0), message.location_id

    merged = heapq.merge(*runs, key=comparable, reverse=query.descending)
    page = [message for _, message in zip(range(query.limit), merged, strict=False)]
    if not page or sum(map(len, runs)) <= len(page):
        return page, None
    known: dict[str, timeline.Cursor | None] = dict(position.locations) if position else {}
    for location_id in locations:
        known.setdefault(location_id, position.after(location_id) if position else None)
    for message in page:
        known[message.location_id] = message.cursor
    return page, _Position(known, page[-1].cursor)


def _tie_ranks(conn: Connection, runs: Sequence[Sequence[TimelineMessage]]) -> dict[str, int]:
    """`key_ranks` of the messages dated as a message of another location's run: there
    the key decides which comes first, in the database's collation as each location's
    run is ordered (Python compares code points: on an en_US or ICU database it would
    interleave the locations in neither order). No query when no date is shared."""
    runs_by_date: dict[datetime | None, set[int]] = defaultdict(set)
    for index, run in enumerate(runs):
        for message in run:
            runs_by_date[message.date_added].add(index)
    shared = {date for date, seen in runs_by_date.items() if len(seen) > 1}
    return key_ranks(conn, (m.message_key for run in runs for m in run if m.date_added in shared))


def _contact_query(request: Request, params: Params) -> _Query:
    since, until = params.timestamp("startDate"), params.timestamp("endDate")
    if since is not None and until is not None and since > until:
        raise bad("startDate", "is after endDate")
    return _Query(
        contact_id=request.path_params["contactId"],
        limit=params.integer("limit", 20, 1, 100),
        descending=params.choice("sort", ("asc", "desc"), "desc") == "desc",
        channels=params.channels("channel"),
        since=since,
        until=until,
    )


def _cursor_context(scope: Scope, query: _Query, location_id: str | None) -> str:
    """What a cursor is bound to: this endpoint, its filters and the caller's key."""
    parts = [
        "contact-messages",
        scope.key_id,
        query.contact_id,
        location_id or "",
        "desc" if query.descending else "asc",
        ",".join(sorted(set(query.channels or []))),
        query.since.isoformat() if query.since else "",
        query.until.isoformat() if query.until else "",
    ]
    return "\x1f".join(parts)


def contact_messages(request: Request) -> Response:
    scope = require_scope(request)
    params = Params(
        request,
        allowed=["locationId", "limit", "cursor", "sort", "startDate", "endDate", "channel"],
    )
    query = _contact_query(request, params)
    location_id = params.text("locationId")
    state = app_state(request)
    context = _cursor_context(scope, query, location_id)
    token = params.text("cursor", max_length=MAX_MERGED_CURSOR)
    position = None
    if token is not None:
        try:
            position = _Position.decode(state.cursors.decode(token, context))
        except ValueError:
            raise bad("cursor", "not a cursor this service gave for this query") from None
    allowed = _scope_locations(scope, location_id)
    if not _visible_id(query.contact_id):
        allowed = []
    with state.read_engine.connect() as conn:
        # Where the contact has messages, from the (small) channel summary. It folds
        # right after the timeline in each catch-up pass, so a contact's very first
        # message may show a moment later here than in its conversation.
        locations = channels_model.contact_locations(conn, query.contact_id, allowed)
        page, following = _read_page(conn, locations, query, position)
        roots = _roots(conn, page)
    return JSONResponse(
        {
            "messages": [message_json(m, roots[(m.location_id, m.conversation_id)]) for m in page],
            "nextCursor": state.cursors.encode(following.encode(), context) if following else None,
        }
    )


def _roots(conn: Connection, page: Sequence[TimelineMessage]) -> dict[tuple[str, str], str]:
    """The id each message's conversation reads under now (its merge root)."""
    by_location: dict[str, set[str]] = {}
    for message in page:
        by_location.setdefault(message.location_id, set()).add(message.conversation_id)
    return {
        (location_id, cid): root
        for location_id, ids in by_location.items()
        for cid, root in timeline.resolve_conversations(conn, location_id, ids).items()
    }


# --- GET /contacts/{contactId}/channels -----------------------------------------------------


Ranks = dict[str, int]
"""Last message keys that break ties on dates, by rank in the database's collation."""


def _channel_ranks(conn: Connection, summaries: Sequence[ContactSummary]) -> Ranks:
    """`key_ranks` of the channels' last message keys that share their date with another
    channel's (in any location): the key breaks that tie, in the database's collation as
    the summaries and the conversations break it, so the first channel listed is that of
    the contact's last message. No query when no date is shared."""
    by_date: dict[tuple[bool, datetime], set[str]] = defaultdict(set)
    for summary in summaries:
        for channel in summary.channels:
            by_date[date_order(channel.last_message_at)].add(channel.last_message_key)
    return key_ranks(conn, {key for keys in by_date.values() if len(keys) > 1 for key in keys})


def _recency(channel: ChannelSummary, ranks: Ranks) -> tuple[tuple[bool, datetime], int]:
    """How recent a channel's last message is (undated lowest, then by key)."""
    return date_order(channel.last_message_at), ranks.get(channel.last_message_key, 0)


def _latest(a: ChannelSummary, b: ChannelSummary, ranks: Ranks) -> ChannelSummary:
    """The one with the later last message."""
    return a if _recency(a, ranks) >= _recency(b, ranks) else b


def _combine(summaries: Sequence[ContactSummary], ranks: Ranks) -> list[ChannelSummary]:
    """Per channel across locations (a contact id is in one location in HighLevel, but
    an all-locations key could see the same id in several), most recent first."""
    by_channel: dict[str, ChannelSummary] = {}
    for summary in summaries:
        for channel in summary.channels:
            seen = by_channel.get(channel.channel)
            if seen is None:
                by_channel[channel.channel] = channel
                continue
            latest = _latest(seen, channel, ranks)
            firsts = [c.first_message_at for c in (seen, channel) if c.first_message_at]
            by_channel[channel.channel] = ChannelSummary(
                channel=channel.channel,
                message_count=seen.message_count + channel.message_count,
                inbound_count=seen.inbound_count + channel.inbound_count,
                outbound_count=seen.outbound_count + channel.outbound_count,
                first_message_at=min(firsts, default=None),
                last_message_at=latest.last_message_at,
                last_direction=latest.last_direction,
                last_status=latest.last_status,
                last_preview=latest.last_preview,
                last_message_key=latest.last_message_key,
            )
    ordered = sorted(by_channel.values(), key=lambda c: c.channel)
    ordered.sort(key=lambda c: _recency(c, ranks), reverse=True)
    return ordered


def _channel_json(channel: ChannelSummary) -> dict[str, Any]:
    return {
        "channel": channel.channel,
        "messageCount": channel.message_count,
        "inboundCount": channel.inbound_count,
        "outboundCount": channel.outbound_count,
        "firstMessageAt": iso(channel.first_message_at),
        "lastMessageAt": iso(channel.last_message_at),
        "lastDirection": channel.last_direction,
        "lastStatus": channel.last_status,
        "lastPreview": channel.last_preview,
        "lastMessageId": channel.last_message_key,
    }


def contact_channel_summary(request: Request) -> Response:
    scope = require_scope(request)
    params = Params(request, allowed=["locationId"])
    contact_id: str = request.path_params["contactId"]
    allowed = _scope_locations(scope, params.text("locationId"))
    if not _visible_id(contact_id):
        allowed = []
    with app_state(request).read_engine.connect() as conn:
        locations = channels_model.contact_locations(conn, contact_id, allowed)
        found = [channels_model.contact_channels(conn, loc, contact_id) for loc in locations]
        summaries = [summary for summary in found if summary is not None]
        ranks = _channel_ranks(conn, summaries)
    if not summaries:
        raise HTTPException(404, "No messages of this contact.")
    channels = _combine(summaries, ranks)
    firsts = [c.first_message_at for c in channels if c.first_message_at]
    lasts = [c.last_message_at for c in channels if c.last_message_at]
    return JSONResponse(
        {
            "contactId": contact_id,
            "locationIds": [summary.location_id for summary in summaries],
            "messageCount": sum(c.message_count for c in channels),
            "inboundCount": sum(c.inbound_count for c in channels),
            "outboundCount": sum(c.outbound_count for c in channels),
            "firstMessageAt": iso(min(firsts, default=None)),
            "lastMessageAt": iso(max(lasts, default=None)),
            "channels": [_channel_json(c) for c in channels],
        }
    )


ROUTES: list[BaseRoute] = [
    Route("/contacts/{contactId}/messages", contact_messages, methods=["GET"]),
    Route("/contacts/{contactId}/channels", contact_channel_summary, methods=["GET"]),
]
