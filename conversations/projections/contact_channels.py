"""Per contact and channel: how many messages, which way, and what the last one was.

Two tables. `contact_channel_messages` is a ledger with one row per message (not per
delivery: the status updates of one message are one row), rebuilt from every event of the
message with `build_message`. `contact_channels` summarises the ledger per location,
contact and channel; a batch recomputes the summary of every group it touches from the
ledger, so the result depends only on the set of events, never on their order or cutting.

"Last" is the message with the greatest `(date_added, message_key)`, a missing
`date_added` sorting lowest; "first" is the least `date_added`. A later event may change a
message's contact or channel: the message then leaves its old group, which is recomputed
too (and deleted once it has no messages left).

Messages without a contact id stay in the ledger with `contact_id` NULL but count in no
summary row: there is no contact to show them under. Should a later event name the
contact, the message joins that contact's summary then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Index,
    Integer,
    Table,
    Text,
    and_,
    delete,
    exists,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import FunctionFilter, Over
from sqlalchemy.sql.functions import FunctionElement

from conversations.messages import LatestFlags, MessageEntry
from conversations.projections._sql import (
    arrays,
    bound_unnest,
    cached,
    date_order,
    dicts,
    in_keys,
    insert_new,
    load,
    rank_ties,
    upsert,
    write_rows,
)
from conversations.projections.base import (
    EventBatch,
    Row,
    Tables,
    fresh_keys,
    message_keys,
    messages,
)
from conversations.schema import metadata

__all__ = [
    "PROJECTION",
    "ChannelSummary",
    "ContactChannelsProjection",
    "ContactSummary",
    "contact_channel_messages",
    "contact_channel_summaries",
    "contact_channels",
    "contact_locations",
]

contact_channel_messages = Table(
    "contact_channel_messages",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("message_key", Text, primary_key=True),
    Column("contact_id", Text, nullable=True),
    Column("channel", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("status", Text, nullable=True),
    Column("date_added", DateTime(timezone=True), nullable=True),
    Column("preview", Text, nullable=False),
    # The summary of a group is recomputed from its ledger rows.
    Index(None, "location_id", "contact_id", "channel"),
)

contact_channel_summaries = Table(
    "contact_channels",
    metadata,
    Column("location_id", Text, primary_key=True),
    Column("contact_id", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("message_count", Integer, nullable=False),
    Column("inbound_count", Integer, nullable=False),
    Column("outbound_count", Integer, nullable=False),
    Column("first_message_at", DateTime(timezone=True), nullable=True),
    Column("last_message_at", DateTime(timezone=True), nullable=True),
    Column("last_direction", Text, nullable=False),
    Column("last_status", Text, nullable=True),
    Column("last_preview", Text, nullable=False),
    Column("last_message_key", Text, nullable=False),
    # Where a contact has messages, for keys that read every location.
    Index(None, "contact_id"),
)

MessageKey = tuple[str, str]
"""(location_id, message_key)"""
Group = tuple[str, str, str]
"""(location_id, contact_id, channel)"""


class ContactChannelsProjection:
    name: str = "contact_channels"
    tables: tuple[Table, ...] = (contact_channel_messages, contact_channel_summaries)

    def apply(self, conn: Connection, batch: EventBatch, tables: Tables) -> None:
        keys = message_keys(batch.events)
        if not keys:
            return
        ledger, summary = tables[contact_channel_messages], tables[contact_channel_summaries]
        new = {key: _ledger_row(key, entry) for key, entry in messages(conn, batch).items()}
        appended = _append_fresh(conn, ledger, batch, new)
        old = _load_ledger(conn, ledger, [key for key in keys if key not in appended])
        changed = [key for key in keys if old.get(key) != new.get(key)]
        if not changed:  # redeliveries, or events that change nothing shown here
            return
        rows = [row for key in changed if key not in appended and (row := new.get(key))]
        upsert(conn, ledger, rows, update=None)
        gone = [key for key in changed if key not in new]
        if gone:
            conn.execute(delete(ledger).where(in_keys(ledger, "message_key", gone)))
        _update_summaries(conn, ledger, summary, [(k, old.get(k), new.get(k)) for k in changed])

    # A rebuild in one pass (`projections.bulk`): the same rows as `apply`.

    def message_rows(self, key: MessageKey, entry: MessageEntry) -> Iterable[Row]:
        return ((contact_channel_messages, _ledger_row(key, entry)),)

    def flag_rows(self, key: tuple[str, str], latest: LatestFlags) -> Iterable[Row]:
        return ()

    def finish(self, conn: Connection, tables: Tables) -> None:
        """Every summary from the complete ledger."""
        _recompute(conn, tables[contact_channel_messages], tables[contact_channel_summaries], None)


PROJECTION = ContactChannelsProjection()


# --- apply ----------------------------------------------------------------------------------


def _ledger_row(key: MessageKey, entry: MessageEntry) -> dict[str, Any]:
    # Keyed by the events' message_id, the key every other step looks messages up by.
    return {
        "location_id": key[0],
        "message_key": key[1],
        "contact_id": entry.contact_id or None,
        "channel": entry.channel,
        "direction": entry.direction,
        "status": entry.status,
        "date_added": entry.date_added,
        "preview": entry.preview,
    }


def _append_fresh(
    conn: Connection, ledger: Table, batch: EventBatch, new: Mapping[MessageKey, dict[str, Any]]
) -> set[MessageKey]:
    """Append the ledger rows of the batch's messages that are new to it (`fresh_keys`);
    returns their keys, which had no row before (none when one of them had one after
    all: they are then looked up and upserted as any other)."""
    fresh = sorted(key for key in fresh_keys(conn, batch) if key in new)
    return set(fresh) if insert_new(conn, ledger, [new[key] for key in fresh]) else set()


def _load_ledger(
    conn: Connection, ledger: Table, keys: Sequence[MessageKey]
) -> dict[MessageKey, dict[str, Any]]:
    return load(conn, ledger, "message_key", keys)


LedgerChange = tuple[MessageKey, dict[str, Any] | None, dict[str, Any] | None]
"""(message key, its ledger row before, after); None: no row."""


def _group(row: dict[str, Any] | None) -> Group | None:
    if row is None or row["contact_id"] is None:
        return None  # no contact: in no summary
    return row["location_id"], row["contact_id"], row["channel"]


def _update_summaries(
    conn: Connection, ledger: Table, summary: Table, changes: Sequence[LedgerChange]
) -> None:
    """The usual changes (a message joins a group; a message's status or preview changes)
    as exact deltas on the stored summary rows; any other (a message leaves a group or
    changes its date or direction, a group without a row yet) by recomputing the group
    from the ledger."""
    forced: set[Group] = set()
    left: set[Group] = set()  # groups a message leaves: only these can be left empty
    steps: list[tuple[Group, MessageKey, dict[str, Any] | None, dict[str, Any]]] = []
    for key, before, after in changes:
        old_group, new_group = _group(before), _group(after)
        if old_group is not None and old_group != new_group:
            forced.add(old_group)  # it leaves this group
            left.add(old_group)
        if new_group is None or after is None:
            continue
        if old_group == new_group and before is not None:
            if (
                before["direction"] != after["direction"]
                or before["date_added"] != after["date_added"]
            ):
                forced.add(new_group)
                continue
            steps.append((new_group, key, before, after))
        else:
            steps.append((new_group, key, None, after))
    rows = _load_summaries(conn, summary, {g for g, *_ in steps} - forced)
    # A group without a row has no message (a row is dropped when its group empties):
    # one that only messages joining it reach starts from an empty row, as a delta,
    # instead of being recomputed from the ledger (new contacts and channels are common).
    joined = {g for g, _, before, _ in steps if before is None}
    kept = {g for g, _, before, _ in steps if before is not None}
    empty = joined - kept - forced - rows.keys()
    for group in empty:
        rows[group] = _empty_summary(group)
    joining = [(g, k[1], after["date_added"]) for g, k, before, after in steps if before is None]
    ranks = rank_ties(conn, rows, joining)
    changed: set[Group] = set()
    for group, key, before, after in steps:
        row = rows.get(group)
        if group in forced or row is None or not _apply_delta(row, key, before, after, ranks):
            forced.add(group)
        else:
            changed.add(group)
    write_rows(conn, summary, [rows[g] for g in sorted(changed - forced)], empty, _group)
    _recompute(conn, ledger, summary, sorted(forced), drop_emptied=bool(left))


def _load_summaries(
    conn: Connection, summary: Table, groups: set[Group]
) -> dict[Group, dict[str, Any]]:
    if not groups:
        return {}
    result = conn.execute(_load_summaries_statement(summary), _group_arrays(groups))
    return {(row["location_id"], row["contact_id"], row["channel"]): row for row in dicts(result)}


def _group_arrays(groups: Iterable[Group]) -> dict[str, str]:
    """The parameters of `_groups_table`, sorted."""
    ordered = sorted(groups)
    return arrays(
        "g",
        location_id=[g[0] for g in ordered],
        contact_id=[g[1] for g in ordered],
        channel=[g[2] for g in ordered],
    )


def _groups_table() -> Any:
    return bound_unnest("g", location_id=Text(), contact_id=Text(), channel=Text())


@cached
def _load_summaries_statement(summary: Table) -> Any:
    wanted = _groups_table()
    return select(summary).where(
        tuple_(summary.c.location_id, summary.c.contact_id, summary.c.channel).in_(
            select(wanted.c.location_id, wanted.c.contact_id, wanted.c.channel)
        )
    )


def _empty_summary(group: Group) -> dict[str, Any]:
    """The summary of a group with no message yet, for `_apply_delta` to add to (the
    first message added sets every "last" field)."""
    return {
        "location_id": group[0],
        "contact_id": group[1],
        "channel": group[2],
        "message_count": 0,
        "inbound_count": 0,
        "outbound_count": 0,
        "first_message_at": None,
        "last_message_at": None,
        "last_direction": "",
        "last_status": None,
        "last_preview": "",
        "last_message_key": None,
    }


def _apply_delta(
    row: dict[str, Any],
    key: MessageKey,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    ranks: Mapping[str, int],
) -> bool:
    """Update a summary row for one message joining its group (`before` None) or changing
    in place; False when the result cannot be told without the group's other messages.
    `ranks`: the order of the keys that break ties on the last message's date
    (`rank_ties`), so a tie (all the messages of a group may share a date, or have none)
    is a delta too, not a recompute that reads the whole group."""
    if before is not None:  # in place: only the last message's own fields show
        if row["last_message_key"] == key[1]:
            row["last_status"] = after["status"]
            row["last_preview"] = after["preview"]
        return True
    date, last_key = after["date_added"], row["last_message_key"]
    if last_key is None:  # the group's first message (`_empty_summary`)
        newest = True
    elif date_order(date) != date_order(row["last_message_at"]):
        newest = date_order(date) > date_order(row["last_message_at"])
    elif key[1] in ranks and last_key in ranks:
        newest = ranks[key[1]] > ranks[last_key]
    else:
        return False  # a tie not ranked (cannot happen): recompute
    row["message_count"] += 1
    row["inbound_count"] += after["direction"] == "inbound"
    row["outbound_count"] += after["direction"] == "outbound"
    if date is not None and (row["first_message_at"] is None or date < row["first_message_at"]):
        row["first_message_at"] = date
    if newest:
        row["last_message_at"] = date
        row["last_direction"] = after["direction"]
        row["last_status"] = after["status"]
        row["last_preview"] = after["preview"]
        row["last_message_key"] = key[1]
    return True


def _recompute(
    conn: Connection,
    ledger: Table,
    summary: Table,
    groups: Sequence[Group] | None,
    drop_emptied: bool = True,
) -> None:
    """Rewrite the summary rows of `groups` (None: of every group) from the ledger; drop
    those left empty, unless told that none can be (no message left any of them)."""
    if groups is not None and not groups:
        return
    upsert_statement, delete_statement = _recompute_statements(ledger, summary, groups is None)
    parameters = {} if groups is None else _group_arrays(groups)
    conn.execute(upsert_statement, parameters)
    if drop_emptied:
        conn.execute(delete_statement, parameters)


@cached
def _recompute_statements(ledger: Table, summary: Table, every: bool) -> tuple[Any, Any]:
    """The upsert of the recomputed rows and the delete of the emptied ones, of every
    group or (not `every`) of the groups bound as `_group_arrays`."""
    group_columns = (ledger.c.location_id, ledger.c.contact_id, ledger.c.channel)
    newest_first = (
        ledger.c.date_added.desc().nulls_last(),
        ledger.c.message_key.desc(),  # the database's collation, as everywhere (`rank_ties`)
    )

    def per_group(aggregate: FunctionElement[Any] | FunctionFilter[Any]) -> Over[Any]:
        return aggregate.over(partition_by=group_columns)

    # One sort of the groups' rows: window aggregates see the whole group, and the row
    # numbered 1 (newest first) carries the "last" fields.
    ranked_rows = select(
        *group_columns,
        per_group(func.count()).label("message_count"),
        per_group(func.count().filter(ledger.c.direction == "inbound")).label("inbound_count"),
        per_group(func.count().filter(ledger.c.direction == "outbound")).label("outbound_count"),
        per_group(func.min(ledger.c.date_added)).label("first_message_at"),
        ledger.c.date_added.label("last_message_at"),
        ledger.c.direction.label("last_direction"),
        ledger.c.status.label("last_status"),
        ledger.c.preview.label("last_preview"),
        ledger.c.message_key.label("last_message_key"),
        func.row_number().over(partition_by=group_columns, order_by=newest_first).label("newest"),
    )
    still_used = exists().where(
        ledger.c.location_id == summary.c.location_id,
        ledger.c.contact_id == summary.c.contact_id,
        ledger.c.channel == summary.c.channel,
    )
    if every:  # every group (a rebuild's `finish`)
        ranked = ranked_rows.where(ledger.c.contact_id.is_not(None)).subquery()
        emptied: ColumnElement[bool] = ~still_used
    else:
        wanted = _groups_table()
        in_group = and_(
            ledger.c.location_id == wanted.c.location_id,
            ledger.c.contact_id == wanted.c.contact_id,
            ledger.c.channel == wanted.c.channel,
        )
        ranked = ranked_rows.join(wanted, in_group).subquery()
        emptied = and_(
            tuple_(summary.c.location_id, summary.c.contact_id, summary.c.channel).in_(
                select(wanted.c.location_id, wanted.c.contact_id, wanted.c.channel)
            ),
            ~still_used,
        )
    recomputed = select(*[ranked.c[c.name] for c in summary.columns]).where(ranked.c.newest == 1)
    names = [column.name for column in summary.columns]
    statement = pg_insert(summary).from_select(names, recomputed)
    upsert_statement = statement.on_conflict_do_update(
        index_elements=[summary.c.location_id, summary.c.contact_id, summary.c.channel],
        set_={name: statement.excluded[name] for name in names[3:]},
    )
    return upsert_statement, delete(summary).where(emptied)


# --- reads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSummary:
    channel: str
    message_count: int
    inbound_count: int
    outbound_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    last_direction: str
    last_status: str | None
    last_preview: str
    last_message_key: str


@dataclass(frozen=True)
class ContactSummary:
    location_id: str
    contact_id: str
    message_count: int
    inbound_count: int
    outbound_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    channels: list[ChannelSummary]
    """Most recent first (by last message time, then last message key)."""


def contact_channels(conn: Connection, location_id: str, contact_id: str) -> ContactSummary | None:
    """A contact's messages in one location, per channel and in total; None when the
    contact has no message there."""
    summary = contact_channel_summaries
    query = (
        select(summary)
        .where(summary.c.location_id == location_id, summary.c.contact_id == contact_id)
        .order_by(
            summary.c.last_message_at.desc().nulls_last(),
            summary.c.last_message_key.desc(),  # the database's collation (`rank_ties`)
            summary.c.channel,
        )
    )
    channels = [
        ChannelSummary(**{k: v for k, v in row._mapping.items() if k in _CHANNEL_FIELDS})
        for row in conn.execute(query)
    ]
    if not channels:
        return None
    firsts = [c.first_message_at for c in channels if c.first_message_at is not None]
    lasts = [c.last_message_at for c in channels if c.last_message_at is not None]
    return ContactSummary(
        location_id=location_id,
        contact_id=contact_id,
        message_count=sum(c.message_count for c in channels),
        inbound_count=sum(c.inbound_count for c in channels),
        outbound_count=sum(c.outbound_count for c in channels),
        first_message_at=min(firsts, default=None),
        last_message_at=max(lasts, default=None),
        channels=channels,
    )


_CHANNEL_FIELDS = frozenset(ChannelSummary.__dataclass_fields__)


def contact_locations(
    conn: Connection, contact_id: str, locations: Sequence[str] | None
) -> list[str]:
    """The locations where a contact has messages, sorted: among `locations` only, or
    anywhere when `locations` is None (an all-locations key)."""
    summary = contact_channel_summaries
    query = select(summary.c.location_id).where(summary.c.contact_id == contact_id).distinct()
    if locations is not None:
        if not locations:
            return []
        query = query.where(summary.c.location_id.in_(sorted(set(locations))))
    return sorted(conn.scalars(query))
