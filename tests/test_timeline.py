"""The timeline projection on real PostgreSQL: events go through the real store, are read
back with `read_range` and folded with `apply` in several batch cuttings, and the read
functions answer from the tables."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, select

from conversations.database import create_async_engine
from conversations.projections import bulk, timeline
from conversations.projections.base import EventBatch, Tables
from conversations.projections.timeline import (
    PROJECTION,
    TimelineMessage,
    contact_messages,
    conversation_ids,
    export_messages,
    get_message,
    list_messages,
    resolve_conversation,
    resolve_conversations,
)
from conversations.store import StoredEvent, append_events, head_position, read_range
from tests.helpers import fixture, message, new_id
from tests.projection_support import hold_live, merge, new_event

BASE = datetime(2024, 1, 1, tzinfo=UTC)


def at(minutes: float) -> str:
    """An ISO `dateAdded` `minutes` after BASE, as HighLevel writes it."""
    return (
        (BASE + timedelta(minutes=minutes))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def again(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Another delivery about the same message: a new webhookId, maybe other fields."""
    redelivered = copy.deepcopy(document)
    redelivered.update(changes, webhookId=str(uuid.uuid4()))
    return {key: value for key, value in redelivered.items() if value is not ...}


def append(database_url: str, transactions: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Append each group of documents in its own transaction, in order."""

    async def work() -> None:
        engine = create_async_engine(database_url, pool_size=1, timeout=10)
        try:
            for documents in transactions:
                async with engine.begin() as conn:
                    await append_events(conn, [new_event(d) for d in documents])
        finally:
            await engine.dispose()

    asyncio.run(work())


def cut(
    events: Sequence[StoredEvent], sizes: Iterator[int], after: int | None = None
) -> Iterator[EventBatch]:
    """Consecutive batches of `events`; with `after` (the position before the first
    event), each batch says it holds every event since the previous one, as the runner's
    do (only earlier events are then read back from the table)."""
    start = 0
    while start < len(events):
        chunk = events[start : start + max(1, next(sizes))]
        start += len(chunk)
        yield EventBatch(chunk, chunk[-1].position, start=after)
        if after is not None:
            after = chunk[-1].position


class Harness:
    """Sends documents through the store and folds what they added, as the runner would
    (but into the live tables and in batch sizes the test picks)."""

    def __init__(self, database_url: str, engine: sqlalchemy.Engine) -> None:
        self.database_url, self.engine = database_url, engine
        with engine.connect() as conn:
            self.position = head_position(conn)

    def send(self, *documents: dict[str, Any], fold: int | None = 1000) -> None:
        """Append the documents (one transaction each) and, unless `fold` is None, fold
        everything new in batches of `fold` events."""
        append(self.database_url, [[d] for d in documents])
        if fold is not None:
            self.fold(fold)

    def fold(self, batch_size: int = 1000) -> None:
        with self.engine.begin() as conn:
            head = head_position(conn)
            events = read_range(conn, self.position, head, 1_000_000)
            hold_live(conn, PROJECTION)
            for batch in cut(events, itertools.repeat(batch_size), after=self.position):
                PROJECTION.apply(conn, batch, Tables())
            self.position = head


@pytest.fixture
def harness(database_url: str, engine: sqlalchemy.Engine) -> Harness:
    return Harness(database_url, engine)


def everything(
    conn: sqlalchemy.Connection, location: str, conversation: str, **options: Any
) -> list[TimelineMessage]:
    return list_messages(conn, location, conversation, limit=1000, **options)


def keys(messages: Sequence[TimelineMessage]) -> list[str]:
    return [m.message_key for m in messages]


# --- one message, many events -----------------------------------------------------------------


CHANNEL_CASES: list[tuple[dict[str, Any], str]] = [
    ({"messageType": "SMS", "messageTypeString": "TYPE_SMS", "messageTypeId": 2}, "SMS"),
    ({"messageType": "Email"}, "Email"),
    ({"messageType": "CALL", "messageTypeId": 1, "status": "completed"}, "Call"),
    ({"messageType": "CALL", "messageTypeId": 10, "status": "voicemail"}, "Voicemail"),
    ({"messageType": "GMB"}, "GMB"),
    ({"messageType": "FB"}, "Facebook"),
    ({"messageType": "IG"}, "Instagram"),
    ({"messageType": "WhatsApp"}, "WhatsApp"),
    ({"messageType": "Live Chat"}, "LiveChat"),
    ({"messageType": "InternalComment", "type": "OutboundMessage"}, "InternalComment"),
    ({"messageType": "Custom", "messageTypeId": 22}, "Custom"),
    ({"messageType": "Carrier Pigeon"}, "Other"),
]


@pytest.mark.smoke
def test_every_channel_is_one_row_in_its_conversation(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    documents = [
        message(locationId=location, conversationId=conversation, dateAdded=at(i), **fields)
        for i, (fields, _) in enumerate(CHANNEL_CASES)
    ]
    harness.send(*documents)
    with engine.connect() as conn:
        rows = everything(conn, location, conversation)
    assert [m.message_id for m in rows] == [d["messageId"] for d in documents]
    assert [m.channel for m in rows] == [channel for _, channel in CHANNEL_CASES]
    first = rows[0]
    assert first.conversation_id == conversation and first.location_id == location
    assert first.direction == "inbound" and first.body == first.preview == "hello"
    assert first.date_added == BASE and len(first.positions) == 1
    assert first.updated_position == first.positions[0]


def test_highlevel_documented_payloads_all_land(harness: Harness, engine: Any) -> None:
    location = new_id("loc")
    names = ["doc_inbound_sms", "doc_email", "doc_inbound_voicemail", "doc_outbound_call"]
    names += ["doc_internal_comment"]
    documents = [{**fixture(name), "locationId": location} for name in names]
    harness.send(*documents)
    with engine.connect() as conn:
        found = {
            d["conversationId"]: everything(conn, location, d["conversationId"]) for d in documents
        }
    channels = sorted(m.channel for rows in found.values() for m in rows)
    assert channels == ["Call", "Email", "InternalComment", "SMS", "Voicemail"]


def test_status_updates_in_any_order_end_at_the_furthest(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    orders = list(itertools.permutations(["pending", "sent", "delivered"]))
    firsts = [
        message(locationId=location, conversationId=conversation, dateAdded=at(i), status=s[0])
        for i, s in enumerate(orders)
    ]
    # One event per transaction and per batch: every intermediate state is folded too.
    for first, statuses in zip(firsts, orders, strict=True):
        harness.send(first, *(again(first, status=s) for s in statuses[1:]), fold=1)
    with engine.connect() as conn:
        rows = everything(conn, location, conversation)
    assert [m.status for m in rows] == ["delivered"] * len(orders)
    assert all(len(m.positions) == 3 for m in rows)
    assert all(m.updated_position == max(m.positions) for m in rows)


def test_a_failure_report_after_delivery_does_not_undo_it(harness: Harness, engine: Any) -> None:
    first = message(status="sent")
    harness.send(first, again(first, status="delivered"), again(first, status="failed"), fold=1)
    with engine.connect() as conn:
        found = get_message(conn, first["locationId"], first["messageId"])
    assert found is not None and found.status == "delivered"


def test_call_outcomes(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    call = {"messageType": "CALL", "messageTypeId": 1, "messageTypeString": "TYPE_CALL"}
    answered = message(
        locationId=location,
        conversationId=conversation,
        type="OutboundMessage",
        direction="outbound",
        dateAdded=at(1),
        status="completed",
        callStatus="completed",
        callDuration=120,
        attachments=["https://example.com/recording.mp3"],
        **call,
    )
    to_voicemail = message(
        locationId=location,
        conversationId=conversation,
        type="OutboundMessage",
        direction="outbound",
        dateAdded=at(2),
        status="completed",
        callStatus="voicemail",
        **call,
    )
    missed = message(
        locationId=location,
        conversationId=conversation,
        dateAdded=at(3),
        messageType="CALL",
        messageTypeId=10,
        messageTypeString="TYPE_VOICEMAIL",
        status="voicemail",
        callStatus="voicemail",
        attachments=["https://example.com/voicemail.mp3"],
    )
    # The answered call's "ringing" report arrives after its completion.
    ringing = again(
        answered, status="pending", callStatus="pending", callDuration=..., attachments=[]
    )
    harness.send(answered, to_voicemail, missed, ringing, fold=1)
    with engine.connect() as conn:
        rows = everything(conn, location, conversation)
    outcomes = [(m.channel, m.direction, m.status, m.call_status, m.call_duration) for m in rows]
    assert outcomes == [
        ("Call", "outbound", "completed", "completed", 120.0),
        ("Call", "outbound", "completed", "voicemail", None),
        ("Voicemail", "inbound", "voicemail", "voicemail", None),
    ]
    assert rows[0].attachments == ("https://example.com/recording.mp3",)
    assert len(rows[0].positions) == 2


def test_an_email_thread(harness: Harness, engine: Any) -> None:
    location, conversation, contact = new_id("loc"), new_id("cnv"), new_id("con")
    thread = new_id("thr")
    email = {
        "locationId": location,
        "conversationId": conversation,
        "contactId": contact,
        "messageType": "Email",
        "contentType": "text/html",
        "threadId": thread,
        "messageId": ...,
    }
    sent = message(
        **{
            **email,
            "type": "OutboundMessage",
            "direction": "outbound",
            "emailMessageId": new_id("eml"),
            "dateAdded": at(10),
            "subject": "Order Confirmed",
            "body": "<p>Your order is <b>confirmed</b></p>",
            "status": "sent",
            "from": "Shop <shop@example.com>",
            "to": "client@example.com",
            "ccList": ["cc1@example.com", "cc2@example.com"],
            "bccList": ["audit@example.com"],
        }
    )
    reply = message(
        **{
            **email,
            "emailMessageId": new_id("eml"),
            "dateAdded": at(20),
            "subject": "Re: Order Confirmed",
            "body": "<div>Thanks!</div>",
            "plainText": "Thanks!",
            "from": "client@example.com",
            "to": ["shop@example.com"],
            "cc": ["cc1@example.com"],
        }
    )
    harness.send(reply, sent, again(sent, status="opened"))
    with engine.connect() as conn:
        rows = everything(conn, location, conversation)
        by_email_id = get_message(conn, location, sent["emailMessageId"])
        by_contact = contact_messages(conn, location, contact, limit=10, channels=["Email"])
    assert [m.email_message_id for m in rows] == [sent["emailMessageId"], reply["emailMessageId"]]
    first, second = rows
    assert first.message_key == sent["emailMessageId"] and first.message_id is None
    assert {m.thread_id for m in rows} == {thread}
    assert (first.subject, second.subject) == ("Order Confirmed", "Re: Order Confirmed")
    assert first.status == "opened" and first.from_ == "Shop <shop@example.com>"
    assert first.direction == "outbound" and second.direction == "inbound"
    assert first.to == ("client@example.com",)
    assert first.cc == ("cc1@example.com", "cc2@example.com")
    assert first.bcc == ("audit@example.com",)
    assert second.cc == ("cc1@example.com",) and second.bcc == ()
    assert first.preview == "Your order is confirmed" and second.preview == "Thanks!"
    assert by_email_id == first
    assert by_contact == rows


def test_whatsapp_attachments_arriving_later(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    photo = "https://example.com/photo.jpg"
    early = message(locationId=location, conversationId=conversation, messageType="WhatsApp")
    early.update(body="", attachments=[])
    late = again(early, attachments=[photo])
    harness.send(early)
    with engine.connect() as conn:
        before = get_message(conn, location, early["messageId"])
    harness.send(late)
    with engine.connect() as conn:
        after = get_message(conn, location, early["messageId"])
    assert before is not None and before.attachments == () and before.channel == "WhatsApp"
    assert after is not None and after.attachments == (photo,)
    assert after.positions == (*before.positions, after.updated_position)

    # The other way round (attachments first, the bare event late) ends the same.
    other = new_id("loc")
    harness.send(again(late, locationId=other), again(early, locationId=other))
    with engine.connect() as conn:
        reversed_ = get_message(conn, other, early["messageId"])
    assert reversed_ is not None and reversed_.attachments == (photo,)


def test_widget_provider_and_empty_bodies_are_kept_as_sent(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    common = {"locationId": location, "conversationId": conversation}
    chat = message(**common, messageType="Live Chat", chatWidgetId="67b0cc8cf14b19d85ace7s35")
    email = message(**common, messageType="Email", provider="Leadconnector Gmail")
    empty = message(**common, messageType="SMS", body="")
    harness.send(chat, email, empty, again(empty, status="delivered", body=...))
    with engine.connect() as conn:
        found = {
            d["messageId"]: get_message(conn, location, d["messageId"])
            for d in (chat, email, empty)
        }
    stored = {key: m for key, m in found.items() if m is not None}
    assert stored[chat["messageId"]].chat_widget_id == "67b0cc8cf14b19d85ace7s35"
    assert stored[email["messageId"]].provider == "Leadconnector Gmail"
    assert stored[empty["messageId"]].body == ""
    assert stored[empty["messageId"]].status == "delivered"
    documents = {key: json.loads(m.doc or "null") for key, m in stored.items()}
    assert documents[chat["messageId"]]["chatWidgetId"] == "67b0cc8cf14b19d85ace7s35"
    assert documents[empty["messageId"]]["body"] == ""


def test_values_survive_the_fold_exactly(harness: Harness, engine: Any) -> None:
    """Rows travel to PostgreSQL as one JSON document per batch: nothing may be lost."""
    text = 'quotes " and \\ backslash\nnew line, ünïcödé, 😀, <b>tags</b>, tab\t'
    attachment = {"url": "https://example.com/a.png", "meta": {"size": 12, "ok": True}}
    document = message(
        body=text,
        dateAdded="2024-05-08T12:00:56.123456Z",
        callDuration=0.1,
        messageTypeId=2**62 + 1,
        attachments=["https://example.com/b.png", attachment],
        to=["a@example.com", "b@example.com"],
        **{"from": "x'y\"z"},
    )
    harness.send(document)
    with engine.connect() as conn:
        found = get_message(conn, document["locationId"], document["messageId"])
    assert found is not None
    assert found.body == text
    assert found.date_added == datetime(2024, 5, 8, 12, 0, 56, 123456, tzinfo=UTC)
    assert found.call_duration == 0.1
    assert found.message_type_id == 2**62 + 1
    assert found.attachments == ("https://example.com/b.png", attachment)
    assert found.to == ("a@example.com", "b@example.com")
    assert found.from_ == "x'y\"z"


def test_messages_of_unknown_types_of_event_are_ignored(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    unread = {
        "type": "ConversationUnreadUpdate",
        "locationId": location,
        "id": conversation,
        "unreadCount": 3,
        "webhookId": str(uuid.uuid4()),
    }
    harness.send(unread)
    with engine.connect() as conn:
        assert resolve_conversation(conn, location, conversation) is None
        assert everything(conn, location, conversation) == []


# --- merges -----------------------------------------------------------------------------------


def merged_scenario(location: str, old: str, new: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Two messages in `old`, one in `new` between them; the message ids in order."""
    documents = [
        message(locationId=location, conversationId=old, dateAdded=at(1), messageId=new_id("m")),
        message(locationId=location, conversationId=new, dateAdded=at(2), messageId=new_id("m")),
        message(locationId=location, conversationId=old, dateAdded=at(3), messageId=new_id("m")),
    ]
    return documents, [d["messageId"] for d in documents]


@pytest.mark.smoke
def test_a_merge_reads_the_old_conversation_as_part_of_the_new(
    harness: Harness, engine: Any
) -> None:
    location, old, new = new_id("loc"), new_id("old"), new_id("new")
    documents, ids = merged_scenario(location, old, new)
    harness.send(*documents)
    with engine.connect() as conn:
        assert keys(everything(conn, location, new)) == [ids[1]]
        assert resolve_conversation(conn, location, old) == old
    harness.send(merge(location, old, new))
    with engine.connect() as conn:
        assert keys(everything(conn, location, new)) == ids
        assert keys(everything(conn, location, old)) == ids
        assert resolve_conversation(conn, location, old) == new
        assert resolve_conversation(conn, location, new) == new
        assert conversation_ids(conn, location, new) == [new, old]
        assert conversation_ids(conn, location, old) == [new, old]
        assert resolve_conversations(conn, location, [old, new, "other"]) == {
            old: new,
            new: new,
            "other": "other",
        }
        rows = everything(conn, location, new)
    # Rows keep the conversation they were sent in.
    assert [m.conversation_id for m in rows] == [old, new, old]


def test_a_merge_before_the_old_messages_gives_the_same_timeline(
    harness: Harness, engine: Any
) -> None:
    location, old, new = new_id("loc"), new_id("old"), new_id("new")
    documents, ids = merged_scenario(location, old, new)
    harness.send(merge(location, old, new))
    with engine.connect() as conn:
        # Known as merged before it has any message.
        assert resolve_conversation(conn, location, old) == new
    harness.send(*documents, fold=1)
    with engine.connect() as conn:
        assert keys(everything(conn, location, old)) == ids
        assert keys(everything(conn, location, new)) == ids
        assert keys(everything(conn, location, new, descending=True)) == ids[::-1]


def test_merge_chains_and_redelivered_merges(harness: Harness, engine: Any) -> None:
    location, a, b, c = new_id("loc"), new_id("a"), new_id("b"), new_id("c")
    documents = [
        message(locationId=location, conversationId=cid, dateAdded=at(i), messageId=f"m{i}")
        for i, cid in enumerate([a, b, c])
    ]
    first = merge(location, b, c)
    harness.send(*documents, merge(location, a, b), first, again(first), fold=1)
    with engine.connect() as conn:
        for cid in (a, b, c):
            assert resolve_conversation(conn, location, cid) == c
            assert keys(everything(conn, location, cid)) == ["m0", "m1", "m2"]
        assert conversation_ids(conn, location, a) == [c, *sorted([a, b])]
        stored = conn.execute(
            select(timeline.timeline_merges).where(
                timeline.timeline_merges.c.location_id == location
            )
        ).all()
    assert len(stored) == 2


def test_merged_pages_interleave_conversations(harness: Harness, engine: Any) -> None:
    location, old, new = new_id("loc"), new_id("old"), new_id("new")
    documents = [
        message(
            locationId=location,
            conversationId=old if i % 3 else new,
            dateAdded=at(i // 2),
            messageId=f"m{i:02}",
        )
        for i in range(20)
    ]
    harness.send(*documents, merge(location, old, new), fold=7)
    expected = [d["messageId"] for d in documents]
    with engine.connect() as conn:
        for descending in (False, True):
            pages = paginate(conn, location, new, size=3, descending=descending)
            assert keys(pages) == (expected[::-1] if descending else expected)


# --- order and pages --------------------------------------------------------------------------


def paginate(
    conn: sqlalchemy.Connection,
    location: str,
    conversation: str,
    *,
    size: int,
    descending: bool = False,
    **options: Any,
) -> list[TimelineMessage]:
    seen: list[TimelineMessage] = []
    after = None
    while True:
        page = list_messages(
            conn, location, conversation, limit=size, after=after, descending=descending, **options
        )
        assert len(page) <= size
        seen += page
        if len(page) < size:
            return seen
        after = page[-1].cursor


def test_order_is_date_added_then_key_with_undated_messages_last(
    harness: Harness, engine: Any
) -> None:
    location, conversation = new_id("loc"), new_id("cnv")

    def sms(key: str, minutes: float | None) -> dict[str, Any]:
        date = ... if minutes is None else at(minutes)
        return message(
            locationId=location, conversationId=conversation, messageId=key, dateAdded=date
        )

    # Arrival order is not timeline order.
    harness.send(
        sms("k-undated-2", None),
        sms("k-b", 5),
        sms("k-a", 5),
        sms("k-late", 9),
        sms("k-undated-1", None),
        sms("k-early", 1),
        sms("k-c", 5),
    )
    expected = ["k-early", "k-a", "k-b", "k-c", "k-late", "k-undated-1", "k-undated-2"]
    with engine.connect() as conn:
        assert keys(everything(conn, location, conversation)) == expected
        assert keys(everything(conn, location, conversation, descending=True)) == expected[::-1]
        for size in (1, 2, 3, 7, 8):
            for descending in (False, True):
                pages = paginate(conn, location, conversation, size=size, descending=descending)
                assert keys(pages) == (expected[::-1] if descending else expected)
        # Date filters leave undated messages out; `until` is exclusive.
        window = everything(conn, location, conversation, since=BASE + timedelta(minutes=5))
        assert keys(window) == ["k-a", "k-b", "k-c", "k-late"]
        window = everything(conn, location, conversation, until=BASE + timedelta(minutes=9))
        assert keys(window) == ["k-early", "k-a", "k-b", "k-c"]
        assert list_messages(conn, location, conversation, limit=0) == []
        # A cursor among the undated messages.
        rest = everything(conn, location, conversation, after=(None, "k-undated-1"))
        assert keys(rest) == ["k-undated-2"]
        rest = everything(
            conn, location, conversation, after=(None, "k-undated-1"), descending=True
        )
        assert keys(rest) == expected[:5][::-1]


def test_pages_neither_repeat_nor_skip_while_messages_arrive(harness: Harness, engine: Any) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    minutes: dict[str, float | None] = {}

    def sms(key: str, at_minute: float | None) -> dict[str, Any]:
        minutes[key] = at_minute
        date = ... if at_minute is None else at(at_minute)
        return message(
            locationId=location, conversationId=conversation, messageId=key, dateAdded=date
        )

    def place(key: str) -> tuple[bool, float, str]:
        """Where a message sorts: undated last, then by date, then by key."""
        at_minute = minutes[key]
        return at_minute is None, at_minute or 0.0, key

    # Ties on dateAdded and a few undated messages.
    original = [sms(f"k{i:03}", None if i % 11 == 0 else i // 3) for i in range(1, 31)]
    harness.send(*original, fold=9)
    must_see = {d["messageId"] for d in original}
    must_not_see: set[str] = set()
    counter = itertools.count(100)
    seen: list[TimelineMessage] = []
    after = None
    while True:
        with engine.connect() as conn:
            page = list_messages(conn, location, conversation, limit=4, after=after)
        seen += page
        if len(page) < 4:
            break
        last = page[-1]
        after = last.cursor
        # Between pages: a message far behind the reader, one at the cursor's date
        # (among its ties, after it by key), an undated one.
        at_cursor = (
            None if last.date_added is None else (last.date_added - BASE) / timedelta(minutes=1)
        )
        arrivals = [sms(f"k{next(counter):03}", m) for m in (0, at_cursor, None)]
        harness.send(*arrivals, fold=2)
        for document in arrivals:
            ahead = place(document["messageId"]) > place(last.message_key)
            (must_see if ahead else must_not_see).add(document["messageId"])
    seen_keys = keys(seen)
    assert len(seen_keys) == len(set(seen_keys)), "a message was read twice"
    assert must_see <= set(seen_keys), "a message was skipped"
    assert not must_not_see & set(seen_keys), "a message behind the reader showed up"
    assert seen_keys == sorted(seen_keys, key=place), "pages are out of order"
    assert must_not_see, "the test never appended behind the reader"


def test_contact_and_location_reads(harness: Harness, engine: Any) -> None:
    location, contact, other_contact = new_id("loc"), new_id("con"), new_id("con")
    conversations = [new_id("cnv"), new_id("cnv")]
    documents = [
        message(
            locationId=location,
            conversationId=conversations[i % 2],
            contactId=contact if i < 6 else other_contact,
            messageType="SMS" if i % 3 else "Email",
            dateAdded=at(10 - i),
            messageId=f"m{i}",
        )
        for i in range(8)
    ]
    harness.send(*documents)
    with engine.connect() as conn:
        mine = contact_messages(conn, location, contact, limit=100)
        newest_first = contact_messages(conn, location, contact, limit=100, descending=True)
        emails = contact_messages(conn, location, contact, limit=100, channels=["Email"])
        none = contact_messages(conn, location, contact, limit=100, channels=[])
        second_page = contact_messages(conn, location, contact, limit=2, after=mine[1].cursor)
        window = contact_messages(
            conn,
            location,
            contact,
            limit=100,
            since=BASE + timedelta(minutes=6),
            until=BASE + timedelta(minutes=9),
        )
        export = export_messages(conn, location, limit=100)
        export_page = export_messages(conn, location, limit=3, after=export[2].cursor)
    assert keys(mine) == ["m5", "m4", "m3", "m2", "m1", "m0"]
    assert newest_first == mine[::-1]
    assert keys(emails) == ["m3", "m0"]
    assert none == []
    assert second_page == mine[2:4]
    assert keys(window) == ["m4", "m3", "m2"]
    assert keys(export) == [f"m{i}" for i in range(7, -1, -1)]
    assert export_page == export[3:6]


def test_reads_are_scoped_by_location(harness: Harness, engine: Any) -> None:
    conversation, message_id, contact = new_id("cnv"), new_id("msg"), new_id("con")
    here, there = new_id("loc"), new_id("loc")
    shared = {"conversationId": conversation, "messageId": message_id, "contactId": contact}
    mine = message(locationId=here, body="mine", **shared)
    theirs = message(locationId=there, body="theirs", emailMessageId=new_id("eml"), **shared)
    other = new_id("cnv")
    harness.send(mine, theirs, merge(there, other, conversation))
    with engine.connect() as conn:
        assert [m.body for m in everything(conn, here, conversation)] == ["mine"]
        assert [m.body for m in everything(conn, there, conversation)] == ["theirs"]
        found = get_message(conn, here, message_id)
        assert found is not None and found.body == "mine"
        assert get_message(conn, here, theirs["emailMessageId"]) is None
        assert [m.body for m in contact_messages(conn, here, contact, limit=10)] == ["mine"]
        assert [m.body for m in export_messages(conn, here, limit=10)] == ["mine"]
        # The merge happened in the other location only.
        assert resolve_conversation(conn, here, other) is None
        assert resolve_conversation(conn, there, other) == conversation
        assert conversation_ids(conn, here, conversation) == [conversation]
        assert resolve_conversation(conn, new_id("loc"), conversation) is None


def test_get_message_by_key_message_id_or_email_message_id(harness: Harness, engine: Any) -> None:
    location = new_id("loc")
    with_both = message(locationId=location, emailMessageId=new_id("eml"), messageType="Email")
    derived = message(locationId=location, messageId=..., body="no ids at all")
    harness.send(with_both, derived)
    with engine.connect() as conn:
        [derived_row] = everything(conn, location, derived["conversationId"])
        assert derived_row.message_key.startswith("derived:")
        assert get_message(conn, location, derived_row.message_key) == derived_row
        by_id = get_message(conn, location, with_both["messageId"])
        by_email = get_message(conn, location, with_both["emailMessageId"])
        assert by_id is not None and by_id == by_email
        assert by_id.message_key == with_both["messageId"]
        assert get_message(conn, location, new_id("nothing")) is None


# --- order, cutting and duplicates do not matter ----------------------------------------------

RUN = new_id()  # message ids of the scenario: fixed per run, scoped by each example's location


def scenario(location: str) -> list[dict[str, Any]]:
    """Several messages of every kind, their updates, and two chained merges."""

    def base(conversation: str, **fields: Any) -> dict[str, Any]:
        return message(
            locationId=location,
            conversationId=f"{RUN}-{conversation}",
            contactId=f"{RUN}-contact",
            **fields,
        )

    sms = base("a", messageId=f"{RUN}-sms", dateAdded=at(1), status="pending")
    call = base(
        "a",
        messageId=f"{RUN}-call",
        type="OutboundMessage",
        direction="outbound",
        messageType="CALL",
        messageTypeId=1,
        dateAdded=at(2),
        status="pending",
        callStatus="pending",
    )
    whatsapp = base("b", messageId=f"{RUN}-wa", messageType="WhatsApp", dateAdded=at(2), body="")
    email = base(
        "b",
        messageId=...,
        emailMessageId=f"{RUN}-email",
        threadId=f"{RUN}-thread",
        messageType="Email",
        subject="Hi",
        dateAdded=at(3),
        status="sent",
        ccList=["x@example.com"],
    )
    undated = base("c", messageId=f"{RUN}-undated", dateAdded=...)
    return [
        sms,
        again(sms, status="sent"),
        again(sms, status="delivered"),
        call,
        again(call, status="completed", callStatus="completed", callDuration=42.5),
        whatsapp,
        again(whatsapp, attachments=["https://example.com/a.jpg"]),
        email,
        again(email, status="opened", provider="Leadconnector Gmail"),
        undated,
        merge(location, f"{RUN}-b", f"{RUN}-a"),
        merge(location, f"{RUN}-c", f"{RUN}-b"),
    ]


def snapshot(conn: sqlalchemy.Connection, tables: Tables, location: str) -> dict[str, Any]:
    """Every row the projection keeps for `location`, in a comparable form."""
    result: dict[str, Any] = {}
    for live in PROJECTION.tables:
        table = tables[live]
        rows = conn.execute(select(table).where(table.c.location_id == location))
        result[live.name] = sorted(json.dumps(dict(r._mapping), default=str) for r in rows)
    return result


def without_positions(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without what depends on arrival (positions) or on the location id."""
    result = dict(state)
    rows = [json.loads(r) for r in state["timeline_messages"]]
    for row in rows:
        for name in ("location_id", "positions", "updated_position"):
            row.pop(name)
        row["doc"] = {k: v for k, v in json.loads(row["doc"]).items() if k != "locationId"}
    result["timeline_messages"] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    for name in ("timeline_merges", "timeline_conversation_roots"):
        result[name] = sorted(
            json.dumps({k: v for k, v in json.loads(r).items() if k != "location_id"})
            for r in state[name]
        )
    return result


def side_tables(conn: sqlalchemy.Connection, suffix: str) -> Tables:
    """Empty copies of the projection's tables, dropped at commit (the runner's rebuild
    hands `apply` side tables the same way)."""
    metadata = MetaData()
    mapping = {}
    for live in PROJECTION.tables:
        name = f"{live.name}_{suffix}"
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE {name} (LIKE {live.name} INCLUDING ALL) ON COMMIT DROP"
        )
        mapping[live.name] = live.to_metadata(metadata, name=name)
    return Tables(mapping)


REFERENCE: list[dict[str, Any]] = []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_order_cutting_and_duplicates_give_the_same_tables(
    database_url: str, engine: sqlalchemy.Engine, data: st.DataObject
) -> None:
    location = new_id("loc")
    documents = scenario(location)
    order = data.draw(st.permutations(range(len(documents))), label="arrival order")
    redelivered = data.draw(
        st.lists(st.sampled_from(range(len(documents))), max_size=4), label="redelivered"
    )
    arrivals = [documents[i] for i in order] + [again(documents[i]) for i in redelivered]
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=1), label="transactions")
    transactions, rest = [], list(arrivals)
    for size in itertools.cycle(sizes):
        if not rest:
            break
        transactions.append(rest[:size])
        rest = rest[size:]
    # A retried delivery (same webhookId) is absorbed by the store.
    transactions.append([documents[order[0]]])
    with engine.connect() as conn:
        start = head_position(conn)
    append(database_url, transactions)

    batch_sizes = data.draw(st.lists(st.integers(1, 6), min_size=1), label="batch sizes")
    with engine.begin() as conn:
        head = head_position(conn)
        events = [e for e in read_range(conn, start, head, 10**6) if e.location_id == location]
        assert len(events) == len(arrivals)
        cuttings, whole = side_tables(conn, "cut"), side_tables(conn, "whole")
        for batch in cut(events, itertools.cycle(batch_sizes)):
            PROJECTION.apply(conn, batch, cuttings)
        PROJECTION.apply(conn, EventBatch(events, events[-1].position), whole)
        folded = snapshot(conn, cuttings, location)
        assert folded == snapshot(conn, whole, location)
        # As the runner cuts: each batch knows its start, earlier events are read back.
        ranges = side_tables(conn, "ranges")
        for batch in cut(events, itertools.cycle(batch_sizes), after=start):
            PROJECTION.apply(conn, batch, ranges)
        assert snapshot(conn, ranges, location) == folded
        one_pass = side_tables(conn, "one")  # as `replay` does
        bulk.build(conn, [PROJECTION], {PROJECTION.name: one_pass}, start, head)
        assert snapshot(conn, one_pass, location) == folded

    state = without_positions(folded)
    assert len(state["timeline_messages"]) == 5
    assert len(state["timeline_conversation_roots"]) == 3
    if not REFERENCE:
        REFERENCE.append(state)
    assert state == REFERENCE[0]
