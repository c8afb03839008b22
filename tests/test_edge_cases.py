"""Defects found by using the service from outside, as a client would, over real HTTP on
real PostgreSQL. The `xfail(strict=True)` ones wait for a fix in code other work was
rewriting when they were found (ingest path, folding, read endpoints); each reason says
where the fix goes. A strict xfail that starts passing fails the suite: drop its marker."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import sqlalchemy

from conversations.database import create_async_engine
from conversations.events import MAX_NESTING
from conversations.ingest import Rejection, prepare
from conversations.payloads import MAX_ID_BYTES
from conversations.store import append_events
from tests.api_support import Reader, make_key, post_all, wait_folded
from tests.conftest import start_server
from tests.helpers import KeyPair, Server, message, new_id
from tests.test_store import new_event


def test_dates_before_the_year_1000_are_valid_iso_8601(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(dateAdded="0001-01-01T00:00:00Z")  # Go's zero time.Time
    post_all(server, [document])
    wait_folded(engine)
    reader = Reader(server, make_key(engine, document["locationId"]))

    found = reader.json(f"/conversations/messages/{document['messageId']}")
    channels = reader.json(f"/contacts/{document['contactId']}/channels")

    assert found["dateAdded"] == "0001-01-01T00:00:00.000Z"
    assert channels["firstMessageAt"] == "0001-01-01T00:00:00.000Z"


def test_a_gzip_encoded_webhook_is_stored_or_refused_as_unsupported(server: Server) -> None:
    raw = json.dumps(message()).encode()
    response = httpx.post(
        f"{server.url}/webhooks/highlevel",
        content=gzip.compress(raw),
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            **server.keys.headers(raw),
        },
        timeout=30,
    )
    if response.status_code == 415:
        assert response.headers["content-type"] == "application/problem+json"
    else:
        assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def cors_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    """CORS is off unless configured (CONVERSATIONS_CORS_ORIGINS), so a browser page on
    another origin needs a server that names it."""
    server = start_server(database_url, keys, CONVERSATIONS_CORS_ORIGINS="https://app.example.com")
    yield server
    server.stop()


def test_a_browser_event_source_can_follow_the_feed(
    cors_server: Server, engine: sqlalchemy.Engine
) -> None:
    server = cors_server
    location = new_id("loc")
    key = make_key(engine, location)
    (position,) = post_all(server, [message(locationId=location)])
    with (
        httpx.Client(timeout=httpx.Timeout(10.0)) as client,
        client.stream(
            "GET",
            f"{server.url}/events/stream",
            params={"access_token": key},
            headers={"Accept": "text/event-stream", "Origin": "https://app.example.com"},
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers.get("access-control-allow-origin") in (
            "*",
            "https://app.example.com",
        )
        for line in response.iter_lines():
            if line.startswith("id:"):
                assert int(line.removeprefix("id:")) == position
                break


def test_a_call_status_reported_by_one_event_is_kept(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    call = message(
        type="OutboundMessage",
        direction="outbound",
        messageType="CALL",
        messageTypeId=1,
        messageTypeString="TYPE_CALL",
        body=...,
        contentType=...,
        attachments=["call recording url"],
    )
    with_call_status = {**call, "status": "completed", "callStatus": "voicemail"}
    without = {**call, "status": "completed", "webhookId": new_id("wh")}  # the docs' shape
    post_all(server, [with_call_status, without])
    wait_folded(engine)
    reader = Reader(server, make_key(engine, call["locationId"]))

    found = reader.json(f"/conversations/messages/{call['messageId']}")

    assert found["status"] == "completed"
    assert found["meta"]["callStatus"] == "voicemail"


def test_a_message_with_a_long_id_can_be_paged_past(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    long_ids = ["a" * MAX_ID_BYTES, "é" * (MAX_ID_BYTES // 2)]  # the longest kept
    documents = [
        message(
            locationId=location,
            conversationId=conversation,
            messageId=message_id,
            dateAdded=f"2024-05-0{day}T12:00:00Z",
        )
        for day, message_id in enumerate([new_id("m"), *long_ids, new_id("m")], start=1)
    ]
    post_all(server, documents)
    wait_folded(engine)
    reader = Reader(server, make_key(engine, location))
    path = f"/conversations/{conversation}/messages"
    expected = [d["messageId"] for d in reversed(documents)]  # newest first

    for cursor_name in ("cursor", "lastMessageId"):
        seen: list[str] = []
        params: dict[str, object] = {"limit": 1}
        while True:
            response = reader.get(path, params)
            assert response.status_code == 200, (cursor_name, response.text[:300])
            page = response.json()["messages"]
            seen += [m["id"] for m in page["messages"]]
            if not page["nextPage"]:
                break
            key = "nextCursor" if cursor_name == "cursor" else "lastMessageId"
            params = {"limit": 1, cursor_name: page[key]}
        assert seen == expected, cursor_name


@pytest.mark.parametrize("field", ["messageId", "conversationId", "contactId", "locationId"])
def test_a_huge_id_never_stops_the_projections(
    server: Server, engine: sqlalchemy.Engine, field: str
) -> None:
    """An id too long for an index entry must not poison the store: it is kept aside
    with the reason, and the projections go on folding what comes after it."""
    incompressible = base64.b64encode(os.urandom(6000)).decode()  # > a btree entry's 2,704 bytes
    huge = message(**{field: incompressible})
    after = message()
    kept = server.post(huge)
    assert kept.status_code == 202, kept.text
    assert kept.json()["reason"] == "invalid_field"
    assert server.post(after).status_code == 201
    wait_folded(engine)
    reader = Reader(server, make_key(engine, after["locationId"]))
    assert reader.get(f"/conversations/messages/{after['messageId']}").status_code == 200


# --- found by an outside QA pass (2026-11-30) ------------------------------------------------


def stored_message_ids(engine: sqlalchemy.Engine, *responses: httpx.Response) -> list[str]:
    positions = [response.json()["position"] for response in responses]
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text("SELECT message_id FROM events WHERE position = ANY(:p)"),
            {"p": positions},
        )
        return [row.message_id for row in rows]


@pytest.mark.parametrize("blank", [" ", "\t", "   "])
def test_a_blank_webhook_id_does_not_make_other_deliveries_duplicates(
    server: Server, blank: str
) -> None:
    """A blank `webhookId` cannot tell deliveries apart: the content decides, as with none."""
    first, second = message(webhookId=blank), message(webhookId=blank)
    stored = [server.post(first), server.post(second)]
    assert [r.status_code for r in stored] == [201, 201], [r.text for r in stored]
    assert stored[0].json()["position"] != stored[1].json()["position"]
    again = server.post(json.dumps(first, indent=2).encode())  # the same JSON, spelled out
    assert again.status_code == 200, again.text
    assert again.json()["position"] == stored[0].json()["position"]


@pytest.mark.parametrize("field", ["messageId", "emailMessageId"])
def test_a_blank_message_id_counts_as_absent(
    server: Server, engine: sqlalchemy.Engine, field: str
) -> None:
    """Two messages whose id is only whitespace are two messages (derived identities),
    not one message `"   "` that the second overwrites."""
    conversation = new_id("conv")
    first = message(conversationId=conversation, body="first message", **{field: "   "})
    second = message(conversationId=conversation, body="second message", **{field: "   "})
    if field == "emailMessageId":
        del first["messageId"], second["messageId"]
    responses = [server.post(first), server.post(second)]
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    identities = stored_message_ids(engine, *responses)
    assert len(set(identities)) == 2, identities
    assert all(identity.startswith("derived:") for identity in identities), identities


@pytest.mark.parametrize(
    ("number", "detail"),
    [
        ("1e400", "beyond the range of a 64-bit float"),
        ("-1e999", "beyond the range of a 64-bit float"),
        ("9" * 5000, "an integer of more than 4,300 digits"),
    ],
)
def test_valid_json_with_a_number_we_cannot_hold_is_kept_aside_not_refused(
    server: Server, engine: sqlalchemy.Engine, number: str, detail: str
) -> None:
    """It is JSON (a 400 would have HighLevel retry it for hours): 202, kept verbatim."""
    raw = json.dumps(message(extra=0)).encode().replace(b'"extra": 0', f'"x": {number}'.encode())
    kept = server.post(raw)
    assert kept.status_code == 202, kept.text
    answer = kept.json()
    assert answer["reason"] == "number_out_of_range", answer
    assert detail in answer["detail"] and "sys." not in answer["detail"], answer
    with engine.connect() as conn:
        body = conn.scalar(
            sqlalchemy.text("SELECT body FROM quarantine WHERE id = :id"),
            {"id": answer["quarantineId"]},
        )
    assert bytes(body) == raw


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("callDuration", "1_000", 202),
        ("callDuration", "\u0661\u0662\u0660", 202),  # Arabic-Indic digits
        ("callDuration", "inf", 202),
        ("callDuration", " 12.5 ", 201),
        ("callDuration", "1e3", 201),
        ("messageTypeId", "\uff12", 202),  # a full-width 2
        ("messageTypeId", "2.0", 201),
        ("messageTypeId", 2.0, 201),
    ],
)
def test_numbers_given_as_text_are_spelled_as_json_spells_them(
    server: Server, field: str, value: object, status: int
) -> None:
    response = server.post(message(**{field: value}))
    assert response.status_code == status, response.text
    if status == 202:
        assert response.json()["reason"] == "invalid_field", response.text


def _nested(depth: int, **fields: object) -> bytes:
    """A message whose `x` nests arrays so that the body is `depth` levels deep."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return json.dumps(message(x=0, **fields)).encode().replace(b'"x": 0', f'"x": {inner}'.encode())


@pytest.mark.parametrize(
    ("depth", "status"), [(MAX_NESTING, 201), (MAX_NESTING + 1, 202), (5_000, 202)]
)
def test_one_nesting_bound_for_every_body(server: Server, depth: int, status: int) -> None:
    """Deeper than MAX_NESTING is an object we cannot use (202, kept), whatever the depth
    and whichever way it comes in: the webhook, `import` and `quarantine retry` share
    `prepare`, which no longer depends on how deep the caller's own stack is."""
    raw = _nested(depth)
    response = server.post(raw)
    assert response.status_code == status, response.text
    prepared = prepare(raw, "import", None)
    if status == 202:
        assert response.json()["reason"] == "nested_too_deeply"
        assert f"more than {MAX_NESTING} levels" in response.json()["detail"]
        assert isinstance(prepared, Rejection) and prepared.reason == "nested_too_deeply"
    else:
        assert not isinstance(prepared, Rejection)


def test_a_deep_array_is_still_not_an_object(server: Server) -> None:
    response = server.post(b"[" * 5_000 + b"]" * 5_000)
    assert response.status_code == 400, response.text
    assert "not a JSON object" in response.json()["detail"]


def test_a_payload_stored_too_deep_to_decode_does_not_hold_the_projections_back(
    server: Server, engine: sqlalchemy.Engine, database_url: str
) -> None:
    """A database written before ingest bounded nesting may hold a payload Python cannot
    decode (`import` stored ~970 levels). Its event is left out of the projections (as
    any payload they cannot use), and every event after it is folded."""
    location = new_id("loc")
    deep = _nested(3_000, locationId=location)
    event = replace(
        new_event(message(locationId=location)),
        payload_json=deep.decode(),
        raw=deep,
        payload_is_raw=True,
        dedup_key=f"deep:{new_id()}",
    )

    async def store() -> None:
        writer = create_async_engine(database_url, pool_size=1, timeout=10)
        try:
            async with writer.begin() as conn:
                await append_events(conn, [event])
        finally:
            await writer.dispose()

    asyncio.run(store())
    later = message(locationId=location)
    post_all(server, [later])
    wait_folded(engine)
    reader = Reader(server, make_key(engine, location))
    assert reader.json(f"/conversations/messages/{later['messageId']}")["id"] == later["messageId"]
    with engine.connect() as conn:
        failures = conn.scalar(
            sqlalchemy.text("SELECT count(*) FROM projection_checkpoints WHERE failure IS NOT NULL")
        )
    assert failures == 0


@pytest.mark.parametrize(
    "location", [" padded ", "tab\there", "lo\x01c", "nb\u00a0sp", "zw\u200bj", "two,locations"]
)
def test_a_location_id_no_key_could_name_is_kept_aside(
    server: Server, engine: sqlalchemy.Engine, location: str
) -> None:
    """Events are read through keys scoped to location ids (`keys create --location`), which
    are printable and trimmed: an event stored under any other id would be readable by no
    scoped key. Kept aside instead (202), for every event type."""
    for document in (
        message(locationId=location),
        {"type": "ConversationUnreadUpdate", "locationId": location, "id": new_id("c")},
    ):
        response = server.post(document)
        assert response.status_code == 202, response.text
        assert response.json()["reason"] == "invalid_field"
        assert "no API key could name this location" in response.json()["detail"]
    with pytest.raises(ValueError, match="not a location id"):
        make_key(engine, location if location.strip() == location else location + "\x01")


def test_a_location_id_with_inner_spaces_is_one_a_key_can_name(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(locationId=f"my location {new_id()}")
    post_all(server, [document])
    wait_folded(engine)
    reader = Reader(server, make_key(engine, document["locationId"]))
    assert (
        reader.json(f"/conversations/messages/{document['messageId']}")["id"]
        == (document["messageId"])
    )
