"""The contact channel summary on real PostgreSQL: events go through the store, the
projection folds them in several batch cuttings, the read query answers per contact."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from conversations.messages import build_message
from conversations.projections.base import EventBatch, Tables
from conversations.projections.contact_channels import (
    PROJECTION,
    ChannelSummary,
    contact_channel_messages,
    contact_channel_summaries,
    contact_channels,
)
from conversations.store import StoredEvent
from tests.helpers import message, new_id
from tests.projection_support import (
    Append,
    append_documents,
    at,
    hold_live,
    rebuild_in_one_pass,
    rows_read_folding,
    side_tables,
    table_rows,
    time,
)

# --- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def append(database_url: str, engine: sqlalchemy.Engine) -> Append:
    return lambda documents: append_documents(database_url, engine, documents)


def fold(
    engine: sqlalchemy.Engine,
    events: Sequence[StoredEvent],
    size: int,
    tables: Tables | None = None,
) -> None:
    """Apply the events in position order, `size` per batch, one transaction each."""
    ordered = sorted(events, key=lambda e: e.position)
    for start in range(0, len(ordered), size):
        chunk = ordered[start : start + size]
        with engine.begin() as conn:
            if tables is None:
                hold_live(conn, PROJECTION)
            PROJECTION.apply(conn, EventBatch(chunk, chunk[-1].position), tables or Tables())


def fold_everywhere(engine: sqlalchemy.Engine, events: Sequence[StoredEvent]) -> None:
    """Event by event, then everything again in one batch: the live tables must not mind."""
    fold(engine, events, 1)
    fold(engine, events, len(events))


def outbound(**fields: Any) -> dict[str, Any]:
    return message(type="OutboundMessage", direction="outbound", **fields)


def channels(engine: sqlalchemy.Engine, location: str, contact: str) -> dict[str, ChannelSummary]:
    with engine.connect() as conn:
        summary = contact_channels(conn, location, contact)
    return {} if summary is None else {c.channel: c for c in summary.channels}


def ledger_contact(engine: sqlalchemy.Engine, location: str, message_key: str) -> Any:
    table = contact_channel_messages
    with engine.connect() as conn:
        return conn.execute(
            select(table.c.contact_id, table.c.channel).where(
                table.c.location_id == location, table.c.message_key == message_key
            )
        ).one()


# --- behaviour ------------------------------------------------------------------------------


def test_counts_per_channel_and_in_total(append: Append, engine: sqlalchemy.Engine) -> None:
    location, contact = new_id("loc"), new_id("con")
    sms_in = message(locationId=location, contactId=contact, dateAdded=at(10), body="a")
    sms_out = outbound(
        locationId=location, contactId=contact, dateAdded=at(11), body="b", status="sent"
    )
    email = outbound(
        locationId=location,
        contactId=contact,
        dateAdded=at(9),
        messageType="Email",
        body="<p>Hi <b>there</b></p>",
    )
    call = message(
        locationId=location,
        contactId=contact,
        dateAdded=at(12),
        messageType="CALL",
        status="completed",
        callStatus="completed",
        body=...,
    )
    someone_else = message(locationId=location, dateAdded=at(13))
    events = append([sms_in, sms_out, email, call, someone_else])
    fold_everywhere(engine, events)

    with engine.connect() as conn:
        summary = contact_channels(conn, location, contact)
    assert summary is not None
    assert (summary.location_id, summary.contact_id) == (location, contact)
    assert (summary.message_count, summary.inbound_count, summary.outbound_count) == (4, 2, 2)
    assert (summary.first_message_at, summary.last_message_at) == (time(9), time(12))
    assert [c.channel for c in summary.channels] == ["Call", "SMS", "Email"]
    sms = summary.channels[1]
    assert sms == ChannelSummary(
        channel="SMS",
        message_count=2,
        inbound_count=1,
        outbound_count=1,
        first_message_at=time(10),
        last_message_at=time(11),
        last_direction="outbound",
        last_status="sent",
        last_preview="b",
        last_message_key=sms_out["messageId"],
    )
    assert summary.channels[2].last_preview == "Hi there"
    assert summary.channels[0].last_status == "completed"
    assert summary.channels[0].last_preview == ""


def test_status_updates_of_one_message_count_once(
    append: Append, engine: sqlalchemy.Engine
) -> None:
    location, contact, message_id = new_id("loc"), new_id("con"), new_id("msg")
    updates = [
        outbound(locationId=location, contactId=contact, messageId=message_id, status=status)
        for status in ("delivered", "pending", "sent", "delivered")
    ]
    fold_everywhere(engine, append(updates))

    [sms] = channels(engine, location, contact).values()
    assert (sms.message_count, sms.outbound_count, sms.inbound_count) == (1, 1, 0)
    assert sms.last_status == "delivered"
    assert sms.last_message_key == message_id


def test_last_follows_date_added_not_arrival(append: Append, engine: sqlalchemy.Engine) -> None:
    location, contact = new_id("loc"), new_id("con")
    newest = outbound(locationId=location, contactId=contact, dateAdded=at(12), body="newest")
    fold_everywhere(engine, append([newest]))

    older = message(locationId=location, contactId=contact, dateAdded=at(8), body="older")
    undated = message(locationId=location, contactId=contact, dateAdded=..., body="undated")
    fold_everywhere(engine, append([older, undated]))

    sms = channels(engine, location, contact)["SMS"]
    assert (sms.message_count, sms.inbound_count, sms.outbound_count) == (3, 2, 1)
    assert (sms.first_message_at, sms.last_message_at) == (time(8), time(12))
    assert (sms.last_direction, sms.last_preview) == ("outbound", "newest")
    assert sms.last_message_key == newest["messageId"]


def test_equal_dates_break_ties_by_message_key(append: Append, engine: sqlalchemy.Engine) -> None:
    location, contact = new_id("loc"), new_id("con")
    documents = [
        message(locationId=location, contactId=contact, dateAdded=at(7), messageId=key, body=key)
        for key in ("msg-b", "msg-c", "msg-a")
    ]
    fold_everywhere(engine, append(documents))
    sms = channels(engine, location, contact)["SMS"]
    assert (sms.last_message_key, sms.last_preview) == ("msg-c", "msg-c")


@pytest.mark.parametrize("date_added", [at(7), ...], ids=["same-date", "no-date"])
def test_a_tie_for_the_last_message_is_a_delta_whatever_the_group_holds(
    append: Append, engine: sqlalchemy.Engine, date_added: Any
) -> None:
    # Every message of the group shares a date (or has none): the key decides which is
    # last, in the database's collation as every read orders keys (beyond ASCII too), not
    # by recomputing the group from every message it has (which slowed catch-up down as
    # a group grew).
    location, contact = new_id("loc"), new_id("con")
    common = {"locationId": location, "contactId": contact, "dateAdded": date_added}
    earlier = append(
        [message(**common, messageId=f"msg-{i}", body=f"body {i}") for i in range(100, 300)]
    )
    fold(engine, earlier, len(earlier))
    # U+FF5A sorts before U+1F600 by code point and in UTF-8, after it in UTF-16.
    keys = ("msg-\U0001f600", "msg-050", "msg-\uff5a", "msg-Z")
    later = append([message(**common, messageId=key, body=key) for key in keys])
    read = rows_read_folding(engine, PROJECTION, later, contact_channel_messages)
    assert read <= 10, f"{read} messages read to add 4 to a group of 200"

    with engine.connect() as conn:
        last = conn.scalar(
            text("SELECT max(key) FROM unnest(CAST(:keys AS text[])) AS key"),
            {"keys": [*keys, "msg-299"]},
        )
    sms = channels(engine, location, contact)["SMS"]
    assert (sms.last_message_key, sms.last_preview) == (last, last)
    assert sms.message_count == 204
    with side_tables(engine, PROJECTION) as one_pass:
        rebuild_in_one_pass(engine, PROJECTION, one_pass, [*earlier, *later])
        assert table_rows(engine, PROJECTION, one_pass, location) == table_rows(
            engine, PROJECTION, Tables(), location
        )


def test_only_undated_messages_have_no_times(append: Append, engine: sqlalchemy.Engine) -> None:
    location, contact = new_id("loc"), new_id("con")
    documents = [
        message(locationId=location, contactId=contact, dateAdded=..., messageId=key)
        for key in ("msg-1", "msg-2")
    ]
    fold_everywhere(engine, append(documents))
    with engine.connect() as conn:
        summary = contact_channels(conn, location, contact)
    assert summary is not None and summary.message_count == 2
    assert summary.first_message_at is None and summary.last_message_at is None
    assert summary.channels[0].last_message_key == "msg-2"


def test_a_status_update_of_the_last_message_changes_last_status(
    append: Append, engine: sqlalchemy.Engine
) -> None:
    location, contact = new_id("loc"), new_id("con")
    older = outbound(locationId=location, contactId=contact, dateAdded=at(9), status="sent")
    last = outbound(locationId=location, contactId=contact, dateAdded=at(10), status="sent")
    fold_everywhere(engine, append([older, last]))
    assert channels(engine, location, contact)["SMS"].last_status == "sent"

    older_read = {**older, "status": "read", "webhookId": str(uuid.uuid4())}
    fold_everywhere(engine, append([older_read]))
    assert channels(engine, location, contact)["SMS"].last_status == "sent"

    last_failed = {**last, "status": "failed", "webhookId": str(uuid.uuid4())}
    fold_everywhere(engine, append([last_failed]))
    sms = channels(engine, location, contact)["SMS"]
    assert (sms.last_status, sms.message_count) == ("failed", 2)
    assert sms.last_message_key == last["messageId"]


def test_a_contact_change_moves_the_message(append: Append, engine: sqlalchemy.Engine) -> None:
    location, first, second = new_id("loc"), new_id("con"), new_id("con")
    stays = message(locationId=location, contactId=first, dateAdded=at(8))
    moving = outbound(locationId=location, contactId=first, dateAdded=at(9), status="sent")
    fold_everywhere(engine, append([stays, moving]))
    assert channels(engine, location, first)["SMS"].message_count == 2

    # The delivered event dominates the fold, so its contact id is the message's.
    moved = {**moving, "contactId": second, "status": "delivered", "webhookId": str(uuid.uuid4())}
    fold_everywhere(engine, append([moved]))
    kept = channels(engine, location, first)["SMS"]
    assert (kept.message_count, kept.last_message_key) == (1, stays["messageId"])
    assert channels(engine, location, second)["SMS"].last_message_key == moving["messageId"]
    assert ledger_contact(engine, location, moving["messageId"]) == (second, "SMS")


def test_a_channel_change_moves_the_message_and_drops_the_empty_group(
    append: Append, engine: sqlalchemy.Engine
) -> None:
    location, contact = new_id("loc"), new_id("con")
    sms = outbound(locationId=location, contactId=contact, status="sent", messageTypeId=2)
    fold_everywhere(engine, append([sms]))
    assert set(channels(engine, location, contact)) == {"SMS"}

    custom = {
        **sms,
        "status": "delivered",
        "messageTypeString": "TYPE_CUSTOM_PROVIDER_SMS",
        "webhookId": str(uuid.uuid4()),
    }
    fold_everywhere(engine, append([custom]))
    assert set(channels(engine, location, contact)) == {"Custom"}
    assert channels(engine, location, contact)["Custom"].message_count == 1


def test_messages_without_a_contact_stay_in_the_ledger_only(
    append: Append, engine: sqlalchemy.Engine
) -> None:
    location, contact = new_id("loc"), new_id("con")
    anonymous = message(locationId=location, contactId=..., status="sent")
    fold_everywhere(engine, append([anonymous]))
    assert ledger_contact(engine, location, anonymous["messageId"]) == (None, "SMS")
    summaries = contact_channel_summaries
    with engine.connect() as conn:
        rows = conn.execute(select(summaries).where(summaries.c.location_id == location)).all()
    assert rows == []

    named = {**anonymous, "contactId": contact, "webhookId": str(uuid.uuid4())}
    fold_everywhere(engine, append([named]))
    assert channels(engine, location, contact)["SMS"].message_count == 1


def test_reads_are_scoped_by_location(append: Append, engine: sqlalchemy.Engine) -> None:
    here, there, contact = new_id("loc"), new_id("loc"), new_id("con")
    documents = [
        message(locationId=here, contactId=contact),
        message(locationId=there, contactId=contact),
        message(locationId=there, contactId=contact),
    ]
    fold_everywhere(engine, append(documents))
    with engine.connect() as conn:
        mine = contact_channels(conn, here, contact)
        theirs = contact_channels(conn, there, contact)
        assert contact_channels(conn, new_id("loc"), contact) is None
        assert contact_channels(conn, here, new_id("con")) is None
    assert mine is not None and mine.message_count == 1
    assert theirs is not None and theirs.message_count == 2


# --- any cutting, any order, any redelivery: the same tables ---------------------------------


def ordered(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


def contents(engine: sqlalchemy.Engine, tables: Tables) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, without location_id (folds of two locations compare)."""
    return table_rows(engine, PROJECTION, tables)


def expected_summary(events: Sequence[StoredEvent]) -> list[tuple[Any, ...]]:
    """The summary rows straight from `build_message`, as `contents` lists them."""
    by_message: dict[str, list[StoredEvent]] = defaultdict(list)
    for event in events:
        assert event.message_id is not None
        by_message[event.message_id].append(event)
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for key, group in by_message.items():
        entry = build_message(group)
        if entry.contact_id:
            groups[(entry.contact_id, entry.channel)].append((key, entry))
    rows = []
    for (contact, channel), members in groups.items():
        dates = [e.date_added for _, e in members if e.date_added is not None]
        key, last = max(
            members,
            key=lambda m: (m[1].date_added is not None, m[1].date_added or time(0), m[0]),
        )
        rows.append(
            (
                contact,
                channel,
                len(members),
                sum(e.direction == "inbound" for _, e in members),
                sum(e.direction == "outbound" for _, e in members),
                min(dates, default=None),
                last.date_added,
                last.direction,
                last.status,
                last.preview,
                key,
            )
        )
    return ordered(rows)


delivery = st.tuples(
    st.integers(0, 3),  # which message
    st.sampled_from(["pending", "sent", "delivered", "failed", "read"]),
    st.sampled_from(["con-a", "con-b", None]),  # its contact as this event tells it
    st.sampled_from([None, "TYPE_SMS", "TYPE_CUSTOM_PROVIDER_SMS"]),
    st.booleans(),  # whether this event carries dateAdded
)
shape = st.tuples(
    st.sampled_from(["InboundMessage", "OutboundMessage"]),
    st.sampled_from(["SMS", "Email", "CALL"]),
    st.sampled_from([at(9), at(10), at(10), None]),
    st.sampled_from(["", "hi", "<p>hello</p>"]),
)


def documents(
    location: str,
    messages: Sequence[tuple[str, str, str | None, str]],
    deliveries: Sequence[tuple[int, str, str | None, str | None, bool]],
) -> list[dict[str, Any]]:
    result = []
    for index, status, contact, type_string, dated in deliveries:
        kind, message_type, date_added, body = messages[index % len(messages)]
        result.append(
            message(
                type=kind,
                direction="inbound" if kind == "InboundMessage" else "outbound",
                locationId=location,
                conversationId=f"cnv-{index}",
                messageId=f"msg-{index}",
                messageType=message_type,
                messageTypeString=type_string or ...,
                status=status,
                contactId=contact or ...,
                dateAdded=date_added if dated and date_added else ...,
                body=body,
            )
        )
    return result


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(shape, min_size=1, max_size=4),
    deliveries=st.lists(delivery, min_size=1, max_size=10),
    data=st.data(),
)
def test_cuttings_orders_and_redeliveries_give_the_same_tables(
    append: Append,
    engine: sqlalchemy.Engine,
    messages: list[tuple[str, str, str | None, str]],
    deliveries: list[tuple[int, str, str | None, str | None, bool]],
    data: st.DataObject,
) -> None:
    shuffled = data.draw(st.permutations(deliveries))
    redelivered = data.draw(st.lists(st.sampled_from(deliveries), max_size=3))
    size = data.draw(st.integers(1, len(deliveries) + len(redelivered)))
    in_order = append(documents(new_id("loc"), messages, deliveries))
    other_order = append(documents(new_id("loc"), messages, [*shuffled, *redelivered]))

    with (
        side_tables(engine, PROJECTION) as whole,
        side_tables(engine, PROJECTION) as cut,
        side_tables(engine, PROJECTION) as one_pass,
    ):
        fold(engine, in_order, len(in_order), whole)
        fold(engine, other_order, size, cut)
        fold(engine, other_order[-size:], size, cut)  # a batch again changes nothing
        rebuild_in_one_pass(engine, PROJECTION, one_pass, other_order)  # as `replay` does
        expected = contents(engine, whole)
        assert contents(engine, cut) == expected
        assert contents(engine, one_pass) == expected
    assert expected["contact_channels"] == expected_summary(in_order)
