from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conversations.events import (
    MAX_NESTING,
    NewEvent,
    NotJSONError,
    NumberOutOfRangeError,
    canonical_json,
    dedup_key,
    jsonb_text,
    message_identity,
    parse_json_object,
    to_new_event,
)
from conversations.ingest import prepare
from conversations.payloads import MessagePayload, parse_payload

FIXTURES = Path(__file__).parent / "fixtures" / "highlevel"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


def as_message(document: dict[str, Any]) -> MessagePayload:
    payload = parse_payload(document)
    assert isinstance(payload, MessagePayload)
    return payload


def shuffled(document: dict[str, Any], seed: int) -> dict[str, Any]:
    items = list(document.items())
    random.Random(seed).shuffle(items)
    return dict(items)


def event_for(name: str, **changes: Any) -> NewEvent:
    document = load(name) | changes
    raw_text = json.dumps(document, indent=2)
    raw = raw_text.encode()
    parsed, text = parse_json_object(raw)
    return to_new_event(parse_payload(parsed), parsed, raw, text, {"source": "test"})


# --- canonical_json -------------------------------------------------------------------------


def test_canonical_json_form() -> None:
    assert canonical_json({"b": [1, {"d": 1, "c": "é"}], "a": None}) == (
        '{"a":null,"b":[1,{"c":"é","d":1}]}'
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_canonical_json_rejects_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": value})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8), st.randoms())
def test_canonical_json_ignores_key_order(document: dict[str, Any], rng: random.Random) -> None:
    items = list(document.items())
    rng.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(document)
    assert dedup_key(dict(items)) == dedup_key(document)


# --- message_identity -----------------------------------------------------------------------


def test_identity_is_the_message_id() -> None:
    assert message_identity(as_message(load("doc_outbound_call"))) == "tyW42xCD0HQpb3hhfLcx"


def test_identity_falls_back_to_the_email_message_id() -> None:
    assert message_identity(as_message(load("doc_email"))) == "sddfDSF3G56GHG"
    assert message_identity(as_message(load("seed_email"))) == "sddfDSF3G56GHG"


def test_empty_message_id_falls_back() -> None:
    document = load("doc_email") | {"messageId": ""}
    assert message_identity(as_message(document)) == "sddfDSF3G56GHG"


def test_identity_is_derived_without_ids() -> None:
    document = load("doc_inbound_sms")
    identity = message_identity(as_message(document))
    assert identity.startswith("derived:")
    digest = identity.removeprefix("derived:")
    assert len(digest) == 64
    expected = [
        document["locationId"],
        document["conversationId"],
        document["contactId"],
        document["type"],
        document["messageType"],
        document["direction"],
        document["dateAdded"],
        document["body"],
        document["attachments"],
        document["from"],
        [document["to"]],
    ]
    assert digest == hashlib.sha256(canonical_json(expected).encode()).hexdigest()


def test_derived_identity_is_stable_under_key_order_and_delivery_changes() -> None:
    document = load("doc_inbound_sms")
    identity = message_identity(as_message(document))
    for seed in range(5):
        assert message_identity(as_message(shuffled(document, seed))) == identity
    redelivered = document | {
        "status": "failed",
        "webhookId": "e1c0a2b4-0000-4000-8000-000000000001",
        "timestamp": "2026-01-01T00:00:00Z",
        "appId": "app",
        "versionId": "v2",
        "callStatus": "completed",
    }
    assert message_identity(as_message(redelivered)) == identity
    assert message_identity(as_message(document | {"to": ["+15559876543"]})) == identity


@pytest.mark.parametrize(
    "change",
    [
        {"body": "another message"},
        {"dateAdded": "2021-04-21T11:31:45.751Z"},
        {"dateAdded": "2021-04-21T11:31:45.75Z"},  # same instant, other text: hashed as sent
        {"contactId": "other"},
        {"conversationId": "other"},
        {"attachments": ["https://x/1"]},
        {"from": "+10000000000"},
        {"to": "+10000000000"},
        {"direction": "outbound"},
        {"type": "OutboundMessage"},
        {"messageType": "WhatsApp"},
    ],
)
def test_derived_identity_changes_with_the_message(change: dict[str, Any]) -> None:
    document = load("doc_inbound_sms")
    identity = message_identity(as_message(document))
    assert message_identity(as_message(document | change)) != identity


def test_derived_identity_survives_lone_surrogates() -> None:
    document = load("doc_inbound_sms") | {"body": "broken \ud800 text"}
    assert message_identity(as_message(document)).startswith("derived:")


def test_message_id_wins_over_everything() -> None:
    document = load("doc_outbound_call") | {"emailMessageId": "e", "body": "changed"}
    assert message_identity(as_message(document)) == "tyW42xCD0HQpb3hhfLcx"


# --- dedup_key ------------------------------------------------------------------------------


def test_dedup_key_uses_the_webhook_id() -> None:
    document = load("doc_inbound_sms") | {"webhookId": "w-1"}
    assert dedup_key(document) == "webhook:w-1"
    assert dedup_key(document | {"status": "failed"}) == "webhook:w-1"


@pytest.mark.parametrize("webhook_id", [None, "", 5, ["w"]])
def test_dedup_key_without_a_usable_webhook_id_hashes(webhook_id: Any) -> None:
    document = load("doc_inbound_sms") | {"webhookId": webhook_id}
    key = dedup_key(document)
    assert key == "sha256:" + hashlib.sha256(canonical_json(document).encode()).hexdigest()


def test_dedup_key_ignores_whitespace_and_key_order() -> None:
    document = load("doc_inbound_sms")
    compact, _ = parse_json_object(json.dumps(document, separators=(",", ":")).encode())
    spaced, _ = parse_json_object(json.dumps(shuffled(document, 7), indent=4).encode())
    assert dedup_key(compact) == dedup_key(spaced) == dedup_key(document)
    assert dedup_key(document).startswith("sha256:")


def test_dedup_key_differs_for_other_content() -> None:
    document = load("doc_inbound_sms")
    assert dedup_key(document) != dedup_key(document | {"status": "failed"})
    assert dedup_key(document) != dedup_key(document | {"extra": None})


# --- jsonb_text -----------------------------------------------------------------------------


def test_jsonb_text_fast_path_returns_the_text_itself() -> None:
    raw_text = '{ "a" : "caf\\u00e9 \\n \\"q\\"",  "b": [1, 2] }'
    assert jsonb_text(raw_text, json.loads(raw_text)) is raw_text


@pytest.mark.parametrize(
    "raw_text",
    [
        '{"a": "x\\u0000y"}',
        '{"a": "x\\ud800y"}',
        '{"a": "x\\uDC00y"}',
        '{"a": "x\\uDbFfy"}',
        '{"a\\u0000": 1}',
    ],
)
def test_jsonb_text_slow_path_replaces_nul_and_lone_surrogates(raw_text: str) -> None:
    text = jsonb_text(raw_text, json.loads(raw_text))
    assert text != raw_text
    assert "\\u0000" not in text and "\x00" not in text
    assert not any(0xD800 <= ord(char) <= 0xDFFF for char in text)
    assert "\ufffd" in text
    text.encode("utf-8")  # strict: no surrogates left
    json.loads(text)


def test_jsonb_text_slow_path_keeps_everything_else() -> None:
    document = {"a": "x\x00y", "b": ["\ud83d", {"c\udfff": 1.5}], "d": None, "e": "é😀"}
    raw_text = json.dumps(document)
    assert json.loads(jsonb_text(raw_text, document)) == {
        "a": "x\ufffdy",
        "b": ["\ufffd", {"c\ufffd": 1.5}],
        "d": None,
        "e": "é😀",
    }


def test_jsonb_text_keeps_valid_surrogate_pairs_as_characters() -> None:
    raw_text = '{"e": "\\ud83d\\ude00"}'
    assert json.loads(jsonb_text(raw_text, json.loads(raw_text))) == {"e": "😀"}


def test_jsonb_text_handles_the_deepest_documents() -> None:
    depth = MAX_NESTING - 1  # the object's braces are the first level
    raw_text = '{"a":' + "[" * depth + '"\\u0000"' + "]" * depth + "}"
    document, text = parse_json_object(raw_text.encode())
    assert "\ufffd" in jsonb_text(text, document)


# --- to_new_event ---------------------------------------------------------------------------


def test_new_event_for_a_message() -> None:
    event = event_for("doc_outbound_call", webhookId="w-9")
    assert event.location_id == "0d48aEf7q67DAu134bpy"
    assert event.stream_id == "SGDqZrzmwTr19d10aHkt9F"
    assert event.event_type == "OutboundMessage"
    assert event.message_id == "tyW42xCD0HQpb3hhfLcx"
    assert event.occurred_at == datetime(2024, 5, 8, 11, 57, 42, 250000, tzinfo=UTC)
    assert event.dedup_key == "webhook:w-9"
    assert event.metadata == {"source": "test"}
    assert json.loads(event.payload_json)["callDuration"] == 120
    assert event.raw.decode() == event.payload_json  # fast path: the text as received


def test_new_event_for_an_unread_update() -> None:
    event = event_for("doc_unread_update")
    assert (event.stream_id, event.event_type) == (
        "MzKIpg0rEIH2ZUGKf6BS",
        "ConversationUnreadUpdate",
    )
    assert event.message_id is None and event.occurred_at is None
    assert event.dedup_key.startswith("sha256:")


def test_new_event_for_a_conversation_update_uses_the_new_id() -> None:
    event = event_for("doc_conversation_update")
    assert event.stream_id == "MzKIpg0rEIH2ZUGKf6BS"
    assert event.message_id is None


def test_new_event_is_frozen() -> None:
    event = event_for("doc_inbound_sms")
    assert event.message_id is not None and event.message_id.startswith("derived:")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.stream_id = "x"  # type: ignore[misc]


def test_new_event_payload_json_is_scrubbed_but_raw_is_not() -> None:
    raw = b'{"type":"InboundMessage","locationId":"l","conversationId":"c","body":"a\\u0000b"}'
    document, text = parse_json_object(raw)
    event = to_new_event(parse_payload(document), document, raw, text, {})
    assert event.raw == raw
    assert json.loads(event.payload_json)["body"] == "a\ufffdb"


# --- parse_json_object ----------------------------------------------------------------------


def test_parse_json_object_returns_document_and_text() -> None:
    raw = '{"a": "é", "b": 1.5}'.encode()
    assert parse_json_object(raw) == ({"a": "é", "b": 1.5}, '{"a": "é", "b": 1.5}')


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"[1, 2]", "the body is a JSON array, not an object"),
        (b'"text"', "the body is a JSON string, not an object"),
        (b"12", "the body is a JSON number, not an object"),
        (b"1.5", "the body is a JSON number, not an object"),
        (b"true", "the body is a JSON boolean, not an object"),
        (b"null", "the body is JSON null, not an object"),
        (b"", "the body is empty"),
        (b"  \n", "the body is empty"),
        (b'\xef\xbb\xbf{"a": 1}', "the body starts with a UTF-8 byte order mark"),
        (b'{"a": "\xff"}', "the body is not valid UTF-8 (byte 0xff at offset 7)"),
        (b'{"a": "\xed\xa0\x80"}', "the body is not valid UTF-8 (byte 0xed at offset 7)"),
        (
            b'{"a": "tab\there"}',
            "the body is not valid JSON: Invalid control character at line 1 column 11",
        ),
    ],
)
def test_parse_json_object_errors(raw: bytes, detail: str) -> None:
    with pytest.raises(NotJSONError) as caught:
        parse_json_object(raw)
    assert caught.value.detail == detail
    assert str(caught.value) == detail


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1',
        b'{"a": "tab\there"}',
        b"{'a': 1}",
        b'{"a": 1} trailing',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' + b"{" * 100_000,
    ],
)
def test_parse_json_object_rejects_non_json(raw: bytes) -> None:
    with pytest.raises(NotJSONError) as caught:
        parse_json_object(raw)
    assert caught.value.detail.startswith("the body ")


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"a": 1e999}', "the body contains the number 1e999, beyond the range of a 64-bit float"),
        (b'{"a": ' + b"9" * 5000 + b"}", "the body contains an integer of more than 4,300 digits"),
    ],
)
def test_parse_json_object_tells_numbers_it_cannot_hold_from_non_json(
    raw: bytes, detail: str
) -> None:
    with pytest.raises(NumberOutOfRangeError) as caught:
        parse_json_object(raw)
    assert caught.value.detail == detail


def test_parse_json_object_error_names_the_position() -> None:
    with pytest.raises(NotJSONError) as caught:
        parse_json_object(b'{"a": }')
    assert caught.value.detail == ("the body is not valid JSON: Expecting value at line 1 column 7")


def test_parse_json_object_accepts_every_fixture() -> None:
    for path in FIXTURES.glob("*.json"):
        document, text = parse_json_object(path.read_bytes())
        assert document == json.loads(text)


def _model_event(raw: bytes) -> NewEvent:
    """The event as built through the pydantic model (ingest's path for unusual shapes)."""
    document, text = parse_json_object(raw)
    return to_new_event(parse_payload(document), document, raw, text, {"source": "test"})


@pytest.mark.parametrize("name", sorted(path.stem for path in FIXTURES.glob("*.json")))
@pytest.mark.parametrize("drop", [(), ("messageId",), ("messageId", "emailMessageId")])
def test_ingest_builds_the_models_event(name: str, drop: tuple[str, ...]) -> None:
    """`prepare` builds message events from plain field values, without the model: the same
    event, identity (derived too) included."""
    document = {key: value for key, value in load(name).items() if key not in drop}
    raw = json.dumps(document, indent=1).encode()
    prepared = prepare(raw, "webhook", None)
    assert isinstance(prepared, NewEvent)
    assert dataclasses.replace(prepared, metadata={"source": "test"}) == _model_event(raw)
