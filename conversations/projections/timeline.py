"""The conversation timeline: one row per message (not per delivery), read conversation by
conversation, contact by contact or location-wide, in the order messages were sent.

A message's row is rebuilt from every event of that message (`build_message`) each time a
batch touches it, so status updates, late attachments and redeliveries in any order and in
any batch cutting give the same row.

Ordering. Messages are ordered by `(date_added, message_key)`, ascending, with a missing
`date_added` sorting *last*: an undated message counts as newer than every dated one (it
has no better place, and that is where a reader of "the latest" wants to see it). Ties on
`date_added` are broken by `message_key`, so the order is total and keyset pagination on
`(date_added, message_key)` never skips or repeats a message. A descending read is the
exact reverse (undated messages first). Date filters (`since`, `until`) leave undated
messages out: their date is unknown.

Merges. A `ConversationUpdate` (old -> new, within a location) makes the old
conversation's messages part of the new one. Rows keep the conversation id they were sent
with; `timeline_merges` keeps every merge seen and `timeline_conversation_roots` maps
every id that took part in a merge to the id its messages are now read under (its root,
following chains: a -> b, b -> c puts a, b and c under c). The roots of a location are
recomputed from all of its merges whenever a batch brings a merge, so a merge that arrives
before the old conversation's messages gives the same result as one that arrives after.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Double,
    Index,
    PrimaryKeyConstraint,
    Row,
    Select,
    Table,
    Text,
    and_,
    case,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql import ColumnElement

from conversations import dialect
from conversations.messages import LatestFlags, MessageEntry, resolve_merges
from conversations.projections._sql import insert_new, upsert
from conversations.projections.base import (
    EventBatch,
    Tables,
    fresh_keys,
    merge_pairs,
    messages,
)
from conversations.projections.base import Row as ProjectionRow
from conversations.schema import metadata

__all__ = [
    "PROJECTION",
    "Cursor",
    "TimelineMessage",
    "TimelineProjection",
    "contact_messages",
    "conversation_ids",
    "count_messages",
    "export_messages",
    "filter_messages",
    "get_message",
    "list_messages",
    "message_locations",
    "resolve_conversation",
    "resolve_conversations",
    "timeline_conversation_roots",
    "timeline_merges",
    "timeline_messages",
]

# Every MessageEntry field is a column of the same name, plus `updated_position`.
timeline_messages = Table(
    "timeline_messages",
    metadata,
    Column("location_id", Text, nullable=False),
    Column("message_key", Text, nullable=False),
    Column("conversation_id", Text, nullable=False),
    Column("contact_id", Text, nullable=True),
    Column("event_type", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("message_type", Text, nullable=True),
    Column("message_type_string", Text, nullable=True),
    Column("message_type_id", BigInteger, nullable=True),
    Column("status", Text, nullable=True),
    Column("call_status", Text, nullable=True),
    Column("call_duration", Double, nullable=True),
    Column("body", Text, nullable=True),
    Column("plain_text", Text, nullable=True),
    Column("content_type", Text, nullable=True),
    Column("attachments", JSONB, nullable=False),
    Column("from_", Text, nullable=True),
    Column("to", JSONB, nullable=False),
    Column("cc", JSONB, nullable=False),
    Column("bcc", JSONB, nullable=False),
    Column("subject", Text, nullable=True),
    Column("thread_id", Text, nullable=True),
    Column("email_message_id", Text, nullable=True),
    Column("message_id", Text, nullable=True),
    Column("user_id", Text, nullable=True),
    Column("source", Text, nullable=True),
    Column("conversation_provider_id", Text, nullable=True),
    # Migration 0014: NULL on rows written before it, until `conversations replay`.
    Column("chat_widget_id", Text, nullable=True),
    Column("provider", Text, nullable=True),
    Column("date_added", DateTime(timezone=True), nullable=True),
    Column("preview", Text, nullable=False),
    Column("positions", ARRAY(BigInteger), nullable=False),
    Column("updated_position", BigInteger, nullable=False),
    # The message as the read API sends it (`dialect.message_document`), rendered when the
    # row is written so a page is stored text, not JSON built per request. NULL on rows
    # written before migration 0011 (reads build those; `conversations replay` fills them).
    Column("doc", Text, nullable=True),
    # Id first: a message is addressed by id within a location or, by a key that may read
    # every location, by id alone; one index serves both (migration 0012). Every index is
    # written for every message, about 4 µs of PostgreSQL's CPU each.
    PrimaryKeyConstraint("message_key", "location_id"),
    # A conversation's messages in order (btree ASC puts NULLs last, as the order does).
    Index(None, "location_id", "conversation_id", "date_added", "message_key"),
    # A contact's messages across conversations, in order.
    Index(None, "location_id", "contact_id", "date_added", "message_key"),
    # Export: a location's messages in order.
    Index(None, "location_id", "date_added", "message_key"),
    # Lookups compare with `=`, which no NULL matches: messages without the id (an SMS
    # has no emailMessageId, some no messageId) are left out of its index.
    Index(None, "message_id", "location_id", postgresql_where=text("message_id IS NOT NULL")),
    Index(
        None,
        "email_message_id",
        "location_id",
        postgresql_where=text("email_message_id IS NOT NULL"),
    ),
)

# Every merge seen, as sent: a set, so redeliveries and order do not matter.
timeline_merges = Table(
    "timeline_merges",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("old_conversation_id", Text, primary_key=True),
    Column("new_conversation_id", Text, primary_key=True),
)

# Derived from timeline_merges: every id that took part in a merge -> the id it reads as.
timeline_conversation_roots = Table(
    "timeline_conversation_roots",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("conversation_id", Text, primary_key=True),
    Column("root_id", Text, nullable=False),
    Index(None, "location_id", "root_id"),
)

# --- the fold -------------------------------------------------------------------------------


def _message_row(entry: MessageEntry) -> dict[str, Any]:
    return {
        "location_id": entry.location_id,
        "message_key": entry.message_key,
        "conversation_id": entry.conversation_id,
        "contact_id": entry.contact_id,
        "event_type": entry.event_type,
        "direction": entry.direction,
        "channel": entry.channel,
        "message_type": entry.message_type,
        "message_type_string": entry.message_type_string,
        "message_type_id": entry.message_type_id,
        "status": entry.status,
        "call_status": entry.call_status,
        "call_duration": entry.call_duration,
        "body": entry.body,
        "plain_text": entry.plain_text,
        "content_type": entry.content_type,
        "attachments": list(entry.attachments),
        "from_": entry.from_,
        "to": list(entry.to),
        "cc": list(entry.cc),
        "bcc": list(entry.bcc),
        "subject": entry.subject,
        "thread_id": entry.thread_id,
        "email_message_id": entry.email_message_id,
        "message_id": entry.message_id,
        "user_id": entry.user_id,
        "source": entry.source,
        "conversation_provider_id": entry.conversation_provider_id,
        "chat_widget_id": entry.chat_widget_id,
        "provider": entry.provider,
        "date_added": entry.date_added,
        "preview": entry.preview,
        "positions": list(entry.positions),
        "updated_position": max(entry.positions),
        "doc": dialect.message_document(entry),
    }


def _rows(entries: Iterable[MessageEntry]) -> list[dict[str, Any]]:
    # Sorted by key, so concurrent writers (a rebuild's final catch-up, say) lock rows in
    # the same order and cannot deadlock.
    return sorted(map(_message_row, entries), key=lambda r: (r["location_id"], r["message_key"]))


def _apply_messages(conn: Connection, batch: EventBatch, tables: Tables) -> None:
    entries = messages(conn, batch)
    if not entries:
        return
    table = tables[timeline_messages]
    fresh = fresh_keys(conn, batch)
    rows = _rows(entry for key, entry in entries.items() if key not in fresh)
    new = _rows(entry for key, entry in entries.items() if key in fresh)
    if not insert_new(conn, table, new):
        rows = sorted(rows + new, key=lambda r: (r["location_id"], r["message_key"]))
    upsert(conn, table, rows, update=None)


def _apply_merges(conn: Connection, batch: EventBatch, tables: Tables) -> None:
    pairs = merge_pairs(batch.events)
    if not pairs:
        return
    merges, roots = tables[timeline_merges], tables[timeline_conversation_roots]
    rows = [
        {"location_id": loc, "old_conversation_id": old, "new_conversation_id": new}
        for loc, old, new in pairs
    ]
    upsert(conn, merges, rows, update=())
    locations = sorted({loc for loc, _, _ in pairs})
    by_location: dict[str, list[tuple[str, str]]] = defaultdict(list)
    stored = conn.execute(
        select(
            merges.c.location_id, merges.c.old_conversation_id, merges.c.new_conversation_id
        ).where(merges.c.location_id.in_(locations))
    )
    for loc, old, new in stored:
        by_location[loc].append((old, new))
    roots_rows = [
        {"location_id": loc, "conversation_id": cid, "root_id": root}
        for loc in locations
        for cid, root in sorted(resolve_merges(by_location[loc]).items())
    ]
    conn.execute(delete(roots).where(roots.c.location_id.in_(locations)))
    upsert(conn, roots, roots_rows, update=["root_id"])


class TimelineProjection:
    """Messages one row each, and which conversation ids read as one (merges)."""

    name: str = "timeline"
    tables: tuple[Table, ...] = (timeline_messages, timeline_merges, timeline_conversation_roots)

    def apply(self, conn: Connection, batch: EventBatch, tables: Tables) -> None:
        _apply_messages(conn, batch, tables)
        _apply_merges(conn, batch, tables)

    # A rebuild in one pass (`projections.bulk`): the same rows as `apply`.

    def message_rows(self, key: tuple[str, str], entry: MessageEntry) -> Iterable[ProjectionRow]:
        return ((timeline_messages, _message_row(entry)),)

    def flag_rows(self, key: tuple[str, str], latest: LatestFlags) -> Iterable[ProjectionRow]:
        return ()

    def finish(self, conn: Connection, tables: Tables) -> None:
        """Nothing to derive: merges went through `apply`."""


PROJECTION = TimelineProjection()


# --- reads ----------------------------------------------------------------------------------

Cursor = tuple[datetime | None, str]
"""Where a page ended: the `(date_added, message_key)` of its last message."""


@dataclass(frozen=True)
class TimelineMessage:
    """One message as the timeline keeps it; `conversation_id` is the id it was sent
    with (see `resolve_conversations` for the id it reads under after merges)."""

    location_id: str
    message_key: str
    conversation_id: str
    contact_id: str | None
    event_type: str
    direction: str
    channel: str
    message_type: str | None
    message_type_string: str | None
    message_type_id: int | None
    status: str | None
    call_status: str | None
    call_duration: float | None
    body: str | None
    plain_text: str | None
    content_type: str | None
    attachments: tuple[Any, ...]
    from_: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None
    thread_id: str | None
    email_message_id: str | None
    message_id: str | None
    user_id: str | None
    source: str | None
    conversation_provider_id: str | None
    chat_widget_id: str | None
    provider: str | None
    date_added: datetime | None
    preview: str
    positions: tuple[int, ...]
    updated_position: int
    doc: str | None

    @property
    def cursor(self) -> Cursor:
        """Pass as `after` to read the page that follows this message."""
        return (self.date_added, self.message_key)

    @classmethod
    def from_row(cls, row: Row[Any]) -> TimelineMessage:
        values = dict(row._mapping)
        for name in ("attachments", "to", "cc", "bcc", "positions"):
            values[name] = tuple(values[name] or ())
        return cls(**values)


def resolve_conversation(conn: Connection, location_id: str, conversation_id: str) -> str | None:
    """The id a conversation reads under: its merge root, or itself when it has messages
    and took part in no merge; None when the timeline knows nothing of it."""
    roots, messages = timeline_conversation_roots, timeline_messages
    root = conn.scalar(
        select(roots.c.root_id).where(
            roots.c.location_id == location_id, roots.c.conversation_id == conversation_id
        )
    )
    if root is not None:
        return str(root)
    known = conn.scalar(
        select(messages.c.message_key)
        .where(messages.c.location_id == location_id, messages.c.conversation_id == conversation_id)
        .limit(1)
    )
    return conversation_id if known is not None else None


def resolve_conversations(
    conn: Connection, location_id: str, conversation_ids: Iterable[str]
) -> dict[str, str]:
    """Each given id -> the id it reads under (itself when it took part in no merge)."""
    wanted = sorted(set(conversation_ids))
    roots = timeline_conversation_roots
    found = {
        row.conversation_id: row.root_id
        for row in conn.execute(
            select(roots.c.conversation_id, roots.c.root_id).where(
                roots.c.location_id == location_id, roots.c.conversation_id.in_(wanted)
            )
        )
    }
    return {cid: found.get(cid, cid) for cid in wanted}


def conversation_ids(conn: Connection, location_id: str, root_id: str) -> list[str]:
    """The conversations read as one with `root_id`: the root first, then every id merged
    into it, sorted. Any id of the group may be given; it is resolved to its root first."""
    roots = timeline_conversation_roots
    root = resolve_conversations(conn, location_id, [root_id])[root_id]
    members = conn.scalars(
        select(roots.c.conversation_id).where(
            roots.c.location_id == location_id, roots.c.root_id == root
        )
    )
    return [root, *sorted(set(members) - {root})]


def get_message(
    conn: Connection, location_id: str, key_or_message_id: str
) -> TimelineMessage | None:
    """A message by its key, its HighLevel `messageId` or its `emailMessageId`, in that
    order of preference (then by key, should two messages share an id)."""
    t = timeline_messages
    preference = case(
        (t.c.message_key == key_or_message_id, 0),
        (t.c.message_id == key_or_message_id, 1),
        else_=2,
    )
    row = conn.execute(
        select(t)
        .where(
            t.c.location_id == location_id,
            or_(
                t.c.message_key == key_or_message_id,
                t.c.message_id == key_or_message_id,
                t.c.email_message_id == key_or_message_id,
            ),
        )
        .order_by(preference, t.c.message_key)
        .limit(1)
    ).first()
    return TimelineMessage.from_row(row) if row is not None else None


def list_messages(
    conn: Connection,
    location_id: str,
    conversation_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    descending: bool = False,
    channels: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelineMessage]:
    """A page of a conversation's messages, merged conversations included (any id of a
    merged group reads the whole group), in timeline order (see the module doc).

    `after` is the cursor of the last message of the previous page; `channels` keeps only
    those channels; `since` (inclusive) and `until` (exclusive) bound `date_added`.
    """
    t = timeline_messages
    scopes = [
        and_(t.c.location_id == location_id, t.c.conversation_id == cid)
        for cid in conversation_ids(conn, location_id, conversation_id)
    ]
    return _page(conn, scopes, limit, after, descending, channels, since, until)


def contact_messages(
    conn: Connection,
    location_id: str,
    contact_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    descending: bool = False,
    channels: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelineMessage]:
    """A page of one contact's messages across all its conversations (as `list_messages`)."""
    t = timeline_messages
    scope = and_(t.c.location_id == location_id, t.c.contact_id == contact_id)
    return _page(conn, [scope], limit, after, descending, channels, since, until)


def export_messages(
    conn: Connection,
    location_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    descending: bool = False,
    channels: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelineMessage]:
    """A page of every message of a location (as `list_messages`), for exports."""
    scope = timeline_messages.c.location_id == location_id
    return _page(conn, [scope], limit, after, descending, channels, since, until)


def message_locations(
    conn: Connection, key_or_message_id: str, within: Collection[str] | None = None
) -> list[str]:
    """The locations holding a message with this key, `messageId` or `emailMessageId`,
    sorted; `within` limits the search to those locations (None: every location)."""
    t = timeline_messages
    parts = []
    for id_column in (t.c.message_key, t.c.message_id, t.c.email_message_id):
        query = select(t.c.location_id).where(id_column == key_or_message_id)
        if within is not None:
            query = query.where(t.c.location_id.in_(sorted(within)))
        parts.append(query)
    found = conn.scalars(union_all(*parts))
    return sorted(set(found))


def _scopes(
    conn: Connection, location_id: str, conversation_id: str | None, contact_id: str | None
) -> list[ColumnElement[bool]]:
    t = timeline_messages
    base = [t.c.location_id == location_id]
    if contact_id is not None:
        base.append(t.c.contact_id == contact_id)
    if conversation_id is None:
        return [and_(*base)]
    return [
        and_(*base, t.c.conversation_id == cid)
        for cid in conversation_ids(conn, location_id, conversation_id)
    ]


def filter_messages(
    conn: Connection,
    location_id: str,
    *,
    conversation_id: str | None = None,
    contact_id: str | None = None,
    limit: int,
    after: Cursor | None = None,
    descending: bool = False,
    channels: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelineMessage]:
    """A page of a location's messages, narrowed to a conversation (its merged group
    included) and/or a contact when given; otherwise as `list_messages`."""
    scopes = _scopes(conn, location_id, conversation_id, contact_id)
    return _page(conn, scopes, limit, after, descending, channels, since, until)


def count_messages(
    conn: Connection,
    location_id: str,
    *,
    conversation_id: str | None = None,
    contact_id: str | None = None,
    channels: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many messages `filter_messages` pages through with the same filters."""
    if channels is not None and not channels:
        return 0
    t = timeline_messages
    where: list[ColumnElement[bool]] = [
        or_(*_scopes(conn, location_id, conversation_id, contact_id))
    ]
    if channels is not None:
        where.append(t.c.channel.in_(list(channels)))
    if since is not None or until is not None:
        where.append(t.c.date_added.is_not(None))
    if since is not None:
        where.append(t.c.date_added >= since)
    if until is not None:
        where.append(t.c.date_added < until)
    return int(conn.scalar(select(func.count()).select_from(t).where(*where)) or 0)


# --- keyset pagination ----------------------------------------------------------------------


_Segment = tuple[ColumnElement[bool], ...]
"""The conditions of the dated or of the undated messages. The order reads one segment
after the other and each is one index range, so a page costs an index scan from the
cursor on (an OR of both in one query would not use the index order)."""


def _segments(
    after: Cursor | None, descending: bool, since: datetime | None, until: datetime | None
) -> list[_Segment]:
    t = timeline_messages
    dated: list[ColumnElement[bool]] = [t.c.date_added.is_not(None)]
    undated: list[ColumnElement[bool]] = [t.c.date_added.is_(None)]
    if since is not None:
        dated.append(t.c.date_added >= since)
    if until is not None:
        dated.append(t.c.date_added < until)
    with_undated = since is None and until is None
    with_dated = True
    if after is not None:
        after_date, after_key = after
        if after_date is not None:  # the cursor is among the dated messages
            keyset = tuple_(t.c.date_added, t.c.message_key)
            dated.append(
                keyset < (after_date, after_key) if descending else keyset > (after_date, after_key)
            )
            with_undated = with_undated and not descending
        else:  # among the undated ones
            undated.append(
                t.c.message_key < after_key if descending else t.c.message_key > after_key
            )
            with_dated = descending
    segments: list[_Segment] = []
    if with_dated:
        segments.append(tuple(dated))
    if with_undated:
        segments.append(tuple(undated))
    return segments[::-1] if descending else segments


def _segment_query(
    scopes: Sequence[ColumnElement[bool]],
    segment: _Segment,
    descending: bool,
    limit: int,
    channels: Sequence[str] | None,
) -> Select[Any]:
    t = timeline_messages
    extra = [t.c.channel.in_(list(channels))] if channels is not None else []

    def ordered(date: ColumnElement[Any], key: ColumnElement[Any]) -> list[ColumnElement[Any]]:
        return [date.desc(), key.desc()] if descending else [date.asc(), key.asc()]

    parts = [
        select(t)
        .where(scope, *segment, *extra)
        .order_by(*ordered(t.c.date_added, t.c.message_key))
        .limit(limit)
        for scope in scopes
    ]
    if len(parts) == 1:
        return parts[0]
    # One ordered, limited index scan per conversation of a merged group, then the best
    # `limit` of them: PostgreSQL 15 cannot walk one index in order for several ids.
    union = union_all(*parts).subquery()
    return select(union).order_by(*ordered(union.c.date_added, union.c.message_key)).limit(limit)


def _page(
    conn: Connection,
    scopes: Sequence[ColumnElement[bool]],
    limit: int,
    after: Cursor | None,
    descending: bool,
    channels: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> list[TimelineMessage]:
    if limit <= 0 or not scopes or (channels is not None and not channels):
        return []
    page: list[TimelineMessage] = []
    for segment in _segments(after, descending, since, until):
        wanted = limit - len(page)
        if wanted <= 0:
            break
        query = _segment_query(scopes, segment, descending, wanted, channels)
        page.extend(TimelineMessage.from_row(row) for row in conn.execute(query))
    return page
