"""Live batches (`EventBatch.start` known, as the runner folds) on real PostgreSQL: new
messages are appended (`fresh_keys`, `_sql.insert_new`) and new summary rows start empty,
and the tables must be those a replay builds. The other property tests fold
with `start` unknown, which never takes that path."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.projections import contact_channels, location_conversations
from conversations.projections.base import BulkProjection, EventBatch, Tables
from conversations.store import StoredEvent
from tests import test_contact_channels as cc
from tests import test_location_conversations as lc
from tests.helpers import new_id
from tests.projection_support import Append, rebuild_in_one_pass, side_tables, table_rows

append = lc.append
SLOW = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def fold_live(
    engine: sqlalchemy.Engine,
    projection: BulkProjection,
    tables: Tables,
    events: Sequence[StoredEvent],
    cuts: Sequence[int],
) -> None:
    """Fold in position order, cut before each index in `cuts`, each batch knowing its
    start (the position before it), one transaction each."""
    ordered = sorted(events, key=lambda e: e.position)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(ordered)}), len(ordered)]
    start = ordered[0].position - 1
    for low, high in pairwise(bounds):
        chunk = ordered[low:high]
        with engine.begin() as conn:
            projection.apply(conn, EventBatch(chunk, chunk[-1].position, start=start), tables)
        start = chunk[-1].position


def assert_live_folds_as_replay(
    engine: sqlalchemy.Engine,
    projection: BulkProjection,
    data: st.DataObject,
    whole: tuple[str, Sequence[StoredEvent]],
    live: tuple[str, Sequence[StoredEvent]],
) -> None:
    """The events of location `whole[0]` rebuilt in one pass (as `replay` does) give the
    rows that those of `live[0]` give folded in batches cut where `data` draws."""
    (here, whole_events), (there, live_events) = whole, live
    cuts = data.draw(st.lists(st.integers(1, max(1, len(live_events) - 1)), max_size=4))
    with side_tables(engine, projection) as rebuilt, side_tables(engine, projection) as folded:
        rebuild_in_one_pass(engine, projection, rebuilt, whole_events)
        fold_live(engine, projection, folded, live_events, cuts)
        assert table_rows(engine, projection, folded, there) == table_rows(
            engine, projection, rebuilt, here
        )


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW)
@given(data=st.data(), templates=lc.scenarios())
def test_conversations_folded_live_are_those_of_a_replay(
    engine: sqlalchemy.Engine, append: Append, data: st.DataObject, templates: list[dict[str, Any]]
) -> None:
    projection = location_conversations.PROJECTION
    order = data.draw(st.permutations(templates))
    here, there = new_id("loc"), new_id("loc")
    whole_events = append(lc.instantiate(templates, here))
    live_events = append(lc.instantiate(order, there))
    assert_live_folds_as_replay(
        engine, projection, data, (here, whole_events), (there, live_events)
    )


@settings(max_examples=25, deadline=None, suppress_health_check=SLOW)
@given(
    messages=st.lists(cc.shape, min_size=1, max_size=4),
    deliveries=st.lists(cc.delivery, min_size=1, max_size=10),
    data=st.data(),
)
def test_contact_channels_folded_live_are_those_of_a_replay(
    engine: sqlalchemy.Engine,
    append: Append,
    messages: list[tuple[str, str, str | None, str]],
    deliveries: list[tuple[int, str, str | None, str | None, bool]],
    data: st.DataObject,
) -> None:
    projection = contact_channels.PROJECTION
    order = data.draw(st.permutations(deliveries))
    here, there = new_id("loc"), new_id("loc")
    whole_events = append(cc.documents(here, messages, deliveries))
    live_events = append(cc.documents(there, messages, order))
    assert_live_folds_as_replay(
        engine, projection, data, (here, whole_events), (there, live_events)
    )
