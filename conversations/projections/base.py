"""What every projection is: a name, the tables it owns, and a fold of event batches.

A projection's `apply` writes its tables during live catch-up, and its rows come from
pure folds (`conversations.messages`) and row builders of its own. A rebuild hands it
fresh side copies of its tables; a `BulkProjection` is then filled in one pass
(`projections.bulk`) from the same folds and row builders, so the two cannot drift.
`apply` runs in the runner's transaction, which also moves the projection's checkpoint:
a batch is applied exactly once or not at all.

Rules for `apply` (the runner and the property tests rely on them):
- The result must depend only on the *set* of events up to `batch.end`, not on their
  order, on how they were cut into batches, or on duplicates: recompute what a batch
  touches from its inputs (e.g. every event of an affected message with a position at
  most `batch.end`), or apply deltas only where they are exact whatever came before
  (a max over a stored order key; a count moved by a message new to its group).
- Folds into the same tables never overlap: the runner holds the projection's
  checkpoint row lock while it folds into the live tables (a rebuild's side tables are
  its own). Deltas rely on it: they read the rows a fold is about to change.
- Write only through `tables[...]`, never to a table name spelled out.
- Read only the event table and the projection's own tables.
- Of an event, use its keys and payload: live folds and rebuilds read events
  with placeholders for the id, times, raw bytes and metadata (`store.read_range`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Table

from conversations.messages import LatestFlags, MessageEntry, build_message
from conversations.payloads import MESSAGE_EVENT_TYPES
from conversations.store import StoredEvent, read_message_events

log = logging.getLogger("conversations.projections")

MessageKey = tuple[str, str]
"""(location_id, message key)"""


@dataclass(frozen=True)
class EventBatch:
    events: Sequence[StoredEvent]
    """Ordered by position; every position is in (start, end]."""
    end: int
    """The position the projection has reached once this batch is applied."""
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Work shared by the projections folding this same batch (see `messages`)."""
    start: int | None = None
    """When known: `events` are *every* event in (start, end], so only the events at or
    before `start` need to be read back to complete a message (live catch-up: most
    messages of a batch are new, and none of their events is read twice). None: nothing
    is assumed about `events` (any chunk, duplicates included); every event is read."""


MERGE_EVENT_TYPE = "ConversationUpdate"


def message_keys(events: Iterable[StoredEvent]) -> list[MessageKey]:
    """The messages some events are about (message events with a message id), sorted."""
    keys = {
        (e.location_id, e.message_id)
        for e in events
        if e.event_type in MESSAGE_EVENT_TYPES and e.message_id
    }
    return sorted(keys)


def merge_pairs(events: Iterable[StoredEvent]) -> list[tuple[str, str, str]]:
    """(location_id, old, new) of the ConversationUpdate merges among `events`, sorted."""
    pairs = set()
    for event in events:
        if event.event_type != MERGE_EVENT_TYPE:
            continue
        old, new = event.payload.get("oldConversationId"), event.payload.get("newConversationId")
        if isinstance(old, str) and isinstance(new, str) and old and new:
            pairs.add((event.location_id, old, new))
    return sorted(pairs)


def messages(conn: Connection, batch: EventBatch) -> dict[MessageKey, MessageEntry]:
    """Every message the batch touches, rebuilt from all of its events up to `batch.end`.

    Computed once per batch: a rebuild of several projections hands them the same batch,
    and reading and folding the messages is the bulk of the work. A message none of whose
    events can be folded any more (a payload model changed) is left out.
    """
    cached: dict[MessageKey, MessageEntry] | None = batch.memo.get("messages")
    if cached is not None:
        return cached
    keys = message_keys(batch.events)
    grouped: defaultdict[MessageKey, list[StoredEvent]] = defaultdict(list)
    fresh: set[MessageKey] = set()
    if batch.start is None:
        stored = read_message_events(conn, keys, batch.end)
    else:  # the earlier events from the table, then the batch's own (all later)
        wanted = set(keys)
        stored = read_message_events(conn, keys, batch.start)
        fresh = wanted - {(e.location_id, e.message_id or "") for e in stored}
        stored += [e for e in batch.events if (e.location_id, e.message_id) in wanted]
    for event in stored:
        if event.message_id:
            grouped[(event.location_id, event.message_id)].append(event)
    cached = {}
    for key, events in grouped.items():
        entry = fold_message(key, events)
        if entry is not None:
            cached[key] = entry
    batch.memo["messages"] = cached
    batch.memo["fresh"] = fresh
    return cached


def fresh_keys(conn: Connection, batch: EventBatch) -> set[MessageKey]:
    """The batch's messages none of whose events precede it (known only when
    `batch.start` is: else none). No fold can have written their rows yet, so they are
    appended (`_sql.insert_new`), not upserted; should one have a row after all (a batch
    folded twice), its table's primary key says so and they are upserted instead."""
    messages(conn, batch)
    fresh: set[MessageKey] = batch.memo["fresh"]
    return fresh


def fold_message(key: MessageKey, events: Sequence[StoredEvent]) -> MessageEntry | None:
    """`build_message` over every event of one message, or None (logged) when none of
    them folds any more (a payload model changed): live batches and rebuilds alike."""
    try:
        return build_message(events)
    except ValueError as error:
        log.warning("message left out of the projections: %s", error, extra={"key": key})
        return None


class Tables:
    """The physical tables a projection writes in this run, looked up by its live table."""

    def __init__(self, mapping: Mapping[str, Table] | None = None) -> None:
        self._mapping = dict(mapping or {})

    def __getitem__(self, live: Table) -> Table:
        return self._mapping.get(live.name, live)


class Projection(Protocol):
    name: str
    """Stable name: used for the checkpoint, the CLI (`--projection NAME`) and metrics."""
    tables: tuple[Table, ...]
    """Every table the projection owns (all on `conversations.schema.metadata`)."""

    def apply(self, conn: Connection, batch: EventBatch, tables: Tables) -> None: ...


Row = tuple[Table, dict[str, Any]]
"""A row (every column) for one of a projection's tables, named by its live table."""


@runtime_checkable
class BulkProjection(Projection, Protocol):
    """A projection a rebuild can fill in one pass (`projections.bulk`) instead of batch
    by batch: the runner streams the events grouped by key, folds each group once with
    the same pure functions `apply` uses, and hands the results here; the rows returned
    are the ones `apply` writes for the same inputs, so the two paths cannot drift.

    Events other than messages and unread updates (merges) go through `apply` itself,
    in position order; `finish` then derives what depends on everything (summaries)."""

    def message_rows(self, key: MessageKey, entry: MessageEntry) -> Iterable[Row]:
        """The rows of one message, folded from all of its events."""
        ...

    def flag_rows(self, key: tuple[str, str], latest: LatestFlags) -> Iterable[Row]:
        """The rows of one conversation's flags: the latest of all its unread updates."""
        ...

    def finish(self, conn: Connection, tables: Tables) -> None:
        """Derive the rest from the rows written (called once, last)."""
        ...
