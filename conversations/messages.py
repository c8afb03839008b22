"""The message model every projection shares: one channel vocabulary, a status precedence,
and the folds of a message's events, a conversation's flags and its merges (pure).

HighLevel sends several events about one message (a new status, a redelivery with more
fields, WhatsApp media whose attachments arrive later) in no particular order, so every
fold here depends only on the *set* of events: never on their order or on duplicates.

Channels
    `channel_of` maps `messageTypeString`, `messageType` and `messageTypeId` onto `CHANNELS`.
    Names match case-insensitively, ignoring spaces, `_` and `-`, with the REST prefixes
    `TYPE_`, `CAMPAIGN_`, `MANUAL_` and `INFO_` dropped (so `TYPE_CAMPAIGN_SMS` is SMS).
    `messageTypeString` wins when recognised, then `messageType`, then `messageTypeId`
    (1 Call, 2 SMS, 10 Voicemail, 21 and 23 Email, 22 Custom, 34 Call), except that the id
    refines a coarse `messageType`: `CALL` with id 10 is a Voicemail, `SMS` with id 22 is
    Custom, `Custom` with id 23 an Email. Custom providers (`Custom`, `TYPE_CUSTOM_*`) are
    Custom, but for their emails (`TYPE_CUSTOM_EMAIL`, `TYPE_CUSTOM_PROVIDER_EMAIL`: Email)
    and calls (`TYPE_CUSTOM_CALL`: Call), which have an email's headers or a call's
    outcome; `TYPE_ACTIVITY_*` and anything unknown are Other.

Status precedence (`status_rank`; a higher rank wins whatever the arrival order)
    Messages: unknown/none 0 < pending 1 < scheduled = queued 2 < sent 3
    < failed = undelivered = opt_out 4 < delivered 5 < read = opened 6 < clicked 7.
    A failure report beats "sent", but positive evidence of delivery beats a failure:
    HighLevel gives a user's retry of a failed message a new messageId, so a later
    success under the same id means the failure report was stale.

    Calls and voicemails use the call scale: unknown 0 < pending = queued 1 < ringing =
    in-progress = initiated = connected 2 < canceled 3 < failed 4 < busy 5 < no-answer 6
    < voicemail 7 < answered 8 < completed 9. An event ranks first by its *stage*, the
    higher of its `status` and its `callStatus` on that scale, then by its `callStatus`
    alone: at the same stage the event that reports the outcome wins. So `completed`
    without a callStatus (the call ended, outcome not said) loses to `completed` +
    `voicemail` (ended in voicemail), whichever arrives first, and the entry shows
    callStatus voicemail. (HighLevel: outbound answered = completed/completed, outbound
    to voicemail = completed/voicemail, inbound missed = voicemail/voicemail.)

    Values compare case-insensitively, ignoring spaces, `_` and `-` (`opt-out`, `No Answer`).

Folding a message (`build_message`)
    `status` and `call_status` come together from the dominant event (an empty one is
    None, as HighLevel's status enums have no ""); every other field from the most
    dominant event that has a non-empty value for it (empty: None, "", []).
    A body is the exception to "empty is absent": when no event has a non-empty one but
    some event sent `""` (an SMS or WhatsApp message of attachments alone), it is `""`,
    as HighLevel shows it; None only when no event sent a body at all.
    Dominance is (status rank, number of attachments, content), where content is the
    canonical JSON of the payload without the envelope (`webhookId`, `timestamp`, `appId`,
    `versionId`): a total order, so ties are deterministic and two events that tie on it
    carry the same data.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from conversations.events import message_identity
from conversations.payloads import (
    ConversationUnreadUpdatePayload,
    MessagePayload,
    PayloadError,
    message_fields,
    parse_payload,
)
from conversations.store import StoredEvent

__all__ = [
    "CHANNELS",
    "PREVIEW_LENGTH",
    "ConversationFlags",
    "FlagsOrder",
    "LatestFlags",
    "MessageEntry",
    "build_flags",
    "build_message",
    "channel_of",
    "flags_order",
    "latest_flags",
    "preview_of",
    "resolve_merges",
    "status_rank",
]

CHANNELS: tuple[str, ...] = (
    "SMS",
    "Email",
    "Call",
    "Voicemail",
    "GMB",
    "Facebook",
    "Instagram",
    "WhatsApp",
    "LiveChat",
    "InternalComment",
    "Custom",
    "Other",
)

# --- channels -------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s_\-]+")
_REST_PREFIXES = ("type", "campaign", "manual", "info")

_EXACT_CHANNELS: dict[str, str] = {
    "fb": "Facebook",
    "messenger": "Facebook",
    "ig": "Instagram",
    "wa": "WhatsApp",
}

# Checked in order against the start of the normalised name. A custom provider's email or
# call is an email or a call (headers, thread, call scale); "Custom" is its SMS, as
# `TYPE_CUSTOM_PROVIDER_SMS` is the name that channel reads as.
_PREFIX_CHANNELS: tuple[tuple[str, str], ...] = (
    ("customprovideremail", "Email"),
    ("customemail", "Email"),
    ("customcall", "Call"),
    ("custom", "Custom"),
    ("activity", "Other"),
    ("internalcomment", "InternalComment"),
    ("voicemail", "Voicemail"),
    ("groupsms", "SMS"),
    ("sms", "SMS"),
    ("ivrcall", "Call"),
    ("call", "Call"),
    ("email", "Email"),
    ("gmb", "GMB"),
    ("googlemybusiness", "GMB"),
    ("facebook", "Facebook"),
    ("fb", "Facebook"),
    ("instagram", "Instagram"),
    ("whatsapp", "WhatsApp"),
    ("livechat", "LiveChat"),
    ("webchat", "LiveChat"),
)

# HighLevel's numeric types (`dialect.MESSAGE_TYPE_CODES`): 21 TYPE_CUSTOM_EMAIL,
# 23 TYPE_CUSTOM_PROVIDER_EMAIL, 34 TYPE_CUSTOM_CALL.
_CHANNEL_IDS: dict[int, str] = {
    1: "Call",
    2: "SMS",
    10: "Voicemail",
    21: "Email",
    22: "Custom",
    23: "Email",
    34: "Call",
}

# A coarse messageType the id makes precise: (messageType channel, id channel).
_ID_REFINES: frozenset[tuple[str, str]] = frozenset(
    {("Call", "Voicemail"), ("SMS", "Custom"), ("Custom", "Email"), ("Custom", "Call")}
)


def _normalise(value: str) -> str:
    return _SEPARATORS.sub("", value).lower()


def _named_channel(value: str | None) -> str | None:
    """The channel a type name means, or None when the name is not recognised."""
    if not value:
        return None
    name = _normalise(value)
    for prefix in _REST_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    if name in _EXACT_CHANNELS:
        return _EXACT_CHANNELS[name]
    return next((channel for start, channel in _PREFIX_CHANNELS if name.startswith(start)), None)


@lru_cache(maxsize=4096)
def channel_of(
    message_type: str | None, message_type_string: str | None, message_type_id: int | None
) -> str:
    """One of `CHANNELS` for a message's three raw type fields (precedence: module doc)."""
    from_string = _named_channel(message_type_string)
    if from_string is not None:
        return from_string
    from_type = _named_channel(message_type)
    from_id = _CHANNEL_IDS.get(message_type_id) if message_type_id is not None else None
    if from_type is not None:
        if from_id is not None and (from_type, from_id) in _ID_REFINES:
            return from_id
        return from_type
    return from_id or "Other"


# --- status precedence ----------------------------------------------------------------------

_MESSAGE_RANKS: dict[str, int] = {
    "pending": 1,
    "scheduled": 2,
    "queued": 2,
    "sent": 3,
    "failed": 4,
    "undelivered": 4,
    "optout": 4,
    "delivered": 5,
    "read": 6,
    "opened": 6,
    "clicked": 7,
}

_CALL_RANKS: dict[str, int] = {
    "pending": 1,
    "queued": 1,
    "ringing": 2,
    "inprogress": 2,
    "initiated": 2,
    "connected": 2,
    "canceled": 3,
    "cancelled": 3,
    "failed": 4,
    "busy": 5,
    "noanswer": 6,
    "voicemail": 7,
    "answered": 8,
    "completed": 9,
}

_CALL_CHANNELS = frozenset({"Call", "Voicemail"})
_CALL_STAGE = 16
"""Greater than every call rank: a call's rank is stage * 16 + callStatus rank."""


def _rank_in(ranks: dict[str, int], value: str | None) -> int:
    return ranks.get(_normalise(value), 0) if value else 0


@lru_cache(maxsize=4096)
def status_rank(status: str | None, call_status: str | None, channel: str) -> int:
    """How far a message got; the higher rank wins a fold (the scale: module doc)."""
    if channel in _CALL_CHANNELS:
        by_call_status = _rank_in(_CALL_RANKS, call_status)
        stage = max(by_call_status, _rank_in(_CALL_RANKS, status))
        # How far the call got by either field, then the outcome's own rank: at the same
        # stage an event that reports the outcome (callStatus) beats one that does not.
        return stage * _CALL_STAGE + by_call_status
    return _rank_in(_MESSAGE_RANKS, status)


# --- deterministic content order ------------------------------------------------------------

_ENVELOPE = frozenset({"webhookId", "timestamp", "appId", "versionId"})


def _content_key(document: dict[str, Any]) -> str:
    """Canonical JSON of a payload without the envelope: the total order for ties."""
    content = {key: value for key, value in document.items() if key not in _ENVELOPE}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- one message ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageEntry:
    """One message of a conversation timeline: the merged view of every event about it.

    (`build_message` creates it without `__init__`, see `_new_entry`: no `__post_init__`.)
    """

    location_id: str
    message_key: str
    conversation_id: str
    contact_id: str | None
    event_type: str
    direction: str
    channel: str
    message_type: str | None
    message_type_string: str | None
    message_type_id: int | None
    status: str | None
    call_status: str | None
    call_duration: int | float | None
    body: str | None
    plain_text: str | None
    content_type: str | None
    attachments: tuple[Any, ...]
    from_: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None
    thread_id: str | None
    email_message_id: str | None
    message_id: str | None
    user_id: str | None
    source: str | None
    conversation_provider_id: str | None
    chat_widget_id: str | None
    provider: str | None
    date_added: datetime | None
    preview: str
    positions: tuple[int, ...]


# `build_message` runs once per message per batch of a replay (a million events), so it works
# on the plain field values of `message_fields` (no pydantic model), memoises the vocabulary
# lookups (`channel_of`, `status_rank`) and computes content keys only to break real ties.

Fields = dict[str, Any]
"""`message_fields` of one payload: MessagePayload field name -> normalised value."""

_Parsed = tuple[StoredEvent, Fields]


def _message_key(event: StoredEvent) -> tuple[str, str]:
    if event.message_id:
        return event.location_id, event.message_id
    payload = parse_payload(event.payload)  # `message_fields` accepted it: so does this
    assert isinstance(payload, MessagePayload)
    return event.location_id, message_identity(payload)


def _content(parsed: _Parsed) -> str:
    return _content_key(parsed[0].payload)


# A value is empty when None, "" or an empty list. Strings, lists and datetimes are empty
# exactly when falsy; numbers (never "" or a list) exactly when None.
_NUMBER_FIELDS = ("messageTypeId", "callDuration")
_OTHER_FIELDS = (
    "messageType",
    "messageTypeString",
    "contactId",
    "body",
    "plainText",
    "contentType",
    "attachments",
    "from_",
    "to",
    "subject",
    "threadId",
    "emailMessageId",
    "messageId",
    "userId",
    "source",
    "conversationProviderId",
    "chatWidgetId",
    "provider",
    "dateAdded",
)


def _by_content(parsed: Sequence[_Parsed], name: str) -> Any:
    """`name` of the event with the greatest content among those with a non-empty one.

    The content keys are only computed when those events disagree on the value.
    """
    if name in _NUMBER_FIELDS:
        having = [item for item in parsed if item[1][name] is not None]
    else:
        having = [item for item in parsed if item[1][name]]
    if not having:
        return None
    value = having[0][1][name]
    if all(fields[name] == value for _, fields in having):
        return value
    return max(having, key=_content)[1][name]


def _ranking_channel(parsed: Sequence[_Parsed]) -> str:
    """The channel events are ranked by, chosen without knowing their ranks yet.

    Each type field is taken from the event with the greatest content that has it; events
    of one message agree on these fields (or lack them), so this is the entry's channel too.
    """
    types: set[tuple[str | None, str | None, int | None]] = set()
    for _, fields in parsed:
        types.add(
            (
                fields["messageType"] or None,
                fields["messageTypeString"] or None,
                fields["messageTypeId"],
            )
        )
    if len(types) == 1:  # they agree: no content needed
        return channel_of(*types.pop())
    return channel_of(
        _by_content(parsed, "messageType"),
        _by_content(parsed, "messageTypeString"),
        _by_content(parsed, "messageTypeId"),
    )


def _dominance_order(parsed: Sequence[_Parsed], channel: str) -> list[Fields]:
    """The fields of the events, most dominant first: (rank, attachments, content) descending.

    Sorted by (rank, attachments); content keys are only computed for events tied on both.
    """
    ranks: list[tuple[int, int]] = []
    for _, fields in parsed:
        rank = status_rank(fields["status"], fields["callStatus"], channel)
        ranks.append((rank, len(fields["attachments"])))
    order = sorted(range(len(parsed)), key=ranks.__getitem__, reverse=True)
    if len(set(ranks)) < len(ranks):  # ties: those events by content
        tied = {rank for rank in ranks if ranks.count(rank) > 1}
        contents = {i: _content(parsed[i]) for i, rank in enumerate(ranks) if rank in tied}
        order.sort(key=lambda i: (ranks[i], contents.get(i, "")), reverse=True)
    return [parsed[i][1] for i in order]


def _merged(ordered: Sequence[Fields]) -> Fields:
    """Each field from the first (most dominant) payload with a non-empty value (else an
    empty one or None); `cc`/`bcc` the distinct union of `cc` + `ccList` (`bcc` + `bccList`)
    of the first payload that has any."""
    top, rest = ordered[0], ordered[1:]
    merged: Fields = {}
    for name in _NUMBER_FIELDS:
        value = top[name]
        if value is None:
            for fields in rest:
                value = fields[name]
                if value is not None:
                    break
        merged[name] = value
    for name in _OTHER_FIELDS:
        value = top[name]
        if not value:
            for fields in rest:
                value = fields[name]
                if value:
                    break
        merged[name] = value
    for single, listed in (("cc", "ccList"), ("bcc", "bccList")):
        merged[single] = ()
        for fields in ordered:
            if fields[single] or fields[listed]:
                merged[single] = _distinct(fields[single] + fields[listed])
                break
    return merged


def _distinct(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _direction(ordered: Sequence[Fields]) -> str:
    for fields in ordered:
        direction = (fields["direction"] or "").strip().lower()
        if direction in ("inbound", "outbound"):
            return direction
    return "inbound" if ordered[0]["type"] == "InboundMessage" else "outbound"


def _empty_body(ordered: Sequence[Fields]) -> str | None:
    """The body of a message no event gave a non-empty one: "" when one sent "" (not None)."""
    return "" if any(fields["body"] is not None for fields in ordered) else None


def build_message(events: Iterable[StoredEvent]) -> MessageEntry:
    """Fold every event about one message, in any order and with repeats (rules: module doc).

    Raises ValueError when no event parses as a message, or when the events are about
    more than one message.
    """
    parsed: list[_Parsed] = []
    for event in events:
        fields = message_fields(event.payload)
        if fields is not None:
            parsed.append((event, fields))
    if not parsed:
        raise ValueError("no usable message event to build a message from")
    if len(parsed) == 1:  # the common case: nothing to rank, merge or break ties on
        event, top = parsed[0]
        location_id, message_key = _message_key(event)
        ordered = [top]
        merged = top
        cc = _distinct(top["cc"] + top["ccList"]) if top["cc"] or top["ccList"] else ()
        bcc = _distinct(top["bcc"] + top["bccList"]) if top["bcc"] or top["bccList"] else ()
        positions: tuple[int, ...] = (event.position,)
    else:
        keys: set[tuple[str, str]] = set()
        unique_positions: set[int] = set()
        for event, _ in parsed:
            keys.add(_message_key(event))
            unique_positions.add(event.position)
        if len(keys) > 1:
            raise ValueError(f"events of {len(keys)} different messages given as one")
        ((location_id, message_key),) = keys
        ordered = _dominance_order(parsed, _ranking_channel(parsed))
        top = ordered[0]
        merged = _merged(ordered)
        cc, bcc = merged["cc"], merged["bcc"]
        positions = tuple(sorted(unique_positions))
    # `or None`: an empty value (of the single payload, or of every one) is None.
    message_type = merged["messageType"] or None
    message_type_string = merged["messageTypeString"] or None
    message_type_id = merged["messageTypeId"]
    body = merged["body"] or _empty_body(ordered)
    plain_text = merged["plainText"] or None
    return _new_entry(
        {
            "location_id": location_id,
            "message_key": message_key,
            "conversation_id": top["conversationId"],
            "contact_id": merged["contactId"] or None,
            "event_type": top["type"],
            "direction": _direction(ordered),
            "channel": channel_of(message_type, message_type_string, message_type_id),
            "message_type": message_type,
            "message_type_string": message_type_string,
            "message_type_id": message_type_id,
            "status": top["status"] or None,
            "call_status": top["callStatus"] or None,
            "call_duration": merged["callDuration"],
            "body": body,
            "plain_text": plain_text,
            "content_type": merged["contentType"] or None,
            "attachments": tuple(merged["attachments"] or ()),
            "from_": merged["from_"] or None,
            "to": tuple(merged["to"] or ()),
            "cc": cc,
            "bcc": bcc,
            "subject": merged["subject"] or None,
            "thread_id": merged["threadId"] or None,
            "email_message_id": merged["emailMessageId"] or None,
            "message_id": merged["messageId"] or None,
            "user_id": merged["userId"] or None,
            "source": merged["source"] or None,
            "conversation_provider_id": merged["conversationProviderId"] or None,
            "chat_widget_id": merged["chatWidgetId"] or None,
            "provider": merged["provider"] or None,
            "date_added": merged["dateAdded"] or None,
            "preview": preview_of(plain_text, body),
            "positions": positions,
        }
    )


def _new_entry(values: dict[str, Any]) -> MessageEntry:
    """`MessageEntry(**values)` without the frozen dataclass's `__init__`, whose 33
    `object.__setattr__` calls were a third of a one-event fold: the same instance, its
    attributes set at once. `values` must name every field, in field order; MessageEntry
    must keep an instance `__dict__` and have no `__post_init__` (tests check all three)."""
    entry = object.__new__(MessageEntry)
    entry.__dict__.update(values)
    return entry


# --- preview --------------------------------------------------------------------------------

PREVIEW_LENGTH = 160

# HighLevel marks internal-comment mentions up as "@Name<userId>ID</userId>": drop the id.
_MENTION = re.compile(r"<userId>.*?</userId>", re.IGNORECASE | re.DOTALL)
_INVISIBLE = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
_BLOCK_TAG = re.compile(
    r"</?(?:br|p|div|li|ul|ol|tr|td|th|table|h[1-6]|blockquote|hr|section|article)\b[^<>]*>",
    re.IGNORECASE,
)
# A tag is a name (letters, digits, "-", one "prefix:" as Outlook's <o:p>) ended by a space,
# "/" or ">", or a declaration; so "a < b", "<3" and the addresses and links plain text
# writes in angle brackets ("Jane <jane@example.com>", "<https://example.com>") survive.
_TAG = re.compile(r"<(?:/?[A-Za-z][\w-]*(?::[A-Za-z][\w-]*)?(?=[\s/>])|!)[^<>]*>")


def _html_text(body: str) -> str:
    if "<" not in body:  # no markup (every pattern below needs a "<"): only entities
        return html.unescape(body)
    text = _MENTION.sub("", body)
    text = _INVISIBLE.sub(" ", text)
    text = _COMMENT.sub(" ", text)
    text = _BLOCK_TAG.sub(" ", text)
    return html.unescape(_TAG.sub("", text))


def preview_of(plain_text: str | None, body: str | None) -> str:
    """A one-line text for lists: plainText, else the body's text; at most 160 characters
    (the last one "…" when cut)."""
    text = " ".join((plain_text or "").split())
    if not text and body:
        text = " ".join(_html_text(body).split())
    if len(text) > PREVIEW_LENGTH:
        text = text[: PREVIEW_LENGTH - 1].rstrip() + "…"
    return text


# --- conversation flags ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationFlags:
    unread_count: int | None
    starred: bool | None
    inbox: bool | None
    deleted: bool | None
    contact_id: str | None


_NO_TIME = datetime.min.replace(tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _envelope_time(value: Any) -> datetime | None:
    """The envelope `timestamp` (ISO-8601, naive = UTC, or epoch ms: a number or its text,
    read as `dateAdded` is); None if unusable."""
    try:
        if isinstance(value, str) and value.strip():
            text = value.strip()
            if text.isascii() and text.isdigit() and len(text) > 8:
                # Epoch milliseconds as text (8 digits or fewer: ISO 8601's basic date).
                return _EPOCH + timedelta(milliseconds=int(text))
            if text[-1] in "zZ":
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return _EPOCH + timedelta(milliseconds=value)
    except (ValueError, OverflowError):
        return None
    return None


FlagsOrder = tuple[bool, datetime, str]
"""Which unread update wins: (has an envelope time, that time, content key), greatest wins."""


def flags_order(time: datetime | None, content: str) -> FlagsOrder:
    """The order key of an update with envelope time `time` and content key `content`.

    A total order, and "greatest wins" is a max: folding updates in any grouping (all at
    once, or a stored winner against a batch's updates) picks the same one."""
    return time is not None, time or _NO_TIME, content


@dataclass(frozen=True)
class LatestFlags:
    """The winning update of some ConversationUnreadUpdate events and its order key parts."""

    flags: ConversationFlags
    time: datetime | None
    """Its envelope `timestamp` (None when missing or unusable)."""
    content: str
    """Its content key (canonical JSON without the envelope), the tie breaker."""

    @property
    def order(self) -> FlagsOrder:
        return flags_order(self.time, self.content)


def latest_flags(events: Iterable[StoredEvent]) -> LatestFlags | None:
    """The latest ConversationUnreadUpdate among `events` (greatest envelope `timestamp`;
    none sorts lowest; ties by content); None when there is none. Other and unparsable
    events are ignored."""
    best: LatestFlags | None = None
    for event in events:
        try:
            payload = parse_payload(event.payload)
        except PayloadError:
            continue
        if not isinstance(payload, ConversationUnreadUpdatePayload):
            continue
        candidate = LatestFlags(
            ConversationFlags(
                unread_count=payload.unreadCount,
                starred=payload.starred,
                inbox=payload.inbox,
                deleted=payload.deleted,
                contact_id=payload.contactId,
            ),
            _envelope_time(event.payload.get("timestamp")),
            _content_key(event.payload),
        )
        if best is None or candidate.order > best.order:
            best = candidate
    return best


def build_flags(events: Iterable[StoredEvent]) -> ConversationFlags:
    """The flags of the latest ConversationUnreadUpdate (`latest_flags`); all None when
    there is none."""
    latest = latest_flags(events)
    return latest.flags if latest else ConversationFlags(None, None, None, None, None)


# --- merges ---------------------------------------------------------------------------------


def resolve_merges(merges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{conversation id: root id} for every id of the (old, new) merge pairs of one location.

    Chains resolve transitively; an id merged into several targets follows the greatest;
    a cycle's root is its smallest id (and ids leading into it share that root).
    """
    target: dict[str, str] = {}
    ids: set[str] = set()
    for old, new in merges:
        ids.update((old, new))
        if old not in target or new > target[old]:
            target[old] = new
    roots: dict[str, str] = {}
    for start in sorted(ids):
        path: list[str] = []
        index: dict[str, int] = {}
        node = start
        while node not in roots:
            if node in index:
                cycle = path[index[node] :]
                roots.update(dict.fromkeys(cycle, min(cycle)))
                break
            index[node] = len(path)
            path.append(node)
            following = target.get(node)
            if following is None:
                roots[node] = node
                break
            node = following
        for member in path:
            roots.setdefault(member, roots[node])
    return roots
