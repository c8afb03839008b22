"""Tenant isolation of the whole read API, over real HTTP on real PostgreSQL.

Two locations, A and B, hold data under the *same* conversation, contact and message ids
(on purpose), plus ids only one of them has, and B holds merges that point at A's
conversation ids. A key for A then tries to reach B through every endpoint and
parameter. Each probe must answer exactly what the same request about an id (or a
location) that exists nowhere answers: same status, same body (the requested id aside),
never a byte of B's data, totals that count A alone. Every probe has a positive control
(A's key reads A's copy; B's key reads B's), so an endpoint that answered 404 to
everything could not pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

from tests.api_support import Reader, assert_problem, make_key, post_all, wait_folded
from tests.helpers import Server, message, new_id

pytestmark = pytest.mark.e2e

SECRET = "B-SECRET"
"""In every body B holds; must never appear in an answer to A's key."""


@dataclass
class Tenants:
    a: str
    b: str
    shared_conv: str
    shared_contact: str
    shared_msg: str
    shared_email: str
    a_conv: str  # A only; B merges its own conversation into this id
    a_conv2: str  # A only; B merges this id into one of its own
    b_conv: str  # B only (merged into a_conv, in B)
    b_conv2: str  # B only (a_conv2 merged into it, in B)
    b_contact: str
    b_msg: str
    b_email: str
    positions: dict[str, list[int]] = field(default_factory=dict)
    a_messages: dict[str, set[str]] = field(default_factory=dict)
    """A's message ids per conversation."""


def _email(location: str, conv: str, contact: str, email_id: str, body: str) -> dict[str, Any]:
    return message(
        locationId=location,
        conversationId=conv,
        contactId=contact,
        type="OutboundMessage",
        direction="outbound",
        messageType="Email",
        messageId=...,
        emailMessageId=email_id,
        contentType="text/html",
        subject=body,
        body=f"<p>{body}</p>",
        status=...,
        dateAdded="2024-06-01T10:00:00.000Z",
    )


def _merge(location: str, old: str, new: str, contact: str) -> dict[str, Any]:
    return {
        "type": "ConversationUpdate",
        "locationId": location,
        "oldConversationId": old,
        "newConversationId": new,
        "contactId": contact,
        "webhookId": new_id("wh"),
    }


@pytest.fixture(scope="module")
def tenants(server: Server, engine: sqlalchemy.Engine) -> Tenants:
    t = Tenants(
        a=new_id("locA"),
        b=new_id("locB"),
        shared_conv=new_id("cnv"),
        shared_contact=new_id("con"),
        shared_msg=new_id("msg"),
        shared_email=new_id("eml"),
        a_conv=new_id("cnv"),
        a_conv2=new_id("cnv"),
        b_conv=new_id("cnv"),
        b_conv2=new_id("cnv"),
        b_contact=new_id("con"),
        b_msg=new_id("msg"),
        b_email=new_id("eml"),
    )
    a, b, contact = t.a, t.b, t.shared_contact

    def in_a(conv: str, body: str, **extra: Any) -> dict[str, Any]:
        return message(
            locationId=a, conversationId=conv, contactId=contact, body=f"A {body}", **extra
        )

    def in_b(conv: str, body: str, **extra: Any) -> dict[str, Any]:
        extra.setdefault("contactId", contact)
        return message(locationId=b, conversationId=conv, body=f"{SECRET} {body}", **extra)

    a_docs = [
        in_a(t.shared_conv, "shared", messageId=t.shared_msg, dateAdded="2024-06-01T09:00:00.000Z"),
        in_a(t.shared_conv, "second", dateAdded="2024-06-01T09:05:00.000Z"),
        _email(a, t.shared_conv, contact, t.shared_email, "A email"),
        in_a(t.a_conv, "own", dateAdded="2024-06-02T09:00:00.000Z"),
        in_a(t.a_conv2, "own2", dateAdded="2024-06-03T09:00:00.000Z"),
    ]
    b_docs = [
        in_b(t.shared_conv, "shared", messageId=t.shared_msg, dateAdded="2024-06-01T09:00:00.000Z"),
        *[
            in_b(t.shared_conv, f"many {i}", dateAdded=f"2024-06-01T11:{i:02d}:00.000Z")
            for i in range(12)
        ],
        _email(b, t.shared_conv, contact, t.shared_email, f"{SECRET} email"),
        _email(b, t.shared_conv, contact, t.b_email, f"{SECRET} own email"),
        in_b(t.b_conv, "own", messageId=t.b_msg, contactId=t.b_contact),
        in_b(t.b_conv, "own again", contactId=t.b_contact),
        in_b(t.b_conv2, "own2"),
        # B's merges point at A's conversation ids.
        _merge(b, t.b_conv, t.a_conv, t.b_contact),
        _merge(b, t.a_conv2, t.b_conv2, contact),
    ]
    t.positions["a"] = post_all(server, a_docs)
    t.positions["b"] = post_all(server, b_docs)
    for doc in a_docs:
        ident = doc.get("messageId") or doc["emailMessageId"]
        t.a_messages.setdefault(doc["conversationId"], set()).add(ident)
    wait_folded(engine)
    return t


@pytest.fixture(scope="module")
def a_key(server: Server, engine: sqlalchemy.Engine, tenants: Tenants) -> Reader:
    return Reader(server, make_key(engine, tenants.a))


@pytest.fixture(scope="module")
def b_key(server: Server, engine: sqlalchemy.Engine, tenants: Tenants) -> Reader:
    return Reader(server, make_key(engine, tenants.b))


def same_as_missing(
    reader: Reader,
    probe: tuple[str, dict[str, Any]],
    missing: tuple[str, dict[str, Any]],
    ids: tuple[str, str] | None = None,
) -> httpx.Response:
    """The probe answers exactly as the request about something that exists nowhere
    (`ids`: (the probe's id, the missing id), which the bodies may echo)."""
    got, expected = reader.get(*probe), reader.get(*missing)
    expected_text = expected.text
    if ids is not None:
        expected_text = expected_text.replace(ids[1], ids[0])
    assert got.status_code == expected.status_code, (probe, got.text)
    assert got.headers["content-type"] == expected.headers["content-type"]
    assert got.text == expected_text, probe
    assert SECRET not in got.text
    assert got.status_code < 500
    return got


def only_a(response: httpx.Response, tenants: Tenants) -> Any:
    assert response.status_code == 200, response.text
    assert SECRET not in response.text
    assert tenants.b not in response.text
    return response.json()


# --- conversations --------------------------------------------------------------------------


def test_search(a_key: Reader, b_key: Reader, tenants: Tenants) -> None:
    t = tenants
    mine = only_a(a_key.get("/conversations/search"), t)
    assert {c["id"] for c in mine["conversations"]} == {t.shared_conv, t.a_conv, t.a_conv2}
    assert mine["total"] == 3
    assert {c["locationId"] for c in mine["conversations"]} == {t.a}
    theirs = b_key.json("/conversations/search")
    assert theirs["total"] >= 3 and SECRET in json.dumps(theirs)  # control
    missing = new_id("loc")
    for params in ({"locationId": t.b}, {"locationId": t.b, "contactId": t.b_contact}):
        same_as_missing(
            a_key,
            ("/conversations/search", params),
            ("/conversations/search", {**params, "locationId": missing}),
        )
    same_as_missing(
        a_key,
        ("/conversations/search", {"contactId": t.b_contact}),
        ("/conversations/search", {"contactId": new_id("con")}),
    )
    shared = only_a(a_key.get("/conversations/search", {"contactId": t.shared_contact}), t)
    assert shared["total"] == 3


@pytest.mark.parametrize("which", ["b_conv", "b_conv2"])
def test_get_conversation(a_key: Reader, b_key: Reader, tenants: Tenants, which: str) -> None:
    t = tenants
    b_id, missing = getattr(t, which), new_id("cnv")
    assert b_key.get(f"/conversations/{t.b_conv2}").status_code == 200  # control
    same_as_missing(
        a_key, (f"/conversations/{b_id}", {}), (f"/conversations/{missing}", {}), (b_id, missing)
    )
    same_as_missing(
        a_key,
        (f"/conversations/{t.shared_conv}", {"locationId": t.b}),
        (f"/conversations/{t.shared_conv}", {"locationId": new_id("loc")}),
    )


def test_shared_and_merged_ids_read_as_as_own(
    a_key: Reader, b_key: Reader, tenants: Tenants
) -> None:
    t = tenants
    for conv in (t.shared_conv, t.a_conv, t.a_conv2):
        summary = only_a(a_key.get(f"/conversations/{conv}"), t)
        assert summary["id"] == conv and summary["locationId"] == t.a
        page = only_a(a_key.get(f"/conversations/{conv}/messages", {"limit": 100}), t)
        got = {m["id"] for m in page["messages"]["messages"]}
        assert got == t.a_messages[conv]
        assert {m["conversationId"] for m in page["messages"]["messages"]} == {conv}
    # B's view of the same ids is B's (the controls): the merge into a_conv holds there.
    merged = b_key.json(f"/conversations/{t.a_conv}/messages")
    assert merged["messages"]["messages"] and SECRET in json.dumps(merged)
    assert b_key.json(f"/conversations/{t.shared_conv}")["locationId"] == t.b


def test_conversation_messages(a_key: Reader, b_key: Reader, tenants: Tenants) -> None:
    t = tenants
    missing = new_id("cnv")
    assert b_key.get(f"/conversations/{t.b_conv}/messages").status_code == 200  # control
    for b_id in (t.b_conv, t.b_conv2):
        same_as_missing(
            a_key,
            (f"/conversations/{b_id}/messages", {}),
            (f"/conversations/{missing}/messages", {}),
            (b_id, missing),
        )
    # B's message id as A's page marker: as unknown as an id that exists nowhere.
    for b_msg in (t.b_msg, t.b_email):
        absent = new_id("msg")
        same_as_missing(
            a_key,
            (f"/conversations/{t.shared_conv}/messages", {"lastMessageId": b_msg}),
            (f"/conversations/{t.shared_conv}/messages", {"lastMessageId": absent}),
            (b_msg, absent),
        )
    same_as_missing(
        a_key,
        (f"/conversations/{t.shared_conv}/messages", {"locationId": t.b}),
        (f"/conversations/{t.shared_conv}/messages", {"locationId": new_id("loc")}),
    )


def test_messages_by_id(a_key: Reader, b_key: Reader, tenants: Tenants) -> None:
    t = tenants
    assert SECRET in b_key.get(f"/conversations/messages/{t.b_msg}").text  # control
    assert SECRET in b_key.get(f"/conversations/messages/email/{t.b_email}").text  # control
    missing = new_id("msg")
    for b_id in (t.b_msg, t.b_email):
        same_as_missing(
            a_key,
            (f"/conversations/messages/{b_id}", {}),
            (f"/conversations/messages/{missing}", {}),
            (b_id, missing),
        )
        same_as_missing(
            a_key,
            (f"/conversations/messages/email/{b_id}", {}),
            (f"/conversations/messages/email/{missing}", {}),
            (b_id, missing),
        )
    shared = only_a(a_key.get(f"/conversations/messages/{t.shared_msg}"), t)
    assert shared["locationId"] == t.a and shared["body"] == "A shared"
    email = only_a(a_key.get(f"/conversations/messages/email/{t.shared_email}"), t)
    assert email["locationId"] == t.a
    for path in (
        f"/conversations/messages/{t.shared_msg}",
        f"/conversations/messages/email/{t.shared_email}",
    ):
        same_as_missing(a_key, (path, {"locationId": t.b}), (path, {"locationId": new_id("loc")}))


def test_export(a_key: Reader, b_key: Reader, tenants: Tenants) -> None:
    t = tenants
    path = "/conversations/messages/export"
    mine = only_a(a_key.get(path), t)
    assert mine["total"] == 5 and len(mine["messages"]) == 5
    assert b_key.json(path)["total"] >= 16  # control
    same_as_missing(a_key, (path, {"locationId": t.b}), (path, {"locationId": new_id("loc")}))
    for name, b_id in (
        ("conversationId", t.b_conv),
        ("conversationId", t.b_conv2),
        ("contactId", t.b_contact),
    ):
        same_as_missing(a_key, (path, {name: b_id}), (path, {name: new_id("x")}))
        same_as_missing(
            a_key,
            (path, {"locationId": t.b, name: b_id}),
            (path, {"locationId": new_id("loc"), name: b_id}),
        )
    shared = only_a(a_key.get(path, {"conversationId": t.shared_conv}), t)
    assert shared["total"] == 3
    contact = only_a(a_key.get(path, {"contactId": t.shared_contact}), t)
    assert contact["total"] == 5


# --- contacts -------------------------------------------------------------------------------


def test_contact_messages_and_channels(a_key: Reader, b_key: Reader, tenants: Tenants) -> None:
    t = tenants
    assert SECRET in b_key.get(f"/contacts/{t.b_contact}/messages").text  # control
    assert b_key.get(f"/contacts/{t.b_contact}/channels").status_code == 200  # control
    missing = new_id("con")
    for suffix in ("messages", "channels"):
        same_as_missing(
            a_key,
            (f"/contacts/{t.b_contact}/{suffix}", {}),
            (f"/contacts/{missing}/{suffix}", {}),
            (t.b_contact, missing),
        )
        same_as_missing(
            a_key,
            (f"/contacts/{t.shared_contact}/{suffix}", {"locationId": t.b}),
            (f"/contacts/{t.shared_contact}/{suffix}", {"locationId": new_id("loc")}),
        )
    page = only_a(a_key.get(f"/contacts/{t.shared_contact}/messages", {"limit": 100}), t)
    assert {m["id"] for m in page["messages"]} == set().union(*t.a_messages.values())
    summary = only_a(a_key.get(f"/contacts/{t.shared_contact}/channels"), t)
    assert summary["locationIds"] == [t.a] and summary["messageCount"] == 5


# --- cursors --------------------------------------------------------------------------------


def test_cursors_of_a_b_key_are_refused_to_an_a_key(
    a_key: Reader, b_key: Reader, tenants: Tenants
) -> None:
    t = tenants
    pages = [
        ("/conversations/search", {"limit": 1}),
        (f"/conversations/{t.shared_conv}/messages", {"limit": 1}),
        ("/conversations/messages/export", {"limit": 10}),
        (f"/contacts/{t.shared_contact}/messages", {"limit": 1}),
    ]
    for path, params in pages:
        page = b_key.json(path, params)
        cursor = page.get("nextCursor") or page["messages"].get("nextCursor")
        assert cursor, (path, page)
        assert b_key.get(path, {**params, "cursor": cursor}).status_code == 200  # control
        for extra in ({}, {"locationId": t.b}, {"locationId": t.a}):
            assert_problem(a_key.get(path, {**params, **extra, "cursor": cursor}), 400)


# --- the event feed -------------------------------------------------------------------------


def test_event_feed(
    a_key: Reader, b_key: Reader, tenants: Tenants, engine: sqlalchemy.Engine
) -> None:
    t = tenants
    mine = only_a(a_key.get("/events", {"limit": 1000}), t)
    assert [e["position"] for e in mine["events"]] == t.positions["a"]
    assert {e["locationId"] for e in mine["events"]} == {t.a}
    assert [e["position"] for e in b_key.json("/events", {"limit": 1000})["events"]] == t.positions[
        "b"
    ]
    missing = new_id("loc")
    for after in (0, t.positions["a"][-1], t.positions["b"][0] - 1):
        same_as_missing(
            a_key,
            ("/events", {"after": after, "locationId": t.b}),
            ("/events", {"after": after, "locationId": missing}),
        )
    # After A's last event only B's follow: A's key sees nothing and learns no position.
    last = t.positions["a"][-1]
    assert a_key.json("/events", {"after": last}) == {"events": [], "next": last}
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT max(position) FROM events")) > last


@contextmanager
def _stream(reader: Reader, params: dict[str, Any]) -> Iterator[Iterator[str]]:
    with (
        httpx.Client(timeout=httpx.Timeout(10.0)) as client,
        client.stream(
            "GET", f"{reader.server.url}/events/stream", params=params, headers=reader.headers
        ) as response,
    ):
        assert response.status_code == 200
        yield response.iter_lines()


def test_event_stream(server: Server, a_key: Reader, tenants: Tenants) -> None:
    t = tenants
    with _stream(a_key, {"after": 0, "heartbeat": 1}) as lines:
        post_all(server, [message(locationId=t.b, body=SECRET)])
        (position,) = post_all(server, [message(locationId=t.a)])
        seen = []
        for line in lines:
            assert SECRET not in line and t.b not in line
            if line.startswith("id: "):
                seen.append(int(line[4:]))
                if seen[-1] == position:
                    break
        assert seen == [*t.positions["a"], position]
    with _stream(a_key, {"locationId": t.b, "heartbeat": 1}) as lines:
        post_all(server, [message(locationId=t.b, body=SECRET)])
        deadline = time.monotonic() + 2.5
        for line in lines:
            assert not line.startswith(("id:", "data:")), line
            if time.monotonic() > deadline:
                break
