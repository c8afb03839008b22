"""The hot reads build their JSON in SQL (`conversations.reads`): it must be exactly what
`conversations.dialect` writes for the same rows, and their keyset pages exactly the
Python read path's (`timeline.list_messages`, `location_conversations.search`), through
merged conversations, undated messages, filters and both sort orders."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy

from conversations import dialect, reads
from conversations.database import libpq_url
from conversations.projections import location_conversations as catalogue
from conversations.projections import timeline
from conversations.projections.timeline import TimelineMessage
from tests.api_support import Reader, make_key, post_all, wait_folded
from tests.helpers import Server, message, new_id

pytestmark = pytest.mark.e2e


def _documents(location: str, root: str, merged: str, contact: str) -> list[dict[str, Any]]:
    """One conversation (and one merged into it) with everything the JSON has to get
    right: every channel, undated messages, shared dates, odd types and numbers."""
    common = {"locationId": location, "contactId": contact, "conversationId": root}
    docs: list[dict[str, Any]] = []
    for minute in range(12):
        docs.append(
            message(**common, body=f"dated {minute}", dateAdded=f"2025-03-01T09:{minute:02d}:00.5Z")
        )
    for _ in range(3):  # three sharing one millisecond: ordered by message key
        docs.append(message(**common, body="same time", dateAdded="2025-03-01T10:00:00.123Z"))
    for number in range(4):  # no dateAdded: after every dated message
        docs.append(message(**common, body=f"undated {number}", dateAdded=...))
    docs += [
        message(
            **common,
            type="OutboundMessage",
            direction="outbound",
            messageType="CALL",
            messageTypeId=1,
            messageTypeString="TYPE_CALL",
            callStatus="completed",
            callDuration=12.5,
            status="completed",
            body=...,
            dateAdded="2025-03-01T11:00:00.999Z",
        ),
        message(
            **common,
            messageType="CALL",
            callDuration=60,
            messageTypeString="type_voicemail",
            dateAdded="2025-03-01T11:01:00.000Z",
        ),
        message(
            **common,
            type="OutboundMessage",
            direction="outbound",
            messageId=...,
            messageType="Email",
            emailMessageId=new_id("eml"),
            threadId="thread",
            subject='Ünïcode "quoted" subject',
            body="<p>body with \\ backslash and \u2028 separator</p>",
            contentType="text/html",
            to="a@example.com",
            ccList=["c@example.com"],
            bccList=[],
            attachments=[{"url": "https://example.com/x.pdf", "size": 1.5}],
            **{"from": "Shop <shop@example.com>"},
            provider="Leadconnector Gmail",
            dateAdded="2025-03-01T11:02:00.000Z",
        ),
        message(**common, messageType="WhatsApp", body="wa", dateAdded="2025-03-01T11:03:00Z"),
        message(**common, messageType="WhatsApp", body="", dateAdded="2025-03-01T11:03:00.001Z"),
        message(
            **common,
            messageType="Live Chat",
            chatWidgetId="67b0cc8cf14b19d85ace7s35",
            dateAdded="2025-03-01T11:03:30Z",
        ),
        message(**common, messageType="Mystery", body="other", dateAdded="2025-03-01T11:04:00Z"),
        message(
            **common,
            messageType="SMS",
            messageTypeString="TYPE_NOT_A_NAME",
            body="custom",
            dateAdded="2025-03-01T11:05:00Z",
        ),
        message(
            locationId=location,
            contactId=contact,
            conversationId=merged,
            body="merged, dated",
            dateAdded="2025-03-01T09:05:30Z",
        ),
        message(
            locationId=location,
            contactId=contact,
            conversationId=merged,
            body="merged, undated",
            dateAdded=...,
        ),
        {
            "type": "ConversationUpdate",
            "locationId": location,
            "oldConversationId": merged,
            "newConversationId": root,
            "contactId": contact,
            "webhookId": str(uuid.uuid4()),
        },
    ]
    for number in range(5):  # other conversations, for search pages
        docs.append(
            message(
                locationId=location,
                conversationId=new_id("cnv"),
                messageType=["SMS", "Email", "Facebook", "GMB", "Call"][number],
                dateAdded=f"2025-02-0{number + 1}T08:00:00Z",
            )
        )
    return docs


@pytest.fixture(scope="module")
def world(server: Server, engine: sqlalchemy.Engine) -> tuple[str, str, Reader]:
    location, root = new_id("loc"), new_id("cnv")
    post_all(server, _documents(location, root, new_id("cnv"), new_id("con")))
    wait_folded(engine)
    return location, root, Reader(server, make_key(engine, location))


def _sql(database_url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        return conn.execute(statement, {}).fetchall()


def test_every_message_json_is_the_dialects(
    world: tuple[str, str, Reader], engine: sqlalchemy.Engine, database_url: str
) -> None:
    """Every message of the session's store (this module's and every other test's)."""
    built = reads.message_json_sql("p", "p.conversation_id")
    rows = _sql(
        database_url,
        "SELECT p.location_id, p.message_key, row_to_json(j)::text"
        f" FROM timeline_messages p {built}",
    )
    assert len(rows) > 30
    with engine.connect() as conn:
        expected = {
            (m.location_id, m.message_key): dialect.message_json(m, m.conversation_id)
            for m in (
                TimelineMessage.from_row(row)
                for row in conn.execute(sqlalchemy.select(timeline.timeline_messages))
            )
        }
    assert {(loc, key): json.loads(text) for loc, key, text in rows} == expected
    # What the webhooks sent, not nulls on both sides.
    sent = [json.loads(text) for loc, _, text in rows if loc == world[0]]
    assert {m["chatWidgetId"] for m in sent} == {None, "67b0cc8cf14b19d85ace7s35"}
    assert "" in {m["body"] for m in sent}


def test_every_stored_document_is_the_dialects(
    world: tuple[str, str, Reader], engine: sqlalchemy.Engine
) -> None:
    """The timeline stores each message's JSON (`doc`) as it writes the row."""
    with engine.connect() as conn:
        stored = [
            TimelineMessage.from_row(row)
            for row in conn.execute(sqlalchemy.select(timeline.timeline_messages))
        ]
    assert len(stored) > 30
    for m in stored:
        assert m.doc is not None
        expected = dialect.message_json(m, m.conversation_id)
        del expected["conversationId"]
        assert json.loads(m.doc) == expected


def test_rows_without_a_document_read_the_same(
    world: tuple[str, str, Reader], engine: sqlalchemy.Engine
) -> None:
    """Rows written before migration 0011 have no `doc`: their JSON is built by the read,
    equal to the stored documents' (pages mixing both kinds included)."""
    location, root, reader = world
    path = f"/conversations/{root}/messages"
    before = {sort: _follow(reader, path, {"limit": 4, "sort": sort}) for sort in ("asc", "desc")}
    table = timeline.timeline_messages
    with engine.begin() as conn:
        docs = dict(
            conn.execute(
                sqlalchemy.select(table.c.message_key, table.c.doc).where(
                    table.c.location_id == location
                )
            ).all()
        )
        every_other = sorted(docs)[::2]
        conn.execute(
            table.update()
            .where(table.c.location_id == location, table.c.message_key.in_(every_other))
            .values(doc=None)
        )
    try:
        for sort, expected in before.items():
            # Another page size: pages kept in memory (which no notification drops after
            # this direct update) are not what is being compared.
            assert _follow(reader, path, {"limit": 5, "sort": sort}) == expected
        assert len(before["asc"]) > 20
    finally:
        with engine.begin() as conn:
            for key in every_other:
                conn.execute(
                    table.update()
                    .where(table.c.location_id == location, table.c.message_key == key)
                    .values(doc=docs[key])
                )


def test_every_conversation_json_is_the_dialects(
    world: tuple[str, str, Reader], engine: sqlalchemy.Engine, database_url: str
) -> None:
    built = reads.conversation_json_sql("s")
    rows = _sql(
        database_url,
        "SELECT s.location_id, s.conversation_id, row_to_json(j)::text"
        f" FROM location_conversations s {built}",
    )
    with engine.connect() as conn:
        summaries = conn.execute(sqlalchemy.select(catalogue.conversations_summary)).all()
        expected = {
            (row.location_id, row.conversation_id): dialect.conversation_json(
                catalogue._summary(row)
            )
            for row in summaries
        }
    assert {(loc, cid): json.loads(text) for loc, cid, text in rows} == expected


def _by_last_type(reader: Reader, engine: sqlalchemy.Engine, location: str, limit: int) -> None:
    """Each `lastMessageType` the location's conversations show selects exactly those
    showing it, through the API (SQL) and `catalogue.search` alike. `limit` varies the
    query: a page kept in memory (no notification drops it after a direct update) is not
    what is compared."""
    shown = reader.json("/conversations/search", {"limit": limit})["conversations"]
    names = {c["lastMessageType"] for c in shown} & set(dialect.FILTER_TYPE_NAMES)
    assert len(names) > 2
    for name in names:
        found = reader.json("/conversations/search", {"limit": limit, "lastMessageType": name})
        expected = [c for c in shown if c["lastMessageType"] == name]
        assert found["conversations"] == expected
        with engine.connect() as conn:
            python, total = catalogue.search(conn, location, last_message_type=name, limit=100)
        assert [dialect.conversation_json(c) for c in python] == expected
        assert found["total"] == total


def test_summaries_written_before_0015_read_and_filter_by_their_channels_name(
    world: tuple[str, str, Reader], engine: sqlalchemy.Engine
) -> None:
    """Migration 0015 keeps each conversation's `lastMessageType`; rows written before it
    (NULL until `conversations replay`) show their channel's name and are selected by it."""
    location, _, reader = world
    _by_last_type(reader, engine, location, 50)
    summary = catalogue.conversations_summary
    with engine.begin() as conn:
        kept = conn.execute(
            sqlalchemy.select(summary.c.conversation_id, summary.c.last_message_type).where(
                summary.c.location_id == location
            )
        ).all()
        conn.execute(
            summary.update().where(summary.c.location_id == location).values(last_message_type=None)
        )
    try:
        channels = {
            c["id"]: c["lastMessageType"]
            for c in reader.json("/conversations/search", {"limit": 49})["conversations"]
        }
        with engine.connect() as conn:
            listed, _ = catalogue.search(conn, location, limit=100)
        assert channels == {
            c.conversation_id: dialect.CHANNEL_TYPES.get(c.last_message_channel or "")
            for c in listed
        }
        assert "TYPE_NOT_A_NAME" not in channels.values()  # the root's last message's name
        _by_last_type(reader, engine, location, 48)
    finally:
        with engine.begin() as conn:
            for conversation, name in kept:
                conn.execute(
                    summary.update()
                    .where(
                        summary.c.location_id == location,
                        summary.c.conversation_id == conversation,
                    )
                    .values(last_message_type=name)
                )


def _follow(reader: Reader, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every message of every page, following `nextCursor`."""
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(200):
        page = reader.json(path, {**params, **({"cursor": cursor} if cursor else {})})
        messages = page["messages"]
        found += messages["messages"]
        assert messages["nextPage"] is (messages["nextCursor"] is not None)
        if messages["messages"]:
            assert messages["lastMessageId"] == messages["messages"][-1]["id"]
        cursor = messages["nextCursor"]
        if cursor is None:
            return found
    raise AssertionError("more than 200 pages")


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
@pytest.mark.parametrize("sort", ["asc", "desc"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"type": "TYPE_SMS"}, {"startDate": "2025-03-01T09:03:00Z"}, {"endDate": "1740823260000"}],
    ids=["all", "sms", "since", "until"],
)
def test_message_pages_are_the_python_read_paths(
    world: tuple[str, str, Reader],
    engine: sqlalchemy.Engine,
    limit: int,
    sort: str,
    filters: dict[str, str],
) -> None:
    location, root, reader = world
    got = _follow(
        reader, f"/conversations/{root}/messages", {"limit": limit, "sort": sort, **filters}
    )
    since = until = None
    if "startDate" in filters:
        since = datetime(2025, 3, 1, 9, 3, tzinfo=UTC)
    if "endDate" in filters:
        until = datetime.fromtimestamp(1740823260, UTC)
    with engine.connect() as conn:
        expected = timeline.list_messages(
            conn,
            location,
            root,
            limit=1000,
            descending=sort == "desc",
            channels=["SMS"] if "type" in filters else None,
            since=since,
            until=until,
        )
    assert got == [dialect.message_json(m, root) for m in expected]
    assert len(got) >= (2 if filters else 20)


def test_last_message_id_continues_after_that_message(world: tuple[str, str, Reader]) -> None:
    _, root, reader = world
    everything = _follow(reader, f"/conversations/{root}/messages", {"limit": 100})
    middle = everything[len(everything) // 2]["id"]
    page = reader.json(f"/conversations/{root}/messages", {"lastMessageId": middle, "limit": 5})
    assert page["messages"]["messages"] == everything[len(everything) // 2 + 1 :][:5]


@pytest.mark.parametrize("sort", ["asc", "desc"])
@pytest.mark.parametrize("status", ["all", "unread", "read"])
def test_search_pages_are_the_python_read_paths(
    world: tuple[str, str, Reader], engine: sqlalchemy.Engine, sort: str, status: catalogue.Status
) -> None:
    location, _, reader = world
    got: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        params = {"limit": 2, "sort": sort, "status": status}
        page = reader.json(
            "/conversations/search", {**params, **({"cursor": cursor} if cursor else {})}
        )
        got += page["conversations"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    with engine.connect() as conn:
        expected, total = catalogue.search(
            conn,
            location,
            status=status,
            descending=sort == "desc",
            limit=1000,
        )
    assert page["total"] == total == len(got)
    assert got == [dialect.conversation_json(s) for s in expected]


def test_every_kind_of_key_reads_the_same_pages(
    world: tuple[str, str, Reader], server: Server, engine: sqlalchemy.Engine
) -> None:
    """A key for every location finds the conversation by its id alone, a key for
    several locations through each of them: the same pages as the one-location key."""
    location, root, reader = world
    path = f"/conversations/{root}/messages"
    expected = _follow(reader, path, {"limit": 4})
    for key in (
        make_key(engine, all_locations=True),
        make_key(engine, new_id("loc"), location, new_id("loc")),
    ):
        other = Reader(server, key)
        assert _follow(other, path, {"limit": 4}) == expected
        assert _follow(other, path, {"limit": 4, "locationId": location}) == expected
        assert other.get(path, {"locationId": new_id("loc")}).status_code == 404
