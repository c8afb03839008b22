"""What every projection is: a name, the tables it owns, and a fold of event batches.

A projection's `apply` is the only code that writes its tables, for live catch-up and
for a rebuild alike (the runner hands it either the live tables or fresh side copies),
so the two cannot drift. `apply` runs in the runner's transaction, which also moves the
projection's checkpoint: a batch is applied exactly once or not at all.

Rules for `apply` (the runner and the property tests rely on them):
- The result must depend only on the *set* of events up to `batch.end`, not on their
  order, on how they were cut into batches, or on duplicates: recompute what a batch
  touches from its inputs (e.g. every event of an affected message with a position at
  most `batch.end`) instead of adding deltas.
- Write only through `tables[...]`, never to a table name spelled out.
- Read only the event table and the projection's own tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, Table

from conversations.store import StoredEvent


@dataclass(frozen=True)
class EventBatch:
    events: Sequence[StoredEvent]
    """Ordered by position; every position is in (start, end]."""
    end: int
    """The position the projection has reached once this batch is applied."""


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
