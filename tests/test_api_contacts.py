"""`GET /contacts/{contactId}/messages` and `/channels` over real HTTP against
`conversations serve` on real PostgreSQL: a contact's messages across its conversations
and channels, cursors that stay exact while messages keep arriving, the channel summary's
values, and every parameter's validation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy

from tests.api_support import Reader, assert_problem, make_key, post_all, wait_folded
from tests.helpers import Server, message, new_id

pytestmark = pytest.mark.e2e


def at(day: int, hour: int = 12, minute: int = 0) -> str:
    return datetime(2024, 1, day, hour, minute, tzinfo=UTC).isoformat().replace("+00:00", ".000Z")


@dataclass
class Contact:
    location_id: str
    contact_id: str
    conversations: list[str]
    documents: list[dict[str, Any]]
    """What was posted for the contact (message webhooks only)."""


@pytest.fixture(scope="module")
def contact(server: Server, engine: sqlalchemy.Engine) -> Contact:
    """One contact in three conversations over SMS, Email and Call, and a neighbour in the
    same location whose messages must never show up."""
    loc, con = new_id("loc"), new_id("con")
    sms_conv, email_conv, call_conv = new_id("cnv"), new_id("cnv"), new_id("cnv")
    base = {"locationId": loc, "contactId": con}
    documents = [
        message(**base, conversationId=sms_conv, body="first", dateAdded=at(1, 10)),
        message(
            **base,
            type="OutboundMessage",
            conversationId=sms_conv,
            direction="outbound",
            body="second",
            status="sent",
            dateAdded=at(1, 11),
        ),
        message(
            **base,
            type="OutboundMessage",
            conversationId=email_conv,
            direction="outbound",
            messageType="Email",
            messageId=...,
            emailMessageId=new_id("eml"),
            contentType="text/html",
            body="<p>Order <b>confirmed</b></p>",
            subject="Order",
            dateAdded=at(2, 9),
            status=...,
        ),
        message(
            **base,
            conversationId=call_conv,
            messageType="CALL",
            messageTypeId=1,
            messageTypeString="TYPE_CALL",
            body=...,
            contentType=...,
            status="completed",
            callStatus="completed",
            callDuration=42,
            dateAdded=at(3, 8),
        ),
    ]
    neighbour = message(locationId=loc, body="not yours", dateAdded=at(2, 10))
    # The outbound SMS is later delivered: the same message, a better status.
    delivered = {**documents[1], "status": "delivered", "webhookId": str(uuid.uuid4())}
    post_all(server, [*documents, neighbour, delivered])
    wait_folded(engine)
    return Contact(loc, con, [sms_conv, email_conv, call_conv], documents)


@pytest.fixture(scope="module")
def reader(server: Server, engine: sqlalchemy.Engine, contact: Contact) -> Reader:
    return Reader(server, make_key(engine, contact.location_id))


def ids(page: dict[str, Any]) -> list[str]:
    return [m["id"] for m in page["messages"]]


def message_id(document: dict[str, Any]) -> str:
    return str(document.get("messageId") or document["emailMessageId"])


def walk(reader: Reader, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every page, following nextCursor."""
    cursor = None
    while True:
        page = reader.json(path, {**params, **({"cursor": cursor} if cursor else {})})
        yield page
        cursor = page["nextCursor"]
        if cursor is None:
            return


# --- messages -------------------------------------------------------------------------------


def test_a_contacts_messages_across_its_conversations_newest_first(
    reader: Reader, contact: Contact
) -> None:
    page = reader.json(f"/contacts/{contact.contact_id}/messages")
    newest_first = [message_id(d) for d in reversed(contact.documents)]
    assert ids(page) == newest_first
    assert page["nextCursor"] is None
    by_id = {m["id"]: m for m in page["messages"]}
    assert {m["conversationId"] for m in page["messages"]} == set(contact.conversations)
    assert {m["contactId"] for m in page["messages"]} == {contact.contact_id}
    assert {m["locationId"] for m in page["messages"]} == {contact.location_id}
    sms = by_id[message_id(contact.documents[1])]
    assert sms["direction"] == "outbound" and sms["status"] == "delivered"
    assert sms["body"] == "second" and sms["messageType"] == "TYPE_SMS"
    assert sms["dateAdded"] == "2024-01-01T11:00:00.000Z"
    email = by_id[message_id(contact.documents[2])]
    assert email["body"] == "<p>Order <b>confirmed</b></p>"  # bodies in lists, emails too
    assert email["messageType"] == "TYPE_EMAIL"
    call = by_id[message_id(contact.documents[3])]
    assert call["type"] == 1 and call["messageType"] == "TYPE_CALL"
    assert call["meta"]["callDuration"] == 42 and call["meta"]["callStatus"] == "completed"


def test_ascending_order_dates_and_channels(reader: Reader, contact: Contact) -> None:
    path = f"/contacts/{contact.contact_id}/messages"
    in_order = [message_id(d) for d in contact.documents]
    assert ids(reader.json(path, {"sort": "asc"})) == in_order
    assert ids(reader.json(path, {"sort": "asc", "channel": "SMS"})) == in_order[:2]
    assert ids(reader.json(path, {"sort": "asc", "channel": "Email,Call"})) == in_order[2:]
    assert ids(reader.json(path, {"channel": "WhatsApp"})) == []
    # HighLevel's spellings, as the conversation and export endpoints take them.
    assert ids(reader.json(path, {"sort": "asc", "channel": "sms,CALL, email"})) == in_order
    # startDate inclusive, endDate exclusive; epoch milliseconds work too.
    window = {"sort": "asc", "startDate": at(1, 11), "endDate": at(3, 8)}
    assert ids(reader.json(path, window)) == in_order[1:3]
    epoch = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1000)
    assert ids(reader.json(path, {"sort": "asc", "startDate": str(epoch)})) == in_order[2:]
    assert ids(reader.json(path, {"locationId": contact.location_id})) == in_order[::-1]


def test_pages_follow_the_cursor_without_gaps(reader: Reader, contact: Contact) -> None:
    path = f"/contacts/{contact.contact_id}/messages"
    for sort, expected in (
        ("desc", [message_id(d) for d in reversed(contact.documents)]),
        ("asc", [message_id(d) for d in contact.documents]),
    ):
        pages = list(walk(reader, path, {"limit": 1, "sort": sort}))
        assert [len(p["messages"]) for p in pages] == [1, 1, 1, 1]
        assert [i for p in pages for i in ids(p)] == expected


def test_unknown_contacts_and_other_locations_read_as_empty(
    reader: Reader, contact: Contact
) -> None:
    empty: dict[str, Any] = {"messages": [], "nextCursor": None}
    assert reader.json(f"/contacts/{new_id('con')}/messages") == empty
    path = f"/contacts/{contact.contact_id}/messages"
    assert reader.json(path, {"locationId": new_id("loc")}) == empty
    # A NUL (which PostgreSQL text cannot hold) is just an unknown contact.
    assert reader.json("/contacts/a%00b/messages") == empty


def test_cursors_are_exact_while_messages_keep_arriving(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    loc, con = new_id("loc"), new_id("con")
    start = datetime(2024, 3, 1, tzinfo=UTC)

    def document(minutes: int, conversation: str) -> dict[str, Any]:
        date = (start + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
        return message(locationId=loc, contactId=con, conversationId=conversation, dateAdded=date)

    conversations = [new_id("cnv") for _ in range(4)]
    # Several messages per minute and per conversation: ties on the date are broken by id.
    initial = [document(i // 3, conversations[i % 4]) for i in range(60)]
    post_all(server, initial)
    wait_folded(engine)
    reader = Reader(server, make_key(engine, loc))
    stop = threading.Event()
    posted: list[dict[str, Any]] = []

    def keep_posting() -> None:
        minute = 0
        while not stop.is_set():
            # Newer, older and same-minute messages, into old and new conversations.
            for offset in (minute % 25, 100 + minute, -5 - minute):
                doc = document(offset, conversations[minute % 4] if minute % 2 else new_id("cnv"))
                post_all(server, [doc])
                posted.append(doc)
            minute += 1

    writer = threading.Thread(target=keep_posting)
    writer.start()
    try:
        for sort in ("asc", "desc"):
            seen: list[dict[str, Any]] = []
            for page in walk(reader, f"/contacts/{con}/messages", {"limit": 7, "sort": sort}):
                seen.extend(page["messages"])
            keys = [(m["dateAdded"], m["id"]) for m in seen]
            assert len(set(keys)) == len(keys), "a message was returned twice"
            assert keys == sorted(keys, reverse=sort == "desc")
            missing = {message_id(d) for d in initial} - {m["id"] for m in seen}
            assert not missing, f"{len(missing)} messages skipped ({sort})"
    finally:
        stop.set()
        writer.join()
    assert posted, "the writer posted nothing meanwhile"


def test_a_contact_in_several_locations_reads_as_one_merged_timeline(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """An all-locations key (or one with both locations) sees the contact id in both;
    even the same message id at the same time in both locations is two messages, each
    returned once."""
    first, second, con = new_id("loc"), new_id("loc"), new_id("con")
    shared_id, shared_date = new_id("msg"), at(5, 12)
    documents = [
        message(locationId=first, contactId=con, dateAdded=at(5, 10)),
        message(locationId=second, contactId=con, dateAdded=at(5, 11)),
        message(locationId=first, contactId=con, messageId=shared_id, dateAdded=shared_date),
        message(locationId=second, contactId=con, messageId=shared_id, dateAdded=shared_date),
        message(locationId=second, contactId=con, dateAdded=at(5, 13)),
        message(locationId=first, contactId=con, dateAdded=at(5, 14)),
    ]
    post_all(server, documents)
    wait_folded(engine)
    ordered = sorted(documents, key=lambda d: (d["dateAdded"], d["messageId"], d["locationId"]))
    expected = [(d["locationId"], d["messageId"]) for d in ordered]
    for key in (
        make_key(engine, first, second),
        make_key(engine, all_locations=True),
    ):
        reader = Reader(server, key)
        for sort, order in (("asc", expected), ("desc", expected[::-1])):
            for limit in (1, 2, 3, 6):
                pages = walk(reader, f"/contacts/{con}/messages", {"limit": limit, "sort": sort})
                got = [(m["locationId"], m["id"]) for p in pages for m in p["messages"]]
                assert got == order, (sort, limit)
        summary = reader.json(f"/contacts/{con}/channels")
        assert summary["locationIds"] == sorted([first, second])
        assert summary["messageCount"] == 6
        only_first = reader.json(f"/contacts/{con}/channels", {"locationId": first})
        assert only_first["locationIds"] == [first] and only_first["messageCount"] == 3
    single = Reader(server, make_key(engine, first))
    got = [m["id"] for m in single.json(f"/contacts/{con}/messages", {"sort": "asc"})["messages"]]
    assert got == [d["messageId"] for d in documents if d["locationId"] == first]


def test_a_contact_in_many_locations_pages_to_its_end(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """The cursor holds a position per location, so it grows with them: every `nextCursor`
    the service gives is taken back (it once refused its own past 8,192 characters, and
    the walk stopped with a 400 halfway)."""
    con = new_id("con")
    documents = [
        message(
            locationId=f"{new_id('loc')}-{'x' * 200}",
            contactId=con,
            messageId=...,
            dateAdded=at(6, 10, minute),
        )
        for minute in range(40)
    ]
    post_all(server, documents)
    wait_folded(engine)
    reader = Reader(server, make_key(engine, all_locations=True))
    pages = list(walk(reader, f"/contacts/{con}/messages", {"limit": 1, "sort": "asc"}))
    assert [p["messages"][0]["body"] for p in pages] == ["hello"] * 40
    assert [p["messages"][0]["locationId"] for p in pages] == [d["locationId"] for d in documents]
    assert max(len(p["nextCursor"] or "") for p in pages) > 8192


# --- channels -------------------------------------------------------------------------------


def test_the_channel_summary_of_a_contact(reader: Reader, contact: Contact) -> None:
    summary = reader.json(f"/contacts/{contact.contact_id}/channels")
    sms, email, call = contact.documents[1], contact.documents[2], contact.documents[3]
    assert summary == {
        "contactId": contact.contact_id,
        "locationIds": [contact.location_id],
        "messageCount": 4,
        "inboundCount": 2,
        "outboundCount": 2,
        "firstMessageAt": "2024-01-01T10:00:00.000Z",
        "lastMessageAt": "2024-01-03T08:00:00.000Z",
        "channels": [
            {
                "channel": "Call",
                "messageCount": 1,
                "inboundCount": 1,
                "outboundCount": 0,
                "firstMessageAt": "2024-01-03T08:00:00.000Z",
                "lastMessageAt": "2024-01-03T08:00:00.000Z",
                "lastDirection": "inbound",
                "lastStatus": "completed",
                "lastPreview": "",
                "lastMessageId": message_id(call),
            },
            {
                "channel": "Email",
                "messageCount": 1,
                "inboundCount": 0,
                "outboundCount": 1,
                "firstMessageAt": "2024-01-02T09:00:00.000Z",
                "lastMessageAt": "2024-01-02T09:00:00.000Z",
                "lastDirection": "outbound",
                "lastStatus": None,
                "lastPreview": "Order confirmed",
                "lastMessageId": message_id(email),
            },
            {
                "channel": "SMS",
                "messageCount": 2,
                "inboundCount": 1,
                "outboundCount": 1,
                "firstMessageAt": "2024-01-01T10:00:00.000Z",
                "lastMessageAt": "2024-01-01T11:00:00.000Z",
                "lastDirection": "outbound",
                "lastStatus": "delivered",
                "lastPreview": "second",
                "lastMessageId": message_id(sms),
            },
        ],
    }


def test_a_contact_without_visible_messages_is_404(reader: Reader, contact: Contact) -> None:
    missing = reader.get(f"/contacts/{new_id('con')}/channels")
    problem = assert_problem(missing, 404)
    other_location = reader.get(
        f"/contacts/{contact.contact_id}/channels", {"locationId": new_id("loc")}
    )
    assert assert_problem(other_location, 404) == problem
    assert assert_problem(reader.get("/contacts/a%00b/channels"), 404) == problem


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"sort": "up"},
        {"channel": "SMS,Pigeon"},
        {"channel": "SMS,"},
        {"startDate": "yesterday"},
        {"endDate": "2024-13-01"},
        {"startDate": at(3), "endDate": at(2)},
        {"cursor": "not-a-cursor"},
        {"colour": "blue"},
        {"limit": ["1", "2"]},
    ],
)
def test_bad_parameters_are_400_problems(
    reader: Reader, contact: Contact, params: dict[str, Any]
) -> None:
    assert_problem(reader.get(f"/contacts/{contact.contact_id}/messages", params), 400)


def test_a_cursor_is_only_good_for_the_query_and_key_that_made_it(
    server: Server, engine: sqlalchemy.Engine, reader: Reader, contact: Contact
) -> None:
    path = f"/contacts/{contact.contact_id}/messages"
    cursor = reader.json(path, {"limit": 1})["nextCursor"]
    assert cursor
    assert reader.json(path, {"limit": 2, "cursor": cursor})["messages"]  # limit may change
    for params in (
        {"sort": "asc"},
        {"channel": "SMS"},
        {"startDate": at(1)},
        {"locationId": contact.location_id},
    ):
        assert_problem(reader.get(path, {**params, "cursor": cursor}), 400)
    assert_problem(reader.get(f"/contacts/{new_id('con')}/messages", {"cursor": cursor}), 400)
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    assert_problem(reader.get(path, {"cursor": tampered}), 400)
    same_scope = Reader(server, make_key(engine, contact.location_id))
    assert_problem(same_scope.get(path, {"cursor": cursor}), 400)


@pytest.mark.parametrize("suffix", ["messages", "channels"])
def test_a_key_is_required(server: Server, contact: Contact, suffix: str) -> None:
    path = f"/contacts/{contact.contact_id}/{suffix}"
    assert_problem(Reader(server, None).get(path), 401)
    assert_problem(Reader(server, "cvk_000000000000_nope").get(path), 401)
