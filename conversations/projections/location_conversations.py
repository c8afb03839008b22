"""Conversations per location: one row per conversation, as HighLevel's conversation
search and conversation endpoints show them (last message, counts, unread/starred flags).

Four working tables feed the summary `location_conversations`:

- `location_conversation_messages`, a ledger with one row per message (not per
  delivery), rebuilt from every event of the message with `build_message`. It keeps the
  conversation id *as sent*: merges are applied when summarising, so a merge arriving
  before or after the messages gives the same result.
- `location_conversation_flags`, one row per conversation that had a
  ConversationUnreadUpdate, rebuilt with `build_flags` from all of them (the greatest
  envelope `timestamp` wins, whatever the arrival order).
- `location_conversation_merges`, every (old, new) pair of ConversationUpdate events, and
  `location_conversation_roots`, `resolve_merges` over a location's pairs: the root each
  merged id ends up in (chains resolve transitively). An id that is in no pair is its own
  root.

A summary row belongs to each root with anything to show: messages (of the root or of any
conversation merged into it) or flags of its own. The flags are the root's only: once a
conversation is merged away, HighLevel reports the flags of the conversation it went
into, so the merged conversation's last flags are stale. A merged id has no row of its
own; `resolve` and `get` map it to its root.

Every batch recomputes what it touches from its inputs (all events of a touched message,
all unread updates of a touched conversation, all merge pairs of a touched location), and
then the summary of every root whose inputs changed, from the working tables. So the
tables depend only on the set of events, never on their order, cutting or duplicates.

A summary's contact is that of the root's own newest message naming one, else its flags'
(its latest unread update's), else the one the merges into it name (`contactId` of the
ConversationUpdate; the greatest, should they disagree), else that of the newest merged
message naming one: HighLevel merges a live chat into the conversation of the contact it
identified the visitor as (and says which), and the chat's messages keep naming the
visitor's contact.

A summary's `last_message_type` is its last message's `TYPE_*` name (`dialect.message_type`,
kept on each message of the ledger), what `lastMessageType` shows and filters on.

"Last message" is the one with the greatest `(date_added, message_key)`, a missing
`date_added` sorting lowest. Lists order by `(last_message_at, conversation_id)`, a
conversation without messages counting as the oldest; `sort_at` is that key with NULL
replaced by the least timestamp, so the order has an index and keyset pages can seek.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    type_coerce,
    union,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert

from conversations.dialect import CHANNEL_TYPES, message_type
from conversations.messages import (
    FlagsOrder,
    LatestFlags,
    MessageEntry,
    flags_order,
    latest_flags,
    resolve_merges,
)
from conversations.payloads import ConversationUpdatePayload, PayloadError, parse_payload
from conversations.projections._sql import (
    NO_TIME,
    bound_unnest,
    cached,
    date_order,
    in_keys,
    insert_new,
    key_arrays,
    load,
    rank_ties,
    unnest,
    upsert,
    write_rows,
)
from conversations.projections.base import (
    MERGE_EVENT_TYPE,
    EventBatch,
    Row,
    Tables,
    fresh_keys,
    merge_pairs,
    message_keys,
)
from conversations.projections.base import messages as batch_messages
from conversations.schema import metadata
from conversations.store import StoredEvent, read_stream_events

__all__ = [
    "PROJECTION",
    "ConversationSummary",
    "LocationConversationsProjection",
    "conversation_flags",
    "conversation_locations",
    "conversation_merges",
    "conversation_messages",
    "conversation_roots",
    "conversations_summary",
    "get",
    "resolve",
    "search",
]

UNREAD_UPDATE = "ConversationUnreadUpdate"

"""`sort_at` of a conversation without a dated message: before every real date."""

conversation_messages = Table(
    "location_conversation_messages",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("message_key", Text, primary_key=True),
    Column("conversation_id", Text, nullable=False),
    Column("contact_id", Text, nullable=True),
    Column("channel", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("status", Text, nullable=True),
    Column("date_added", DateTime(timezone=True), nullable=True),
    Column("preview", Text, nullable=False),
    # `dialect.message_type`: the `TYPE_*` name it shows (migration 0015; NULL on rows
    # written before it, and for a message of channel Other without a name).
    Column("message_type", Text, nullable=True),
    # A summary is recomputed from the messages of its conversations.
    Index(None, "location_id", "conversation_id"),
)

conversation_flags = Table(
    "location_conversation_flags",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("conversation_id", Text, primary_key=True),
    Column("unread_count", Integer, nullable=True),
    Column("starred", Boolean, nullable=True),
    Column("inbox", Boolean, nullable=True),
    Column("deleted", Boolean, nullable=True),
    Column("contact_id", Text, nullable=True),
    # The winning update's order key (`messages.flags_order`), so a batch's updates are
    # compared with it instead of rereading every earlier update. NULL `winner_content`:
    # a row written before these columns existed (refolded from all updates once).
    Column("winner_at", DateTime(timezone=True), nullable=True),
    Column("winner_content", Text, nullable=True),
)

conversation_merges = Table(
    "location_conversation_merges",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("old_conversation_id", Text, primary_key=True),
    Column("new_conversation_id", Text, primary_key=True),
    # The contact the merge names (`contactId`: the one HighLevel identified the visitor
    # as), the greatest when its deliveries disagree (migration 0016).
    Column("contact_id", Text, nullable=True),
)

conversation_roots = Table(
    "location_conversation_roots",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("conversation_id", Text, primary_key=True),
    Column("root_id", Text, nullable=False),
    # The members of a root, for its summary.
    Index(None, "location_id", "root_id"),
    # A conversation addressed by id alone (a key that may read every location).
    Index(None, "conversation_id"),
)

conversations_summary = Table(
    "location_conversations",
    metadata,
    Column("location_id", Text, nullable=False),
    Column("conversation_id", Text, nullable=False),
    Column("contact_id", Text, nullable=True),
    Column("last_message_at", DateTime(timezone=True), nullable=True),
    Column("last_message_channel", Text, nullable=True),
    Column("last_message_direction", Text, nullable=True),
    Column("last_message_status", Text, nullable=True),
    Column("last_message_preview", Text, nullable=True),
    Column("last_message_key", Text, nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("channels", ARRAY(Text), nullable=False),
    Column("unread_count", Integer, nullable=True),
    Column("starred", Boolean, nullable=True),
    Column("inbox", Boolean, nullable=True),
    Column("deleted", Boolean, nullable=True),
    Column("merged_ids", ARRAY(Text), nullable=False),
    Column("first_message_at", DateTime(timezone=True), nullable=True),
    # `last_message_at`, or NO_TIME when there is none: the list order.
    Column("sort_at", DateTime(timezone=True), nullable=False),
    # `unread_count > 0`, for the read/unread filters.
    Column("unread", Boolean, nullable=False),
    # The last message's `message_type` (migration 0015): NULL reads as its channel's name.
    Column("last_message_type", Text, nullable=True),
    # Id first: a conversation is addressed within a location or, by a key that may read
    # every location, by id alone; one index serves both (migration 0012). A summary's
    # sort key moves with every message, so each update writes every index again.
    PrimaryKeyConstraint("conversation_id", "location_id"),
    # Every list is scoped by location and ordered by (sort_at, conversation_id), either
    # way (a b-tree scans both directions); each filter has an index in that order.
    Index(None, "location_id", "sort_at", "conversation_id"),
    Index(None, "location_id", "contact_id", "sort_at", "conversation_id"),
    Index(
        None,
        "location_id",
        "last_message_channel",
        "last_message_direction",
        "sort_at",
        "conversation_id",
    ),
    # Unread and starred conversations are few: their lists read partial indexes (the
    # filters say `IS TRUE`, as these predicates do). The read list (`IS FALSE`), most of
    # a location, reads the first index.
    Index(
        "ix_location_conversations_unread",
        "location_id",
        "sort_at",
        "conversation_id",
        postgresql_where=text("unread IS TRUE"),
    ),
    Index(
        "ix_location_conversations_starred",
        "location_id",
        "sort_at",
        "conversation_id",
        postgresql_where=text("starred IS TRUE"),
    ),
)

Key = tuple[str, str]
"""(location_id, message_key or conversation_id)"""

_LEDGER_VALUES = (
    "conversation_id",
    "contact_id",
    "channel",
    "direction",
    "status",
    "date_added",
    "preview",
    "message_type",
)
_SHOWN_FLAGS = ("unread_count", "starred", "inbox", "deleted", "contact_id")
_FLAG_VALUES = (*_SHOWN_FLAGS, "winner_at", "winner_content")


@dataclass(frozen=True)
class _Physical:
    """The tables this run writes (live ones, or a rebuild's side copies)."""

    messages: Table
    flags: Table
    merges: Table
    roots: Table
    summary: Table

    @classmethod
    def of(cls, tables: Tables) -> _Physical:
        return cls(
            tables[conversation_messages],
            tables[conversation_flags],
            tables[conversation_merges],
            tables[conversation_roots],
            tables[conversations_summary],
        )


class LocationConversationsProjection:
    name: str = "location_conversations"
    tables: tuple[Table, ...] = (
        conversation_messages,
        conversation_flags,
        conversation_merges,
        conversation_roots,
        conversations_summary,
    )

    def apply(self, conn: Connection, batch: EventBatch, tables: Tables) -> None:
        physical = _Physical.of(tables)
        changes = _update_ledger(
            conn,
            physical.messages,
            message_keys(batch.events),
            batch_messages(conn, batch),
            fresh_keys(conn, batch),
        )
        flags = _update_flags(conn, physical.flags, batch)
        touched = _update_merges(
            conn, physical, merge_pairs(batch.events), _merge_contacts(batch.events)
        )
        if changes or flags or touched:
            _update_summaries(conn, physical, changes, flags, touched)

    # A rebuild in one pass (`projections.bulk`): the same rows as `apply`.

    def message_rows(self, key: Key, entry: MessageEntry) -> Iterable[Row]:
        return ((conversation_messages, _ledger_row(key, entry)),)

    def flag_rows(self, key: Key, latest: LatestFlags) -> Iterable[Row]:
        return ((conversation_flags, _flags_row(key, latest)),)

    def finish(self, conn: Connection, tables: Tables) -> None:
        """Every summary from the complete working tables (merges went through `apply`)."""
        physical = _Physical.of(tables)
        conn.execute(delete(physical.summary))
        _recompute(conn, physical, None)


PROJECTION = LocationConversationsProjection()


# --- what a batch touches -------------------------------------------------------------------


def _changed(old: Any, new: dict[str, Any], names: Sequence[str]) -> bool:
    return old is None or any(old[name] != new[name] for name in names)


# --- working tables -------------------------------------------------------------------------


def _ledger_row(key: Key, entry: MessageEntry) -> dict[str, Any]:
    # Keyed by the events' message_id, the key every other step looks messages up by.
    return {
        "location_id": key[0],
        "message_key": key[1],
        "conversation_id": entry.conversation_id,
        "contact_id": entry.contact_id or None,
        "channel": entry.channel,
        "direction": entry.direction,
        "status": entry.status,
        "date_added": entry.date_added,
        "preview": entry.preview,
        "message_type": message_type(entry),
    }


LedgerChange = tuple[Key, Mapping[str, Any] | None, Mapping[str, Any] | None]
"""(message key, its ledger row before, after); None: no row."""


def _update_ledger(
    conn: Connection,
    ledger: Table,
    keys: Sequence[Key],
    entries: Mapping[Key, MessageEntry],
    fresh: Collection[Key],
) -> list[LedgerChange]:
    """Rewrite the touched messages (`entries`: each rebuilt from all of its events; a
    message none of whose events folds any more has none, and leaves the ledger); returns
    the rows that changed, before and after. `fresh`: messages new to the ledger (see
    `fresh_keys`), appended rather than looked up and upserted."""
    if not keys:
        return []
    new = {key: _ledger_row(key, entries[key]) for key in keys if key in entries}
    appended = [key for key in keys if key in fresh and key in new]
    if not insert_new(conn, ledger, [new[key] for key in appended]):
        appended = []  # one of them had a row after all: as any other
    done = set(appended)
    old = load(conn, ledger, "message_key", [key for key in keys if key not in done])
    changes: list[LedgerChange] = []
    upserts, gone = [], []
    for key in keys:
        before, after = old.get(key), new.get(key)
        if key in done:
            pass
        elif after is not None and _changed(before, after, _LEDGER_VALUES):
            upserts.append(after)
        elif after is None and before is not None:
            gone.append(key)
        else:
            continue
        changes.append((key, before, after))
    upsert(conn, ledger, upserts, update=None)
    if gone:
        conn.execute(delete(ledger).where(in_keys(ledger, "message_key", gone)))
    return changes


def _flags_row(key: Key, latest: LatestFlags) -> dict[str, Any]:
    flags = latest.flags
    return {
        "location_id": key[0],
        "conversation_id": key[1],
        "unread_count": flags.unread_count,
        "starred": flags.starred,
        "inbox": flags.inbox,
        "deleted": flags.deleted,
        "contact_id": flags.contact_id or None,
        "winner_at": latest.time,
        "winner_content": latest.content,
    }


def _stored_order(row: Any) -> FlagsOrder:
    return flags_order(row["winner_at"], row["winner_content"])


FlagsChange = tuple[Key, Mapping[str, Any] | None, Mapping[str, Any]]
"""(conversation, its flags row before (None: none), after)"""


def _update_flags(conn: Connection, flags: Table, batch: EventBatch) -> list[FlagsChange]:
    """Fold the batch's unread updates into the flags: per conversation, the batch's
    latest update against the stored winner, the greater order key wins (a max: the same
    whatever the order, cutting or duplicates). Returns the conversations that changed."""
    by_stream: dict[Key, list[StoredEvent]] = defaultdict(list)
    for event in batch.events:
        if event.event_type == UNREAD_UPDATE:
            by_stream[(event.location_id, event.stream_id)].append(event)
    if not by_stream:
        return []
    keys = sorted(by_stream)
    old = load(conn, flags, "conversation_id", keys)
    legacy = [key for key in keys if key in old and old[key]["winner_content"] is None]
    if legacy:  # rows older than the order key: refold them from every update once
        for event in read_stream_events(conn, legacy, UNREAD_UPDATE, batch.end):
            by_stream[(event.location_id, event.stream_id)].append(event)
    rows: list[dict[str, Any]] = []
    shown: list[FlagsChange] = []
    for key in keys:
        latest = latest_flags(by_stream[key])
        if latest is None:
            continue
        before = old.get(key)
        stored = before is not None and before["winner_content"] is not None
        if stored and _stored_order(before) >= latest.order:
            continue  # the stored winner stays
        row = _flags_row(key, latest)
        if _changed(before, row, _FLAG_VALUES):
            rows.append(row)
            if _changed(before, row, _SHOWN_FLAGS):
                shown.append((key, before, row))
    upsert(conn, flags, rows, update=None)
    return shown


MergePair = tuple[str, str, str]
"""(location_id, old conversation id, new conversation id)"""


def _merge_contacts(events: Iterable[StoredEvent]) -> dict[MergePair, str]:
    """The contact each merge pair among `events` names (the greatest when several
    deliveries of a pair disagree: a max, the same in any order or cutting)."""
    contacts: dict[MergePair, str] = {}
    for event in events:
        if event.event_type != MERGE_EVENT_TYPE:
            continue
        try:
            payload = parse_payload(event.payload)
        except PayloadError:
            continue
        if not isinstance(payload, ConversationUpdatePayload) or payload.contactId is None:
            continue
        pair = (event.location_id, payload.oldConversationId, payload.newConversationId)
        if pair not in contacts or payload.contactId > contacts[pair]:
            contacts[pair] = payload.contactId
    return contacts


def _update_merges(
    conn: Connection,
    tables: _Physical,
    pairs: Sequence[MergePair],
    contacts: Mapping[MergePair, str],
) -> set[Key]:
    """Record new merge pairs (and the contacts they name) and re-resolve the roots of
    their locations; returns every id whose root changed, with its old and new root, and
    the target of each pair whose contact changed."""
    if not pairs:
        return set()
    merges, roots = tables.merges, tables.roots
    inserted = conn.execute(
        pg_insert(merges)
        .values(
            [
                {
                    "location_id": location,
                    "old_conversation_id": old,
                    "new_conversation_id": new,
                    "contact_id": contacts.get((location, old, new)),
                }
                for location, old, new in pairs
            ]
        )
        .on_conflict_do_nothing()
        .returning(merges.c.location_id, merges.c.old_conversation_id, merges.c.new_conversation_id)
    )
    new_pairs: set[MergePair] = {(row[0], row[1], row[2]) for row in inserted}
    # A target's contact may come from its merges: recompute the targets whose contact
    # is new (a new pair naming one, or a known pair naming a greater one).
    touched = {
        (location, new) for location, old, new in new_pairs if (location, old, new) in contacts
    }
    touched |= _raise_merge_contacts(
        conn, merges, {pair: contact for pair, contact in contacts.items() if pair not in new_pairs}
    )
    locations = sorted({location for location, _, _ in new_pairs})
    if not locations:  # every pair was known: no root moves
        return touched
    known: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in conn.execute(select(merges).where(merges.c.location_id.in_(locations))):
        known[row.location_id].append((row.old_conversation_id, row.new_conversation_id))
    current: dict[Key, str] = {
        (row.location_id, row.conversation_id): row.root_id
        for row in conn.execute(select(roots).where(roots.c.location_id.in_(locations)))
    }
    rows = []
    for location in locations:
        for conversation, root in sorted(resolve_merges(known[location]).items()):
            key = (location, conversation)
            before = current.get(key, conversation)
            if key in current and before == root:
                continue
            rows.append({"location_id": location, "conversation_id": conversation, "root_id": root})
            touched |= {key, (location, before), (location, root)}
    upsert(conn, roots, rows, update=None)
    return touched


def _raise_merge_contacts(
    conn: Connection, merges: Table, contacts: Mapping[MergePair, str]
) -> set[Key]:
    """Store the contacts of known merge pairs where they are greater than the stored one
    (or there is none); returns the targets whose contact changed."""
    if not contacts:
        return set()
    ordered = sorted(contacts.items())
    given = unnest(
        location_id=([pair[0] for pair, _ in ordered], Text()),
        old_id=([pair[1] for pair, _ in ordered], Text()),
        new_id=([pair[2] for pair, _ in ordered], Text()),
        contact_id=([contact for _, contact in ordered], Text()),
    )
    raised = conn.execute(
        merges.update()
        .where(
            merges.c.location_id == given.c.location_id,
            merges.c.old_conversation_id == given.c.old_id,
            merges.c.new_conversation_id == given.c.new_id,
            # In code point order, as `_merge_contacts` compares them.
            or_(
                merges.c.contact_id.is_(None),
                merges.c.contact_id.collate("C") < given.c.contact_id.collate("C"),
            ),
        )
        .values(contact_id=given.c.contact_id)
        .returning(merges.c.location_id, merges.c.new_conversation_id)
    )
    return {(row[0], row[1]) for row in raised}


# --- the summary ----------------------------------------------------------------------------


def _update_summaries(
    conn: Connection,
    tables: _Physical,
    changes: Sequence[LedgerChange],
    flags: Sequence[FlagsChange],
    touched: set[Key],
) -> None:
    """Bring the summaries of everything that changed up to date: the usual changes (a new
    message, a new status or preview of a known one, new flags) as exact deltas on the
    stored rows (`_Delta`); any other (merges, a message that moves or changes its date,
    channel or contact) by recomputing the whole root from the working tables. Rows of
    touched ids that are no longer roots or have nothing left to show are deleted."""
    conversations = set(touched) | {key for key, _, _ in flags}
    for key, before, after in changes:
        for row in (before, after):
            if row is not None:
                conversations.add((key[0], row["conversation_id"]))
    root_of = {
        (row.location_id, row.conversation_id): row.root_id
        for row in conn.execute(
            _roots_statement(tables.roots), key_arrays("k", conversations, "conversation_id")
        )
    }

    def root(location: str, conversation: str) -> Key:
        return location, root_of.get((location, conversation), conversation)

    forced = set(touched)  # conversations whose roots are recomputed
    steps: list[tuple[Key, Key, Mapping[str, Any] | None, Mapping[str, Any]]] = []
    for key, before, after in changes:
        if after is not None and (before is None or _in_place(before, after)):
            steps.append((root(key[0], after["conversation_id"]), key, before, after))
        else:
            forced |= {(key[0], row["conversation_id"]) for row in (before, after) if row}
    # Flags show on their own conversation's row only while it is a root.
    own_flags = [change for change in flags if root(*change[0]) == change[0]]
    forced_roots = {root(*key) for key in forced}
    delta_roots = {r for r, *_ in steps} | {key for key, _, _ in own_flags}
    # A conversation that took part in no merge and has no row has nothing to show yet (a
    # row is dropped once it has not): one only new messages reach starts from an empty
    # row, as a delta, instead of being recomputed (new conversations are common).
    joined = {r for r, _, before, _ in steps if before is None}
    joined -= {r for r, _, before, _ in steps if before is not None}
    empty = {r for r in joined if r not in root_of}
    delta = _Delta(conn, tables.summary, delta_roots - forced_roots, empty)
    delta.order_ties(steps)
    for root_key, key, before, after in steps:
        if root_key not in forced_roots and not delta.apply(root_key, key, before, after):
            forced_roots.add(root_key)
    for key, before, after in own_flags:
        if key not in forced_roots and not delta.apply_flags(key, before, after):
            forced_roots.add(key)
    delta.write(exclude=forced_roots)
    if not forced_roots:
        return
    kept = _recompute(conn, tables, forced_roots)
    stale = (forced | forced_roots) - kept
    if stale:
        summary = tables.summary
        conn.execute(delete(summary).where(in_keys(summary, "conversation_id", stale)))


def _empty_row(root: Key) -> dict[str, Any]:
    """The summary of a conversation with nothing to show yet, for `_Delta` to add to."""
    return {
        "location_id": root[0],
        "conversation_id": root[1],
        "contact_id": None,
        "last_message_at": None,
        "last_message_channel": None,
        "last_message_direction": None,
        "last_message_status": None,
        "last_message_preview": None,
        "last_message_key": None,
        "message_count": 0,
        "channels": [],
        "unread_count": None,
        "starred": None,
        "inbox": None,
        "deleted": None,
        "merged_ids": [],
        "first_message_at": None,
        "sort_at": NO_TIME,
        "unread": False,
    }


@cached
def _roots_statement(roots: Table) -> Any:
    """The roots of the conversations bound as `key_arrays("k", ..., "conversation_id")`."""
    wanted = bound_unnest("k", location_id=Text(), conversation_id=Text())
    return select(roots.c.location_id, roots.c.conversation_id, roots.c.root_id).where(
        tuple_(roots.c.location_id, roots.c.conversation_id).in_(
            select(wanted.c.location_id, wanted.c.conversation_id)
        )
    )


def _in_place(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """A change that leaves the message where it was in its summary: same conversation,
    date, channel and contact (only its status, preview or direction changed)."""
    same = ("conversation_id", "date_added", "channel", "contact_id")
    return all(before[name] == after[name] for name in same)


class _Delta:
    """Summary rows updated in memory from single ledger changes, where the result is
    exactly what `_recompute` would give; `apply` says False where it cannot tell (the
    root must then be recomputed)."""

    def __init__(
        self, conn: Connection, summary: Table, roots: set[Key], empty: Collection[Key] = ()
    ) -> None:
        """The stored rows of `roots`; those of `empty` without one start empty
        (`_empty_row`)."""
        self._conn, self._summary = conn, summary
        self._rows: dict[Key, dict[str, Any]] = load(conn, summary, "conversation_id", roots)
        self._empty = roots.intersection(empty) - self._rows.keys()
        for root in self._empty:
            self._rows[root] = _empty_row(root)
        self._changed: set[Key] = set()
        self._key_rank: dict[str, int] = {}

    def order_ties(
        self, steps: Iterable[tuple[Key, Key, Mapping[str, Any] | None, Mapping[str, Any]]]
    ) -> None:
        """Rank the message keys that may break a tie on a root's last message date
        (`rank_ties`): those of the new messages, while `apply` goes through the steps."""
        joining = [
            (root, key[1], after["date_added"])
            for root, key, before, after in steps
            if before is None
        ]
        self._key_rank = rank_ties(self._conn, self._rows, joining)

    def apply(
        self,
        root: Key,
        message_key: Key,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any],
    ) -> bool:
        row = self._rows.get(root)
        if row is None:  # a root without a row: recompute (merged ids, first message...)
            return False
        is_last = row["last_message_key"] == message_key[1]
        if before is not None:  # in place: only the last message's own fields show
            if is_last:
                row["last_message_direction"] = after["direction"]
                row["last_message_status"] = after["status"]
                row["last_message_preview"] = after["preview"]
                row["last_message_type"] = after["message_type"]
                self._changed.add(root)
            return True
        date = after["date_added"]
        current = date_order(row["last_message_at"])
        new = date_order(date)
        last_key = row["last_message_key"]
        if last_key is not None and new == current:  # a tie: the key decides
            rank = self._key_rank
            if message_key[1] not in rank or last_key not in rank:
                return False  # not ranked (cannot happen): recompute
            newest = rank[message_key[1]] > rank[last_key]
        else:
            newest = last_key is None or new > current
        contact = after["contact_id"]
        merged_in = after["conversation_id"] != root[1]
        if contact is not None and (not newest or merged_in) and contact != row["contact_id"]:
            # Whether it is the newest message with a contact (or, merged in, whether the
            # root has a contact of its own): unknown here.
            return False
        row["message_count"] += 1
        # Sorted as SQL's array_agg(... ORDER BY channel) sorts them: the vocabulary
        # (`messages.CHANNELS`) orders the same in "C" and in linguistic collations.
        row["channels"] = sorted({*row["channels"], after["channel"]})
        if date is not None and (row["first_message_at"] is None or date < row["first_message_at"]):
            row["first_message_at"] = date
        if newest:
            row["last_message_at"] = date
            row["last_message_channel"] = after["channel"]
            row["last_message_direction"] = after["direction"]
            row["last_message_status"] = after["status"]
            row["last_message_preview"] = after["preview"]
            row["last_message_key"] = message_key[1]
            row["last_message_type"] = after["message_type"]
            row["sort_at"] = date or NO_TIME
            if contact is not None:
                row["contact_id"] = contact
        self._changed.add(root)
        return True

    def apply_flags(
        self, root: Key, before: Mapping[str, Any] | None, after: Mapping[str, Any]
    ) -> bool:
        """New flags of a root conversation."""
        row = self._rows.get(root)
        if row is None:  # flags of a conversation with no row yet: recompute
            return False
        old_contact = before["contact_id"] if before is not None else None
        if after["contact_id"] != old_contact:
            return False  # the row's contact may come from the flags: recompute
        for name in ("unread_count", "starred", "inbox", "deleted"):
            row[name] = after[name]
        row["unread"] = (after["unread_count"] or 0) > 0
        self._changed.add(root)
        return True

    def write(self, exclude: set[Key]) -> None:
        rows = [self._rows[key] for key in sorted(self._changed - exclude)]
        write_rows(self._conn, self._summary, rows, self._empty, _summary_key)


def _summary_key(row: Mapping[str, Any]) -> Key:
    return row["location_id"], row["conversation_id"]


def _recompute(conn: Connection, tables: _Physical, wanted: set[Key] | None) -> set[Key]:
    """Upsert the summary rows of the roots `wanted` (None: of every conversation there is
    anything of) from the working tables, in one INSERT ... SELECT; returns the roots
    that got a row (those with anything to show)."""
    statement = _recompute_statement(tables, wanted is None)
    parameters = {} if wanted is None else key_arrays("w", wanted, "root_id")
    result = conn.execute(statement, parameters)
    return {(row.location_id, row.conversation_id) for row in result}


@cached
def _recompute_statement(tables: _Physical, every: bool) -> Any:
    """`_recompute`'s statement: of every root, or (not `every`) of the roots bound as
    `key_arrays("w", ..., "root_id")`."""
    messages, flags, roots, summary = tables.messages, tables.flags, tables.roots, tables.summary
    if every:  # every root: of each conversation with messages or flags
        seen = union(
            select(messages.c.location_id, messages.c.conversation_id),
            select(flags.c.location_id, flags.c.conversation_id),
        ).subquery()
        affected = (
            select(
                seen.c.location_id,
                func.coalesce(roots.c.root_id, seen.c.conversation_id).label("root_id"),
            )
            .select_from(
                seen.outerjoin(
                    roots,
                    and_(
                        roots.c.location_id == seen.c.location_id,
                        roots.c.conversation_id == seen.c.conversation_id,
                    ),
                )
            )
            .distinct()
            .cte("affected")
        )
    else:
        wanted = bound_unnest("w", location_id=Text(), root_id=Text())
        affected = select(wanted).cte("affected")
    members = union(
        select(
            affected.c.location_id,
            affected.c.root_id,
            affected.c.root_id.label("conversation_id"),
        ),
        select(roots.c.location_id, roots.c.root_id, roots.c.conversation_id).join(
            affected,
            and_(
                roots.c.location_id == affected.c.location_id,
                roots.c.root_id == affected.c.root_id,
            ),
        ),
    ).cte("members")
    of_member = and_(
        messages.c.location_id == members.c.location_id,
        messages.c.conversation_id == members.c.conversation_id,
    )
    newest_first = (messages.c.date_added.desc().nulls_last(), messages.c.message_key.desc())
    own = members.c.conversation_id == members.c.root_id

    def newest_contact(among: ColumnElement[bool]) -> Any:
        """The contact of the newest message `among` a root's that names one."""
        ordered = func.array_agg(aggregate_order_by(messages.c.contact_id, *newest_first))
        return type_coerce(
            ordered.filter(and_(messages.c.contact_id.is_not(None), among)), ARRAY(Text)
        )[1]

    totals = (
        select(
            members.c.location_id,
            members.c.root_id,
            func.count(messages.c.message_key).label("message_count"),
            func.min(messages.c.date_added).label("first_message_at"),
            func.array_agg(aggregate_order_by(messages.c.channel.distinct(), messages.c.channel))
            .filter(messages.c.channel.is_not(None))
            .label("channels"),
            newest_contact(own).label("own_contact_id"),
            newest_contact(~own).label("merged_contact_id"),
            func.array_agg(
                aggregate_order_by(members.c.conversation_id.distinct(), members.c.conversation_id)
            )
            .filter(members.c.conversation_id != members.c.root_id)
            .label("merged_ids"),
        )
        .select_from(members.outerjoin(messages, of_member))
        .group_by(members.c.location_id, members.c.root_id)
        .cte("totals")
    )
    ranked = (
        select(
            members.c.location_id,
            members.c.root_id,
            messages.c.message_key,
            messages.c.date_added,
            messages.c.channel,
            messages.c.direction,
            messages.c.status,
            messages.c.preview,
            messages.c.message_type,
            func.row_number()
            .over(partition_by=(members.c.location_id, members.c.root_id), order_by=newest_first)
            .label("rank"),
        )
        .select_from(members.join(messages, of_member))
        .cte("ranked")
    )
    last = select(ranked).where(ranked.c.rank == 1).cte("last")
    merges = tables.merges
    # The contact the merges into the root name (evaluated only when neither its own
    # messages nor its flags name one: COALESCE stops at the first value).
    merge_contact = (
        select(func.max(merges.c.contact_id.collate("C")))
        .where(
            merges.c.location_id == totals.c.location_id,
            merges.c.new_conversation_id == totals.c.root_id,
        )
        .scalar_subquery()
    )
    no_ids = cast(literal([], ARRAY(Text)), ARRAY(Text))
    recomputed = (
        select(
            totals.c.location_id,
            totals.c.root_id,
            func.coalesce(
                totals.c.own_contact_id,
                flags.c.contact_id,
                merge_contact,
                totals.c.merged_contact_id,
            ),
            last.c.date_added,
            last.c.channel,
            last.c.direction,
            last.c.status,
            last.c.preview,
            last.c.message_key,
            totals.c.message_count,
            func.coalesce(totals.c.channels, no_ids),
            flags.c.unread_count,
            flags.c.starred,
            flags.c.inbox,
            flags.c.deleted,
            func.coalesce(totals.c.merged_ids, no_ids),
            totals.c.first_message_at,
            func.coalesce(last.c.date_added, literal(NO_TIME, DateTime(timezone=True))),
            func.coalesce(flags.c.unread_count, 0) > 0,
            last.c.message_type,
        )
        .select_from(
            totals.outerjoin(
                last,
                and_(
                    last.c.location_id == totals.c.location_id, last.c.root_id == totals.c.root_id
                ),
            ).outerjoin(
                flags,
                and_(
                    flags.c.location_id == totals.c.location_id,
                    flags.c.conversation_id == totals.c.root_id,
                ),
            )
        )
        .where(or_(totals.c.message_count > 0, flags.c.conversation_id.is_not(None)))
    )
    names = [column.name for column in summary.columns]
    statement = pg_insert(summary).from_select(names, recomputed)
    return statement.on_conflict_do_update(
        index_elements=[summary.c.location_id, summary.c.conversation_id],
        set_={name: statement.excluded[name] for name in names[2:]},
    ).returning(summary.c.location_id, summary.c.conversation_id)


# --- reads ----------------------------------------------------------------------------------

Status = Literal["all", "read", "unread", "starred"]
STATUSES: tuple[Status, ...] = ("all", "read", "unread", "starred")


@dataclass(frozen=True)
class ConversationSummary:
    location_id: str
    conversation_id: str
    contact_id: str | None
    last_message_at: datetime | None
    last_message_channel: str | None
    last_message_direction: str | None
    last_message_status: str | None
    last_message_preview: str | None
    last_message_key: str | None
    message_count: int
    channels: tuple[str, ...]
    """Every channel the conversation used, sorted."""
    unread_count: int | None
    starred: bool | None
    inbox: bool | None
    deleted: bool | None
    merged_ids: tuple[str, ...]
    """The conversations merged into this one, sorted."""
    first_message_at: datetime | None
    last_message_type: str | None
    """The last message's `TYPE_*` name (`dialect.message_type`); None for a row written
    before migration 0015 (its channel's name is shown) or a nameless activity."""

    @property
    def cursor(self) -> tuple[datetime | None, str]:
        """The `after` that continues a `search` page ending with this conversation."""
        return self.last_message_at, self.conversation_id


_SUMMARY_FIELDS = tuple(ConversationSummary.__dataclass_fields__)


def _summary(row: Any) -> ConversationSummary:
    values = {name: row._mapping[name] for name in _SUMMARY_FIELDS}
    values["channels"] = tuple(values["channels"])
    values["merged_ids"] = tuple(values["merged_ids"])
    return ConversationSummary(**values)


def search(
    conn: Connection,
    location_id: str,
    *,
    contact_id: str | None = None,
    last_message_channel: str | None = None,
    last_message_type: str | None = None,
    last_message_direction: str | None = None,
    status: Status = "all",
    since: datetime | None = None,
    until: datetime | None = None,
    descending: bool = True,
    limit: int = 20,
    after: tuple[datetime | None, str] | None = None,
) -> tuple[list[ConversationSummary], int]:
    """One page of a location's conversations and how many match in all.

    Ordered by last message time then conversation id (newest first unless `descending`
    is false; conversations without messages count as the oldest). `since` (inclusive)
    and `until` (exclusive) bound the last message time and leave out conversations
    without one. `status`: "read" is an unread count of zero or none, "unread" above zero,
    "starred" starred. `after` is the `cursor` of the previous page's last conversation.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    s = conversations_summary
    where: list[ColumnElement[bool]] = [s.c.location_id == location_id]
    if contact_id is not None:
        where.append(s.c.contact_id == contact_id)
    if last_message_channel is not None:
        where.append(s.c.last_message_channel == last_message_channel)
    if last_message_type is not None:  # the name shown (`dialect.last_message_type`)
        by_channel = case(CHANNEL_TYPES, value=s.c.last_message_channel)
        where.append(func.coalesce(s.c.last_message_type, by_channel) == last_message_type)
    if last_message_direction is not None:
        where.append(s.c.last_message_direction == last_message_direction)
    if status == "read":
        where.append(s.c.unread.is_(False))
    elif status == "unread":
        where.append(s.c.unread.is_(True))
    elif status == "starred":
        where.append(s.c.starred.is_(True))
    if since is not None or until is not None:
        where.append(s.c.last_message_at.is_not(None))
    if since is not None:
        where.append(s.c.sort_at >= since)
    if until is not None:
        where.append(s.c.sort_at < until)
    total = int(conn.scalar(select(func.count()).select_from(s).where(*where)) or 0)
    page = select(s).where(*where)
    key = tuple_(s.c.sort_at, s.c.conversation_id)
    if after is not None:
        cursor = tuple_(literal(after[0] or NO_TIME, DateTime(timezone=True)), literal(after[1]))
        page = page.where(key < cursor if descending else key > cursor)
    if descending:
        page = page.order_by(s.c.sort_at.desc(), s.c.conversation_id.desc())
    else:
        page = page.order_by(s.c.sort_at, s.c.conversation_id)
    rows = conn.execute(page.limit(limit))
    return [_summary(row) for row in rows], total


def resolve(conn: Connection, location_id: str, conversation_id: str) -> str | None:
    """The conversation an id stands for now: its root when it was merged, itself when it
    is a conversation of its own, None when the location has never seen it."""
    roots, s = conversation_roots, conversations_summary
    root = conn.scalar(
        select(roots.c.root_id).where(
            roots.c.location_id == location_id, roots.c.conversation_id == conversation_id
        )
    )
    if root is not None:
        return str(root)
    found = conn.scalar(
        select(s.c.conversation_id).where(
            s.c.location_id == location_id, s.c.conversation_id == conversation_id
        )
    )
    return None if found is None else str(found)


def get(conn: Connection, location_id: str, conversation_id: str) -> ConversationSummary | None:
    """One conversation, looked up by its own id or by the id of one merged into it."""
    root = resolve(conn, location_id, conversation_id)
    if root is None:
        return None
    s = conversations_summary
    row = conn.execute(
        select(s).where(s.c.location_id == location_id, s.c.conversation_id == root)
    ).first()
    return None if row is None else _summary(row)


def conversation_locations(
    conn: Connection, conversation_id: str, within: Collection[str] | None = None
) -> list[str]:
    """The locations where an id names a conversation (one of its own, or one merged into
    another), sorted; `within` limits the search to those locations (None: every one)."""
    roots, s = conversation_roots, conversations_summary
    parts = [
        select(roots.c.location_id).where(roots.c.conversation_id == conversation_id),
        select(s.c.location_id).where(s.c.conversation_id == conversation_id),
    ]
    if within is not None:
        wanted = sorted(within)
        parts = [
            parts[0].where(roots.c.location_id.in_(wanted)),
            parts[1].where(s.c.location_id.in_(wanted)),
        ]
    return sorted(set(conn.scalars(union(*parts))))
