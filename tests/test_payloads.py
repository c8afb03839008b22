from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import AliasChoices

from conversations import payloads
from conversations.payloads import (
    EVENT_TYPES,
    MESSAGE_EVENT_TYPES,
    ConversationUnreadUpdatePayload,
    ConversationUpdatePayload,
    MessagePayload,
    Payload,
    PayloadError,
    message_fields,
    parse_payload,
    plain_message_fields,
)

FIXTURES = Path(__file__).parent / "fixtures" / "highlevel"
FIXTURE_NAMES = sorted(path.stem for path in FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


def message(**fields: Any) -> dict[str, Any]:
    return {"type": "InboundMessage", "locationId": "loc", "conversationId": "conv", **fields}


def parse_message(**fields: Any) -> MessagePayload:
    payload = parse_payload(message(**fields))
    assert isinstance(payload, MessagePayload)
    return payload


def reject(document: Any) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse_payload(document)
    error = caught.value
    json.dumps(error.errors)  # always JSON-serialisable
    assert error.errors
    assert str(error) == error.detail
    return error


# --- fixtures -------------------------------------------------------------------------------


def test_all_eleven_fixtures_are_present() -> None:
    assert len(FIXTURE_NAMES) == 11
    assert sum(name.startswith("seed_") for name in FIXTURE_NAMES) == 4


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_parses_into_its_model(name: str) -> None:
    document = load(name)
    payload = parse_payload(document)
    expected = {
        "ConversationUnreadUpdate": ConversationUnreadUpdatePayload,
        "ConversationUpdate": ConversationUpdatePayload,
    }.get(document["type"], MessagePayload)
    assert type(payload) is expected
    assert payload.type == document["type"]
    assert payload.locationId == document["locationId"]


def test_doc_outbound_call_fields() -> None:
    payload = parse_payload(load("doc_outbound_call"))
    assert isinstance(payload, MessagePayload)
    assert payload.callDuration == 120
    assert isinstance(payload.callDuration, int)
    assert payload.callStatus == "completed"
    assert payload.messageTypeId == 1
    assert payload.attachments == ["call recording url"]
    assert payload.to == ["+15551234567"]
    assert payload.from_ == "+15559876543"
    assert payload.dateAdded == datetime(2024, 5, 8, 11, 57, 42, 250000, tzinfo=UTC)


def test_doc_email_normalises_recipients() -> None:
    payload = parse_payload(load("doc_email"))
    assert isinstance(payload, MessagePayload)
    assert payload.to == ["client@example.com"]
    assert payload.ccList == ["cc@example.com"]
    assert payload.bccList == ["bcc@example.com"]
    assert payload.cc == [] and payload.bcc == [] and payload.attachments == []
    assert payload.emailMessageId == "sddfDSF3G56GHG"
    assert payload.messageId is None
    assert payload.plainText == "Testing Email Notification"


def test_seed_email_keeps_the_mangled_addresses_verbatim() -> None:
    payload = parse_payload(load("seed_email"))
    assert isinstance(payload, MessagePayload)
    assert payload.to == ["[email protected]"]
    assert payload.from_ == "Internal Notify <[email protected]>"


def test_unread_update_fixture() -> None:
    payload = parse_payload(load("doc_unread_update"))
    assert isinstance(payload, ConversationUnreadUpdatePayload)
    assert payload.id == "MzKIpg0rEIH2ZUGKf6BS"
    assert (payload.unreadCount, payload.starred, payload.inbox, payload.deleted) == (
        0,
        True,
        False,
        False,
    )


def test_conversation_update_fixture() -> None:
    payload = parse_payload(load("doc_conversation_update"))
    assert isinstance(payload, ConversationUpdatePayload)
    assert payload.oldConversationId == "zsYhPBOUsEHtrK508Wm9"
    assert payload.newConversationId == "MzKIpg0rEIH2ZUGKf6BS"
    assert payload.companyId == "5DP4iH6HLkQsiKESj6rh"


def test_direction_contradicting_type_is_kept() -> None:
    payload = parse_payload(load("seed_sms"))
    assert isinstance(payload, MessagePayload)
    assert (payload.type, payload.direction) == ("OutboundMessage", "inbound")


def test_unknown_fields_are_kept() -> None:
    payload = parse_message(webhookId="w-1", timestamp="2025-01-01T00:00:00Z", novel={"a": [1]})
    assert payload.model_extra == {
        "webhookId": "w-1",
        "timestamp": "2025-01-01T00:00:00Z",
        "novel": {"a": [1]},
    }


def test_models_are_frozen() -> None:
    payload = parse_message()
    with pytest.raises(ValueError):
        payload.body = "changed"


def test_from_by_alias_and_by_name() -> None:
    by_name = MessagePayload.model_validate(
        {"type": "OutboundMessage", "locationId": "l", "conversationId": "c", "from_": "x"}
    )
    assert by_name.from_ == "x"
    assert parse_message(**{"from": "y"}).model_dump(by_alias=True)["from"] == "y"


def test_event_type_sets() -> None:
    assert sorted(MESSAGE_EVENT_TYPES) == ["InboundMessage", "OutboundMessage"]
    assert sorted(EVENT_TYPES - MESSAGE_EVENT_TYPES) == [
        "ConversationUnreadUpdate",
        "ConversationUpdate",
    ]


# --- type -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        {"locationId": "l", "conversationId": "c"},
        {"type": None, "locationId": "l", "conversationId": "c"},
        {"type": 3, "locationId": "l", "conversationId": "c"},
        {"type": "inboundmessage", "locationId": "l", "conversationId": "c"},
        {"type": "SMS", "locationId": "l", "phone": "+1555", "message": "hi"},
        {"type": "Email", "locationId": "l", "emailTo": "a@b", "html": "<p>"},
        {"type": "LCEmailStats", "locationId": "l", "webhookPayload": {"event": "delivered"}},
    ],
)
def test_unknown_type(document: dict[str, Any]) -> None:
    error = reject(document)
    assert error.reason == "unknown_type"
    assert error.errors[0]["field"] == "type"
    assert "field 'type'" in error.detail


def test_unknown_type_names_the_value() -> None:
    assert "got 'LCEmailStats'" in reject({"type": "LCEmailStats"}).detail


@pytest.mark.parametrize("document", [[], "text", 1, None])
def test_not_an_object_is_an_unknown_type(document: Any) -> None:
    assert reject(document).reason == "unknown_type"


# --- locationId -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["<absent>", None, "", "   "])
def test_missing_location(value: Any) -> None:
    document = message()
    if value == "<absent>":
        del document["locationId"]
    else:
        document["locationId"] = value
    error = reject(document)
    assert error.reason == "missing_location"
    assert error.errors[0]["field"] == "locationId"


@pytest.mark.parametrize("value", [5, True, ["l"], {"id": "l"}])
def test_location_of_the_wrong_kind_is_an_invalid_field(value: Any) -> None:
    error = reject(message(locationId=value))
    assert error.reason == "invalid_field"
    assert error.errors[0]["field"] == "locationId"


def test_location_is_checked_for_every_type() -> None:
    for name in ("doc_unread_update", "doc_conversation_update", "doc_inbound_sms"):
        document = load(name)
        del document["locationId"]
        assert reject(document).reason == "missing_location"


# --- conversation ids -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["<absent>", None, ""])
@pytest.mark.parametrize(
    ("fixture", "field"),
    [
        ("doc_inbound_sms", "conversationId"),
        ("doc_outbound_call", "conversationId"),
        ("doc_unread_update", "id"),
        ("doc_conversation_update", "oldConversationId"),
        ("doc_conversation_update", "newConversationId"),
    ],
)
def test_missing_conversation(fixture: str, field: str, value: Any) -> None:
    document = load(fixture)
    if value == "<absent>":
        del document[field]
    else:
        document[field] = value
    error = reject(document)
    assert error.reason == "missing_conversation"
    assert error.errors == [{"field": field, "message": error.errors[0]["message"]}]
    assert f"field '{field}'" in error.detail


def test_conversation_id_of_the_wrong_kind_is_an_invalid_field() -> None:
    error = reject(message(conversationId=42))
    assert error.reason == "invalid_field"
    assert error.detail == "field 'conversationId': expected a string, got the number 42"


def test_type_is_checked_before_location_and_location_before_conversation() -> None:
    assert reject({"type": "Nope"}).reason == "unknown_type"
    assert reject({"type": "InboundMessage"}).reason == "missing_location"


# --- recipient lists ------------------------------------------------------------------------

LIST_FIELDS = ["to", "cc", "bcc", "ccList", "bccList", "mentions"]


@pytest.mark.parametrize("field", LIST_FIELDS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@example.com", ["a@example.com"]),
        ("", []),
        (None, []),
        ([], []),
        (["a", "b"], ["a", "b"]),
    ],
)
def test_string_or_list_becomes_a_list(field: str, value: Any, expected: list[str]) -> None:
    assert getattr(parse_message(**{field: value}), field) == expected


@pytest.mark.parametrize("field", LIST_FIELDS)
def test_absent_list_is_empty(field: str) -> None:
    assert getattr(parse_message(), field) == []


@pytest.mark.parametrize("field", LIST_FIELDS)
@pytest.mark.parametrize("value", [1, True, {"a": "b"}, ["a", 1], [None]])
def test_bad_list_is_an_invalid_field(field: str, value: Any) -> None:
    error = reject(message(**{field: value}))
    assert error.reason == "invalid_field"
    assert error.errors[0]["field"] == field


# --- attachments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["https://x/1", {"url": "https://x/2", "type": "image/png"}], None),
        ("https://x/1", ["https://x/1"]),
        ("", []),
        (None, []),
        ({"url": "u"}, [{"url": "u"}]),
    ],
)
def test_attachments(value: Any, expected: list[Any] | None) -> None:
    assert parse_message(attachments=value).attachments == (value if expected is None else expected)


@pytest.mark.parametrize("value", [1, [1], [None], [["nested"]], True])
def test_bad_attachments(value: Any) -> None:
    error = reject(message(attachments=value))
    assert (error.reason, error.errors[0]["field"]) == ("invalid_field", "attachments")


# --- optional strings -----------------------------------------------------------------------

STRING_FIELDS = [
    "messageId",
    "emailMessageId",
    "threadId",
    "userId",
    "contactId",
    "body",
    "status",
    "direction",
    "messageType",
    "messageTypeString",
    "contentType",
    "source",
    "subject",
    "from",
    "provider",
    "plainText",
    "callStatus",
    "conversationProviderId",
    "chatWidgetId",
]


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_optional_strings(field: str) -> None:
    attribute = "from_" if field == "from" else field
    assert getattr(parse_message(**{field: "text"}), attribute) == "text"
    assert getattr(parse_message(**{field: None}), attribute) is None
    assert getattr(parse_message(), attribute) is None


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("value", [12, 1.5, True, ["x"], {"x": 1}])
def test_non_strings_are_invalid(field: str, value: Any) -> None:
    error = reject(message(**{field: value}))
    assert error.reason == "invalid_field"
    assert error.errors[0]["field"] == field
    assert error.detail.startswith(f"field '{field}': expected a string, got ")


def test_invalid_field_lists_every_error() -> None:
    error = reject(message(messageId=1, body=2, callDuration="x"))
    assert [e["field"] for e in error.errors] == ["messageId", "body", "callDuration"]
    assert error.detail.count("field '") == 3


# --- dateAdded ------------------------------------------------------------------------------

WHEN = datetime(2021, 4, 21, 11, 31, 45, tzinfo=UTC)
WHEN_MS = 1619004705000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021-04-21T11:31:45Z", WHEN),
        ("2021-04-21T11:31:45.750Z", WHEN.replace(microsecond=750000)),
        ("2021-04-21T11:31:45.123456Z", WHEN.replace(microsecond=123456)),
        ("2021-04-21T11:31:45.750z", WHEN.replace(microsecond=750000)),
        ("2021-04-21T13:31:45+02:00", WHEN),
        ("2021-04-21T06:31:45.000-05:00", WHEN),
        ("2021-04-21T11:31:45", WHEN),
        ("2021-04-21 11:31:45.750", WHEN.replace(microsecond=750000)),
        (WHEN_MS, WHEN),
        (WHEN_MS + 750, WHEN.replace(microsecond=750000)),
        (WHEN_MS + 750.0, WHEN.replace(microsecond=750000)),
        (None, None),
        ("", None),
    ],
)
def test_date_added(value: Any, expected: datetime | None) -> None:
    parsed = parse_message(dateAdded=value).dateAdded
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC


def test_date_added_with_offset_is_converted_to_utc() -> None:
    parsed = parse_message(dateAdded="2021-04-21T13:31:45+02:00").dateAdded
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.hour == 11
    assert parsed.astimezone(timezone(timedelta(hours=2))).hour == 13


def test_date_added_raw_is_kept() -> None:
    assert parse_message(dateAdded="2021-04-21T11:31:45.75Z").date_added_raw == (
        "2021-04-21T11:31:45.75Z"
    )
    assert parse_message(dateAdded=1618997505750).date_added_raw == 1618997505750
    assert parse_message().date_added_raw is None


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2021-13-01T00:00:00Z",
        "2021-04-21T11:31:45 UTC",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        True,
        float("nan"),
        float("inf"),
        10**30,
        ["2021-04-21"],
        {"$date": 1},
    ],
)
def test_bad_date_added(value: Any) -> None:
    error = reject(message(dateAdded=value))
    assert (error.reason, error.errors[0]["field"]) == ("invalid_field", "dateAdded")


# --- callDuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (120, 120),
        (120.0, 120),
        (12.5, 12.5),
        ("120", 120),
        (" 120 ", 120),
        ("12.5", 12.5),
        ("12.0", 12),
        (0, 0),
        ("", None),
        (None, None),
    ],
)
def test_call_duration(value: Any, expected: float | None) -> None:
    duration = parse_message(callDuration=value).callDuration
    assert duration == expected
    assert type(duration) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        *("abc", "nan", "NaN", "inf", "-Infinity", "1e999", "9" * 5000),
        *(True, False, float("nan"), float("inf"), 10**30, 1e300, [1], {"s": 1}),
    ],
)
def test_bad_call_duration(value: Any) -> None:
    error = reject(message(callDuration=value))
    assert (error.reason, error.errors[0]["field"]) == ("invalid_field", "callDuration")


def test_call_duration_detail_names_field_and_value() -> None:
    assert reject(message(callDuration="abc")).detail == (
        "field 'callDuration': expected a number, got 'abc'"
    )


# --- messageTypeId, unreadCount, flags ------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(2, 2), ("10", 10), (1.0, 1), ("", None)])
def test_message_type_id(value: Any, expected: int | None) -> None:
    assert parse_message(messageTypeId=value).messageTypeId == expected


@pytest.mark.parametrize("value", ["2.5", 2.5, "two", True, [2], 2**63])
def test_bad_message_type_id(value: Any) -> None:
    error = reject(message(messageTypeId=value))
    assert (error.reason, error.errors[0]["field"]) == ("invalid_field", "messageTypeId")


def unread(**fields: Any) -> ConversationUnreadUpdatePayload:
    payload = parse_payload(
        {"type": "ConversationUnreadUpdate", "locationId": "l", "id": "c", **fields}
    )
    assert isinstance(payload, ConversationUnreadUpdatePayload)
    return payload


@pytest.mark.parametrize(("value", "expected"), [(3, 3), ("3", 3), (None, None), (0, 0)])
def test_unread_count(value: Any, expected: int | None) -> None:
    assert unread(unreadCount=value).unreadCount == expected


@pytest.mark.parametrize("value", ["x", 1.5, True, {}])
def test_bad_unread_count(value: Any) -> None:
    error = reject(
        {"type": "ConversationUnreadUpdate", "locationId": "l", "id": "c", "unreadCount": value}
    )
    assert (error.reason, error.errors[0]["field"]) == ("invalid_field", "unreadCount")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("FALSE", False), (None, None)],
)
@pytest.mark.parametrize("field", ["starred", "inbox", "deleted"])
def test_flags(field: str, value: Any, expected: bool | None) -> None:
    assert getattr(unread(**{field: value}), field) is expected


@pytest.mark.parametrize("value", [1, 0, "yes", "", [True]])
@pytest.mark.parametrize("field", ["starred", "inbox", "deleted"])
def test_bad_flags(field: str, value: Any) -> None:
    error = reject({"type": "ConversationUnreadUpdate", "locationId": "l", "id": "c", field: value})
    assert (error.reason, error.errors[0]["field"]) == ("invalid_field", field)


def test_unread_contact_id_must_be_a_string() -> None:
    error = reject(
        {"type": "ConversationUnreadUpdate", "locationId": "l", "id": "c", "contactId": 1}
    )
    assert error.reason == "invalid_field"


def test_conversation_update_company_id_must_be_a_string() -> None:
    document = load("doc_conversation_update") | {"companyId": ["x"]}
    assert reject(document).errors[0]["field"] == "companyId"


# --- property: nothing but PayloadError -----------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", " ", "120", "12.5", "nan", "2021-04-21T11:31:45Z", "true", "1e999"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KNOWN_FIELDS = [
    *STRING_FIELDS,
    *LIST_FIELDS,
    "attachments",
    "dateAdded",
    "callDuration",
    "messageTypeId",
    "unreadCount",
    "starred",
    "inbox",
    "deleted",
    "id",
    "companyId",
    "oldConversationId",
    "newConversationId",
    "from_",
    "webhookId",
]
documents = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(sorted(EVENT_TYPES)) | json_values,
        "locationId": st.just("loc") | json_values,
        "conversationId": st.just("conv") | json_values,
        "id": st.just("conv") | json_values,
        "oldConversationId": st.just("old") | json_values,
        "newConversationId": st.just("new") | json_values,
    },
).flatmap(
    lambda base: st.dictionaries(
        st.sampled_from(KNOWN_FIELDS) | st.text(max_size=10), json_values, max_size=6
    ).map(lambda extra: {**extra, **base})
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_parse_payload_raises_nothing_but_payload_error(document: dict[str, Any]) -> None:
    try:
        payload = parse_payload(document)
    except PayloadError as error:
        assert error.reason in {
            "unknown_type",
            "missing_location",
            "missing_conversation",
            "invalid_field",
        }
        json.dumps(error.errors)
        assert error.detail
    else:
        assert payload.type in EVENT_TYPES


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(EVENT_TYPES)), st.sampled_from(KNOWN_FIELDS), json_values)
def test_any_value_in_any_known_field(event_type: str, field: str, value: Any) -> None:
    document = {
        "type": event_type,
        "locationId": "l",
        "conversationId": "c",
        "id": "c",
        "oldConversationId": "o",
        "newConversationId": "n",
        field: value,
    }
    try:
        parse_payload(document)
    except PayloadError as error:
        json.dumps(error.errors)


def test_non_string_keys_are_a_payload_error() -> None:
    document: dict[Any, Any] = message()
    document[1] = "x"
    assert reject(document).reason == "invalid_field"


def test_huge_numbers_do_not_escape() -> None:
    error = reject(message(messageId=10**5000))
    assert "very large number" in error.detail


# --- message_fields: parse_payload's answer without pydantic --------------------------------


def model_answer(document: Any) -> dict[str, Any] | None:
    try:
        payload = parse_payload(document)
    except PayloadError:
        return None
    if not isinstance(payload, MessagePayload):
        return None
    return {name: getattr(payload, name) for name in MessagePayload.model_fields}


def typed(value: Any) -> Any:
    """`value` with the type of every part spelled out (so 1 is not 1.0, nor "x" a subclass),
    dict items in key order."""
    if isinstance(value, dict):
        return ("dict", sorted((repr(key), typed(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(item) for item in value])
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), repr(value.tzinfo))
    return (type(value).__name__, repr(value))


def _input_keys(name: str) -> list[str]:
    alias = MessagePayload.model_fields[name].validation_alias
    if alias is None:
        return [name]
    if isinstance(alias, str):
        return [alias]
    assert isinstance(alias, AliasChoices)
    return [str(choice) for choice in alias.choices]


# Every key the model reads (so a new field is exercised here without editing this list).
MESSAGE_KEYS = sorted({key for name in MessagePayload.model_fields for key in _input_keys(name)})
plain_values = (
    st.none()
    | st.text(max_size=6)
    | st.sampled_from(["", " ", "7", " 8 ", "2.0", "1e3", "x", "2024-05-08T12:00:00Z"])
    | st.sampled_from(["2024-05-08T12:00:00.123+02:00", "2024-05-08", "2024-13-01T00:00:00Z"])
    | st.integers(min_value=-5, max_value=30)
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.lists(st.text(max_size=3), max_size=3)
    | st.dictionaries(st.text(max_size=3), json_values, max_size=2)
    | st.lists(st.text(max_size=3) | st.dictionaries(st.text(max_size=3), json_values), max_size=3)
    | st.datetimes()
)
message_documents = st.fixed_dictionaries(
    {
        "type": st.sampled_from(sorted(MESSAGE_EVENT_TYPES)),
        "locationId": st.sampled_from(["loc", " ", ""]) | json_values,
        "conversationId": st.sampled_from(["conv", " "]) | json_values,
    },
).flatmap(
    lambda base: st.dictionaries(
        st.sampled_from(MESSAGE_KEYS) | st.sampled_from(["webhookId", "novel"]) | st.text(),
        plain_values | json_values,
        max_size=10,
    ).map(lambda fields: {**fields, **base})
)


def every_field() -> dict[str, Any]:
    """A valid message with every field the model reads (none by the name `from_`)."""
    document = message(
        **dict.fromkeys(set(MESSAGE_KEYS) - {"from_", "type", "locationId", "conversationId"})
    )
    return document | {
        "from": "a",
        "to": "b",
        "cc": ["c"],
        "attachments": [{"url": "u"}, "v"],
        "messageTypeId": "2",
        "callDuration": 3.5,
        "dateAdded": 1618997505750,
        "webhookId": "w",
    }


VALID_MESSAGES = [
    every_field(),
    *(load(name) for name in FIXTURE_NAMES if load(name)["type"] in MESSAGE_EVENT_TYPES),
]
# A valid message with one to three fields changed to anything: each field's checks alone.
changed_messages = st.sampled_from(VALID_MESSAGES).flatmap(
    lambda valid: st.dictionaries(
        st.sampled_from(MESSAGE_KEYS) | st.just("novel"),
        plain_values | json_values,
        min_size=1,
        max_size=3,
    ).map(lambda changes: valid | changes)
)


@settings(max_examples=1500, deadline=None)
@given(documents | message_documents | changed_messages)
def test_message_fields_is_the_models_answer(document: dict[str, Any]) -> None:
    assert typed(message_fields(document)) == typed(model_answer(document))


def test_message_fields_reads_plain_documents_without_pydantic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = VALID_MESSAGES
    answers = [model_answer(document) for document in plain]
    assert None not in answers

    def no_pydantic(document: Any) -> Payload:
        raise AssertionError("parse_payload called")

    monkeypatch.setattr(payloads, "parse_payload", no_pydantic)
    for document, answer in zip(plain, answers, strict=True):
        assert typed(message_fields(document)) == typed(answer)


@settings(max_examples=1000, deadline=None)
@given(documents | message_documents | changed_messages)
def test_plain_message_fields_answers_as_the_model_or_not_at_all(document: dict[str, Any]) -> None:
    """Ingest stores what `plain_message_fields` gives without asking pydantic: it must be
    the model's answer whenever it gives one."""
    fields = plain_message_fields(document)
    if fields is not None:
        assert typed(fields) == typed(model_answer(document))


def test_plain_message_fields_takes_the_valid_messages() -> None:
    for document in VALID_MESSAGES:
        assert typed(plain_message_fields(document)) == typed(model_answer(document))
