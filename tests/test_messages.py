from __future__ import annotations

import dataclasses
import itertools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conversations.events import message_identity
from conversations.messages import (
    CHANNELS,
    ConversationFlags,
    MessageEntry,
    build_flags,
    build_message,
    channel_of,
    latest_flags,
    preview_of,
    resolve_merges,
    status_rank,
)
from conversations.payloads import (
    ConversationUnreadUpdatePayload,
    MessagePayload,
    PayloadError,
    parse_payload,
)
from conversations.store import StoredEvent

FIXTURES = Path(__file__).parent / "fixtures" / "highlevel"
RECORDED = datetime(2024, 6, 1, tzinfo=UTC)


def stored(payload: dict[str, Any], position: int = 1) -> StoredEvent:
    """The StoredEvent ingest would have written for `payload`."""
    parsed = parse_payload(payload)
    message_id: str | None = None
    occurred_at: datetime | None = None
    if isinstance(parsed, MessagePayload):
        stream_id = parsed.conversationId
        message_id = message_identity(parsed)
        occurred_at = parsed.dateAdded
    elif isinstance(parsed, ConversationUnreadUpdatePayload):
        stream_id = parsed.id
    else:
        stream_id = parsed.newConversationId
    return StoredEvent(
        position=position,
        event_id=uuid.uuid5(uuid.NAMESPACE_OID, str(position)),
        location_id=parsed.locationId,
        stream_id=stream_id,
        version=position,
        event_type=parsed.type,
        message_id=message_id,
        occurred_at=occurred_at,
        recorded_at=RECORDED,
        payload=payload,
        raw=json.dumps(payload).encode(),
        metadata={},
    )


def stored_all(*payloads: dict[str, Any]) -> list[StoredEvent]:
    return [stored(payload, position) for position, payload in enumerate(payloads, start=1)]


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


def message(**fields: Any) -> dict[str, Any]:
    """A minimal outbound SMS payload of message m1, with `fields` on top."""
    base: dict[str, Any] = {
        "type": "OutboundMessage",
        "locationId": "loc1",
        "conversationId": "conv1",
        "contactId": "contact1",
        "messageId": "m1",
        "messageType": "SMS",
        "direction": "outbound",
        "dateAdded": "2024-05-08T12:00:00.000Z",
    }
    return {key: value for key, value in (base | fields).items() if value is not ...}


def build(*payloads: dict[str, Any]) -> MessageEntry:
    return build_message(stored_all(*payloads))


def all_orders(*payloads: dict[str, Any]) -> list[MessageEntry]:
    """build_message over every order of the payloads (positions kept per payload)."""
    events = stored_all(*payloads)
    return [build_message(order) for order in itertools.permutations(events)]


# --- channel_of -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "channel"),
    [
        ("SMS", "SMS"),
        ("sms", "SMS"),
        ("CALL", "Call"),
        ("Call", "Call"),
        ("VoiceMail", "Voicemail"),
        ("Voicemail", "Voicemail"),
        ("Email", "Email"),
        ("EMAIL", "Email"),
        ("InternalComment", "InternalComment"),
        ("Internal Comment", "InternalComment"),
        ("Custom", "Custom"),
        ("GMB", "GMB"),
        ("FB", "Facebook"),
        ("Facebook", "Facebook"),
        ("FB_MESSENGER", "Facebook"),
        ("IG", "Instagram"),
        ("INSTAGRAM", "Instagram"),
        ("Live Chat", "LiveChat"),
        ("LiveChat", "LiveChat"),
        ("Live_Chat", "LiveChat"),
        ("live-chat", "LiveChat"),
        ("WhatsApp", "WhatsApp"),
        ("WHATSAPP", "WhatsApp"),
        ("TYPE_SMS", "SMS"),
        ("TYPE_CALL", "Call"),
        ("TYPE_VOICEMAIL", "Voicemail"),
        ("TYPE_EMAIL", "Email"),
        ("TYPE_GMB", "GMB"),
        ("TYPE_FACEBOOK", "Facebook"),
        ("TYPE_INSTAGRAM", "Instagram"),
        ("TYPE_WHATSAPP", "WhatsApp"),
        ("TYPE_LIVE_CHAT", "LiveChat"),
        ("TYPE_INTERNAL_COMMENT", "InternalComment"),
        ("TYPE_CUSTOM_PROVIDER_SMS", "Custom"),
        ("TYPE_CUSTOM_PROVIDER_EMAIL", "Email"),
        ("TYPE_CUSTOM_SMS", "Custom"),
        ("TYPE_CUSTOM_EMAIL", "Email"),
        ("TYPE_CUSTOM_CALL", "Call"),
        ("Custom", "Custom"),
        ("TYPE_ACTIVITY_CONTACT", "Other"),
        ("TYPE_ACTIVITY_APPOINTMENT", "Other"),
        ("TYPE_CAMPAIGN_SMS", "SMS"),
        ("TYPE_CAMPAIGN_MANUAL_CALL", "Call"),
        ("TYPE_CAMPAIGN_VOICEMAIL", "Voicemail"),
        ("TYPE_CAMPAIGN_EMAIL", "Email"),
        ("TYPE_CAMPAIGN_FACEBOOK", "Facebook"),
        ("TYPE_CAMPAIGN_GMB", "GMB"),
        ("TYPE_SMS_REVIEW_REQUEST", "SMS"),
        ("TYPE_IVR_CALL", "Call"),
        ("TYPE_WEBCHAT", "LiveChat"),
        ("TYPE_FACEBOOK_COMMENT", "Facebook"),
        ("TYPE_INSTAGRAM_COMMENT", "Instagram"),
        ("TYPE_REVIEW", "Other"),
        ("Carrier pigeon", "Other"),
        ("", "Other"),
    ],
)
def test_channel_of_names(value: str, channel: str) -> None:
    assert channel_of(value, None, None) == channel
    assert channel_of(None, value, None) == channel


@pytest.mark.parametrize(
    ("type_id", "channel"),
    [
        (1, "Call"),
        (2, "SMS"),
        (10, "Voicemail"),
        (21, "Email"),
        (22, "Custom"),
        (23, "Email"),
        (34, "Call"),
        (7, "Other"),
    ],
)
def test_channel_of_ids(type_id: int, channel: str) -> None:
    assert channel_of(None, None, type_id) == channel


def test_channel_of_precedence() -> None:
    # The string wins when it is recognised, then messageType, then the id.
    assert channel_of("CALL", "TYPE_VOICEMAIL", 1) == "Voicemail"
    assert channel_of("SMS", "TYPE_SOMETHING_NEW", 1) == "SMS"
    assert channel_of("Pigeon", "TYPE_SOMETHING_NEW", 2) == "SMS"
    assert channel_of("Email", None, 2) == "Email"
    # The id refines a coarse messageType.
    assert channel_of("CALL", None, 10) == "Voicemail"
    assert channel_of("SMS", None, 22) == "Custom"
    assert channel_of("Custom", None, 22) == "Custom"
    assert channel_of("Custom", None, 23) == "Email"
    assert channel_of("Custom", None, 34) == "Call"
    assert channel_of("CALL", None, 1) == "Call"
    # An activity says what it is: no fallback to the other fields.
    assert channel_of("SMS", "TYPE_ACTIVITY_CONTACT", 2) == "Other"
    assert channel_of(None, None, None) == "Other"


@pytest.mark.parametrize(
    ("name", "channel"),
    [
        ("doc_email", "Email"),
        ("doc_inbound_sms", "SMS"),
        ("doc_inbound_voicemail", "Voicemail"),
        ("doc_internal_comment", "InternalComment"),
        ("doc_outbound_call", "Call"),
        ("seed_call", "Call"),
        ("seed_email", "Email"),
        ("seed_sms", "SMS"),
        ("seed_voicemail_workflow", "Voicemail"),
    ],
)
def test_fixture_channels(name: str, channel: str) -> None:
    document = fixture(name)
    payload = parse_payload(document)
    assert isinstance(payload, MessagePayload)
    assert channel_of(payload.messageType, payload.messageTypeString, payload.messageTypeId) == (
        channel
    )
    entry = build_message([stored(document, 7)])
    assert entry.channel == channel
    assert entry.positions == (7,)
    assert entry.message_key == message_identity(payload)


def test_channels_vocabulary() -> None:
    assert len(set(CHANNELS)) == 12
    for value in ("SMS", "TYPE_LIVE_CHAT", "FB", "Custom", "TYPE_ACTIVITY_PAYMENT", "x"):
        assert channel_of(value, None, None) in CHANNELS


# --- status_rank ----------------------------------------------------------------------------


def test_message_status_precedence() -> None:
    chain: list[list[str | None]] = [
        [None, "", "mystery"],
        ["pending"],
        ["scheduled", "queued"],
        ["sent"],
        ["failed", "undelivered", "opt_out"],
        ["delivered"],
        ["read", "opened"],
        ["clicked"],
    ]
    for expected, group in enumerate(chain):
        for status in group:
            assert status_rank(status, None, "SMS") == expected, status
            assert status_rank(status, None, "Email") == expected, status


def test_status_spelling_variants() -> None:
    assert status_rank("Opt-Out", None, "SMS") == status_rank("opt_out", None, "SMS")
    assert status_rank("DELIVERED", None, "WhatsApp") == 5
    assert status_rank("No Answer", None, "Call") == status_rank("no-answer", None, "Call")
    assert status_rank(None, "in_progress", "Call") == status_rank(None, "in-progress", "Call")


def test_call_status_precedence() -> None:
    chain: list[list[str | None]] = [
        [None, "mystery"],
        ["pending"],
        ["ringing", "in-progress", "initiated"],
        ["canceled"],
        ["failed"],
        ["busy"],
        ["no-answer"],
        ["voicemail"],
        ["answered"],
        ["completed"],
    ]
    by_call_status = [{status_rank(None, value, "Call") for value in group} for group in chain]
    by_status = [{status_rank(value, None, "Voicemail") for value in group} for group in chain]
    for ranks in (by_call_status, by_status):
        assert all(len(group) == 1 for group in ranks)  # one rank per group
        flat = [group.pop() for group in ranks]
        assert flat == sorted(flat) and len(set(flat)) == len(flat)  # rising along the chain


def test_call_outcome_wins_at_the_same_stage() -> None:
    def rank(status: str | None, call_status: str | None) -> int:
        return status_rank(status, call_status, "Call")

    # The stage is the higher of the two fields; at the same stage the reported outcome
    # (callStatus) decides, and reporting one beats not reporting any.
    assert rank("completed", "completed") > rank("completed", "voicemail")  # answered
    assert rank("completed", "voicemail") > rank("completed", None)  # the quirk, fixed
    assert rank("completed", "no-answer") > rank("completed", None)
    assert rank("completed", None) > rank("voicemail", "voicemail")  # a later stage
    assert rank("completed", "mystery") == rank("completed", None)  # unknown: not an outcome
    assert rank(None, "answered") > rank("ringing", None)
    assert rank("failed", "busy") > rank("ringing", "ringing")
    # Calls do not use the message scale and vice versa.
    assert rank("delivered", None) == 0
    assert status_rank("completed", "completed", "SMS") == 0


# --- build_message: folding -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "channel"),
    [
        ("SMS", "SMS"),
        ("Email", "Email"),
        ("CALL", "Call"),
        ("VoiceMail", "Voicemail"),
        ("GMB", "GMB"),
        ("FB", "Facebook"),
        ("IG", "Instagram"),
        ("WhatsApp", "WhatsApp"),
        ("Live Chat", "LiveChat"),
        ("InternalComment", "InternalComment"),
        ("Custom", "Custom"),
        ("TYPE_ACTIVITY_CONTACT", "Other"),
    ],
)
def test_every_channel(message_type: str, channel: str) -> None:
    entry = build(message(messageType=message_type, body="hello", status="delivered"))
    assert entry.channel == channel
    assert entry.message_type == message_type
    assert entry.body == "hello"
    assert entry.preview == "hello"


def test_single_sms_fields() -> None:
    entry = build(
        message(
            body="Hi there",
            status="sent",
            **{"from": "+15550001", "to": "+15550002"},
            messageTypeId=2,
            messageTypeString="TYPE_SMS",
            userId="u1",
            source="app",
            conversationProviderId="p1",
            contentType="text/plain",
        )
    )
    assert entry == MessageEntry(
        location_id="loc1",
        message_key="m1",
        conversation_id="conv1",
        contact_id="contact1",
        event_type="OutboundMessage",
        direction="outbound",
        channel="SMS",
        message_type="SMS",
        message_type_string="TYPE_SMS",
        message_type_id=2,
        status="sent",
        call_status=None,
        call_duration=None,
        body="Hi there",
        plain_text=None,
        content_type="text/plain",
        attachments=(),
        from_="+15550001",
        to=("+15550002",),
        cc=(),
        bcc=(),
        subject=None,
        thread_id=None,
        email_message_id=None,
        message_id="m1",
        user_id="u1",
        source="app",
        conversation_provider_id="p1",
        chat_widget_id=None,
        provider=None,
        date_added=datetime(2024, 5, 8, 12, 0, tzinfo=UTC),
        preview="Hi there",
        positions=(1,),
    )


def test_sms_pending_sent_delivered_in_any_order() -> None:
    entries = all_orders(
        message(status="pending", body="On my way"),
        message(status="sent", body="On my way"),
        message(status="delivered", body="On my way"),
    )
    assert all(entry == entries[0] for entry in entries)
    assert entries[0].status == "delivered"
    assert entries[0].positions == (1, 2, 3)


def test_failure_beats_sent_but_not_delivered() -> None:
    sent_failed = all_orders(message(status="sent"), message(status="failed"))
    assert {entry.status for entry in sent_failed} == {"failed"}
    failed_delivered = all_orders(message(status="failed"), message(status="delivered"))
    assert {entry.status for entry in failed_delivered} == {"delivered"}
    undelivered = all_orders(message(status="undelivered"), message(status="queued"))
    assert {entry.status for entry in undelivered} == {"undelivered"}


def test_email_opened_then_clicked() -> None:
    email: dict[str, Any] = {
        "messageType": "Email",
        "messageId": ...,
        "emailMessageId": "em1",
        "subject": "Offer",
        "body": "<p>Hello</p>",
    }
    entries = all_orders(
        message(**email, status="delivered"),
        message(**email, status="clicked"),
        message(**email, status="opened"),
        message(**email, status="sent"),
    )
    assert all(entry == entries[0] for entry in entries)
    assert entries[0].status == "clicked"
    assert entries[0].message_key == "em1"
    assert entries[0].message_id is None
    assert entries[0].email_message_id == "em1"
    assert entries[0].channel == "Email"


def call(**fields: Any) -> dict[str, Any]:
    return message(messageType="CALL", messageTypeId=1, messageTypeString="TYPE_CALL", **fields)


def test_call_answered() -> None:
    entries = all_orders(
        call(status="initiated"),
        call(status="completed", callStatus="completed", callDuration=120, attachments=["rec"]),
        call(status="ringing", callStatus="ringing"),
    )
    entry = entries[0]
    assert all(other == entry for other in entries)
    assert (entry.status, entry.call_status) == ("completed", "completed")
    assert entry.call_duration == 120
    assert entry.attachments == ("rec",)


def test_call_to_voicemail_and_missed_inbound() -> None:
    outbound = all_orders(
        call(status="ringing"), call(status="completed", callStatus="voicemail", callDuration=0)
    )
    assert {(e.status, e.call_status, e.channel) for e in outbound} == {
        ("completed", "voicemail", "Call")
    }
    assert outbound[0].call_duration == 0  # zero is a value, not "empty"
    missed = build(
        message(
            type="InboundMessage",
            direction="inbound",
            messageType="CALL",
            messageTypeId=10,
            messageTypeString="TYPE_VOICEMAIL",
            status="voicemail",
            callStatus="voicemail",
            attachments=["voicemail url"],
        )
    )
    assert (missed.channel, missed.status, missed.direction) == (
        "Voicemail",
        "voicemail",
        "inbound",
    )


def test_a_reported_call_outcome_beats_a_bare_completed() -> None:
    # HighLevel may report an outbound call's end twice: `completed` without a callStatus
    # and `completed` + `voicemail`. In either order the entry shows the outcome.
    entries = all_orders(
        call(status="ringing"),
        call(status="completed"),
        call(status="completed", callStatus="voicemail", callDuration=0),
    )
    assert {(e.status, e.call_status, e.call_duration) for e in entries} == {
        ("completed", "voicemail", 0)
    }
    answered = all_orders(
        call(status="completed"), call(status="completed", callStatus="completed")
    )
    assert {e.call_status for e in answered} == {"completed"}


def test_call_busy_and_no_answer() -> None:
    busy = all_orders(call(status="ringing"), call(status="failed", callStatus="busy"))
    assert {e.call_status for e in busy} == {"busy"}
    no_answer = all_orders(
        call(status="failed", callStatus="busy"), call(status="failed", callStatus="no-answer")
    )
    assert {e.call_status for e in no_answer} == {"no-answer"}
    # A completed (answered) report beats an earlier no-answer report.
    answered = all_orders(call(callStatus="no-answer"), call(callStatus="answered"))
    assert {e.call_status for e in answered} == {"answered"}


def test_whatsapp_media_arrives_later() -> None:
    first = message(
        type="InboundMessage",
        direction="inbound",
        messageType="WhatsApp",
        body="",
        attachments=[],
        status="delivered",
    )
    later = first | {"attachments": ["https://cdn.example/a.jpg", "https://cdn.example/b.jpg"]}
    entries = all_orders(first, later)
    assert all(entry == entries[0] for entry in entries)
    assert entries[0].attachments == ("https://cdn.example/a.jpg", "https://cdn.example/b.jpg")
    assert entries[0].body == ""  # sent empty, as HighLevel shows it
    assert entries[0].preview == ""
    assert entries[0].channel == "WhatsApp"


def test_an_empty_body_stays_empty_and_a_sent_one_wins() -> None:
    assert build(message(body="")).body == ""
    assert build(message(body=...)).body is None
    assert build(message(body=None)).body is None
    for entry in all_orders(message(body=""), message(body=None, status="delivered")):
        assert entry.body == ""
    for entry in all_orders(message(body="", status="delivered"), message(body="hello")):
        assert (entry.body, entry.preview) == ("hello", "hello")


def test_an_empty_status_is_none_as_every_other_empty_field() -> None:
    """HighLevel's status enums have no "": a message sent `"status": ""` read `""` where
    every other empty field (an empty `callStatus` too) reads null."""
    entry = build(message(messageType="CALL", status="", callStatus="", userId=""))
    assert (entry.status, entry.call_status, entry.user_id) == (None, None, None)
    for entry in all_orders(message(status=""), message(status="delivered")):
        assert entry.status == "delivered"


def test_chat_widget_and_email_provider_are_kept() -> None:
    chat = message(messageType="Live Chat", body="hi", chatWidgetId="67b0cc8cf14b19d85ace7s35")
    assert build(chat).chat_widget_id == "67b0cc8cf14b19d85ace7s35"
    email = message(
        messageType="Email", messageId=..., emailMessageId="e1", provider="Leadconnector Gmail"
    )
    assert build(email).provider == "Leadconnector Gmail"
    assert (build(message()).chat_widget_id, build(message()).provider) == (None, None)
    # As every field: from the most dominant event that has one, in any order.
    sent = email | {"status": "sent", "provider": "old"}
    opened = email | {"status": "opened", "provider": ""}
    for entry in all_orders(sent, opened, email | {"status": "delivered"}):
        assert (entry.status, entry.provider) == ("opened", "Leadconnector Gmail")


def test_redelivery_with_more_fields_completes_the_entry() -> None:
    thin = message(status="delivered", body="Hello", webhookId="w1")
    rich = message(
        status="delivered",
        body="Hello",
        webhookId="w2",
        userId="u9",
        source="workflow",
        messageTypeString="TYPE_SMS",
        messageTypeId=2,
        conversationProviderId="prov",
    )
    entries = all_orders(thin, rich, thin)
    assert all(entry == entries[0] for entry in entries)
    entry = entries[0]
    assert (entry.user_id, entry.source, entry.conversation_provider_id) == (
        "u9",
        "workflow",
        "prov",
    )
    assert (entry.message_type_string, entry.message_type_id) == ("TYPE_SMS", 2)


def test_fields_come_from_the_most_dominant_event_that_has_them() -> None:
    entry = build(
        message(status="sent", body="draft text", subject="old"),
        message(status="delivered", body=None, subject="new"),
    )
    assert entry.status == "delivered"
    assert entry.subject == "new"
    assert entry.body == "draft text"  # the dominant event has no body


def test_direction_field_wins_over_event_type() -> None:
    entry = build(message(type="OutboundMessage", direction="inbound", body="x"))
    assert (entry.event_type, entry.direction) == ("OutboundMessage", "inbound")
    entry = build(message(type="InboundMessage", direction="OUTBOUND", body="x"))
    assert (entry.event_type, entry.direction) == ("InboundMessage", "outbound")
    entry = build(message(type="InboundMessage", direction=..., body="x"))
    assert entry.direction == "inbound"
    entry = build(message(type="OutboundMessage", direction="sideways", body="x"))
    assert entry.direction == "outbound"


def test_seed_sms_direction_contradicts_type() -> None:
    entry = build_message([stored(fixture("seed_sms"))])
    assert (entry.event_type, entry.direction) == ("OutboundMessage", "inbound")


def test_recipients_are_normalised_and_cc_merged() -> None:
    entry = build(
        message(
            messageType="Email",
            to="a@example.com",
            cc=["c1@example.com", "c2@example.com"],
            ccList=["c2@example.com", "c3@example.com"],
            bccList=["b@example.com"],
        )
    )
    assert entry.to == ("a@example.com",)
    assert entry.cc == ("c1@example.com", "c2@example.com", "c3@example.com")
    assert entry.bcc == ("b@example.com",)


def test_doc_email_fixture() -> None:
    entry = build_message([stored(fixture("doc_email"))])
    assert entry.message_key == "sddfDSF3G56GHG"
    assert entry.cc == ("cc@example.com",)
    assert entry.bcc == ("bcc@example.com",)
    assert entry.preview == "Testing Email Notification"
    assert entry.status is None
    assert entry.date_added == datetime(2024, 1, 12, 12, 59, 4, 45000, tzinfo=UTC)


def test_nothing_usable_raises() -> None:
    with pytest.raises(ValueError, match="no usable"):
        build_message([])
    broken = dataclasses.replace(stored(message(body="x")), payload={"type": "OutboundMessage"})
    with pytest.raises(ValueError, match="no usable"):
        build_message([broken])
    flags = stored({"type": "ConversationUnreadUpdate", "locationId": "loc1", "id": "conv1"})
    with pytest.raises(ValueError, match="no usable"):
        build_message([flags])


def test_unparsable_events_are_skipped() -> None:
    good = stored(message(status="sent", body="ok"), 1)
    broken = dataclasses.replace(stored(message(), 2), payload={"type": "nope"})
    entry = build_message([broken, good])
    assert entry.positions == (1,)
    assert entry.body == "ok"


def test_events_of_two_messages_are_refused() -> None:
    with pytest.raises(ValueError, match="different messages"):
        build(message(messageId="m1"), message(messageId="m2"))


# --- preview --------------------------------------------------------------------------------


def test_preview_of_html_email() -> None:
    body = (
        "<!DOCTYPE html><html><head><style>p { color: red; }</style><title>T</title></head>"
        "<body><!-- hidden --><p>Dear&nbsp;Ann,</p><p>Fish &amp; chips&hellip;"
        "<br/>at <b>5</b>&#160;pm</p>\n\n<div>Bye &lt;3</div></body></html>"
    )
    entry = build(message(messageType="Email", body=body))
    assert entry.preview == "Dear Ann, Fish & chips… at 5 pm Bye <3"


def test_preview_prefers_plain_text() -> None:
    entry = build(message(body="<p>HTML</p>", plainText="  plain\n text  "))
    assert entry.preview == "plain text"
    assert preview_of("   ", "<i>fallback</i>") == "fallback"
    assert preview_of(None, None) == ""


def test_preview_keeps_text_that_only_looks_like_markup() -> None:
    assert preview_of(None, "a < b and c > d, I <3 you") == "a < b and c > d, I <3 you"


def test_preview_keeps_addresses_and_links_in_angle_brackets() -> None:
    """Plain text writes addresses and links in angle brackets (an SMS, a text email's
    quote line): they are text, not tags. Namespaced tags (Outlook's <o:p>) still go."""
    reply = "Sure!\n\nOn Mon, Jane Doe <jane@example.com> wrote:\n> see <https://example.com/a?b=1>"
    entry = build(message(messageType="Email", body=reply))
    assert entry.preview == (
        "Sure! On Mon, Jane Doe <jane@example.com> wrote: > see <https://example.com/a?b=1>"
    )
    assert preview_of(None, "mail me at <mailto:ann@x.org>") == "mail me at <mailto:ann@x.org>"
    outlook = '<p class="MsoNormal">Hi<o:p></o:p></p><p><span lang=EN-US>there</span><br/></p>'
    assert preview_of(None, outlook) == "Hi there"


def test_preview_of_internal_comment_drops_mention_ids() -> None:
    entry = build_message([stored(fixture("doc_internal_comment"))])
    assert entry.preview == "Please follow up on this @John Doe"


def test_preview_is_cut_to_160_characters() -> None:
    exact = "x" * 160
    assert preview_of(exact, None) == exact
    cut = preview_of("word " * 100, None)
    assert len(cut) <= 160
    assert cut.endswith("word…")
    assert preview_of("y" * 200, None) == "y" * 159 + "…"


# --- build_message: properties --------------------------------------------------------------

STATUSES = [
    None,
    "",
    "pending",
    "scheduled",
    "queued",
    "sent",
    "failed",
    "undelivered",
    "opt_out",
    "delivered",
    "read",
    "opened",
    "clicked",
    "completed",
    "voicemail",
    "busy",
    "no-answer",
    "answered",
    "ringing",
    "mystery",
]
BODIES = [None, "", "hi", "hello there", "<p>Hi &amp; bye</p>"]
ATTACHMENT = st.sampled_from(["u1", "u2", "u3", {"url": "u4", "type": "image"}])
ADDRESSES = st.lists(st.sampled_from(["a@x", "b@x", "c@x"]), max_size=3)

TYPE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "messageType": st.sampled_from(["SMS", "CALL", "WhatsApp", "Email", "VoiceMail", ""]),
        "messageTypeId": st.sampled_from([1, 2, 10, 22, None]),
        "messageTypeString": st.sampled_from(["TYPE_SMS", "TYPE_VOICEMAIL", "TYPE_NEW", None]),
    },
)

VARYING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["InboundMessage", "OutboundMessage"]),
    "conversationId": st.sampled_from(["c1", "c2"]),
    "contactId": st.sampled_from([None, "k1", "k2"]),
    "direction": st.sampled_from([None, "inbound", "outbound", "Inbound", "other"]),
    "status": st.sampled_from(STATUSES),
    "callStatus": st.sampled_from(STATUSES),
    "callDuration": st.sampled_from([None, 0, 12, 3.5, "7"]),
    "body": st.sampled_from(BODIES),
    "plainText": st.sampled_from([None, "", "plain"]),
    "attachments": st.lists(ATTACHMENT, max_size=3),
    "to": st.one_of(st.sampled_from(["a@x", ""]), ADDRESSES),
    "cc": ADDRESSES,
    "ccList": ADDRESSES,
    "bccList": ADDRESSES,
    "subject": st.sampled_from([None, "", "s1", "s2"]),
    "chatWidgetId": st.sampled_from([None, "", "w1", "w2"]),
    "provider": st.sampled_from([None, "", "Leadconnector Gmail", "mailgun"]),
    "dateAdded": st.sampled_from(["2024-05-08T12:00:00Z", "2024-05-08T13:00:00+01:00", None]),
    "webhookId": st.uuids().map(str),
    "timestamp": st.sampled_from(["2024-05-08T12:00:01Z", "2024-05-08T12:00:02Z"]),
}


@st.composite
def message_events(draw: st.DrawFn, type_fields: dict[str, Any] | None = None) -> list[StoredEvent]:
    """Events of one message (messageId m1), with distinct random positions."""
    count = draw(st.integers(min_value=1, max_value=6))
    positions = draw(
        st.lists(
            st.integers(min_value=1, max_value=10_000), min_size=count, max_size=count, unique=True
        )
    )
    events = []
    for position in positions:
        fields = type_fields if type_fields is not None else draw(TYPE_FIELDS)
        varying = draw(st.fixed_dictionaries({}, optional=VARYING_FIELDS))
        payload = {"type": "OutboundMessage", "locationId": "loc", "conversationId": "c1"}
        payload |= fields | varying | {"messageId": "m1"}
        events.append(stored(payload, position))
    return events


@given(events=message_events(), data=st.data())
@settings(max_examples=200, deadline=None)
def test_build_message_ignores_order_and_duplicates(
    events: list[StoredEvent], data: st.DataObject
) -> None:
    expected = build_message(events)
    extra = data.draw(st.lists(st.sampled_from(events), max_size=4), label="duplicates")
    reordered = data.draw(st.permutations(events + extra), label="order")
    assert build_message(reordered) == expected
    assert expected.positions == tuple(sorted(event.position for event in events))
    assert expected.channel in CHANNELS
    assert expected.direction in ("inbound", "outbound")
    assert len(expected.preview) <= 160


@given(type_fields=TYPE_FIELDS, data=st.data())
@settings(max_examples=200, deadline=None)
def test_build_message_keeps_the_highest_status(
    type_fields: dict[str, Any], data: st.DataObject
) -> None:
    events = data.draw(message_events(type_fields))
    entry = build_message(events)
    channel = entry.channel
    ranks = [
        status_rank(event.payload.get("status"), event.payload.get("callStatus"), channel)
        for event in events
    ]
    assert status_rank(entry.status, entry.call_status, channel) == max(ranks)
    assert len(entry.attachments) >= min(
        len(event.payload.get("attachments") or []) for event in events
    )


# --- build_message: against the rules stated plainly --------------------------------------

ENVELOPE = {"webhookId", "timestamp", "appId", "versionId"}


def content_of(event: StoredEvent) -> str:
    content = {key: value for key, value in event.payload.items() if key not in ENVELOPE}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def first(payloads: list[MessagePayload], get: Callable[[MessagePayload], Any]) -> Any:
    return next((value for value in map(get, payloads) if value not in (None, "", [])), None)


def plain_build(events: list[StoredEvent]) -> MessageEntry:
    """The module doc's rules in the most direct form (`build_message` is tuned for replays:
    no models, content keys only for ties, one-event shortcut)."""
    parsed: list[tuple[StoredEvent, MessagePayload]] = []
    for event in events:
        try:
            payload = parse_payload(event.payload)
        except PayloadError:
            continue
        if isinstance(payload, MessagePayload):
            parsed.append((event, payload))
    by_content = [p for _, p in sorted(parsed, key=lambda i: content_of(i[0]), reverse=True)]
    ranking = channel_of(
        first(by_content, lambda p: p.messageType),
        first(by_content, lambda p: p.messageTypeString),
        first(by_content, lambda p: p.messageTypeId),
    )

    def dominance(item: tuple[StoredEvent, MessagePayload]) -> tuple[int, int, str]:
        payload = item[1]
        rank = status_rank(payload.status, payload.callStatus, ranking)
        return rank, len(payload.attachments), content_of(item[0])

    ordered = [p for _, p in sorted(parsed, key=dominance, reverse=True)]
    top = ordered[0]
    directions = [(p.direction or "").strip().lower() for p in ordered]
    known = [d for d in directions if d in ("inbound", "outbound")]
    event = parsed[0][0]
    plain_text, body = first(ordered, lambda p: p.plainText), first(ordered, lambda p: p.body)
    if body is None and any(p.body == "" for p in ordered):
        body = ""  # sent empty: kept empty
    types = [first(ordered, attrgetter(name)) for name in TYPE_NAMES]
    return MessageEntry(
        location_id=event.location_id,
        message_key=event.message_id or message_identity(parsed[0][1]),
        conversation_id=top.conversationId,
        contact_id=first(ordered, lambda p: p.contactId),
        event_type=top.type,
        direction=known[0] if known else top.type.removesuffix("Message").lower(),
        channel=channel_of(*types),
        message_type=types[0],
        message_type_string=types[1],
        message_type_id=types[2],
        status=top.status or None,
        call_status=top.callStatus or None,
        call_duration=first(ordered, lambda p: p.callDuration),
        body=body,
        plain_text=plain_text,
        content_type=first(ordered, lambda p: p.contentType),
        attachments=tuple(first(ordered, lambda p: p.attachments) or ()),
        from_=first(ordered, lambda p: p.from_),
        to=tuple(first(ordered, lambda p: p.to) or ()),
        cc=tuple(first(ordered, lambda p: list(dict.fromkeys(p.cc + p.ccList))) or ()),
        bcc=tuple(first(ordered, lambda p: list(dict.fromkeys(p.bcc + p.bccList))) or ()),
        subject=first(ordered, lambda p: p.subject),
        thread_id=first(ordered, lambda p: p.threadId),
        email_message_id=first(ordered, lambda p: p.emailMessageId),
        message_id=first(ordered, lambda p: p.messageId),
        user_id=first(ordered, lambda p: p.userId),
        source=first(ordered, lambda p: p.source),
        conversation_provider_id=first(ordered, lambda p: p.conversationProviderId),
        chat_widget_id=first(ordered, lambda p: p.chatWidgetId),
        provider=first(ordered, lambda p: p.provider),
        date_added=first(ordered, lambda p: p.dateAdded),
        preview=preview_of(plain_text, body),
        positions=tuple(sorted({event.position for event, _ in parsed})),
    )


TYPE_NAMES = ("messageType", "messageTypeString", "messageTypeId")


@given(events=message_events(), data=st.data())
@settings(max_examples=300, deadline=None)
def test_build_message_follows_the_rules(events: list[StoredEvent], data: st.DataObject) -> None:
    extra = data.draw(st.lists(st.sampled_from(events), max_size=2), label="duplicates")
    events = data.draw(st.permutations(events + extra), label="order")
    entry = build_message(events)
    expected = plain_build(events)
    assert entry == expected
    assert repr(entry) == repr(expected)  # the same types too (1 is not 1.0)


@pytest.mark.parametrize("name", sorted(path.stem for path in FIXTURES.glob("*.json")))
def test_build_message_follows_the_rules_on_fixtures(name: str) -> None:
    document = fixture(name)
    if document["type"] not in ("InboundMessage", "OutboundMessage"):
        return
    events = stored_all(
        document,
        document | {"status": "read", "subject": "later", "webhookId": "w2"},
        document | {"status": "failed", "contentType": "", "callStatus": "busy"},
    )
    for group in ([events[0]], events, events[::-1], events[1:]):
        assert repr(build_message(group)) == repr(plain_build(group))


def test_entries_are_built_like_the_dataclass_does() -> None:
    """`build_message` creates entries without `MessageEntry.__init__` (for speed)."""
    entry = build(message(body="x"), message(status="sent"))
    assert list(vars(entry)) == [field.name for field in dataclasses.fields(MessageEntry)]
    assert entry == MessageEntry(**vars(entry))
    assert not hasattr(MessageEntry, "__post_init__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.body = "changed"  # type: ignore[misc]


# --- build_flags ----------------------------------------------------------------------------


def unread(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "ConversationUnreadUpdate", "locationId": "loc1", "id": "c1"}
    return {key: value for key, value in (base | fields).items() if value is not ...}


def test_flags_take_the_latest_timestamp() -> None:
    events = stored_all(
        unread(unreadCount=3, starred=False, timestamp="2024-05-08T12:00:02Z"),
        unread(unreadCount=0, starred=True, inbox=True, timestamp="2024-05-08T12:00:03.5Z"),
        unread(unreadCount=5, timestamp="2024-05-08T13:00:01+02:00"),  # 11:00:01 UTC
        unread(unreadCount=9),  # no timestamp: lowest
    )
    for order in itertools.permutations(events):
        assert build_flags(order) == ConversationFlags(0, True, True, None, None)


def test_flags_read_an_epoch_timestamp_given_as_text() -> None:
    """Epoch milliseconds as text are a time, as in `dateAdded`, not an unusable value
    that loses to every update with a time."""
    events = stored_all(
        unread(unreadCount=3, timestamp="2024-05-08T12:00:02Z"),
        unread(unreadCount=7, timestamp="1715169603000"),  # 2024-05-08T12:00:03Z
    )
    for order in itertools.permutations(events):
        assert build_flags(order).unread_count == 7


def test_flags_of_the_doc_fixture() -> None:
    flags = build_flags([stored(fixture("doc_unread_update"))])
    assert flags == ConversationFlags(0, True, False, False, "zsYhPBOUsEHtrK508Wm9")


def test_flags_without_updates_are_unknown() -> None:
    nothing = ConversationFlags(None, None, None, None, None)
    assert build_flags([]) == nothing
    assert build_flags([stored(message(body="x"))]) == nothing


def test_flags_tie_is_broken_by_content() -> None:
    events = stored_all(
        unread(unreadCount=1, timestamp="2024-05-08T12:00:00Z"),
        unread(unreadCount=2, timestamp="2024-05-08T12:00:00.000Z"),
    )
    assert build_flags(events) == build_flags(events[::-1])


FLAG_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "unreadCount": st.sampled_from([None, 0, 1, 2, "3"]),
    "starred": st.sampled_from([None, True, False, "true"]),
    "inbox": st.sampled_from([None, True, False]),
    "deleted": st.sampled_from([None, True, False]),
    "contactId": st.sampled_from([None, "k1", "k2"]),
    "timestamp": st.sampled_from(
        ["2024-05-08T12:00:00Z", "2024-05-08T12:00:00.000Z", "2024-05-08T12:00:01Z", "bad", 5]
    ),
    "webhookId": st.uuids().map(str),
}


@given(
    payloads=st.lists(st.fixed_dictionaries({}, optional=FLAG_FIELDS), min_size=0, max_size=6),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_build_flags_ignores_order_and_duplicates(
    payloads: list[dict[str, Any]], data: st.DataObject
) -> None:
    events = stored_all(*(unread(**fields) for fields in payloads))
    expected = build_flags(events)
    extra = data.draw(st.lists(st.sampled_from(events), max_size=3)) if events else []
    assert build_flags(data.draw(st.permutations(events + extra))) == expected


@given(
    payloads=st.lists(st.fixed_dictionaries({}, optional=FLAG_FIELDS), min_size=1, max_size=6),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_latest_flags_is_a_max_over_any_grouping(
    payloads: list[dict[str, Any]], data: st.DataObject
) -> None:
    """What the live projection relies on: the winner of a batch's updates against the
    stored winner is the winner of all of them."""
    events = stored_all(*(unread(**fields) for fields in payloads))
    whole = latest_flags(events)
    split = data.draw(st.integers(0, len(events)), label="split")
    parts = [latest_flags(events[:split]), latest_flags(events[split:])]
    best = max((p for p in parts if p is not None), key=attrgetter("order"), default=None)
    if whole is None:  # no parsable update at all
        assert best is None
        return
    assert best is not None
    assert (best.flags, best.order) == (whole.flags, whole.order)
    assert build_flags(events) == whole.flags


# --- resolve_merges -------------------------------------------------------------------------


def test_merge_chain() -> None:
    assert resolve_merges([("a", "b"), ("b", "c")]) == {"a": "c", "b": "c", "c": "c"}
    assert resolve_merges([("b", "c"), ("a", "b"), ("c", "d")]) == dict.fromkeys("abcd", "d")


def test_merge_into_two_targets_follows_the_greatest() -> None:
    assert resolve_merges([("a", "c"), ("a", "b")]) == {"a": "c", "b": "b", "c": "c"}


def test_merge_cycles() -> None:
    assert resolve_merges([("a", "b"), ("b", "a")]) == {"a": "a", "b": "a"}
    assert resolve_merges([("x", "y"), ("y", "z"), ("z", "x"), ("t", "z")]) == dict.fromkeys(
        "txyz", "x"
    )
    assert resolve_merges([("a", "a")]) == {"a": "a"}
    assert resolve_merges([]) == {}


IDS = st.sampled_from(["a", "b", "c", "d", "e", "f"])


@given(pairs=st.lists(st.tuples(IDS, IDS), max_size=10), data=st.data())
@settings(max_examples=200, deadline=None)
def test_resolve_merges_ignores_order_and_duplicates(
    pairs: list[tuple[str, str]], data: st.DataObject
) -> None:
    expected = resolve_merges(pairs)
    extra = data.draw(st.lists(st.sampled_from(pairs), max_size=3)) if pairs else []
    assert resolve_merges(data.draw(st.permutations(pairs + extra))) == expected
    assert set(expected) == {id_ for pair in pairs for id_ in pair}
    for id_, root in expected.items():
        assert expected[root] == root, (id_, root)


def test_iso_writes_utc_milliseconds_and_z_as_highlevel_does() -> None:
    """`dialect.iso` (every `dateAdded` written): UTC, four-digit years (Go's zero time),
    milliseconds truncated, not rounded."""
    from datetime import timedelta, timezone

    from conversations.dialect import iso

    plus_five = timezone(timedelta(hours=5, minutes=30))
    assert iso(datetime(2026, 1, 1, 3, 4, 5, 999_999, tzinfo=plus_five)) == (
        "2025-12-31T21:34:05.999Z"
    )
    assert iso(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000Z"
    assert iso(datetime(999, 12, 31, 23, 59, 59, 1_000, tzinfo=UTC)) == "0999-12-31T23:59:59.001Z"
    assert iso(None) is None
