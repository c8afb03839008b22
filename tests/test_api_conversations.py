"""The HighLevel-compatible endpoints over real HTTP: webhooks go in through
`/webhooks/highlevel`, the projections fold them, the read API answers in HighLevel's
shapes, within the key's locations only."""

from __future__ import annotations

import base64
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
import sqlalchemy

import conversations.keys
from tests.api_support import Reader, assert_problem, eventually, make_key, post_all, wait_folded
from tests.helpers import Server, message, new_id

pytestmark = pytest.mark.e2e

BASE = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    """A `dateAdded` as HighLevel writes it (ms, Z)."""
    moment = BASE + timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ms(minutes: float) -> int:
    return int((BASE + timedelta(minutes=minutes)).timestamp() * 1000)


@dataclass
class World:
    """What the module posted: two locations, and ids to look for."""

    location: str
    other_location: str
    contact: str
    other_contact: str
    chat: str  # a conversation of every channel
    busy: str  # a conversation with many messages, some sharing a dateAdded
    starred: str  # a conversation with unread/starred flags
    merged_old: str  # merged into `chat`
    foreign: str  # a conversation of the other location
    ids: dict[str, str] = field(default_factory=dict)
    busy_ids: list[str] = field(default_factory=list)


def _documents(w: World) -> list[dict[str, Any]]:
    loc, chat = w.location, w.chat
    common = {"locationId": loc, "contactId": w.contact, "conversationId": chat}
    ids = w.ids
    for name in ("sms_in", "sms_out", "call", "voicemail", "whatsapp", "merged", "foreign"):
        ids[name] = new_id("msg")
    ids["email"] = new_id("eml")
    ids["foreign_email"] = new_id("eml")
    docs: list[dict[str, Any]] = [
        message(**common, messageId=ids["sms_in"], body="first", dateAdded=at(0)),
        message(
            **common,
            type="OutboundMessage",
            direction="outbound",
            messageId=ids["sms_out"],
            body="second",
            dateAdded=at(1),
            messageTypeId=2,
            messageTypeString="TYPE_SMS",
            userId="user1",
            source="app",
            conversationProviderId="prov1",
        ),
        message(
            **common,
            type="OutboundMessage",
            direction="outbound",
            messageId=ids["call"],
            messageType="CALL",
            messageTypeId=1,
            messageTypeString="TYPE_CALL",
            status="completed",
            callStatus="completed",
            callDuration=120,
            attachments=["https://example.com/recording.mp3"],
            body=...,
            contentType=...,
            dateAdded=at(2),
        ),
        message(
            **common,
            messageId=ids["voicemail"],
            messageType="CALL",
            messageTypeId=10,
            messageTypeString="TYPE_VOICEMAIL",
            status="voicemail",
            attachments=["https://example.com/voicemail.mp3"],
            body=...,
            dateAdded=at(3),
        ),
        message(
            **common,
            type="OutboundMessage",
            direction="outbound",
            messageId=...,
            messageType="Email",
            emailMessageId=ids["email"],
            threadId="thread1",
            subject="Order Confirmed",
            body="<div>Your order <b>is</b> confirmed</div>",
            plainText="Your order is confirmed",
            contentType="text/html",
            to="client@example.com",
            ccList=["cc@example.com"],
            bccList=["bcc@example.com"],
            **{"from": "Shop <shop@example.com>"},
            provider="Leadconnector Gmail",
            dateAdded=at(4),
        ),
        message(**common, messageId=ids["whatsapp"], messageType="WhatsApp", dateAdded=at(5)),
        message(
            locationId=loc,
            contactId=w.contact,
            conversationId=w.merged_old,
            messageId=ids["merged"],
            body="from the merged conversation",
            dateAdded=at(0.5),
        ),
        {
            "type": "ConversationUpdate",
            "locationId": loc,
            "oldConversationId": w.merged_old,
            "newConversationId": chat,
            "contactId": w.contact,
            "webhookId": str(uuid.uuid4()),
        },
        message(
            locationId=loc,
            contactId=w.other_contact,
            conversationId=w.starred,
            body="please call me",
            dateAdded=at(30),
        ),
        {
            "type": "ConversationUnreadUpdate",
            "locationId": loc,
            "id": w.starred,
            "contactId": w.other_contact,
            "unreadCount": 2,
            "starred": True,
            "inbox": True,
            "deleted": False,
            "timestamp": "2025-03-01T10:00:00.000Z",
            "webhookId": str(uuid.uuid4()),
        },
        message(
            locationId=w.other_location,
            conversationId=w.foreign,
            messageId=ids["foreign"],
            body="not yours",
            dateAdded=at(40),
        ),
        message(
            locationId=w.other_location,
            conversationId=w.foreign,
            messageId=...,
            messageType="Email",
            emailMessageId=ids["foreign_email"],
            body="<p>secret</p>",
            dateAdded=at(41),
        ),
    ]
    # The busy conversation: 2 messages per minute, so dateAdded ties break by key.
    for i in range(24):
        busy_id = new_id("bsy")
        w.busy_ids.append(busy_id)
        docs.append(
            message(
                locationId=loc,
                contactId=w.contact,
                conversationId=w.busy,
                messageId=busy_id,
                direction="inbound" if i % 3 else "outbound",
                type="InboundMessage" if i % 3 else "OutboundMessage",
                body=f"busy {i}",
                dateAdded=at(10 + i // 2),
            )
        )
    return docs


@pytest.fixture(scope="module")
def world(server: Server, engine: sqlalchemy.Engine) -> World:
    w = World(
        location=new_id("locA"),
        other_location=new_id("locB"),
        contact=new_id("con"),
        other_contact=new_id("con"),
        chat=new_id("cnv"),
        busy=new_id("cnv"),
        starred=new_id("cnv"),
        merged_old=new_id("cnv"),
        foreign=new_id("cnv"),
    )
    documents = _documents(w)
    with ThreadPoolExecutor(8) as pool:  # concurrent posts share the writer's commits
        list(pool.map(lambda d: post_all(server, [d]), documents))
    wait_folded(engine)
    return w


@pytest.fixture(scope="module")
def reader(server: Server, engine: sqlalchemy.Engine, world: World) -> Reader:
    return Reader(server, make_key(engine, world.location))


@pytest.fixture(scope="module")
def other_reader(server: Server, engine: sqlalchemy.Engine, world: World) -> Reader:
    return Reader(server, make_key(engine, world.other_location))


def busy_order(world: World) -> list[str]:
    """The busy conversation's ids oldest first: by dateAdded, then by id (the key)."""
    return sorted(world.busy_ids, key=lambda i: (world.busy_ids.index(i) // 2, i))


def tamper(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[2] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


# --- authentication -------------------------------------------------------------------------

PATHS = [
    "/conversations/search",
    "/conversations/x",
    "/conversations/x/messages",
    "/conversations/messages/x",
    "/conversations/messages/email/x",
    "/conversations/messages/export",
]


@pytest.mark.parametrize("path", PATHS)
def test_every_read_needs_a_valid_key(server: Server, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer cvk_nope_nope"}, {"Authorization": "Basic x"}):
        problem = assert_problem(Reader(server, None).get(path, headers=headers), 401)
        assert "key" in problem["detail"]


def test_a_revoked_key_is_refused(server: Server, engine: sqlalchemy.Engine, world: World) -> None:
    reader = Reader(server, make_key(engine, world.location))
    assert reader.get(f"/conversations/{world.chat}").status_code == 200
    with engine.begin() as conn:
        assert conversations.keys.revoke_key(conn, reader.key or "")
    eventually(lambda: assert_problem(reader.get(f"/conversations/{world.chat}"), 401))


# --- GET /conversations/{conversationId} ----------------------------------------------------


def test_get_conversation(reader: Reader, world: World) -> None:
    got = reader.json(f"/conversations/{world.chat}")
    assert got["id"] == world.chat
    assert got["locationId"] == world.location
    assert got["contactId"] == world.contact
    assert got["type"] == 1  # TYPE_PHONE
    assert (got["deleted"], got["inbox"], got["starred"], got["unreadCount"]) == (
        False,
        True,
        False,
        0,
    )
    assert got["lastMessageType"] == "TYPE_WHATSAPP"
    assert got["lastMessageDate"] == ms(5)
    assert got["dateAdded"] == ms(0)
    flagged = reader.json(f"/conversations/{world.starred}", {"locationId": world.location})
    assert (flagged["starred"], flagged["unreadCount"]) == (True, 2)


def test_a_merged_conversation_reads_as_the_one_it_went_into(reader: Reader, world: World) -> None:
    assert reader.json(f"/conversations/{world.merged_old}")["id"] == world.chat
    page = reader.json(f"/conversations/{world.merged_old}/messages", {"limit": 100})
    ids = [m["id"] for m in page["messages"]["messages"]]
    assert world.ids["merged"] in ids and world.ids["sms_in"] in ids
    assert {m["conversationId"] for m in page["messages"]["messages"]} == {world.chat}


def test_another_locations_conversation_is_not_found(
    reader: Reader, other_reader: Reader, world: World
) -> None:
    missing = new_id("cnv")
    for path in ("/conversations/{}", "/conversations/{}/messages"):
        foreign = reader.get(path.format(world.foreign))
        absent = reader.get(path.format(missing))
        assert_problem(foreign, 404)
        assert_problem(absent, 404)
        assert foreign.text.replace(world.foreign, "ID") == absent.text.replace(missing, "ID")
        assert other_reader.get(path.format(world.foreign)).status_code == 200
    # Naming the other location does not help, and another key cannot read ours.
    named = reader.get(f"/conversations/{world.foreign}", {"locationId": world.other_location})
    assert_problem(named, 404)
    assert_problem(other_reader.get(f"/conversations/{world.chat}"), 404)
    assert_problem(reader.get(f"/conversations/{world.chat}", {"locationId": "elsewhere"}), 404)


def test_an_all_locations_key_reads_any_location(
    server: Server, engine: sqlalchemy.Engine, world: World
) -> None:
    admin = Reader(server, make_key(engine, all_locations=True))
    assert admin.json(f"/conversations/{world.foreign}")["locationId"] == world.other_location
    assert admin.json(f"/conversations/messages/{world.ids['foreign']}")["body"] == "not yours"
    assert admin.json(f"/conversations/{world.merged_old}")["id"] == world.chat
    assert_problem(admin.get("/conversations/search"), 400)  # locationId is required


def test_odd_ids_are_not_found_not_errors(reader: Reader) -> None:
    for raw in ("%00", "a%00b", "x" * 300, "%F0%9F%92%A9", "'; drop table events; --"):
        assert_problem(reader.get(f"/conversations/{raw}"), 404)
        assert_problem(reader.get(f"/conversations/messages/{raw}"), 404)
        assert_problem(reader.get(f"/conversations/messages/email/{raw}"), 404)
        assert_problem(reader.get(f"/conversations/{raw}/messages"), 404)


def test_get_conversation_refuses_unknown_parameters(reader: Reader, world: World) -> None:
    problem = assert_problem(reader.get(f"/conversations/{world.chat}", {"foo": "1"}), 400)
    assert "'foo'" in problem["detail"]


# --- GET /conversations/{conversationId}/messages -------------------------------------------


def test_messages_newest_first_in_highlevels_nested_shape(reader: Reader, world: World) -> None:
    body = reader.json(f"/conversations/{world.chat}/messages")
    assert set(body) == {"messages"}
    inner = body["messages"]
    assert inner["nextPage"] is False and inner["nextCursor"] is None
    ids = [m["id"] for m in inner["messages"]]
    ordered = ["whatsapp", "email", "voicemail", "call", "sms_out", "merged", "sms_in"]
    assert ids == [world.ids[name] for name in ordered]
    assert inner["lastMessageId"] == world.ids["sms_in"]
    sms = inner["messages"][4]
    assert sms == {
        "id": world.ids["sms_out"],
        "type": 2,
        "messageType": "TYPE_SMS",
        "locationId": world.location,
        "contactId": world.contact,
        "conversationId": world.chat,
        "dateAdded": at(1),
        "body": "second",
        "direction": "outbound",
        "status": "delivered",
        "contentType": "text/plain",
        "attachments": [],
        "meta": {"callDuration": None, "callStatus": None, "email": None},
        "source": "app",
        "userId": "user1",
        "conversationProviderId": "prov1",
        "chatWidgetId": None,
    }


def test_message_types_calls_and_email_bodies(reader: Reader, world: World) -> None:
    messages = reader.json(f"/conversations/{world.chat}/messages")["messages"]["messages"]
    by_id = {m["id"]: m for m in messages}
    call = by_id[world.ids["call"]]
    assert (call["type"], call["messageType"]) == (1, "TYPE_CALL")
    assert call["meta"]["callDuration"] == 120 and call["meta"]["callStatus"] == "completed"
    assert call["attachments"] == ["https://example.com/recording.mp3"]
    voicemail = by_id[world.ids["voicemail"]]
    assert (voicemail["type"], voicemail["messageType"]) == (10, "TYPE_VOICEMAIL")
    whatsapp = by_id[world.ids["whatsapp"]]
    assert (whatsapp["type"], whatsapp["messageType"]) == (19, "TYPE_WHATSAPP")
    plain = by_id[world.ids["sms_in"]]
    assert (plain["type"], plain["messageType"]) == (2, "TYPE_SMS")
    email = by_id[world.ids["email"]]  # no messageId: its id is the emailMessageId
    assert (email["type"], email["messageType"]) == (3, "TYPE_EMAIL")
    assert email["body"] == "<div>Your order <b>is</b> confirmed</div>"
    assert email["meta"]["email"] == {
        "messageIds": [world.ids["email"]],
        "threadId": "thread1",
        "subject": "Order Confirmed",
        "from": "Shop <shop@example.com>",
        "to": ["client@example.com"],
        "cc": ["cc@example.com"],
        "bcc": ["bcc@example.com"],
    }


def test_message_filters(reader: Reader, world: World) -> None:
    def ids(**params: Any) -> list[str]:
        page = reader.json(f"/conversations/{world.chat}/messages", params)
        return [m["id"] for m in page["messages"]["messages"]]

    names = {v: k for k, v in world.ids.items()}
    assert [names[i] for i in ids(type="TYPE_CALL,TYPE_EMAIL")] == ["email", "call"]
    assert [names[i] for i in ids(channel="Voicemail,whatsapp")] == ["whatsapp", "voicemail"]
    assert ids(type="TYPE_SMS", channel="Email") == []
    assert [names[i] for i in ids(startDate=at(1), endDate=at(3))] == ["call", "sms_out"]
    assert [names[i] for i in ids(startDate=str(ms(4)))] == ["whatsapp", "email"]
    assert [names[i] for i in ids(sort="asc", limit=3)] == ["sms_in", "merged", "sms_out"]


def test_type_filters_take_every_name_highlevel_documents(reader: Reader, world: World) -> None:
    # HighLevel's messages `type` lists TYPE_INTERNAL_COMMENTS (plural) and activity types,
    # and its search's `lastMessageType` any message type: clients send them, a 400 breaks them.
    def ids(**params: Any) -> list[str]:
        page = reader.json(f"/conversations/{world.chat}/messages", params)
        return [m["id"] for m in page["messages"]["messages"]]

    names = {v: k for k, v in world.ids.items()}
    assert [names[i] for i in ids(type="TYPE_CAMPAIGN_VOICEMAIL,TYPE_IVR_CALL")] == [
        "voicemail",
        "call",
    ]
    assert ids(type="TYPE_INTERNAL_COMMENTS,TYPE_ACTIVITY_CONTACT,TYPE_WEBCHAT") == []
    # `lastMessageType` matches the name shown: these conversations' last messages are
    # TYPE_SMS, not campaign SMS (see test_last_message_type_is_the_messages_own).
    for name in ("TYPE_CAMPAIGN_SMS", "TYPE_REVIEW", "TYPE_INTERNAL_COMMENTS"):
        assert reader.json("/conversations/search", {"lastMessageType": name})["total"] == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "ten"),
        ("type", "TYPE_FAX"),
        ("channel", "Pigeon"),
        ("sort", "newest"),
        ("startDate", "yesterday"),
        ("endDate", "2025-13-01"),
        ("cursor", "not-a-cursor"),
        ("lastMessageId", "no-such-message"),
        ("bogus", "1"),
    ],
)
def test_bad_message_parameters_are_400s_naming_them(
    reader: Reader, world: World, name: str, value: str
) -> None:
    response = reader.get(f"/conversations/{world.chat}/messages", {name: value})
    assert f"'{name}'" in assert_problem(response, 400)["detail"]


def test_last_message_id_pages_are_stable(reader: Reader, world: World) -> None:
    order = busy_order(world)[::-1]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 5}
    while True:
        inner = reader.json(f"/conversations/{world.busy}/messages", params)["messages"]
        seen += [m["id"] for m in inner["messages"]]
        if not inner["nextPage"]:
            break
        params["lastMessageId"] = inner["lastMessageId"]
    assert seen == order


def test_last_message_id_of_another_conversation_or_location_is_refused(
    reader: Reader, world: World
) -> None:
    path = f"/conversations/{world.busy}/messages"
    ours = assert_problem(reader.get(path, {"lastMessageId": world.ids["sms_in"]}), 400)
    theirs = assert_problem(reader.get(path, {"lastMessageId": world.ids["foreign"]}), 400)
    assert ours["detail"] == theirs["detail"]


def test_cursor_pages_hold_while_messages_arrive(server: Server, engine: sqlalchemy.Engine) -> None:
    """Asc pages while newer messages arrive: every old message once, in order, then the
    new ones (each visible before the next page is read)."""
    location, conversation = new_id("loc"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    first = [new_id("msg") for _ in range(7)]
    common = {"locationId": location, "contactId": new_id("con")}
    post_all(
        server,
        [
            message(**common, conversationId=conversation, messageId=m, dateAdded=at(100 + i))
            for i, m in enumerate(first)
        ],
    )
    path = f"/conversations/{conversation}/messages"

    def count() -> None:
        assert len(reader.json(path, {"limit": 100})["messages"]["messages"]) == len(first)

    eventually(count)
    seen: list[str] = []
    arrived: list[str] = []
    params: dict[str, Any] = {"limit": 3, "sort": "asc"}
    while True:
        inner = reader.json(path, params)["messages"]
        seen += [m["id"] for m in inner["messages"]]
        if inner["nextCursor"] is None:
            break
        params["cursor"] = inner["nextCursor"]
        newer = new_id("msg")
        arrived.append(newer)
        minutes = 200 + len(arrived)
        post_all(
            server,
            [
                message(
                    **common, conversationId=conversation, messageId=newer, dateAdded=at(minutes)
                )
            ],
        )
        eventually(partial(reader.json, f"/conversations/messages/{newer}"))
    assert seen == first + arrived
    assert len(set(seen)) == len(seen)


def test_cursors_are_bound_to_their_query_and_key(
    server: Server, engine: sqlalchemy.Engine, reader: Reader, world: World
) -> None:
    path = f"/conversations/{world.busy}/messages"
    token = reader.json(path, {"limit": 2})["messages"]["nextCursor"]
    assert token
    assert reader.get(path, {"limit": 2, "cursor": token}).status_code == 200
    for params in (
        {"cursor": tamper(token)},
        {"cursor": token[:-2]},
        {"cursor": token, "sort": "asc"},
        {"cursor": token, "type": "TYPE_SMS"},
        {"cursor": token, "lastMessageId": world.busy_ids[0]},
    ):
        assert "'cursor'" in assert_problem(reader.get(path, params), 400)["detail"]
    twin = Reader(server, make_key(engine, world.location))
    assert_problem(twin.get(path, {"cursor": token}), 400)
    assert_problem(reader.get(f"/conversations/{world.chat}/messages", {"cursor": token}), 400)


# --- GET /conversations/messages/{id} and /email/{id} ---------------------------------------


def test_get_message_by_any_of_its_ids(reader: Reader, world: World) -> None:
    call = reader.json(f"/conversations/messages/{world.ids['call']}")
    assert call["id"] == world.ids["call"] and call["meta"]["callDuration"] == 120
    email = reader.json(f"/conversations/messages/{world.ids['email']}")
    assert email["messageType"] == "TYPE_EMAIL" and email["meta"]["email"]["subject"]
    merged = reader.json(f"/conversations/messages/{world.ids['merged']}")
    assert merged["conversationId"] == world.chat  # reads under the merge root
    found = reader.get(f"/conversations/messages/{world.ids['sms_in']}", {"locationId": "x"})
    assert_problem(found, 404)


def test_widget_provider_and_empty_bodies_read_as_sent(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """What the webhooks sent, through every endpoint that shows a message (the page is
    the stored document; one message, export and email are built per request)."""
    location, conversation = new_id("loc"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    contact = new_id("con")
    common = {"locationId": location, "conversationId": conversation, "contactId": contact}
    widget = "67b0cc8cf14b19d85ace7s35"
    chat = message(**common, messageType="Live Chat", chatWidgetId=widget, dateAdded=at(0))
    sms = message(**common, body="", attachments=["https://example.com/a.jpg"], dateAdded=at(1))
    whatsapp = message(**common, messageType="WhatsApp", body="", dateAdded=at(2))
    email = message(
        **common,
        messageId=...,
        emailMessageId=new_id("eml"),
        messageType="Email",
        provider="Leadconnector Gmail",
        body=...,
        dateAdded=at(3),
    )
    # A later delivery without the fields takes none of them away.
    read = {**whatsapp, "status": "read", "webhookId": str(uuid.uuid4())}
    del read["body"]
    post_all(server, [chat, sms, whatsapp, email, read])
    wait_folded(engine)

    page = reader.json(f"/conversations/{conversation}/messages", {"sort": "asc"})
    listed = page["messages"]["messages"]
    assert [m["chatWidgetId"] for m in listed] == [widget, None, None, None]
    assert [m["body"] for m in listed] == ["hello", "", "", None]
    assert listed[2]["status"] == "read"
    for shown in listed:
        assert reader.json(f"/conversations/messages/{shown['id']}") == shown
    exported = reader.json("/conversations/messages/export", {"locationId": location})
    assert {m["id"]: m for m in exported["messages"]} == {m["id"]: m for m in listed}
    by_contact = reader.json(f"/contacts/{contact}/messages", {"sort": "asc"})
    assert by_contact["messages"] == listed
    found = reader.json(f"/conversations/messages/email/{email['emailMessageId']}")
    assert (found["provider"], found["body"]) == ("Leadconnector Gmail", None)


def test_a_custom_providers_email_and_call_read_as_an_email_and_a_call(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """An email sent through a custom email provider (HighLevel's "Email Provider (extra)":
    `messageType` Custom, `TYPE_CUSTOM_PROVIDER_EMAIL`, id 23) is an email: its headers in
    `meta.email`, found by its email message id, the conversation an email one; a custom
    provider's call is a call. Before, both were channel Custom, which reads as
    `TYPE_CUSTOM_PROVIDER_SMS`: headers dropped, the email 404, the conversation a phone
    one whose last message was an SMS."""
    location, mails, calls = new_id("loc"), new_id("cnv"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    provider = "681630446243877ebda60373"
    email = message(
        locationId=location,
        conversationId=mails,
        type="OutboundMessage",
        direction="outbound",
        messageType="Custom",
        messageTypeId=23,
        messageTypeString="TYPE_CUSTOM_PROVIDER_EMAIL",
        emailMessageId=new_id("eml"),
        threadId="thread9",
        subject="Your quote",
        body="<p>Quote attached</p>",
        contentType="text/html",
        **{"from": "Shop <shop@example.com>"},
        to=["client@example.com"],
        cc=["boss@example.com"],
        conversationProviderId=provider,
        dateAdded=at(0),
    )
    bare = {**email, "messageId": new_id("msg"), "emailMessageId": new_id("eml")}
    bare["webhookId"] = str(uuid.uuid4())
    bare.pop("messageTypeString")  # the type by messageType and id alone
    bare["dateAdded"] = at(1)
    call = message(
        locationId=location,
        conversationId=calls,
        type="OutboundMessage",
        direction="outbound",
        messageType="Custom",
        messageTypeString="TYPE_CUSTOM_CALL",
        status="completed",
        callStatus="voicemail",
        callDuration=23,
        conversationProviderId=provider,
        dateAdded=at(2),
    )
    # Ranked on the call scale: "completed" without an outcome does not hide the voicemail.
    ended = {**call, "webhookId": str(uuid.uuid4())}
    del ended["callStatus"]
    post_all(server, [email, bare, call, ended])
    wait_folded(engine)

    listed = reader.json(f"/conversations/{mails}/messages", {"sort": "asc"})["messages"]
    for shown in listed["messages"]:
        assert shown["meta"]["email"]["subject"] == "Your quote"
        assert shown["meta"]["email"]["cc"] == ["boss@example.com"]
    assert [m["messageType"] for m in listed["messages"]] == [
        "TYPE_CUSTOM_PROVIDER_EMAIL",
        "TYPE_EMAIL",
    ]
    found = reader.json(f"/conversations/messages/email/{email['emailMessageId']}")
    assert (found["subject"], found["to"], found["conversationProviderId"]) == (
        "Your quote",
        ["client@example.com"],
        provider,
    )
    conversation = reader.json(f"/conversations/{mails}")  # `bare` is its last message
    assert (conversation["type"], conversation["lastMessageType"]) == (2, "TYPE_EMAIL")
    exported = reader.json(
        "/conversations/messages/export", {"locationId": location, "channel": "Email"}
    )
    assert exported["total"] == 2
    (shown_call,) = reader.json(f"/conversations/{calls}/messages")["messages"]["messages"]
    assert shown_call["messageType"] == "TYPE_CUSTOM_CALL"
    assert shown_call["meta"] == {"callDuration": 23, "callStatus": "voicemail", "email": None}
    # The conversation's last message type is the message's (TYPE_CALL before: its channel).
    assert reader.json(f"/conversations/{calls}")["lastMessageType"] == "TYPE_CUSTOM_CALL"


def test_internal_comments_and_activities_leave_the_conversation_type(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A user's internal comment (or an activity line) in an email or a Messenger
    conversation is no exchange with the contact: the conversation stays TYPE_EMAIL /
    TYPE_FB_MESSENGER, as in HighLevel. It read TYPE_PHONE (1) once a comment was added."""
    location, mails, messenger = new_id("loc"), new_id("cnv"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    email = message(
        locationId=location,
        conversationId=mails,
        messageType="Email",
        emailMessageId=new_id("eml"),
        subject="Order",
        dateAdded=at(0),
    )
    facebook = message(locationId=location, conversationId=messenger, messageType="FB")
    notes = [
        message(
            locationId=location,
            conversationId=conversation,
            type="OutboundMessage",
            direction="outbound",
            messageType=kind,
            messageTypeString=name,
            body="call them back",
            dateAdded=at(1),
        )
        for conversation in (mails, messenger)
        for kind, name in (
            ("InternalComment", "TYPE_INTERNAL_COMMENT"),
            ("Activity", "TYPE_ACTIVITY_APPOINTMENT"),
        )
    ]
    post_all(server, [email, facebook, *notes])
    wait_folded(engine)

    listed = reader.json("/conversations/search")["conversations"]
    assert {c["id"]: c["type"] for c in listed} == {
        mails: "TYPE_EMAIL",
        messenger: "TYPE_FB_MESSENGER",
    }
    assert [reader.json(f"/conversations/{c}")["type"] for c in (mails, messenger)] == [2, 3]


def test_conversation_fields_mean_what_the_readme_says(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """README's "other conversation fields": the unread flags are HighLevel's last report
    (a later inbound message leaves them), a deleted conversation stays listed, the last
    message's body is a preview and its type the message's own, and the dates are the
    first and last message's."""
    location, talk, flags_only = new_id("loc"), new_id("cnv"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    common = {"locationId": location, "conversationId": talk}
    long = message(**common, body="<p>" + "word " * 60 + "</p>", dateAdded=at(0))
    activity = message(
        **common,
        type="OutboundMessage",
        direction="outbound",
        messageType="Activity",
        messageTypeString="TYPE_ACTIVITY_APPOINTMENT",
        body="Appointment booked",
        dateAdded=at(2),
    )
    read = {
        "type": "ConversationUnreadUpdate",
        "locationId": location,
        "id": talk,
        "unreadCount": 0,
        "timestamp": at(1),
        "webhookId": str(uuid.uuid4()),
    }
    gone = {**read, "id": flags_only, "deleted": True, "webhookId": str(uuid.uuid4())}
    later = message(**common, body="still there?", dateAdded=at(3))
    post_all(server, [long, read, gone])
    wait_folded(engine)
    preview = reader.json(f"/conversations/{talk}")["lastMessageBody"]
    assert len(preview) == 160 and preview.startswith("word word") and preview[-1] == "…"
    post_all(server, [activity])
    wait_folded(engine)
    shown = reader.json(f"/conversations/{talk}")
    assert (shown["lastMessageType"], shown["lastMessageBody"]) == (
        "TYPE_ACTIVITY_APPOINTMENT",
        "Appointment booked",
    )
    post_all(server, [later])
    wait_folded(engine)

    shown = reader.json(f"/conversations/{talk}")
    assert (shown["unreadCount"], shown["lastMessageDirection"]) == (0, "inbound")
    assert (shown["dateAdded"], shown["dateUpdated"], shown["lastMessageDate"]) == (
        ms(0),
        ms(3),
        ms(3),
    )
    assert reader.json("/conversations/search", {"status": "unread"})["total"] == 0
    listed = reader.json("/conversations/search")["conversations"]
    assert [(c["id"], c["deleted"]) for c in listed] == [(talk, False), (flags_only, True)]
    assert (
        listed[1]["dateAdded"] is listed[1]["dateUpdated"] is listed[1]["lastMessageDate"] is None
    )


def test_last_message_type_is_the_messages_own(server: Server, engine: sqlalchemy.Engine) -> None:
    """`lastMessageType` is the last message's `messageType`, as in HighLevel (whose
    ConversationSchema lists every message type): it read TYPE_SMS for a campaign SMS and
    null for an activity. `lastMessageType=` selects exactly the conversations showing
    that name (TYPE_SMS no longer selects a campaign SMS), in search and by id alike."""
    location = new_id("loc")
    reader = Reader(server, make_key(engine, location))
    kinds: dict[str, dict[str, Any]] = {
        "campaign": {"messageTypeString": "TYPE_CAMPAIGN_SMS", "source": "campaign"},
        "sms": {"messageTypeString": "TYPE_SMS"},
        "activity": {"messageType": "Activity", "messageTypeString": "TYPE_ACTIVITY_CONTACT"},
        "voicemail": {"messageType": "CALL", "messageTypeId": 10, "status": "voicemail"},
        "comment": {"messageType": "InternalComment", "messageTypeString": "TYPE_INTERNAL_COMMENT"},
        "nameless": {"messageType": "Activity"},  # channel Other, no TYPE_* name: null
    }
    ids = {kind: new_id("cnv") for kind in kinds}
    # Each conversation: an inbound SMS, then its last message of that kind.
    post_all(
        server,
        [
            document
            for kind, fields in kinds.items()
            for document in (
                message(locationId=location, conversationId=ids[kind], dateAdded=at(0)),
                message(locationId=location, conversationId=ids[kind], dateAdded=at(1), **fields),
            )
        ],
    )
    wait_folded(engine)

    listed = {c["id"]: c for c in reader.json("/conversations/search")["conversations"]}
    for kind, conversation in ids.items():
        newest = reader.json(f"/conversations/{conversation}/messages", {"limit": 1})
        shown = newest["messages"]["messages"][0]["messageType"]
        assert listed[conversation]["lastMessageType"] == shown, kind
        assert reader.json(f"/conversations/{conversation}")["lastMessageType"] == shown, kind
    assert {kind: listed[ids[kind]]["lastMessageType"] for kind in kinds} == {
        "campaign": "TYPE_CAMPAIGN_SMS",
        "sms": "TYPE_SMS",
        "activity": "TYPE_ACTIVITY_CONTACT",
        "voicemail": "TYPE_VOICEMAIL",
        "comment": "TYPE_INTERNAL_COMMENT",
        "nameless": None,
    }

    def selected(name: str) -> list[str]:
        found = reader.json("/conversations/search", {"lastMessageType": name})
        assert found["total"] == len(found["conversations"])
        return [c["id"] for c in found["conversations"]]

    for conversation in listed.values():
        if conversation["lastMessageType"] is not None:
            assert selected(conversation["lastMessageType"]) == [conversation["id"]]
    assert selected("TYPE_INTERNAL_COMMENTS") == [ids["comment"]]  # the messages filter's name
    assert selected("TYPE_ACTIVITY_INVOICE") == selected("TYPE_CAMPAIGN_VOICEMAIL") == []


def test_a_merged_conversation_without_its_own_messages_is_the_merges_contact(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """HighLevel merges a live chat into the conversation of the contact it identified the
    visitor as, and says which contact (the ConversationUpdate's `contactId`). A target
    with no messages or unread updates of its own read as the visitor, so a search by the
    contact's id did not find it. Whichever arrives first."""
    for merge_first in (True, False):
        location, chat, known = new_id("loc"), new_id("cnv"), new_id("cnv")
        visitor, contact = new_id("con"), new_id("con")
        reader = Reader(server, make_key(engine, location))
        chat_message = message(
            locationId=location,
            conversationId=chat,
            contactId=visitor,
            messageType="Live Chat",
            dateAdded=at(0),
        )
        merged = {
            "type": "ConversationUpdate",
            "locationId": location,
            "companyId": new_id("co"),
            "oldConversationId": chat,
            "newConversationId": known,
            "contactId": contact,
            "webhookId": str(uuid.uuid4()),
        }
        post_all(server, [merged, chat_message] if merge_first else [chat_message, merged])
        wait_folded(engine)

        for id in (known, chat):  # the merged id reads as the one it went into
            assert reader.json(f"/conversations/{id}")["contactId"] == contact
        by_contact = reader.json("/conversations/search", {"contactId": contact})
        assert [c["id"] for c in by_contact["conversations"]] == [known]
        assert reader.json("/conversations/search", {"contactId": visitor})["total"] == 0
        (shown,) = reader.json(f"/conversations/{known}/messages")["messages"]["messages"]
        assert shown["contactId"] == visitor  # the message keeps the contact it was sent with


def test_an_empty_status_reads_null_as_every_empty_field(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A webhook's `"status": ""` (or `"callStatus": ""`) read `""` where every other
    empty field reads null; HighLevel's status enums have no "", through every endpoint
    that shows a message."""
    location, conversation = new_id("loc"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    common = {"locationId": location, "conversationId": conversation, "status": ""}
    call = message(**common, messageType="CALL", callStatus="", userId="", dateAdded=at(0))
    email = message(
        **common,
        messageId=...,
        emailMessageId=new_id("eml"),
        messageType="Email",
        dateAdded=at(1),
    )
    post_all(server, [call, email])
    wait_folded(engine)

    listed = reader.json(f"/conversations/{conversation}/messages")["messages"]["messages"]
    assert [(m["status"], m["meta"]["callStatus"], m["userId"]) for m in listed] == [
        (None, None, None),
        (None, None, None),
    ]
    for shown in listed:
        assert reader.json(f"/conversations/messages/{shown['id']}") == shown
    exported = reader.json("/conversations/messages/export", {"locationId": location})
    assert [m["status"] for m in exported["messages"]] == [None, None]
    found = reader.json(f"/conversations/messages/email/{email['emailMessageId']}")
    assert found["status"] is None


def test_an_unread_update_timed_in_epoch_ms_text_is_timed(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A ConversationUnreadUpdate whose `timestamp` is epoch milliseconds as text (as
    `dateAdded` may be) counted as untimed, so it lost to any update with a time, even an
    older one: the conversation read as read though HighLevel's latest said 5 unread."""
    location, conversation = new_id("loc"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))

    def update(unread_count: int, timestamp: str) -> dict[str, Any]:
        return {
            "type": "ConversationUnreadUpdate",
            "locationId": location,
            "id": conversation,
            "unreadCount": unread_count,
            "timestamp": timestamp,
            "webhookId": str(uuid.uuid4()),
        }

    later = update(5, str(ms(10)))
    post_all(server, [later, update(0, at(5))])  # the older one arrives last
    wait_folded(engine)
    assert reader.json(f"/conversations/{conversation}")["unreadCount"] == 5
    unread = reader.json("/conversations/search", {"status": "unread"})["conversations"]
    assert [c["id"] for c in unread] == [conversation]
    post_all(server, [update(0, at(11))])  # a newer one still wins
    wait_folded(engine)
    assert reader.json(f"/conversations/{conversation}")["unreadCount"] == 0


def test_a_message_without_ids_is_found_by_the_id_it_is_shown_with(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    reader = Reader(server, make_key(engine, location))
    post_all(
        server,
        [
            message(
                locationId=location,
                conversationId=conversation,
                messageId=...,
                body="no id at all",
            )
        ],
    )
    path = f"/conversations/{conversation}/messages"

    def first() -> dict[str, Any]:
        messages: list[dict[str, Any]] = reader.json(path)["messages"]["messages"]
        assert messages
        return messages[0]

    shown = eventually(first)
    assert shown["id"].startswith("derived:")
    assert reader.json(f"/conversations/messages/{shown['id']}") == shown


def test_get_email(reader: Reader, world: World) -> None:
    email = reader.json(f"/conversations/messages/email/{world.ids['email']}")
    assert email == {
        "id": world.ids["email"],
        "altId": None,
        "threadId": "thread1",
        "locationId": world.location,
        "contactId": world.contact,
        "conversationId": world.chat,
        "dateAdded": at(4),
        "subject": "Order Confirmed",
        "body": "<div>Your order <b>is</b> confirmed</div>",
        "direction": "outbound",
        "status": "delivered",
        "contentType": "text/html",
        "attachments": [],
        "provider": "Leadconnector Gmail",
        "from": "Shop <shop@example.com>",
        "to": ["client@example.com"],
        "cc": ["cc@example.com"],
        "bcc": ["bcc@example.com"],
        "replyToMessageId": None,
        "source": None,
        "conversationProviderId": None,
    }
    sms = reader.get(f"/conversations/messages/email/{world.ids['sms_in']}")
    absent = reader.get(f"/conversations/messages/email/{world.ids['sms_in']}x")
    assert_problem(sms, 404)
    assert sms.text.replace(world.ids["sms_in"], "ID") == absent.text.replace(
        world.ids["sms_in"] + "x", "ID"
    )


def test_another_locations_message_is_not_found(
    reader: Reader, other_reader: Reader, world: World
) -> None:
    for path in ("/conversations/messages/{}", "/conversations/messages/email/{}"):
        foreign_id = world.ids["foreign_email"]
        missing = new_id("eml")
        foreign = reader.get(path.format(foreign_id))
        absent = reader.get(path.format(missing))
        assert_problem(foreign, 404)
        assert foreign.text.replace(foreign_id, "ID") == absent.text.replace(missing, "ID")
        assert other_reader.json(path.format(foreign_id))["body"] == "<p>secret</p>"


# --- GET /conversations/search --------------------------------------------------------------


def test_search_returns_conversations_and_the_total(reader: Reader, world: World) -> None:
    found = reader.json(
        "/conversations/search",
        {"locationId": world.location},
    )
    ids = [c["id"] for c in found["conversations"]]
    assert ids == [world.starred, world.busy, world.chat]  # newest last message first
    assert found["total"] == 3 and found["nextCursor"] is None
    chat = found["conversations"][2]
    assert chat["type"] == "TYPE_PHONE" and chat["lastMessageType"] == "TYPE_WHATSAPP"
    assert chat["lastMessageDate"] == ms(5) and chat["sort"] == [ms(5)]
    assert chat["lastMessageDirection"] == "inbound" and chat["lastMessageBody"] == "hello"
    assert (chat["locationId"], chat["contactId"]) == (world.location, world.contact)
    # The key has one location: locationId may be left out.
    assert reader.json("/conversations/search") == found


def test_search_filters(reader: Reader, world: World) -> None:
    def ids(**params: Any) -> tuple[list[str], int]:
        found = reader.json("/conversations/search", params)
        return [c["id"] for c in found["conversations"]], found["total"]

    assert ids(contactId=world.other_contact) == ([world.starred], 1)
    assert ids(contactId=world.contact, sort="asc") == (
        [world.chat, world.busy],
        2,
    )
    assert ids(status="starred") == ([world.starred], 1)
    assert ids(status="unread") == ([world.starred], 1)
    assert world.starred not in ids(status="read")[0]
    assert ids(lastMessageType="TYPE_WHATSAPP") == ([world.chat], 1)
    assert ids(lastMessageType="TYPE_SMS", lastMessageDirection="inbound") == (
        [world.starred, world.busy],
        2,
    )
    assert ids(startDate=str(ms(5)), endDate=str(ms(22))) == ([world.busy, world.chat], 2)
    assert ids(startDate=str(ms(5)), endDate=str(ms(21))) == ([world.chat], 1)  # end excluded
    assert ids(sortBy="last_message_date", limit=1) == ([world.starred], 3)


def _dated_conversations(server: Server, location: str, count: int) -> list[str]:
    """`count` new conversations of `location`, one message each, dated in order."""
    ids = [new_id("cnv") for _ in range(count)]
    post_all(
        server,
        [
            message(locationId=location, conversationId=c, dateAdded=at(i))
            for i, c in enumerate(ids)
        ],
    )
    return ids


def test_search_pages_by_start_after_date_and_by_cursor(
    server: Server, engine: sqlalchemy.Engine, world: World
) -> None:
    location = new_id("loc")
    conversations_ = _dated_conversations(server, location, 7)
    reader = Reader(server, make_key(engine, location))

    def folded() -> None:
        assert reader.json("/conversations/search")["total"] == 7

    eventually(folded)
    newest_first = conversations_[::-1]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        found = reader.json("/conversations/search", params)
        assert found["total"] == 7
        seen += [c["id"] for c in found["conversations"]]
        if len(found["conversations"]) < 3:
            break
        params["startAfterDate"] = found["conversations"][-1]["sort"][0]
    assert seen == newest_first
    seen, params = [], {"limit": 2, "sort": "asc"}
    while True:
        found = reader.json("/conversations/search", params)
        seen += [c["id"] for c in found["conversations"]]
        if found["nextCursor"] is None:
            break
        params["cursor"] = found["nextCursor"]
    assert seen == conversations_
    token = reader.json("/conversations/search", {"limit": 2})["nextCursor"]
    for bad in ({"cursor": tamper(token)}, {"cursor": token, "status": "unread"}):
        assert "'cursor'" in assert_problem(reader.get("/conversations/search", bad), 400)["detail"]
    both = reader.get("/conversations/search", {"cursor": token, "startAfterDate": ms(3)})
    assert_problem(both, 400)


def test_start_after_date_takes_the_sort_array_as_axios_and_httpx_send_it(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """HighLevel's docs say `startAfterDate` takes the `sort` value of the last
    conversation, an array. HighLevel's JavaScript SDK passes it to axios, which writes
    `startAfterDate[]=V`; httpx and requests write a list as the name repeated."""
    location = new_id("loc")
    conversations_ = _dated_conversations(server, location, 5)
    reader = Reader(server, make_key(engine, location))
    eventually(lambda: _equal(reader.json("/conversations/search")["total"], 5))
    for name in ("startAfterDate[]", "startAfterDate"):
        seen: list[str] = []
        after: list[Any] | None = None
        while True:
            params: list[tuple[str, Any]] = [("limit", 2)]
            params += [(name, value) for value in after or []]
            found = reader.json("/conversations/search", params)
            seen += [c["id"] for c in found["conversations"]]
            if len(found["conversations"]) < 2:
                break
            after = found["conversations"][-1]["sort"]
        assert seen == conversations_[::-1], name
    two = [("startAfterDate[]", ms(3)), ("startAfterDate[]", ms(2))]
    refused = assert_problem(reader.get("/conversations/search", two), 400)
    assert "'startAfterDate'" in refused["detail"]
    token = reader.json("/conversations/search", {"limit": 2})["nextCursor"]
    both = [("cursor", token), ("startAfterDate[]", ms(3))]
    assert_problem(reader.get("/conversations/search", both), 400)


def test_start_after_date_takes_back_a_sort_before_1970(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A conversation whose last message is dated before 1970 (a zero date some systems
    write as 0001-01-01) reads with a negative `sort`; `startAfterDate` takes it back
    rather than refusing the value the search itself handed out."""
    location = new_id("loc")
    dates = ["0001-01-01T00:00:00.000Z", "1969-12-31T23:59:59.999Z", at(0)]
    ids = [new_id("cnv") for _ in dates]
    post_all(
        server,
        [
            message(locationId=location, conversationId=c, dateAdded=d)
            for c, d in zip(ids, dates, strict=True)
        ],
    )
    reader = Reader(server, make_key(engine, location))
    eventually(lambda: _equal(reader.json("/conversations/search")["total"], 3))
    for sort, expected in (("asc", ids), ("desc", ids[::-1])):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 1, "sort": sort}
        while len(seen) < 4:
            found = reader.json("/conversations/search", params)
            if not found["conversations"]:
                break
            seen += [c["id"] for c in found["conversations"]]
            params["startAfterDate"] = found["conversations"][-1]["sort"][0]
        assert seen == expected, sort
    assert reader.json("/conversations/search", {"limit": 1})["conversations"][0]["sort"] == [ms(0)]
    oldest = reader.json("/conversations/search", {"sort": "asc", "limit": 2})["conversations"]
    assert [c["sort"] for c in oldest] == [[-62135596800000], [-1]]


def _equal(actual: object, expected: object) -> None:
    assert actual == expected


def test_search_of_a_location_outside_the_key_is_empty(reader: Reader, world: World) -> None:
    for location in (world.other_location, new_id("nowhere")):
        found = reader.json("/conversations/search", {"locationId": location})
        assert found == {"conversations": [], "total": 0, "nextCursor": None}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "1_0"),
        ("limit", "\u0663"),  # an Arabic-Indic 3
        ("limit", "1e1"),
        ("limit", "+5"),
        ("limit", "2.5"),
        ("sort", "sideways"),
        ("sortBy", "date_added"),
        ("lastMessageType", "TYPE_FAX"),
        ("lastMessageDirection", "up"),
        ("status", "archived"),
        ("startDate", "soon"),
        ("startAfterDate", "later"),
        ("cursor", "abc"),
        ("assignedTo", "user1"),
        ("query", "hello"),
        ("nonsense", "1"),
    ],
)
def test_bad_search_parameters_are_400s_naming_them(reader: Reader, name: str, value: str) -> None:
    response = reader.get("/conversations/search", {name: value})
    assert f"'{name}'" in assert_problem(response, 400)["detail"]


def test_an_empty_unsupported_filter_is_absent_and_a_whole_float_limit_is_an_integer(
    reader: Reader,
) -> None:
    """HighLevel's SDK sends `query=` for an empty search box, and types limits as floats."""
    found = reader.json("/conversations/search", {"query": "", "limit": "2.0"})
    assert len(found["conversations"]) <= 2


def test_two_authorization_headers_are_refused_not_picked(
    server: Server, engine: sqlalchemy.Engine, world: World
) -> None:
    mine, other = make_key(engine, world.location), make_key(engine, world.other_location)
    response = httpx.get(
        f"{server.url}/conversations/search",
        headers=[("Authorization", f"Bearer {mine}"), ("Authorization", f"Bearer {other}")],
        timeout=10,
    )
    assert "once" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize("path", ["/conversations/search/", "/conversations/messages/"])
def test_a_stray_trailing_slash_is_a_404_problem_not_a_redirect(reader: Reader, path: str) -> None:
    assert_problem(reader.get(path), 404)


def test_search_needs_a_location_when_the_key_has_several(
    server: Server, engine: sqlalchemy.Engine, world: World
) -> None:
    reader = Reader(server, make_key(engine, world.location, world.other_location))
    problem = assert_problem(reader.get("/conversations/search"), 400)
    assert "'locationId'" in problem["detail"]
    assert reader.json("/conversations/search", {"locationId": world.other_location})["total"]


# --- GET /conversations/messages/export -----------------------------------------------------


def test_export_pages_every_message_with_the_total(reader: Reader, world: World) -> None:
    params: dict[str, Any] = {"locationId": world.location, "limit": 10, "sortOrder": "asc"}
    first = reader.json("/conversations/messages/export", params)
    total = first["total"]
    assert total == 32 and len(first["messages"]) == 10
    seen = [m["id"] for m in first["messages"]]
    while first["nextCursor"]:
        params["cursor"] = first["nextCursor"]
        first = reader.json("/conversations/messages/export", params)
        seen += [m["id"] for m in first["messages"]]
    assert len(seen) == len(set(seen)) == total
    assert world.ids["email"] in seen and world.ids["foreign"] not in seen


def test_export_filters(reader: Reader, world: World) -> None:
    def export(**params: Any) -> tuple[list[str], int]:
        found = reader.json("/conversations/messages/export", {"limit": 500, **params})
        assert found["nextCursor"] is None
        return [m["id"] for m in found["messages"]], found["total"]

    names = {v: k for k, v in world.ids.items()}
    chat, total = export(conversationId=world.merged_old, sortOrder="asc")
    assert (total, [names[i] for i in chat]) == (
        7,
        ["sms_in", "merged", "sms_out", "call", "voicemail", "email", "whatsapp"],
    )
    assert export(conversationId=world.chat, channel="Call") == ([world.ids["call"]], 1)
    assert export(conversationId=world.chat, channel="email") == ([world.ids["email"]], 1)
    assert export(contactId=world.other_contact)[1] == 1
    busy, total = export(contactId=world.contact, conversationId=world.busy, sortOrder="asc")
    assert (busy, total) == (busy_order(world), 24)
    assert export(conversationId=world.busy, startDate=at(10), endDate=at(11))[1] == 2
    assert export(conversationId=world.busy, contactId=world.other_contact) == ([], 0)
    newest = export(conversationId=world.chat)[0]
    assert newest[0] == world.ids["whatsapp"]  # newest first unless sortOrder=asc


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "9"),
        ("limit", "501"),
        ("sortBy", "updatedAt"),
        ("sortBy", "size"),
        ("sortOrder", "random"),
        ("channel", "Telegram"),
        ("endDate", "never"),
        ("cursor", "zzz"),
        ("type", "TYPE_SMS"),
    ],
)
def test_bad_export_parameters_are_400s_naming_them(reader: Reader, name: str, value: str) -> None:
    response = reader.get("/conversations/messages/export", {name: value})
    assert f"'{name}'" in assert_problem(response, 400)["detail"]


def test_export_of_a_location_outside_the_key_is_empty(reader: Reader, world: World) -> None:
    found = reader.json("/conversations/messages/export", {"locationId": world.other_location})
    assert found == {"messages": [], "nextCursor": None, "total": 0}
    found = reader.json(
        "/conversations/messages/export",
        {"locationId": world.location, "conversationId": world.foreign},
    )
    assert found == {"messages": [], "nextCursor": None, "total": 0}
