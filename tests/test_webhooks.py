"""`POST /webhooks/highlevel` end to end: real HTTP into `conversations serve`, real PostgreSQL.

Every test sends bodies with fresh ids (locationId, webhookId) and then looks at the rows
the server wrote, so the tests neither depend on each other nor on earlier runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import pytest
import sqlalchemy
from sqlalchemy import RowMapping, text

from tests.conftest import start_server
from tests.helpers import (
    KeyPair,
    Server,
    events_refusing,
    fixture,
    fixture_names,
    message,
    new_id,
)

pytestmark = pytest.mark.e2e

PROBLEM_JSON = "application/problem+json"
DERIVED = re.compile(r"^derived:[0-9a-f]{64}$")


# --- helpers --------------------------------------------------------------------------------


def oddly_spaced(document: dict[str, Any]) -> bytes:
    """The document as JSON no serialiser would write by default: tabs, CRLF, spaces before
    separators, non-ASCII unescaped. Storing these bytes as sent proves `raw` is verbatim."""
    body = json.dumps(document, indent="\t", separators=(" ,", " :  "), ensure_ascii=False)
    raw = ("\r\n  " + body.replace("\n", "\r\n") + " \n\t").encode()
    assert raw != json.dumps(document).encode()
    return raw


def events_in(engine: sqlalchemy.Engine, location_id: str) -> list[RowMapping]:
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT * FROM events WHERE location_id = :location_id ORDER BY position"),
            {"location_id": location_id},
        )
        return list(result.mappings())


def only_event(engine: sqlalchemy.Engine, location_id: str) -> RowMapping:
    rows = events_in(engine, location_id)
    assert len(rows) == 1, rows
    return rows[0]


def quarantined(engine: sqlalchemy.Engine, body: bytes) -> list[RowMapping]:
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT * FROM quarantine WHERE body_sha256 = :sha ORDER BY id"),
            {"sha": hashlib.sha256(body).hexdigest()},
        )
        return list(result.mappings())


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert "Traceback" not in response.text
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    assert document["type"].startswith("urn:conversations:problem:")
    assert document["title"]
    assert document["detail"]
    return document


def assert_stored(response: httpx.Response, row: RowMapping) -> None:
    """A 201 whose JSON names exactly the row the server wrote."""
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["outcome"] == "stored"
    assert answer["position"] == row["position"]
    assert answer["eventId"] == str(row["event_id"])
    assert answer["streamId"] == row["stream_id"]
    assert answer["version"] == row["version"]


def webhook_count(server: Server, outcome: str) -> int:
    exposition = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(
        rf'^conversations_webhooks_total\{{outcome="{outcome}"\}} (\d+)$', exposition, re.M
    )
    return int(found.group(1)) if found else 0


def sized_body(size: int) -> tuple[dict[str, Any], bytes]:
    """A valid message whose JSON is exactly `size` bytes."""
    document = message(body="")
    padding = size - len(json.dumps(document).encode())
    assert padding > 0
    document["body"] = "x" * padding
    raw = json.dumps(document).encode()
    assert len(raw) == size
    return document, raw


def in_chunks(raw: bytes, size: int = 128) -> Iterator[bytes]:
    for start in range(0, len(raw), size):
        yield raw[start : start + size]


def post_chunked(server: Server, raw: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json", **server.keys.headers(raw)}
    response = httpx.post(
        f"{server.url}/webhooks/highlevel", content=in_chunks(raw), headers=headers, timeout=30
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    return response


@pytest.fixture(scope="module")
def lenient_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    server = start_server(database_url, keys, CONVERSATIONS_WEBHOOK_VERIFY="off")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    """Bodies must arrive within 1 s; reads are cut at 0.5 s (which must not apply to
    webhooks, whose bodies may take longer)."""
    server = start_server(
        database_url, keys, CONVERSATIONS_BODY_TIMEOUT="1", CONVERSATIONS_DB_TIMEOUT="0.5"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    server = start_server(database_url, keys, CONVERSATIONS_MAX_BODY_BYTES="1000")
    yield server
    server.stop()


# --- 1. every documented payload is stored verbatim -----------------------------------------


def test_all_fixtures_are_present() -> None:
    assert len(fixture_names()) == 11
    assert sum(name.startswith("seed_") for name in fixture_names()) == 4
    assert sum(name.startswith("doc_") for name in fixture_names()) == 7


def expected_stream(document: dict[str, Any]) -> str:
    if document["type"] == "ConversationUnreadUpdate":
        return str(document["id"])
    if document["type"] == "ConversationUpdate":
        return str(document["newConversationId"])
    return str(document["conversationId"])


@pytest.mark.smoke
@pytest.mark.parametrize("name", fixture_names())
def test_fixture_is_stored_verbatim(name: str, server: Server, engine: sqlalchemy.Engine) -> None:
    document = fixture(name)
    document["locationId"] = new_id("loc")
    document["webhookId"] = str(uuid.uuid4())
    document["note"] = "verbatim: é ✓ \u00a0 日本"
    raw = oddly_spaced(document)

    response = server.post(raw)

    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["version"] == 1
    assert row["raw"] == raw
    assert row["payload"] == document
    assert row["event_type"] == document["type"]
    assert row["stream_id"] == expected_stream(document)
    if document["type"] in ("InboundMessage", "OutboundMessage"):
        if "messageId" in document:
            assert row["message_id"] == document["messageId"]
        elif "emailMessageId" in document:
            assert row["message_id"] == document["emailMessageId"]
        else:
            assert DERIVED.match(row["message_id"])
        assert row["occurred_at"] == datetime.fromisoformat(document["dateAdded"])
    else:
        assert row["message_id"] is None
        assert row["occurred_at"] is None
    assert row["metadata"]["source"] == "webhook"
    assert row["metadata"]["signature"] == "X-GHL-Signature"
    assert row["metadata"]["signatureValid"] is True
    assert row["metadata"]["webhookId"] == document["webhookId"]


# --- 2. tolerance: HighLevel's real shapes are all accepted ---------------------------------

TOLERATED: dict[str, dict[str, Any]] = {
    "to_string": {"to": "+15559876543"},
    "to_list": {"to": ["+15559876543", "+15550000000"]},
    "cc_bcc_strings": {
        "messageType": "Email",
        "to": "client@example.com",
        "cc": "cc@example.com",
        "bcc": "bcc@example.com",
    },
    "cc_bcc_lists": {
        "messageType": "Email",
        "to": ["client@example.com"],
        "cc": ["cc1@example.com", "cc2@example.com"],
        "bcc": ["bcc@example.com"],
    },
    "outbound_type_inbound_direction": {"type": "OutboundMessage", "direction": "inbound"},
    "inbound_type_outbound_direction": {"type": "InboundMessage", "direction": "outbound"},
    "call_duration_number": {"messageType": "CALL", "callDuration": 120},
    "call_duration_float": {"messageType": "CALL", "callDuration": 12.5},
    "call_duration_numeric_string": {"messageType": "CALL", "callDuration": "120"},
    "unknown_fields": {
        "brandNewField": {"nested": [1, 2.5, None, True, "ü"]},
        "timestamp": "2024-05-08T12:00:57.000Z",
        "appId": "app-1",
        "versionId": "v-1",
    },
    "attachments_string": {"attachments": "https://example.com/a.png"},
    "attachments_objects": {"attachments": [{"url": "https://example.com/a.png", "size": 3}]},
}


@pytest.mark.parametrize("changes", TOLERATED.values(), ids=TOLERATED.keys())
def test_tolerated_shapes_are_stored_as_sent(
    changes: dict[str, Any], server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(**changes)
    raw = oddly_spaced(document)

    response = server.post(raw)

    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["raw"] == raw
    # Stored as sent, not as normalised: a string `to` stays a string.
    assert row["payload"] == document
    for key, value in changes.items():
        assert row["payload"][key] == value
    assert row["event_type"] == document["type"]
    assert row["message_id"] == document["messageId"]


@pytest.mark.parametrize(
    ("date_added", "expected"),
    [
        ("2024-05-08T12:00:56Z", datetime(2024, 5, 8, 12, 0, 56, tzinfo=UTC)),
        ("2024-05-08T14:00:56.193+02:00", datetime(2024, 5, 8, 12, 0, 56, 193000, tzinfo=UTC)),
        ("2024-05-08T12:00:56.193", datetime(2024, 5, 8, 12, 0, 56, 193000, tzinfo=UTC)),
        (1715169656193, datetime(2024, 5, 8, 12, 0, 56, 193000, tzinfo=UTC)),
        ("1715169656193", datetime(2024, 5, 8, 12, 0, 56, 193000, tzinfo=UTC)),
        ("20240508", datetime(2024, 5, 8, tzinfo=UTC)),  # ISO 8601's basic date, not epoch
    ],
    ids=["no_milliseconds", "offset", "naive", "epoch_ms", "epoch_ms_as_text", "basic_date"],
)
def test_date_added_shapes_give_utc_occurred_at(
    date_added: str | int, expected: datetime, server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(dateAdded=date_added)

    response = server.post(document)

    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["occurred_at"] == expected
    assert row["payload"]["dateAdded"] == date_added


def test_sms_without_message_id_gets_a_derived_identity(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(messageId=...)
    response = server.post(document)
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert DERIVED.match(row["message_id"])


def test_email_with_only_email_message_id_uses_it(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(
        messageType="Email", messageId=..., emailMessageId=new_id("eml"), threadId=new_id("th")
    )
    response = server.post(document)
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["message_id"] == document["emailMessageId"]


def test_message_id_wins_over_email_message_id(server: Server, engine: sqlalchemy.Engine) -> None:
    document = message(messageType="Email", emailMessageId=new_id("eml"))
    response = server.post(document)
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["message_id"] == document["messageId"]


def test_derived_identity_survives_a_status_change(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """No messageId, no webhookId: the status update of a message is a new event (other
    dedup key) about the same message (same derived message_id); another message is not."""
    first = message(messageId=..., webhookId=..., status="pending", to="+15559876543")
    status_update = {**first, "status": "failed", "to": ["+15559876543"]}
    other_message = {**first, "body": "another message"}

    answers = [server.post(document) for document in (first, status_update, other_message)]

    rows = events_in(engine, first["locationId"])
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert [row["version"] for row in rows] == [1, 2, 3]
    assert [row["payload"]["status"] for row in rows] == ["pending", "failed", "pending"]
    assert DERIVED.match(rows[0]["message_id"])
    assert rows[1]["message_id"] == rows[0]["message_id"]
    assert rows[2]["message_id"] != rows[0]["message_id"]
    assert DERIVED.match(rows[2]["message_id"])


# --- 3. idempotency -------------------------------------------------------------------------


@pytest.mark.smoke
def test_redelivery_with_the_same_webhook_id_is_stored_once(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = oddly_spaced(document)

    answers = [server.post(raw) for _ in range(3)]

    row = only_event(engine, document["locationId"])
    assert_stored(answers[0], row)
    for answer in answers[1:]:
        assert answer.status_code == 200, answer.text
        assert answer.json() == {**answers[0].json(), "outcome": "duplicate"}
    assert row["raw"] == raw


def test_same_webhook_id_with_other_bytes_is_a_duplicate_of_the_original(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """HighLevel keeps webhookId across retries; the retry's bytes may differ."""
    document = message()
    first = server.post(document)
    retry = server.post(json.dumps(document, indent=1).encode())

    row = only_event(engine, document["locationId"])
    assert_stored(first, row)
    assert retry.status_code == 200
    assert retry.json()["position"] == row["position"]
    assert row["raw"] == json.dumps(document).encode()


def test_an_absorbed_redelivery_takes_no_position(server: Server) -> None:
    """Every duplicate took a position of its own (the INSERT's identity default runs
    before ON CONFLICT): 1,000 retries put the next event 1,001 positions further, and
    inflated every "behind" count and progress total. The next event now follows on."""
    document = message()
    first = server.post(document)
    assert first.status_code == 201, first.text
    for _ in range(5):
        assert server.post(document).status_code == 200
    following = server.post(message())
    assert following.status_code == 201, following.text
    assert following.json()["position"] == first.json()["position"] + 1


def test_same_json_without_webhook_id_is_a_duplicate_whatever_its_spacing(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(webhookId=..., extra={"b": 1, "a": [1, 2]})
    first_raw = json.dumps(document).encode()
    reordered = dict(reversed(list(document.items())))
    reordered["extra"] = {"a": [1, 2], "b": 1}
    second_raw = oddly_spaced(reordered)
    assert second_raw != first_raw

    first = server.post(first_raw)
    second = server.post(second_raw)

    row = only_event(engine, document["locationId"])
    assert_stored(first, row)
    assert second.status_code == 200, second.text
    assert second.json()["outcome"] == "duplicate"
    assert second.json()["position"] == row["position"]
    assert second.json()["eventId"] == str(row["event_id"])
    assert row["raw"] == first_raw


def test_same_json_without_webhook_id_but_another_value_is_a_new_event(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message(webhookId=...)
    first = server.post(document)
    second = server.post({**document, "body": "hello!"})

    rows = events_in(engine, document["locationId"])
    assert [first.status_code, second.status_code] == [201, 201]
    assert [row["version"] for row in rows] == [1, 2]


@pytest.mark.parametrize("with_webhook_id", [True, False], ids=["webhookId", "no_webhookId"])
def test_concurrent_redeliveries_store_one_row(
    with_webhook_id: bool, server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message() if with_webhook_id else message(webhookId=...)
    raw = json.dumps(document).encode()
    barrier = threading.Barrier(50)

    def deliver(_: int) -> httpx.Response:
        barrier.wait(timeout=10)
        return server.post(raw)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(deliver, range(50)))

    row = only_event(engine, document["locationId"])
    assert all(answer.status_code in (200, 201) for answer in answers), [
        (answer.status_code, answer.text) for answer in answers if answer.status_code >= 300
    ]
    assert [answer.status_code for answer in answers].count(201) == 1
    assert {answer.json()["position"] for answer in answers} == {row["position"]}
    assert {answer.json()["eventId"] for answer in answers} == {str(row["event_id"])}
    assert {answer.json()["version"] for answer in answers} == {1}


# --- 4. stream versions ---------------------------------------------------------------------


def test_versions_count_one_conversation_without_gaps(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    documents = [
        message(locationId=location, conversationId=conversation, body=f"message {n}")
        for n in range(5)
    ]
    documents.append(
        {
            "type": "ConversationUnreadUpdate",
            "locationId": location,
            "id": conversation,
            "unreadCount": 5,
            "webhookId": str(uuid.uuid4()),
        }
    )

    answers = [server.post(document) for document in documents]

    assert [answer.status_code for answer in answers] == [201] * 6
    assert [answer.json()["version"] for answer in answers] == [1, 2, 3, 4, 5, 6]
    assert {answer.json()["streamId"] for answer in answers} == {conversation}
    rows = events_in(engine, location)
    assert [(row["stream_id"], row["version"]) for row in rows] == [
        (conversation, n) for n in range(1, 7)
    ]

    # The same conversation id in another location is another stream.
    elsewhere = message(conversationId=conversation)
    answer = server.post(elsewhere)
    row = only_event(engine, elsewhere["locationId"])
    assert_stored(answer, row)
    assert row["version"] == 1
    assert len(events_in(engine, location)) == 6


def test_concurrent_messages_of_one_conversation_get_versions_without_gaps(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    location, conversation = new_id("loc"), new_id("cnv")
    documents = [message(locationId=location, conversationId=conversation) for _ in range(20)]
    barrier = threading.Barrier(len(documents))

    def deliver(document: dict[str, Any]) -> httpx.Response:
        barrier.wait(timeout=10)
        return server.post(document)

    with ThreadPoolExecutor(max_workers=len(documents)) as pool:
        answers = list(pool.map(deliver, documents))

    assert [answer.status_code for answer in answers] == [201] * 20
    rows = events_in(engine, location)
    assert [row["version"] for row in rows] == list(range(1, 21))
    assert sorted(answer.json()["version"] for answer in answers) == list(range(1, 21))


# --- 5. quarantine --------------------------------------------------------------------------


def unusable(case: str, location: str) -> dict[str, Any]:
    """A JSON object HighLevel could send that is no storable conversation event."""
    if case == "unknown_type":
        return {"type": "ContactCreate", "locationId": location, "id": new_id("con")}
    if case == "lc_email_stats":
        return {
            "type": "LCEmailStats",
            "locationId": location,
            "companyId": new_id("cmp"),
            "webhookPayload": {"event": "delivered", "id": new_id("evt")},
        }
    if case == "custom_provider":
        return {
            "type": "SMS",
            "locationId": location,
            "contactId": new_id("con"),
            "messageId": new_id("msg"),
            "phone": "+15551234567",
            "message": "hello",
            "attachments": [],
        }
    if case == "no_type":
        return message(locationId=location, type=...)
    if case == "no_location":
        return message(locationId=...)
    if case == "blank_location":
        return message(locationId="  ")
    if case == "no_conversation":
        return message(locationId=location, conversationId=...)
    if case == "no_unread_conversation":
        return {"type": "ConversationUnreadUpdate", "locationId": location, "unreadCount": 1}
    if case == "conversation_id_number":
        return message(locationId=location, conversationId=12345)
    if case == "date_added_yesterday":
        return message(locationId=location, dateAdded="yesterday")
    if case == "call_duration_abc":
        return message(locationId=location, messageType="CALL", callDuration="abc")
    if case == "to_number":
        return message(locationId=location, to=15559876543)
    raise AssertionError(case)


QUARANTINED = {
    "unknown_type": "unknown_type",
    "lc_email_stats": "unknown_type",
    "custom_provider": "unknown_type",
    "no_type": "unknown_type",
    "no_location": "missing_location",
    "blank_location": "missing_location",
    "no_conversation": "missing_conversation",
    "no_unread_conversation": "missing_conversation",
    "conversation_id_number": "invalid_field",
    "date_added_yesterday": "invalid_field",
    "call_duration_abc": "invalid_field",
    "to_number": "invalid_field",
}


@pytest.mark.parametrize(("case", "reason"), QUARANTINED.items(), ids=QUARANTINED.keys())
def test_unusable_payload_is_quarantined_once(
    case: str, reason: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    location = new_id("loc")
    document = unusable(case, location)
    raw = oddly_spaced(document)
    signature = server.keys.headers(raw)["X-GHL-Signature"]

    first = server.post(raw)

    assert first.status_code == 202, first.text
    answer = first.json()
    assert answer["outcome"] == "quarantined"
    assert answer["reason"] == reason
    assert isinstance(answer["quarantineId"], int)
    assert answer["detail"]
    [row] = quarantined(engine, raw)
    assert row["id"] == answer["quarantineId"]
    assert row["body"] == raw
    assert row["reason"] == reason
    assert row["detail"] == answer["detail"]
    assert row["source"] == "webhook"
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert row["headers"]["x-ghl-signature"] == signature
    assert row["headers"]["content-type"] == "application/json"
    assert row["headers"]["content-length"] == str(len(raw))
    # The location is kept for filtering when there is one; a blank one is none.
    assert row["location_id"] == (None if reason == "missing_location" else location)
    assert events_in(engine, location) == []

    # HighLevel retries: the same bytes again are another attempt of the same row.
    again = server.post(raw)

    assert again.status_code == 202
    assert again.json()["quarantineId"] == answer["quarantineId"]
    [row] = quarantined(engine, raw)
    assert row["attempts"] == 2
    assert row["last_received_at"] > row["received_at"]
    assert events_in(engine, location) == []


@pytest.mark.smoke
def test_unknown_type_is_quarantined(server: Server, engine: sqlalchemy.Engine) -> None:
    location = new_id("loc")
    raw = json.dumps(unusable("unknown_type", location)).encode()
    response = server.post(raw)
    assert response.status_code == 202, response.text
    assert response.json()["outcome"] == "quarantined"
    [row] = quarantined(engine, raw)
    assert row["body"] == raw
    assert row["reason"] == "unknown_type"
    assert row["location_id"] == location
    assert events_in(engine, location) == []


def test_a_kept_header_sent_on_several_lines_keeps_every_value(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    raw = json.dumps(unusable("unknown_type", new_id("loc"))).encode()
    lines = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "10.0.0.1")]
    response = httpx.post(
        f"{server.url}/webhooks/highlevel",
        content=raw,
        headers=[("Content-Type", "application/json"), *server.keys.headers(raw).items(), *lines],
        timeout=30,
    )
    assert response.status_code == 202, response.text
    [row] = quarantined(engine, raw)
    assert row["headers"]["x-forwarded-for"] == "203.0.113.7, 10.0.0.1"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("café-bot ✓".encode(), "café-bot ✓"),  # UTF-8
        (b"caf\xe9-bot", "café-bot"),  # not UTF-8: Latin-1
        (b"\xc3\xa9 \xe9 \xe2\x9c\x93", "é é ✓"),  # only the bytes that are not UTF-8
        (b"\xff\xfe", "\xff\xfe"),
    ],
    ids=["utf8", "latin1", "mixed", "no_utf8_at_all"],
)
def test_kept_header_values_are_utf8_and_latin1_only_where_not_utf8(
    sent: bytes, kept: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    raw = json.dumps(unusable("unknown_type", new_id("loc"))).encode()
    headers = [(b"Content-Type", b"application/json"), (b"User-Agent", sent)]
    headers += [(name.encode(), value.encode()) for name, value in server.keys.headers(raw).items()]
    response = httpx.post(
        f"{server.url}/webhooks/highlevel", content=raw, headers=headers, timeout=30
    )
    assert response.status_code == 202, response.text
    [row] = quarantined(engine, raw)
    assert row["headers"]["user-agent"] == kept


def test_invalid_field_names_the_field(server: Server, engine: sqlalchemy.Engine) -> None:
    document = message(dateAdded="yesterday")
    response = server.post(document)
    assert response.status_code == 202
    assert "dateAdded" in response.json()["detail"]
    [row] = quarantined(engine, json.dumps(document).encode())
    assert [error["field"] for error in row["errors"]] == ["dateAdded"]


# "ID" is replaced by a fresh id, so each run's bytes are new (null and empty cannot be).
NOT_JSON: dict[str, bytes] = {
    "text": b"this is not json ID {",
    "truncated": b'{"type": "InboundMessage", "locationId": "ID", ',
    "array": b'[{"type": "InboundMessage", "locationId": "ID"}]',
    "string": b'"ID"',
    "null": b"null",
    "empty": b"",
    "invalid_utf8": b'{"type": "InboundMessage", "locationId": "ID", "body": "caf\xe9"}',
    "nan": b'{"type": "InboundMessage", "locationId": "ID", "callDuration": NaN}',
    "infinity": b'{"type": "InboundMessage", "locationId": "ID", "callDuration": -Infinity}',
    "bom": b'\xef\xbb\xbf{"type": "InboundMessage", "locationId": "ID"}',
}


@pytest.mark.parametrize("template", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_body_that_is_not_a_json_object_is_400_and_quarantined(
    template: bytes, server: Server, engine: sqlalchemy.Engine
) -> None:
    location = new_id("loc")
    raw = template.replace(b"ID", location.encode())
    attempts_before = sum(row["attempts"] for row in quarantined(engine, raw))

    response = server.post(raw)

    problem = assert_problem(response, 400)
    assert problem["outcome"] == "not_json"
    assert problem["type"] == "urn:conversations:problem:not_json"
    [row] = quarantined(engine, raw)
    assert problem["quarantineId"] == row["id"]
    assert row["body"] == raw
    assert row["reason"] == "not_json"
    assert row["detail"] == problem["detail"]
    assert row["location_id"] is None
    assert row["headers"]["x-ghl-signature"] == server.keys.headers(raw)["X-GHL-Signature"]
    assert row["attempts"] == attempts_before + 1
    assert events_in(engine, location) == []


# --- 6. signatures --------------------------------------------------------------------------


def test_valid_rsa_signature_alone_is_accepted(server: Server, engine: sqlalchemy.Engine) -> None:
    document = message()
    response = server.post(document, scheme="rsa")
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["metadata"]["signature"] == "X-WH-Signature"
    assert row["metadata"]["signatureValid"] is True


def test_not_available_ed25519_header_falls_back_to_rsa(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    response = server.post(document, scheme="rsa", headers={"X-GHL-Signature": "N/A"})
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["metadata"]["signature"] == "X-WH-Signature"
    assert row["metadata"]["signatureValid"] is True


def tampered(
    server: Server, scheme: Literal["ed25519", "rsa"]
) -> tuple[str, bytes, bytes, dict[str, str]]:
    """A body, the body changed after signing, and the signature of the original."""
    document = message(body="pay 10 dollars")
    raw = json.dumps(document).encode()
    changed = raw.replace(b"pay 10 dollars", b"pay 99 dollars")
    assert changed != raw
    return document["locationId"], raw, changed, server.keys.headers(raw, scheme)


@pytest.mark.parametrize("scheme", ["ed25519", "rsa"])
def test_body_changed_after_signing_is_refused_and_not_stored(
    scheme: Literal["ed25519", "rsa"], server: Server, engine: sqlalchemy.Engine
) -> None:
    location, raw, changed, signature = tampered(server, scheme)

    response = server.post(changed, scheme="none", headers=signature)

    problem = assert_problem(response, 401)
    assert problem["outcome"] == "unauthenticated"
    assert events_in(engine, location) == []
    assert quarantined(engine, changed) == []
    # The same signature over the bytes it was made for is accepted: the 401 was the change.
    original = server.post(raw, scheme="none", headers=signature)
    assert_stored(original, only_event(engine, location))


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-GHL-Signature": "N/A"}, {"X-GHL-Signature": ""}, {"X-WH-Signature": "n/a"}],
    ids=["missing", "ghl_not_available", "ghl_empty", "wh_not_available"],
)
def test_unsigned_body_is_refused_and_not_stored(
    headers: dict[str, str], server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = json.dumps(document).encode()
    response = server.post(raw, scheme="none", headers=headers)
    problem = assert_problem(response, 401)
    assert problem["outcome"] == "unauthenticated"
    assert events_in(engine, document["locationId"]) == []
    assert quarantined(engine, raw) == []


@pytest.mark.smoke
def test_missing_signature_is_401(server: Server, engine: sqlalchemy.Engine) -> None:
    document = message()
    response = server.post(document, scheme="none")
    assert_problem(response, 401)
    assert events_in(engine, document["locationId"]) == []


# RFC 9110 11.6.1: WWW-Authenticate = #challenge; challenge = auth-scheme [ 1*SP ( token68
# / #auth-param ) ]; auth-param = token BWS "=" BWS ( token / quoted-string ).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_PARAM = rf"{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED})"
_CHALLENGE = rf"{_TOKEN}(?: +(?:[A-Za-z0-9\-._~+/]+=*|{_PARAM}(?:[ \t]*,[ \t]*{_PARAM})*))?"
WWW_AUTHENTICATE = re.compile(rf"{_CHALLENGE}(?:[ \t]*,[ \t]*{_CHALLENGE})*")


def test_a_401_has_a_www_authenticate_challenge_naming_the_signature_headers(
    server: Server,
) -> None:
    """RFC 9110 15.5.2: a 401 carries at least one challenge."""
    response = server.post(message(), scheme="none")
    assert_problem(response, 401)
    challenge = response.headers["www-authenticate"]
    assert WWW_AUTHENTICATE.fullmatch(challenge), challenge
    assert challenge.startswith("Signature ")
    assert "X-GHL-Signature" in challenge and "X-WH-Signature" in challenge
    assert len(response.headers.get_list("www-authenticate")) == 1


def test_the_challenge_pattern_refuses_what_rfc_9110_does() -> None:
    for bad in ["", "Signature =realm", 'Signature realm="a', "Signature  , ", "a b c"]:
        assert not WWW_AUTHENTICATE.fullmatch(bad), bad
    for good in ['Bearer realm="conversations"', "Basic dXNlcjpw", 'A b=c, C d="e\\"f"']:
        assert WWW_AUTHENTICATE.fullmatch(good), good


def test_bad_ed25519_signature_is_not_rescued_by_a_valid_rsa_one(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = json.dumps(document).encode()
    other = server.keys.headers(raw + b" ")["X-GHL-Signature"]
    response = server.post(raw, scheme="rsa", headers={"X-GHL-Signature": other})
    assert_problem(response, 401)
    assert events_in(engine, document["locationId"]) == []


def test_signature_that_is_not_base64_is_401(server: Server, engine: sqlalchemy.Engine) -> None:
    document = message()
    response = server.post(document, scheme="none", headers={"X-GHL-Signature": "%%%not base64"})
    assert_problem(response, 401)
    assert events_in(engine, document["locationId"]) == []


@pytest.mark.parametrize(
    "signature",
    [b"\x01" * 63, b"\x01" * 65, b"\xff" * 64, b"\x00" * 64],
    ids=["short", "long", "not_canonical", "zeros"],
)
def test_ed25519_signature_of_wrong_shape_is_401(
    signature: bytes, server: Server, engine: sqlalchemy.Engine
) -> None:
    """libsodium refuses these by raising ValueError or BadSignatureError: a 401 either way,
    never a 500 nor a quarantined (unauthenticated) body."""
    document = message()
    raw = json.dumps(document).encode()
    header = {"X-GHL-Signature": base64.b64encode(signature).decode()}
    response = server.post(raw, scheme="none", headers=header)
    assert assert_problem(response, 401)["outcome"] == "unauthenticated"
    assert events_in(engine, document["locationId"]) == []
    assert quarantined(engine, raw) == []


@pytest.mark.parametrize("valid_first", [True, False])
def test_repeated_signature_header_the_first_counts(
    valid_first: bool, server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = json.dumps(document).encode()
    valid = server.keys.headers(raw)["X-GHL-Signature"]
    wrong = server.keys.headers(raw + b" ")["X-GHL-Signature"]
    values = [valid, wrong] if valid_first else [wrong, valid]
    response = httpx.post(
        f"{server.url}/webhooks/highlevel",
        content=raw,
        headers=[("Content-Type", "application/json")]
        + [("X-GHL-Signature", value) for value in values],
        timeout=30,
    )
    assert response.status_code == (201 if valid_first else 401), response.text


def test_metrics_count_unauthenticated_deliveries(server: Server) -> None:
    before = webhook_count(server, "unauthenticated")
    stored_before = webhook_count(server, "stored")

    assert server.post(message(), scheme="none").status_code == 401
    assert (
        server.post(message(), scheme="none", headers={"X-GHL-Signature": "N/A"}).status_code == 401
    )
    assert server.post(message()).status_code == 201

    assert webhook_count(server, "unauthenticated") == before + 2
    assert webhook_count(server, "stored") == stored_before + 1


def test_verification_off_stores_unsigned_bodies(
    lenient_server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = oddly_spaced(document)

    response = lenient_server.post(raw, scheme="none")

    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["raw"] == raw
    assert row["metadata"]["signature"] is None
    assert row["metadata"]["signatureValid"] is False
    assert row["metadata"]["source"] == "webhook"


def test_verification_off_records_a_bad_signature_as_invalid(
    lenient_server: Server, engine: sqlalchemy.Engine
) -> None:
    location, _, changed, signature = tampered(lenient_server, "ed25519")
    response = lenient_server.post(changed, scheme="none", headers=signature)
    row = only_event(engine, location)
    assert_stored(response, row)
    assert row["raw"] == changed
    assert row["metadata"]["signature"] == "X-GHL-Signature"
    assert row["metadata"]["signatureValid"] is False


# --- 7. body size limit ---------------------------------------------------------------------


def test_body_at_the_limit_is_stored(small_server: Server, engine: sqlalchemy.Engine) -> None:
    document, raw = sized_body(1000)
    response = small_server.post(raw)
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["raw"] == raw


def test_chunked_body_at_the_limit_is_stored(
    small_server: Server, engine: sqlalchemy.Engine
) -> None:
    document, raw = sized_body(1000)
    response = post_chunked(small_server, raw)
    row = only_event(engine, document["locationId"])
    assert_stored(response, row)
    assert row["raw"] == raw


def test_body_over_the_limit_is_413(small_server: Server, engine: sqlalchemy.Engine) -> None:
    document, raw = sized_body(1001)
    response = small_server.post(raw)
    problem = assert_problem(response, 413)
    assert problem["type"] == "urn:conversations:problem:too_large"
    assert events_in(engine, document["locationId"]) == []
    assert quarantined(engine, raw) == []


def test_chunked_body_over_the_limit_is_413(
    small_server: Server, engine: sqlalchemy.Engine
) -> None:
    document, raw = sized_body(1001)
    response = post_chunked(small_server, raw)
    problem = assert_problem(response, 413)
    assert problem["type"] == "urn:conversations:problem:too_large"
    assert events_in(engine, document["locationId"]) == []
    assert quarantined(engine, raw) == []


def test_oversized_body_does_not_stop_the_next_delivery(
    small_server: Server, engine: sqlalchemy.Engine
) -> None:
    big_document, big = sized_body(50_000)
    assert_problem(small_server.post(big), 413)
    document, raw = sized_body(900)
    response = small_server.post(raw)
    assert_stored(response, only_event(engine, document["locationId"]))
    assert events_in(engine, big_document["locationId"]) == []


# --- 8. every error is a problem document ---------------------------------------------------


@pytest.mark.smoke
def request_count(server: Server, route: str) -> int:
    exposition = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(
        rf'^conversations_request_duration_seconds_count\{{route="{re.escape(route)}"\}} (\d+)$',
        exposition,
        re.M,
    )
    return int(found.group(1)) if found else 0


def test_the_webhook_url_with_a_trailing_slash_stores_without_a_redirect(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = json.dumps(document).encode()
    before = request_count(server, "/webhooks/highlevel")

    response = httpx.post(
        f"{server.url}/webhooks/highlevel/",
        content=raw,
        headers={"Content-Type": "application/json", **server.keys.headers(raw)},
        timeout=30,
    )

    assert_stored(response, only_event(engine, document["locationId"]))
    assert request_count(server, "/webhooks/highlevel") == before + 1
    assert request_count(server, "/webhooks/highlevel/") == 0


def send_partially(server: Server, path: str, head: bytes, declared: int) -> tuple[bytes, float]:
    """A request declaring `declared` bytes of body that sends only `head`: what the
    server answers (until it closes the connection) and how long that took."""
    host, port = server.url.removeprefix("http://").split(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request + head)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass  # still open after 10 s: what is asserted below says so
    return answer, time.monotonic() - started


@pytest.mark.parametrize("path", ["/webhooks/highlevel", "/webhooks/highlevel/"])
def test_a_body_that_does_not_arrive_in_time_is_408_and_not_stored(
    path: str, impatient_server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    raw = json.dumps(document).encode()
    head = raw[: len(raw) // 2]
    before = webhook_count(impatient_server, "body_timeout")

    answer, took = send_partially(impatient_server, path, head, len(raw))

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 1 <= took < 5, took
    headers, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in headers.lower()
    assert b"connection: close" in headers.lower()
    problem = json.loads(body)
    assert (problem["status"], problem["outcome"]) == (408, "body_timeout")
    assert webhook_count(impatient_server, "body_timeout") == before + 1
    assert events_in(engine, document["locationId"]) == []
    with engine.connect() as conn:
        kept = conn.scalar(
            text("SELECT count(*) FROM quarantine WHERE position(:head IN body) > 0"),
            {"head": head},
        )
    assert kept == 0
    warnings = [line for line in impatient_server.lines if "did not arrive within" in line]
    assert warnings and document["locationId"] not in "".join(warnings)


def test_a_body_that_arrives_in_time_is_stored_and_the_server_goes_on(
    impatient_server: Server, engine: sqlalchemy.Engine
) -> None:
    """A slow body within the deadline is taken; one that finished reading is never cut
    afterwards (the deadline passes while the next requests are served)."""
    document = message()
    raw = json.dumps(document).encode()

    def slowly() -> Iterator[bytes]:
        for chunk in in_chunks(raw, len(raw) // 3 + 1):
            time.sleep(0.2)
            yield chunk

    response = httpx.post(
        f"{impatient_server.url}/webhooks/highlevel",
        content=slowly(),
        headers={"Content-Type": "application/json", **impatient_server.keys.headers(raw)},
        timeout=30,
    )
    assert_stored(response, only_event(engine, document["locationId"]))
    with httpx.Client(base_url=impatient_server.url, timeout=30) as client:
        for _ in range(3):  # one connection, kept alive past the deadline
            again = message()
            body = json.dumps(again).encode()
            headers = {"Content-Type": "application/json", **impatient_server.keys.headers(body)}
            assert (
                client.post("/webhooks/highlevel", content=body, headers=headers).status_code == 201
            )
            time.sleep(0.6)


def test_get_on_the_webhook_url_is_405_problem(server: Server) -> None:
    response = httpx.get(f"{server.url}/webhooks/highlevel", timeout=10)
    problem = assert_problem(response, 405)
    assert problem["type"] == "urn:conversations:problem:method_not_allowed"
    assert "POST" in response.headers["allow"]
    # It said only "Method Not Allowed": now what was refused, and what is allowed.
    assert problem["detail"] == "GET is not allowed on '/webhooks/highlevel'; it allows POST."


@pytest.mark.smoke
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_path_is_404_problem(method: str, server: Server) -> None:
    response = httpx.request(method, f"{server.url}/webhooks/nope", content=b"{}", timeout=10)
    problem = assert_problem(response, 404)
    assert problem["type"] == "urn:conversations:problem:not_found"
    assert "no endpoint at '/webhooks/nope'" in problem["detail"]


# --- text PostgreSQL cannot hold ------------------------------------------------------------


def with_escape(field: str, escape: str) -> tuple[dict[str, Any], bytes]:
    """A message whose `field` holds a JSON escape (valid JSON) that PostgreSQL text cannot
    hold: NUL, or a lone surrogate that UTF-8 cannot even encode."""
    document = message()
    raw = json.dumps(document).encode()
    value = json.dumps(document[field]).encode()
    raw = raw.replace(value, value[:-1] + escape.encode() + b'"', 1)
    return document, raw


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800", "\\udc00"])
@pytest.mark.parametrize(
    "field", ["locationId", "conversationId", "messageId", "webhookId", "contactId"]
)
def test_id_that_postgresql_cannot_hold_is_quarantined_not_retried(
    field: str, escape: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    """Not a 503: HighLevel would retry a body that can never be stored, in vain. The
    answer names the field, not a driver's message."""
    document, raw = with_escape(field, escape)

    response = server.post(raw)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["reason"] == "invalid_field", answer
    assert f"'{field}'" in answer["detail"] and "unpaired surrogate" in answer["detail"]
    assert "psycopg" not in answer["detail"] and "codec" not in answer["detail"]
    [row] = quarantined(engine, raw)
    assert row["id"] == answer["quarantineId"]
    assert row["body"] == raw
    assert row["reason"] == "invalid_field"
    # The quarantine keeps the location it can: the character PostgreSQL cannot hold
    # becomes U+FFFD there (the body keeps the original).
    location = document["locationId"] + ("\ufffd" if field == "locationId" else "")
    assert row["location_id"] == location
    assert events_in(engine, document["locationId"]) == []


def test_an_unstorable_body_does_not_fail_the_deliveries_committed_with_it(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """Group commit puts concurrent deliveries in one transaction; a body the database
    refuses must cost only itself, never its neighbours."""
    location = new_id("loc")
    good = [message(locationId=location) for _ in range(40)]
    bodies: list[dict[str, Any] | bytes] = list(good)
    barrier = threading.Barrier(50)

    def deliver(body: dict[str, Any] | bytes) -> httpx.Response:
        barrier.wait(timeout=10)
        return server.post(body)

    with events_refusing(engine) as refused:
        bodies += [message(conversationId=refused + new_id("cnv")) for _ in range(10)]
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            answers = list(pool.map(deliver, bodies))

    assert [answer.status_code for answer in answers] == [201] * 40 + [202] * 10, [
        answer.text for answer in answers if answer.status_code not in (201, 202)
    ]
    assert {answer.json()["reason"] for answer in answers[40:]} == {"rejected_by_database"}
    assert sorted(row["message_id"] for row in events_in(engine, location)) == sorted(
        document["messageId"] for document in good
    )
