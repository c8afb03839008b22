"""HighLevel's JSON for what the read models hold (pure): messages as
`GetMessageResponseDto`, emails as `GetEmailMessageResponseDto`, conversations as
`ConversationSchema` (search) and `GetConversationByIdResponse`.

Message types. HighLevel names a message's type twice: `messageType` ("TYPE_SMS", ...)
and a numeric `type`, the 1-based position of the name in its message type enum
(`MESSAGE_TYPE_CODES`; the webhooks agree: `messageTypeId` 1 call, 2 SMS, 22 custom
provider SMS, and 10 for `TYPE_VOICEMAIL`). A message shows the `messageTypeString` its
webhook sent when it is a `TYPE_*` name, else the name of its channel (`CHANNEL_TYPES`);
its `type` is the webhook's `messageTypeId`, else the code of that name. A message of
channel "Other" without a `TYPE_*` name has neither (null).

A conversation's `lastMessageType` is its last message's `messageType` (`message_type`:
TYPE_CAMPAIGN_SMS for a campaign SMS, TYPE_ACTIVITY_APPOINTMENT for an activity), as in
HighLevel, whose search filter `lastMessageType` matches that name exactly; a summary
written before it kept the name (migration 0015) reads as its channel's name.

The messages filter `type` selects our channels: `TYPE_SMS` selects every SMS-channel
message (campaign and workflow SMS included). Both filters accept every name HighLevel's
filters take (`FILTER_TYPE_NAMES`), so a client sending a value HighLevel documents is not
refused: `type` selects the channel a message of that type is folded into
(`TYPE_CAMPAIGN_SMS` selects SMS too).

Fields. Every field of HighLevel's shape is present; a value the webhooks never gave is
null (they carry no `altId` or `replyToMessageId`). A `body` sent empty stays `""`.
Conversation flags never reported by a ConversationUnreadUpdate read as HighLevel's
defaults: unreadCount 0, starred false, inbox true, deleted false.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from conversations import json_codec

if TYPE_CHECKING:  # the read models import this module to render what they store
    from conversations.messages import MessageEntry
    from conversations.projections.location_conversations import ConversationSummary
    from conversations.projections.timeline import TimelineMessage

    Message: TypeAlias = "TimelineMessage | MessageEntry"

__all__ = [
    "CHANNEL_TYPES",
    "CONTACT_FIELDS",
    "CONVERSATION_TYPE_CODES",
    "FILTER_TYPE_NAMES",
    "MESSAGE_TYPE_CODES",
    "NOT_WITH_THE_CONTACT",
    "TYPE_CHANNELS",
    "channel_named",
    "conversation_by_id_json",
    "conversation_json",
    "conversation_type",
    "email_json",
    "epoch_ms",
    "iso",
    "last_message_type",
    "message_document",
    "message_json",
    "message_type",
    "message_type_code",
]

_MESSAGE_TYPES = (
    "TYPE_CALL",
    "TYPE_SMS",
    "TYPE_EMAIL",
    "TYPE_SMS_REVIEW_REQUEST",
    "TYPE_WEBCHAT",
    "TYPE_SMS_NO_SHOW_REQUEST",
    "TYPE_CAMPAIGN_SMS",
    "TYPE_CAMPAIGN_CALL",
    "TYPE_CAMPAIGN_EMAIL",
    "TYPE_CAMPAIGN_VOICEMAIL",
    "TYPE_FACEBOOK",
    "TYPE_CAMPAIGN_FACEBOOK",
    "TYPE_CAMPAIGN_MANUAL_CALL",
    "TYPE_CAMPAIGN_MANUAL_SMS",
    "TYPE_GMB",
    "TYPE_CAMPAIGN_GMB",
    "TYPE_REVIEW",
    "TYPE_INSTAGRAM",
    "TYPE_WHATSAPP",
    "TYPE_CUSTOM_SMS",
    "TYPE_CUSTOM_EMAIL",
    "TYPE_CUSTOM_PROVIDER_SMS",
    "TYPE_CUSTOM_PROVIDER_EMAIL",
    "TYPE_IVR_CALL",
    "TYPE_ACTIVITY_CONTACT",
    "TYPE_ACTIVITY_INVOICE",
    "TYPE_ACTIVITY_PAYMENT",
    "TYPE_ACTIVITY_OPPORTUNITY",
    "TYPE_LIVE_CHAT",
    "TYPE_LIVE_CHAT_INFO_MESSAGE",
    "TYPE_ACTIVITY_APPOINTMENT",
    "TYPE_FACEBOOK_COMMENT",
    "TYPE_INSTAGRAM_COMMENT",
    "TYPE_CUSTOM_CALL",
    "TYPE_GROUP_SMS",
    "TYPE_INTERNAL_CHAT",
    "TYPE_INTERNAL_COMMENT",
    "TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG",
)

MESSAGE_TYPE_CODES: dict[str, int] = {
    **{name: code for code, name in enumerate(_MESSAGE_TYPES, start=1)},
    "TYPE_VOICEMAIL": 10,
}
"""HighLevel's numeric message `type` of each `TYPE_*` name."""

CHANNEL_TYPES: dict[str, str] = {
    "Call": "TYPE_CALL",
    "SMS": "TYPE_SMS",
    "Email": "TYPE_EMAIL",
    "Voicemail": "TYPE_VOICEMAIL",
    "Facebook": "TYPE_FACEBOOK",
    "GMB": "TYPE_GMB",
    "Instagram": "TYPE_INSTAGRAM",
    "WhatsApp": "TYPE_WHATSAPP",
    "Custom": "TYPE_CUSTOM_PROVIDER_SMS",
    "LiveChat": "TYPE_LIVE_CHAT",
    "InternalComment": "TYPE_INTERNAL_COMMENT",
}
"""Our channel -> the `TYPE_*` name it shows as (channel "Other" has none)."""

TYPE_CHANNELS: dict[str, str] = {name: channel for channel, name in CHANNEL_TYPES.items()}
"""The `TYPE_*` name each channel shows as -> that channel."""

FILTER_TYPE_NAMES: tuple[str, ...] = (
    *TYPE_CHANNELS,
    *(name for name in MESSAGE_TYPE_CODES if name not in TYPE_CHANNELS),
    # The messages filter's name for internal comments in HighLevel's docs (plural there).
    "TYPE_INTERNAL_COMMENTS",
)
"""Every `TYPE_*` name the type filters accept: HighLevel's search takes any message type
for `lastMessageType`, and its messages' `type` the activity types and
`TYPE_INTERNAL_COMMENTS`. Our channel names come first (they read best in an error)."""

CONVERSATION_TYPE_CODES: dict[str, int] = {
    "TYPE_PHONE": 1,
    "TYPE_EMAIL": 2,
    "TYPE_FB_MESSENGER": 3,
    "TYPE_REVIEW": 4,
    "TYPE_GROUP_SMS": 5,
}

_CHANNEL_ALIASES: dict[str, str] = {
    **{channel.lower(): channel for channel in (*CHANNEL_TYPES, "Other")},
    "fb": "Facebook",
    "ig": "Instagram",
    "gmb": "GMB",
    "custom": "Custom",
}
_SEPARATORS = re.compile(r"[\s_\-]+")


def channel_named(value: str) -> str | None:
    """Our channel for a channel name as HighLevel or we spell it (`SMS`, `Call`,
    `Live_Chat`, `FB`, `IG`, ..., any case), or None when it names none."""
    return _CHANNEL_ALIASES.get(_SEPARATORS.sub("", value).lower())


# --- values ---------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with milliseconds and `Z`, as HighLevel writes `dateAdded`."""
    if value is None:
        return None
    utc = value.astimezone(UTC)
    # Not strftime: glibc does not pad years before 1000 (Go's zero time is 0001-01-01).
    # %-formatting: half the CPU of an f-string with seven format specs (once per message
    # the projection worker folds, and per message a read builds).
    return _ISO % (
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond // 1000,
    )


_ISO = "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ"


def epoch_ms(value: datetime | None) -> int | None:
    """Milliseconds since the epoch (floored), as HighLevel writes conversation dates."""
    if value is None:
        return None
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _number(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


# --- messages -------------------------------------------------------------------------------


def message_type(message: Message) -> str | None:
    for raw in (message.message_type_string, message.message_type):
        if raw and raw.upper().startswith("TYPE_"):
            return raw.upper()
    return CHANNEL_TYPES.get(message.channel)


def message_type_code(message: Message) -> int | None:
    return _type_code(message, message_type(message))


def _type_code(message: Message, name: str | None) -> int | None:
    """`message_type_code` given `name`, the message's `message_type`."""
    if message.message_type_id is not None:
        return message.message_type_id
    return MESSAGE_TYPE_CODES.get(name) if name is not None else None


def _email_meta(message: Message) -> dict[str, Any] | None:
    if message.channel != "Email":
        return None
    return {
        "messageIds": [message.email_message_id] if message.email_message_id else [],
        "threadId": message.thread_id,
        "subject": message.subject,
        "from": message.from_,
        "to": list(message.to),
        "cc": list(message.cc),
        "bcc": list(message.bcc),
    }


def message_json(message: Message, conversation_id: str) -> dict[str, Any]:
    """`GetMessageResponseDto`; `conversation_id` is the id the message reads under (its
    conversation's merge root). Emails carry their body, and `meta.email` their headers."""
    name = message_type(message)
    return {
        "id": message.message_id or message.message_key,
        "type": _type_code(message, name),
        "messageType": name,
        "locationId": message.location_id,
        "contactId": message.contact_id,
        "conversationId": conversation_id,
        "dateAdded": iso(message.date_added),
        "body": message.body,
        "direction": message.direction,
        "status": message.status,
        "contentType": message.content_type,
        "attachments": list(message.attachments),
        "meta": {
            "callDuration": _number(message.call_duration),
            "callStatus": message.call_status,
            "email": _email_meta(message),
        },
        "source": message.source,
        "userId": message.user_id,
        "conversationProviderId": message.conversation_provider_id,
        "chatWidgetId": message.chat_widget_id,
    }


def message_document(message: Message) -> str:
    """`message_json` as the timeline stores it: JSON text without `conversationId`.

    Reads then send stored text instead of building JSON per request. The conversation
    id is left out because it is the id the message reads under, which a later merge
    changes; a read puts it in front (`"conversationId"` first, the rest as here)."""
    document = message_json(message, "")
    del document["conversationId"]
    return json_codec.dumps(document)


def email_json(message: Message, conversation_id: str) -> dict[str, Any]:
    """`GetEmailMessageResponseDto`: `id` is the email message id (the message key when
    the webhook sent none)."""
    return {
        "id": message.email_message_id or message.message_key,
        "altId": None,
        "threadId": message.thread_id,
        "locationId": message.location_id,
        "contactId": message.contact_id,
        "conversationId": conversation_id,
        "dateAdded": iso(message.date_added),
        "subject": message.subject,
        "body": message.body,
        "direction": message.direction,
        "status": message.status,
        "contentType": message.content_type,
        "attachments": list(message.attachments),
        "provider": message.provider,
        "from": message.from_,
        "to": list(message.to),
        "cc": list(message.cc),
        "bcc": list(message.bcc),
        "replyToMessageId": None,
        "source": message.source,
        "conversationProviderId": message.conversation_provider_id,
    }


# --- conversations --------------------------------------------------------------------------


NOT_WITH_THE_CONTACT = frozenset({"InternalComment", "Other"})
"""Channels that are no exchange with the contact (a user's note, an activity log line):
they say nothing of the conversation's type, as they do not change it in HighLevel."""


def conversation_type(channels: Iterable[str]) -> str:
    """HighLevel's conversation type, from the channels the conversation used with its
    contact (internal comments and activities left out): email only is TYPE_EMAIL,
    Facebook/Instagram only TYPE_FB_MESSENGER, anything else TYPE_PHONE."""
    used = set(channels) - NOT_WITH_THE_CONTACT
    if used and used <= {"Email"}:
        return "TYPE_EMAIL"
    if used and used <= {"Facebook", "Instagram"}:
        return "TYPE_FB_MESSENGER"
    return "TYPE_PHONE"


def last_message_type(summary: ConversationSummary) -> str | None:
    """`lastMessageType`: the last message's `message_type`, or (a summary written before
    it was kept) its channel's name."""
    if summary.last_message_type is not None:
        return summary.last_message_type
    channel = summary.last_message_channel
    return CHANNEL_TYPES.get(channel) if channel else None


def _conversation_common(summary: ConversationSummary) -> dict[str, Any]:
    return {
        "id": summary.conversation_id,
        "contactId": summary.contact_id,
        "locationId": summary.location_id,
        "lastMessageBody": summary.last_message_preview,
        "lastMessageType": last_message_type(summary),
        "lastMessageDate": epoch_ms(summary.last_message_at),
        "lastMessageDirection": summary.last_message_direction,
        "unreadCount": summary.unread_count or 0,
        "starred": bool(summary.starred),
        "inbox": summary.inbox is not False,
        "deleted": bool(summary.deleted),
        "dateAdded": epoch_ms(summary.first_message_at),
        "dateUpdated": epoch_ms(summary.last_message_at),
    }


CONTACT_FIELDS = ("fullName", "contactName", "email", "phone")
"""The contact's details HighLevel's `ConversationSchema` requires (its SDK's model too):
always present, null, as no webhook names a contact (its number or address in `from` /
`to` is the message's, not the contact record's)."""


def conversation_json(summary: ConversationSummary) -> dict[str, Any]:
    """A `ConversationSchema` of the search results; `sort` is the value HighLevel's
    `startAfterDate` continues after (the last message date in epoch ms)."""
    return {
        **_conversation_common(summary),
        "type": conversation_type(summary.channels),
        **dict.fromkeys(CONTACT_FIELDS),
        "sort": [epoch_ms(summary.last_message_at)],
    }


def conversation_by_id_json(summary: ConversationSummary) -> dict[str, Any]:
    """`GetConversationByIdResponse`: as in search, but `type` is numeric, and its
    `assignedTo` null (no webhook carries an assignment)."""
    return {
        **_conversation_common(summary),
        "type": CONVERSATION_TYPE_CODES[conversation_type(summary.channels)],
        "assignedTo": None,
    }
