"""Conversations per location on real PostgreSQL: events go through the store, the
projection folds them in several batch cuttings and orders, the read queries answer per
location."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from conversations.projections.base import EventBatch, Tables
from conversations.projections.location_conversations import (
    PROJECTION,
    ConversationSummary,
    conversation_flags,
    conversation_messages,
    get,
    resolve,
    search,
)
from conversations.store import StoredEvent
from tests.helpers import message, new_id
from tests.projection_support import (
    Append,
    again,
    append_documents,
    at,
    hold_live,
    merge,
    rebuild_in_one_pass,
    rows_read_folding,
    side_tables,
    table_rows,
    time,
    unread,
)

# --- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def append(database_url: str, engine: sqlalchemy.Engine) -> Append:
    return lambda documents: append_documents(database_url, engine, documents)


def fold(engine: sqlalchemy.Engine, events: Sequence[StoredEvent], cuts: Sequence[int]) -> None:
    """Apply the events in position order, cut before each index in `cuts`, one
    transaction per batch."""
    ordered = sorted(events, key=lambda e: e.position)
    if not ordered:
        return
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(ordered)}), len(ordered)]
    for start, stop in pairwise(bounds):
        chunk = ordered[start:stop]
        with engine.begin() as conn:
            hold_live(conn, PROJECTION)
            PROJECTION.apply(conn, EventBatch(chunk, chunk[-1].position), Tables())


def fold_all(engine: sqlalchemy.Engine, events: Sequence[StoredEvent]) -> None:
    """Event by event, then everything again in one batch: the tables must not mind."""
    fold(engine, events, range(len(events)))
    fold(engine, events, [])


def conversation(engine: sqlalchemy.Engine, location: str, id: str) -> ConversationSummary:
    with engine.connect() as conn:
        found = get(conn, location, id)
    assert found is not None, f"no conversation {id}"
    return found


def ids(found: Sequence[ConversationSummary]) -> list[str]:
    return [c.conversation_id for c in found]


def rows(engine: sqlalchemy.Engine, location: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the projection holds for one location, without the location id."""
    return table_rows(engine, PROJECTION, Tables(), location)


# --- behaviour ------------------------------------------------------------------------------


@pytest.mark.smoke
def test_last_message_follows_the_newest_date_whatever_the_arrival_order(
    engine: sqlalchemy.Engine, append: Append
) -> None:
    location, cnv, contact = new_id("loc"), new_id("cnv"), new_id("con")
    common = {"locationId": location, "conversationId": cnv, "contactId": contact}
    sms = message(**common, dateAdded=at(9), body="first")
    email = message(
        **common,
        dateAdded=at(11),
        type="OutboundMessage",
        direction="outbound",
        messageType="Email",
        status="sent",
        body="<p>newest</p>",
    )
    call = message(**common, dateAdded=at(10), messageType="CALL", status="completed", body="")
    events = append([email, call, sms])  # the newest arrives first
    fold_all(engine, events)

    found = conversation(engine, location, cnv)
    assert found.last_message_at == time(11)
    assert found.last_message_key == email["messageId"]
    assert (found.last_message_channel, found.last_message_direction) == ("Email", "outbound")
    assert (found.last_message_status, found.last_message_preview) == ("sent", "newest")
    assert found.first_message_at == time(9)
    assert found.message_count == 3
    assert found.channels == ("Call", "Email", "SMS")
    assert found.contact_id == contact
    assert (found.unread_count, found.starred, found.merged_ids) == (None, None, ())

    # A status update is the same message: the count stays, the status moves on.
    fold_all(engine, append([again(email, status="opened")]))
    found = conversation(engine, location, cnv)
    assert (found.message_count, found.last_message_status) == (3, "opened")

    # An older message arriving late changes the counts but not the last message.
    older = message(**common, dateAdded=at(8), messageType="WhatsApp")
    fold_all(engine, append([older]))
    found = conversation(engine, location, cnv)
    assert (found.message_count, found.first_message_at) == (4, time(8))
    assert found.channels == ("Call", "Email", "SMS", "WhatsApp")
    assert found.last_message_key == email["messageId"]


@pytest.mark.parametrize("date_added", [at(7), ...], ids=["same-date", "no-date"])
def test_a_tie_for_the_last_message_is_a_delta_whatever_the_conversation_holds(
    engine: sqlalchemy.Engine, append: Append, date_added: Any
) -> None:
    # Every message of the conversation shares a date (or has none): the key decides
    # which is last. A batch compares its messages with the stored last key instead of
    # recomputing the conversation from every message it has (which slowed catch-up down
    # as a conversation grew).
    location, cnv, contact = new_id("loc"), new_id("cnv"), new_id("con")
    common = {"locationId": location, "conversationId": cnv, "contactId": contact}
    earlier = append(
        [
            message(**common, dateAdded=date_added, messageId=f"msg-{i}", body=f"body {i}")
            for i in range(100, 300)
        ]
    )
    fold(engine, earlier, [])
    later = append(
        [
            message(**common, dateAdded=date_added, messageId="msg-999", body="newest"),
            message(**common, dateAdded=date_added, messageId="msg-050", body="older"),
        ]
    )
    read = rows_read_folding(engine, PROJECTION, later, conversation_messages)
    assert read <= 10, f"{read} messages read to add 2 to a conversation of 200"

    found = conversation(engine, location, cnv)
    assert (found.last_message_key, found.last_message_preview) == ("msg-999", "newest")
    assert found.message_count == 202
    with side_tables(engine, PROJECTION) as one_pass:
        rebuild_in_one_pass(engine, PROJECTION, one_pass, [*earlier, *later])
        assert table_rows(engine, PROJECTION, one_pass, location) == rows(engine, location)


def test_unread_updates_the_latest_timestamp_wins(
    engine: sqlalchemy.Engine, append: Append
) -> None:
    location, cnv, contact = new_id("loc"), new_id("cnv"), new_id("con")
    first = unread(location, cnv, "2025-03-04T10:00:00Z", unreadCount=1, starred=False)
    second = unread(location, cnv, "2025-03-04T10:05:00Z", unreadCount=3, starred=True)
    third = unread(
        location,
        cnv,
        "2025-03-04T10:10:00Z",
        unreadCount=0,
        starred=True,
        inbox=True,
        deleted=False,
        contactId=contact,
    )
    events = append([third, first, second])  # the latest arrives first
    fold(engine, events, [1, 2])
    found = conversation(engine, location, cnv)
    assert (found.unread_count, found.starred, found.inbox, found.deleted) == (0, True, True, False)

    # Known only from unread updates: a row without messages.
    assert found.message_count == 0
    assert found.channels == ()
    assert (found.last_message_at, found.last_message_key, found.first_message_at) == (
        None,
        None,
        None,
    )
    assert found.contact_id == contact

    fold_all(engine, append([message(locationId=location, conversationId=cnv, dateAdded=at(9))]))
    found = conversation(engine, location, cnv)
    assert (found.message_count, found.last_message_at, found.unread_count) == (1, time(9), 0)


def test_an_epoch_timestamp_given_as_text_is_a_time(
    engine: sqlalchemy.Engine, append: Append
) -> None:
    """Epoch milliseconds as text (10:15Z) order an update as in `dateAdded`: it beats
    an earlier ISO one, in either order, rather than losing as if it had no time."""
    location, cnv = new_id("loc"), new_id("cnv")
    iso = unread(location, cnv, "2025-03-04T10:10:00Z", unreadCount=1)
    epoch = unread(location, cnv, "1741083300000", unreadCount=4)
    fold(engine, append([epoch, iso]), [1])
    assert conversation(engine, location, cnv).unread_count == 4


def test_unread_only_conversations_sort_as_the_oldest(
    engine: sqlalchemy.Engine, append: Append
) -> None:
    location = new_id("loc")
    quiet, busy = new_id("cnv"), new_id("cnv")
    fold_all(
        engine,
        append(
            [
                unread(location, quiet, "2025-03-04T10:00:00Z", unreadCount=2),
                message(locationId=location, conversationId=busy, dateAdded=at(1)),
            ]
        ),
    )
    with engine.connect() as conn:
        newest_first, total = search(conn, location)
        oldest_first, _ = search(conn, location, descending=False)
        dated, dated_total = search(conn, location, since=time(0))
        unread_only, _ = search(conn, location, status="unread")
    assert (ids(newest_first), total) == ([busy, quiet], 2)
    assert ids(oldest_first) == [quiet, busy]
    assert (ids(dated), dated_total) == ([busy], 1)
    assert ids(unread_only) == [quiet]


@pytest.mark.parametrize("merge_first", [True, False])
def test_a_merge_before_or_after_the_messages(
    engine: sqlalchemy.Engine, append: Append, merge_first: bool
) -> None:
    location, old, new, contact = new_id("loc"), new_id("cnv"), new_id("cnv"), new_id("con")
    old_messages = [
        message(locationId=location, conversationId=old, contactId=contact, dateAdded=at(h))
        for h in (9, 12)
    ]
    new_message = message(
        locationId=location,
        conversationId=new,
        contactId=contact,
        messageType="Live Chat",
        dateAdded=at(11),
    )
    documents = [*old_messages, new_message]
    joined = [merge(location, old, new), *documents]
    if not merge_first:
        joined.reverse()
    events = append(joined)
    fold(engine, events, [1])

    found = conversation(engine, location, new)
    assert found.conversation_id == new
    assert found.merged_ids == (old,)
    assert (found.message_count, found.first_message_at) == (3, time(9))
    assert found.last_message_key == old_messages[1]["messageId"]
    assert found.channels == ("LiveChat", "SMS")
    assert conversation(engine, location, old) == found  # the old id finds the root
    with engine.connect() as conn:
        assert resolve(conn, location, old) == new
        assert resolve(conn, location, new) == new
        assert resolve(conn, location, new_id("cnv")) is None
        listed, total = search(conn, location)
    assert (ids(listed), total) == ([new], 1)  # the old conversation has no row of its own


def test_a_merged_conversation_keeps_its_own_contact(
    engine: sqlalchemy.Engine, append: Append
) -> None:
    """HighLevel merges a live chat conversation into another when it identifies the
    visitor as an existing contact: the merged conversation is that contact's, though the
    chat's messages (the newest here) name the visitor's contact. It read as the
    visitor's, so a search by the contact's id did not find its conversation."""
    location, chat, known = new_id("loc"), new_id("cnv"), new_id("cnv")
    visitor, contact, other = new_id("con"), new_id("con"), new_id("con")
    chat_messages = [
        message(
            locationId=location,
            conversationId=chat,
            contactId=visitor,
            messageType="Live Chat",
            dateAdded=at(hour),
        )
        for hour in (9, 12)
    ]
    own = message(locationId=location, conversationId=known, contactId=contact, dateAdded=at(10))
    merged = {**merge(location, chat, known), "contactId": contact}
    for documents, cuts in (
        ([*chat_messages, own, merged], [1, 3]),
        ([merged, *chat_messages, own], []),
    ):
        where = new_id("loc")
        events = append([again(d, locationId=where) for d in documents])
        fold(engine, events, cuts)
        found = conversation(engine, where, known)
        assert (found.contact_id, found.message_count) == (contact, 3)
        assert found.last_message_key == chat_messages[1]["messageId"]
        with engine.connect() as conn:
            assert ids(search(conn, where, contact_id=contact)[0]) == [known]
            assert search(conn, where, contact_id=visitor)[1] == 0

    # Without messages of its own, the contact its unread updates name; without these, the
    # one its merge names (it read as the visitor's); without that, the newest merged
    # message's.
    anonymous = merge(location, chat, known)
    for flags, merges, expected in (
        ([unread(location, known, "2025-03-04T13:00:00Z", contactId=other)], [merged], other),
        ([], [merged], contact),
        ([], [anonymous], visitor),
    ):
        where = new_id("loc")
        documents = [*chat_messages, *merges, *flags]
        fold_all(engine, append([again(d, locationId=where) for d in documents]))
        assert conversation(engine, where, known).contact_id == expected


def test_chained_merges_arriving_piecemeal(engine: sqlalchemy.Engine, append: Append) -> None:
    location = new_id("loc")
    a, b, c = (new_id("cnv") for _ in range(3))
    for documents in (
        [message(locationId=location, conversationId=a, dateAdded=at(8))],
        [merge(location, a, b)],
        [message(locationId=location, conversationId=b, dateAdded=at(9))],
    ):
        fold_all(engine, append(documents))
    assert conversation(engine, location, a).conversation_id == b
    assert conversation(engine, location, b).message_count == 2

    fold_all(engine, append([merge(location, b, c)]))
    found = conversation(engine, location, a)
    assert found.conversation_id == c
    assert (found.merged_ids, found.message_count) == (tuple(sorted((a, b))), 2)
    with engine.connect() as conn:
        assert [resolve(conn, location, x) for x in (a, b, c)] == [c, c, c]
        listed, total = search(conn, location)
    # `c` has neither messages nor flags of its own but gathers those of a and b.
    assert (ids(listed), total) == ([c], 1)


def test_flags_rows_from_before_the_order_key_are_refolded_once(
    engine: sqlalchemy.Engine, append: Append
) -> None:
    location, cnv = new_id("loc"), new_id("cnv")
    fold_all(engine, append([unread(location, cnv, "2025-03-04T11:00:00Z", unreadCount=5)]))
    flags = conversation_flags
    with engine.begin() as conn:  # as migration 0009 leaves a row written before it
        conn.execute(
            flags.update()
            .where(flags.c.location_id == location, flags.c.conversation_id == cnv)
            .values(winner_at=None, winner_content=None)
        )
    # An older update arrives: the stored row cannot say it is older, so every update of
    # the conversation is read again, and the newer one keeps winning.
    fold_all(engine, append([unread(location, cnv, "2025-03-04T10:00:00Z", unreadCount=1)]))
    assert conversation(engine, location, cnv).unread_count == 5
    with engine.connect() as conn:
        winner = conn.execute(
            select(flags.c.winner_at, flags.c.winner_content).where(
                flags.c.location_id == location, flags.c.conversation_id == cnv
            )
        ).one()
    assert winner.winner_at == datetime(2025, 3, 4, 11, tzinfo=UTC)
    assert winner.winner_content is not None and '"unreadCount":5' in winner.winner_content


def test_flags_are_the_roots_own(engine: sqlalchemy.Engine, append: Append) -> None:
    location, old, new = new_id("loc"), new_id("cnv"), new_id("cnv")
    fold_all(
        engine,
        append(
            [
                message(locationId=location, conversationId=old),
                unread(location, old, "2025-03-04T10:00:00Z", unreadCount=4, starred=True),
            ]
        ),
    )
    assert conversation(engine, location, old).unread_count == 4

    fold_all(engine, append([merge(location, old, new)]))
    found = conversation(engine, location, old)
    assert (found.conversation_id, found.message_count) == (new, 1)
    assert (found.unread_count, found.starred) == (None, None)  # the merged-away flags are stale

    fold_all(engine, append([unread(location, new, "2025-03-04T11:00:00Z", unreadCount=1)]))
    assert conversation(engine, location, old).unread_count == 1


def test_search_filters_and_keyset_pages(engine: sqlalchemy.Engine, append: Append) -> None:
    location, contact = new_id("loc"), new_id("con")
    documents: list[dict[str, Any]] = []
    expected: dict[str, tuple[datetime, str, str]] = {}
    for index in range(12):
        cnv = new_id(f"cnv{index:02d}")
        channel = ("SMS", "Email", "CALL")[index % 3]
        direction = ("inbound", "outbound")[index % 2]
        hour = 1 + index // 2  # two conversations per hour: the id breaks the tie
        documents.append(
            message(
                locationId=location,
                conversationId=cnv,
                contactId=contact if index % 4 == 0 else new_id("con"),
                messageType=channel,
                direction=direction,
                type="InboundMessage" if direction == "inbound" else "OutboundMessage",
                dateAdded=at(hour),
            )
        )
        expected[cnv] = (time(hour), channel, direction)
        if index % 5 == 0 or index % 3 == 1:
            flags = {"unreadCount": 2 if index % 5 == 0 else 0, "starred": index % 3 == 1}
            documents.append(unread(location, cnv, "2025-03-04T00:00:00Z", **flags))
    fold(engine, append(documents), [5, 9])
    newest_first = sorted(expected, key=lambda c: (expected[c][0], c), reverse=True)

    with engine.connect() as conn:

        def pages(size: int, **filters: Any) -> tuple[list[str], list[int]]:
            seen: list[str] = []
            totals = []
            after = None
            while True:
                page, total = search(conn, location, limit=size, after=after, **filters)
                totals.append(total)
                seen += ids(page)
                if len(page) < size:
                    return seen, totals
                after = page[-1].cursor

        everything, totals = pages(5)
        assert everything == newest_first
        assert set(totals) == {12}
        oldest_first, _ = pages(4, descending=False)
        assert oldest_first == newest_first[::-1]

        by_contact, _ = pages(2, contact_id=contact)
        assert by_contact == [c for c in newest_first if c[3:5] in ("00", "04", "08")]
        sms, sms_totals = pages(3, last_message_channel="SMS")
        assert sms == [c for c in newest_first if expected[c][1] == "SMS"]
        assert set(sms_totals) == {4}
        calls_out, _ = pages(
            3, last_message_channel="Call", last_message_direction="outbound", descending=False
        )
        assert calls_out == [
            c for c in newest_first[::-1] if expected[c][1:] == ("CALL", "outbound")
        ]
        inbound, _ = pages(10, last_message_direction="inbound")
        assert inbound == [c for c in newest_first if expected[c][2] == "inbound"]
        unread_ones, _ = pages(1, status="unread")
        assert unread_ones == [c for c in newest_first if c[3:5] in ("00", "05", "10")]
        read_ones, read_totals = pages(20, status="read")
        assert read_ones == [c for c in newest_first if c not in unread_ones]
        assert set(read_totals) == {9}
        starred, _ = pages(2, status="starred")
        assert starred == [c for c in newest_first if c[3:5] in ("01", "04", "07", "10")]
        window, window_totals = pages(2, since=time(2), until=time(4))
        assert window == [c for c in newest_first if time(2) <= expected[c][0] < time(4)]
        assert set(window_totals) == {4}

        with pytest.raises(ValueError):
            search(conn, location, status="archived")  # type: ignore[arg-type]


def test_everything_is_scoped_by_location(engine: sqlalchemy.Engine, append: Append) -> None:
    here, there, cnv, other = new_id("loc"), new_id("loc"), new_id("cnv"), new_id("cnv")
    fold_all(
        engine,
        append(
            [
                message(locationId=here, conversationId=cnv, dateAdded=at(9)),
                message(locationId=there, conversationId=cnv, dateAdded=at(10)),
                message(locationId=there, conversationId=other, dateAdded=at(11)),
                merge(there, cnv, other),
            ]
        ),
    )
    found = conversation(engine, here, cnv)
    assert (found.conversation_id, found.message_count, found.merged_ids) == (cnv, 1, ())
    assert conversation(engine, there, cnv).conversation_id == other
    assert conversation(engine, there, other).message_count == 2
    with engine.connect() as conn:
        assert ids(search(conn, here)[0]) == [cnv]
        assert ids(search(conn, there)[0]) == [other]
        assert get(conn, here, other) is None
        assert resolve(conn, here, cnv) == cnv


# --- property: the set of events decides ----------------------------------------------------

CONVERSATIONS = ("c0", "c1", "c2")


@st.composite
def scenarios(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Templates (no locationId, no webhookId) of a small conversation world."""
    templates: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 5))):
        base = {
            "type": "InboundMessage",
            "messageId": f"m{index}",
            "conversationId": draw(st.sampled_from(CONVERSATIONS)),
            "contactId": draw(st.sampled_from(["p0", "p1"])),
            "messageType": draw(st.sampled_from(["SMS", "Email", "CALL"])),
            "direction": "inbound",
            "body": f"body {index}",
            "dateAdded": at(draw(st.integers(1, 3))),  # ties happen
        }
        # The type name a message shows is its conversation's lastMessageType.
        name = draw(st.sampled_from([None, "TYPE_CAMPAIGN_SMS", "TYPE_ACTIVITY_CONTACT"]))
        if name is not None:
            base["messageTypeString"] = name
        for status in draw(
            st.lists(st.sampled_from(["sent", "delivered", "failed", "read", ""]), min_size=1)
        ):
            # Now and then a later delivery names another conversation (or contact).
            moved = draw(
                st.sampled_from([{}, {}, {}, {"conversationId": "c1"}, {"contactId": "p2"}])
            )
            templates.append(base | {"status": status} | moved)
    for _ in range(draw(st.integers(0, 4))):
        minute = draw(st.integers(0, 2))
        # As HighLevel writes it, or as epoch milliseconds in text (as dateAdded may be).
        timestamp = draw(
            st.sampled_from(
                [f"2025-03-04T10:0{minute}:00Z", str(int(time(10, minute).timestamp() * 1000))]
            )
        )
        templates.append(
            {
                "type": "ConversationUnreadUpdate",
                "id": draw(st.sampled_from(CONVERSATIONS)),
                "timestamp": timestamp,
                "unreadCount": draw(st.integers(0, 3)),
                "starred": draw(st.booleans()),
                "contactId": draw(st.sampled_from(["p0", "p3"])),
            }
        )
    for old, new in draw(
        st.lists(
            st.tuples(st.sampled_from(CONVERSATIONS), st.sampled_from(CONVERSATIONS)), max_size=3
        )
    ):
        if old != new:
            pair = {"type": "ConversationUpdate", "oldConversationId": old}
            pair["newConversationId"] = new
            # The contact it names (a pair may come twice naming two).
            contact = draw(st.sampled_from([None, "p4", "p5"]))
            templates.append(pair if contact is None else pair | {"contactId": contact})
    return templates


def instantiate(templates: Sequence[dict[str, Any]], location: str) -> list[dict[str, Any]]:
    return [t | {"locationId": location, "webhookId": str(uuid.uuid4())} for t in templates]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), templates=scenarios())
def test_tables_depend_only_on_the_set_of_events(
    engine: sqlalchemy.Engine, append: Append, data: st.DataObject, templates: list[dict[str, Any]]
) -> None:
    reference, shuffled = new_id("loc"), new_id("loc")
    fold(engine, append(instantiate(templates, reference)), [])

    # Another arrival order, some deliveries repeated (new webhookIds), any batch cutting,
    # then some events again in a batch at the end (a fold only ever moves forward).
    order = data.draw(st.permutations(templates))
    repeats = data.draw(st.lists(st.sampled_from(templates), max_size=3)) if templates else []
    events = append(instantiate([*order, *repeats], shuffled))
    cuts = data.draw(st.lists(st.integers(1, max(1, len(events) - 1)), max_size=4))
    fold(engine, events, cuts)
    replay = data.draw(st.sets(st.integers(0, len(events) - 1), max_size=3))
    if replay:
        repeated = [events[i] for i in sorted(replay)]
        with engine.begin() as conn:
            hold_live(conn, PROJECTION)
            PROJECTION.apply(conn, EventBatch(repeated, events[-1].position), Tables())

    assert rows(engine, shuffled) == rows(engine, reference)
    with side_tables(engine, PROJECTION) as one_pass:  # as `replay` does
        rebuild_in_one_pass(engine, PROJECTION, one_pass, events)
        rebuilt = table_rows(engine, PROJECTION, one_pass, shuffled)
    assert rebuilt == rows(engine, reference)
