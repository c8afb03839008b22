"""A deterministic, realistic store of HighLevel conversation webhooks for `bench/replay.py`.

`write_corpus(path, events, seed)` writes JSON lines, one webhook body per line in the
order HighLevel would deliver them, until the store holds `events` distinct events
(deliveries that are not redeliveries). What it models:

- 20+ locations (more with larger stores), ~N/40 conversations, ~0.7 contacts per
  conversation (so many contacts have two conversations), conversation activity skewed
  (Pareto): a few very busy conversations, a long tail of quiet ones;
- every channel: SMS, Email (subjects, threads, `to` as a string or a list, `ccList`,
  `bccList`, the old `cc` string), CALL (answered, to voicemail, busy, no answer; a
  `pending`/`initiated` event first for some), VoiceMail, GMB, FB, IG, Live Chat,
  WhatsApp (inbound media whose attachments arrive in a second event), InternalComment
  (mentions), Custom provider SMS;
- inbound and outbound, outbound status sequences (pending -> sent -> delivered, failed or
  undelivered; WhatsApp/FB/IG/Live Chat read receipts; emails opened, then clicked), each
  status a separate webhook about the same message;
- SMS and Custom payloads without `messageId` (identity derived from the content), emails
  with only `emailMessageId`; a few deliveries without the `webhookId` envelope;
- ConversationUnreadUpdate after inbound (count up) and outbound (back to 0) messages,
  now and then a starred flag; a few ConversationUpdate merges of a contact's extra
  Live Chat conversation into its main one (later messages go to the main one);
- redeliveries: ~3 % of deliveries repeated later with the same bytes (same `webhookId`),
  and delivery order differing from `dateAdded` order (status updates delayed by retries).
"""

from __future__ import annotations

import heapq
import json
import math
import random
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_ALNUM = string.ascii_letters + string.digits
_START = datetime(2025, 3, 3, 8, 0, tzinfo=UTC).timestamp()
_SPAN = 365 * 86_400.0
_DUPLICATE_SHARE = 0.03
_NO_WEBHOOK_ID_SHARE = 0.02

# fmt: off
_WORDS = (
    "hi", "hello", "thanks", "please", "confirm", "appointment", "tomorrow", "today",
    "booking", "price", "quote", "call", "me", "back", "order", "shipped", "invoice", "paid",
    "when", "where", "how", "much", "available", "friday", "monday", "morning", "evening",
    "great", "sounds", "good", "see", "you", "then", "can", "we", "reschedule", "address",
    "directions", "open", "estimate", "deposit", "warranty", "install", "pickup", "ready",
)
_FIRST = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ivy", "Jon",
          "Kira", "Liam", "Mia", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara")
# fmt: on


@dataclass(frozen=True)
class _Channel:
    message_type: str
    type_string: str | None
    type_id: int | None
    weight: int
    kind: str  # text, email, call, voicemail, comment


_SMS = _Channel("SMS", "TYPE_SMS", 2, 34, "text")
_EMAIL = _Channel("Email", "TYPE_EMAIL", None, 16, "email")
_CALL = _Channel("CALL", "TYPE_CALL", 1, 10, "call")
_VOICEMAIL = _Channel("VoiceMail", "TYPE_VOICEMAIL", 10, 0, "voicemail")
_WHATSAPP = _Channel("WhatsApp", "TYPE_WHATSAPP", None, 8, "text")
_FB = _Channel("FB", "TYPE_FACEBOOK", None, 6, "text")
_IG = _Channel("IG", "TYPE_INSTAGRAM", None, 5, "text")
_LIVE_CHAT = _Channel("Live Chat", "TYPE_LIVE_CHAT", None, 5, "text")
_GMB = _Channel("GMB", "TYPE_GMB", None, 3, "text")
_CUSTOM = _Channel("Custom", "TYPE_CUSTOM_PROVIDER_SMS", 22, 4, "text")
_COMMENT = _Channel("InternalComment", None, None, 0, "comment")
_PRIMARY = (_SMS, _EMAIL, _CALL, _WHATSAPP, _FB, _IG, _LIVE_CHAT, _GMB, _CUSTOM)
_PHONE_CHANNELS = frozenset({"SMS", "WhatsApp", "Custom", "CALL", "VoiceMail"})
_READ_RECEIPTS = frozenset({"WhatsApp", "FB", "IG", "Live Chat"})


@dataclass
class _Location:
    location_id: str
    company_id: str
    app_id: str
    phone: str
    domain: str
    users: list[str]
    provider_id: str
    widget_id: str


@dataclass
class _Contact:
    location: _Location
    contact_id: str
    name: str
    phone: str
    email: str


@dataclass
class _Conversation:
    contact: _Contact
    conversation_id: str
    channels: list[_Channel]
    channel_weights: list[int]
    unread: int = 0
    starred: bool = False
    thread_id: str | None = None
    subject: str | None = None
    merge_into: _Conversation | None = None
    merged: bool = False


@dataclass
class CorpusStats:
    lines: int = 0
    events: int = 0
    duplicates: int = 0
    messages: int = 0
    conversations: int = 0
    contacts: int = 0
    locations: int = 0
    merges: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class _Generator:
    def __init__(self, events: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.target = events
        rng = self.rng
        n_conversations = max(100, events // 40)
        n_contacts = max(70, int(n_conversations * 0.7))
        n_locations = max(20, n_conversations // 1000)
        self.locations = [
            _Location(
                location_id=self._id(),
                company_id=self._id(),
                app_id=self._id(24),
                phone=self._phone(),
                domain=f"{self._id(8).lower()}.example.com",
                users=[self._id() for _ in range(rng.randint(2, 8))],
                provider_id=self._id(),
                widget_id=self._id(24),
            )
            for _ in range(n_locations)
        ]
        location_weights = [1 / (rank + 1) ** 0.8 for rank in range(n_locations)]  # Zipf-like
        self.contacts: list[_Contact] = []
        for n, location in enumerate(rng.choices(self.locations, location_weights, k=n_contacts)):
            first = rng.choice(_FIRST)
            self.contacts.append(
                _Contact(
                    location, self._id(), first, self._phone(), f"{first.lower()}{n}@mail.test"
                )
            )
        owners = self.contacts + rng.choices(self.contacts, k=n_conversations - n_contacts)
        self.conversations = [self._conversation(contact) for contact in owners]
        self._plan_merges(max(3, n_conversations // 150))
        activity = [min(rng.paretovariate(1.3), 100.0) for _ in self.conversations]
        self.cumulative = list(_accumulate(activity))
        self.stats = CorpusStats(
            conversations=len(self.conversations),
            contacts=len(self.contacts),
            locations=len(self.locations),
        )
        self.heap: list[tuple[float, int, bytes]] = []
        self.serial = 0
        self._app_ids = {loc.location_id: loc.app_id for loc in self.locations}

    # --- ids and text ------------------------------------------------------------------------

    def _id(self, length: int = 20) -> str:
        return "".join(self.rng.choices(_ALNUM, k=length))

    def _phone(self) -> str:
        return f"+1555{self.rng.randrange(10**7):07d}"

    def _text(self, low: int = 2, high: int = 24) -> str:
        return " ".join(self.rng.choices(_WORDS, k=self.rng.randint(low, high))).capitalize()

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _url(self, kind: str, extension: str) -> str:
        return f"https://storage.example.com/{kind}/{self._id(16)}.{extension}"

    # --- the population ----------------------------------------------------------------------

    def _conversation(self, contact: _Contact) -> _Conversation:
        rng = self.rng
        primary = rng.choices(_PRIMARY, [c.weight for c in _PRIMARY])[0]
        channels = [primary]
        for share in (0.5, 0.2):
            if rng.random() < share:
                extra = rng.choices(_PRIMARY, [c.weight for c in _PRIMARY])[0]
                if extra not in channels:
                    channels.append(extra)
        if _CALL in channels:
            channels.append(_VOICEMAIL)
        weights = [6 if c is primary else (1 if c is _VOICEMAIL else 2) for c in channels]
        return _Conversation(contact, self._id(), channels, weights)

    def _plan_merges(self, count: int) -> None:
        """A contact's second conversation becomes a Live Chat one that will be merged."""
        first: dict[str, _Conversation] = {}
        candidates: list[tuple[_Conversation, _Conversation]] = []
        for conversation in self.conversations:
            main = first.setdefault(conversation.contact.contact_id, conversation)
            if main is not conversation:
                candidates.append((conversation, main))
        for extra, main in self.rng.sample(candidates, min(count, len(candidates))):
            extra.channels, extra.channel_weights = [_LIVE_CHAT], [1]
            extra.merge_into = main

    def _pick(self) -> _Conversation:
        conversation = self.rng.choices(self.conversations, cum_weights=self.cumulative)[0]
        while conversation.merged and conversation.merge_into is not None:
            conversation = conversation.merge_into
        return conversation

    # --- one message: its events as (delay after dateAdded, document) ------------------------

    def _base(
        self, conversation: _Conversation, channel: _Channel, inbound: bool, added: float
    ) -> dict[str, Any]:
        rng = self.rng
        contact = conversation.contact
        location = contact.location
        document: dict[str, Any] = {
            "type": "InboundMessage" if inbound else "OutboundMessage",
            "locationId": location.location_id,
            "attachments": [],
            "contactId": contact.contact_id,
            "conversationId": conversation.conversation_id,
            "dateAdded": _iso(added),
            "direction": "inbound" if inbound else "outbound",
            "messageType": channel.message_type,
            "messageId": self._id(),
        }
        if not inbound:
            source = rng.choices(
                ("app", "workflow", "api", "bulk_actions", "campaign"), (60, 20, 10, 5, 5)
            )[0]
            document["source"] = source
            if source in ("app", "bulk_actions") or rng.random() < 0.3:
                document["userId"] = rng.choice(location.users)
        if channel.message_type in _PHONE_CHANNELS:
            pair = (contact.phone, location.phone)
            document["from"], document["to"] = pair if inbound else pair[::-1]
        if channel.type_id is not None:
            document["messageTypeId"] = channel.type_id
        if channel.type_string is not None:
            document["messageTypeString"] = channel.type_string
        if channel is _CUSTOM:
            document["conversationProviderId"] = location.provider_id
        if channel is _LIVE_CHAT:
            document["chatWidgetId"] = location.widget_id
        return document

    def _message(
        self, conversation: _Conversation, channel: _Channel, added: float
    ) -> list[tuple[float, dict[str, Any]]]:
        if channel.kind == "email":
            return self._email(conversation, added)
        if channel.kind == "call":
            return self._call(conversation, added)
        if channel.kind == "voicemail":
            return self._voicemail(conversation, added)
        if channel.kind == "comment":
            return self._comment(conversation, added)
        return self._text_message(conversation, channel, added)

    def _text_message(
        self, conversation: _Conversation, channel: _Channel, added: float
    ) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        inbound = rng.random() < 0.5
        base = self._base(conversation, channel, inbound, added)
        base["body"] = self._text()
        base["contentType"] = "text/plain"
        if channel in (_SMS, _CUSTOM) and rng.random() < 0.08:
            del base["messageId"]  # HighLevel's SMS examples lack it: identity is derived
        if channel in (_SMS, _WHATSAPP, _FB, _IG) and rng.random() < 0.08:
            base["attachments"] = [self._url("media", "jpg")]
        latency = rng.uniform(0.2, 2.0)
        if inbound:
            base["status"] = "delivered"
            if channel is _WHATSAPP and "messageId" in base and rng.random() < 0.2:
                # Media arrives first as an empty message; the attachments follow.
                first = {**base, "body": ""}
                later = {**base, "body": "", "attachments": [self._url("whatsapp", "jpg")]}
                return [(latency, first), (latency + rng.uniform(3, 120), later)]
            return [(latency, base)]
        steps: list[tuple[float, str]] = []
        at = latency
        if channel in (_SMS, _CUSTOM, _WHATSAPP) and rng.random() < 0.4:
            steps.append((at, "pending"))
        at += rng.uniform(0.2, 3.0)
        steps.append((at, "sent"))
        outcome = rng.random()
        if outcome < 0.86:
            at += rng.uniform(1, 60)
            steps.append((at, "delivered"))
            if channel.message_type in _READ_RECEIPTS and rng.random() < 0.4:
                steps.append((at + rng.uniform(60, 86_400), "read"))
        elif outcome < 0.93:
            steps.append((at + rng.uniform(1, 30), "failed"))
        elif outcome < 0.97:
            steps.append((at + rng.uniform(5, 300), "undelivered"))
        return [(delay, {**base, "status": status}) for delay, status in steps]

    def _email(
        self, conversation: _Conversation, added: float
    ) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        contact = conversation.contact
        location = contact.location
        inbound = rng.random() < 0.4
        base = self._base(conversation, _EMAIL, inbound, added)
        if conversation.thread_id is None or rng.random() < 0.3:
            conversation.thread_id = self._id()
            conversation.subject = " ".join(rng.choices(_WORDS, k=4)).capitalize()
            subject = conversation.subject
        else:
            subject = f"Re: {conversation.subject}"
        text = self._text(8, 80)
        base["body"] = f'<div style="font-family: verdana, geneva;">{text}</div>'
        base["plainText"] = text
        base["contentType"] = "text/html"
        base["subject"] = subject
        base["emailMessageId"] = self._id()
        base["threadId"] = conversation.thread_id
        base["provider"] = "mailgun"
        desk = f"Front Desk <desk@{location.domain}>"
        customer = f"{contact.name} <{contact.email}>"
        base["from"] = customer if inbound else desk
        recipient = desk if inbound else customer
        base["to"] = [recipient] if rng.random() < 0.7 else recipient
        if rng.random() < 0.2:
            base["ccList"] = [f"cc{rng.randrange(100)}@mail.test" for _ in range(rng.randint(1, 3))]
            base["bccList"] = [f"audit@{location.domain}"] if rng.random() < 0.3 else []
        elif rng.random() < 0.05:
            base["cc"] = f"cc{rng.randrange(100)}@mail.test"  # the older single-string shape
        if rng.random() < 0.1:
            base["attachments"] = [self._url("email", "pdf")]
        if rng.random() < 0.3:
            del base["messageId"]  # emails may carry only emailMessageId
        latency = rng.uniform(0.5, 5.0)
        if inbound:
            return [(latency, {**base, "status": "delivered"})]
        steps = [(latency, "sent")]
        outcome = rng.random()
        if outcome < 0.93:
            at = latency + rng.uniform(2, 60)
            steps.append((at, "delivered"))
            if rng.random() < 0.45:
                at += rng.uniform(60, 3 * 86_400)
                steps.append((at, "opened"))
                if rng.random() < 0.25:
                    steps.append((at + rng.uniform(10, 3_600), "clicked"))
        elif outcome < 0.97:
            steps.append((latency + rng.uniform(2, 60), "failed"))
        return [(delay, {**base, "status": status}) for delay, status in steps]

    def _call(
        self, conversation: _Conversation, added: float
    ) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        inbound = rng.random() < 0.45
        base = self._base(conversation, _CALL, inbound, added)
        latency = rng.uniform(10, 600)
        if inbound:
            if rng.random() < 0.6:
                final = {
                    "status": "completed",
                    "callStatus": "completed",
                    "callDuration": rng.randrange(15, 1_800),
                    "attachments": [self._url("recordings", "mp3")],
                }
            else:  # missed: HighLevel's docs send it as a CALL with the voicemail type id
                final = {
                    "status": "voicemail",
                    "callStatus": "voicemail",
                    "callDuration": 0,
                    "messageTypeId": 10,
                    "messageTypeString": "TYPE_VOICEMAIL",
                    "attachments": [self._url("voicemail", "mp3")],
                }
            return [(latency, {**base, **final})]
        events: list[tuple[float, dict[str, Any]]] = []
        if rng.random() < 0.35:
            events.append(
                (
                    rng.uniform(0.5, 3),
                    {**base, "status": "pending", "callStatus": "initiated", "callDuration": 0},
                )
            )
        outcome = rng.random()
        if outcome < 0.6:
            final = {
                "status": "completed",
                "callStatus": "completed",
                "callDuration": rng.randrange(5, 1_800),
                "attachments": [self._url("recordings", "mp3")],
            }
        elif outcome < 0.75:
            final = {
                "status": "completed",
                "callStatus": "voicemail",
                "callDuration": rng.randrange(10, 60),
                "attachments": [self._url("recordings", "mp3")],
            }
        else:
            final = {
                "status": "failed",
                "callStatus": rng.choice(("no-answer", "busy", "failed", "canceled")),
                "callDuration": 0,
            }
        if rng.random() < 0.15:  # older payloads: no callStatus/type string (seed example)
            final.pop("callStatus", None)
            base.pop("messageTypeString", None)
        events.append((latency, {**base, **final}))
        return events

    def _voicemail(
        self, conversation: _Conversation, added: float
    ) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        inbound = rng.random() < 0.5
        base = self._base(conversation, _VOICEMAIL, inbound, added)
        if rng.random() < 0.5:
            base.pop("messageTypeId", None)
            base.pop("messageTypeString", None)
        base["attachments"] = [self._url("voicemail", "mp3")]
        base["status"] = "voicemail" if inbound else "completed"
        return [(rng.uniform(5, 120), base)]

    def _comment(
        self, conversation: _Conversation, added: float
    ) -> list[tuple[float, dict[str, Any]]]:
        rng = self.rng
        location = conversation.contact.location
        base = self._base(conversation, _COMMENT, False, added)
        mentioned = rng.choice(location.users)
        base.pop("source", None)
        base.update(
            body=f"{self._text(3, 15)} @{rng.choice(_FIRST)}<userId>{mentioned}</userId>",
            contentType="text/plain",
            status="delivered",
            source="app",
            userId=rng.choice(location.users),
            mentions=[mentioned],
        )
        return [(rng.uniform(0.2, 2.0), base)]

    # --- scheduling and delivery ---------------------------------------------------------

    def _schedule(self, at: float, document: dict[str, Any], *, envelope: bool = True) -> None:
        rng = self.rng
        if envelope:
            location = document["locationId"]
            document = {
                **document,
                "webhookId": self._uuid(),
                "timestamp": _iso(at),
                "appId": self._app_ids[location],
                "versionId": "6571e6f5b0c2a1f4d8e3a9b7",
            }
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        self._push(at, body)
        self.stats.events += 1
        kind = document["type"]
        self.stats.by_type[kind] = self.stats.by_type.get(kind, 0) + 1
        if rng.random() < _DUPLICATE_SHARE:
            retries = 2 if rng.random() < 0.1 else 1
            retry_at = at
            for attempt in range(retries):
                retry_at += rng.uniform(5, 60) * 4**attempt
                self._push(retry_at, body)
                self.stats.duplicates += 1

    def _push(self, at: float, body: bytes) -> None:
        self.serial += 1
        heapq.heappush(self.heap, (at, self.serial, body))

    def run(self, path: Path) -> CorpusStats:
        rng = self.rng
        mean_gap = _SPAN / max(1.0, self.target / 2.1)
        clock = 0.0
        with path.open("wb", buffering=1 << 20) as out:
            while self.stats.events < self.target:
                clock += rng.expovariate(1.0 / mean_gap)
                self._deliver(out, clock)
                self._one_message(clock)
            self._deliver(out, math.inf)
        return self.stats

    def _deliver(self, out: Any, until: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= until:
            out.write(heapq.heappop(heap)[2] + b"\n")
            self.stats.lines += 1

    def _one_message(self, clock: float) -> None:
        rng = self.rng
        conversation = self._pick()
        if rng.random() < 0.04:
            channel = _COMMENT
        else:
            channel = rng.choices(conversation.channels, conversation.channel_weights)[0]
        events = self._message(conversation, channel, clock)
        events = events[: self.target - self.stats.events]
        self.stats.messages += 1
        envelope = rng.random() >= _NO_WEBHOOK_ID_SHARE
        for delay, document in events:
            self._schedule(clock + delay, document, envelope=envelope)
        first_delay = events[0][0]
        self._unread(conversation, events[0][1]["direction"], clock + first_delay)
        self._maybe_merge(conversation, clock + first_delay)

    def _unread(self, conversation: _Conversation, direction: str, at: float) -> None:
        rng = self.rng
        if self.stats.events >= self.target:
            return
        if direction == "inbound" and rng.random() < 0.6:
            conversation.unread += 1
        elif direction == "outbound" and conversation.unread and rng.random() < 0.5:
            conversation.unread = 0
        elif rng.random() < 0.01:
            conversation.starred = not conversation.starred
        else:
            return
        contact = conversation.contact
        self._schedule(
            at + rng.uniform(0.5, 20),
            {
                "type": "ConversationUnreadUpdate",
                "locationId": contact.location.location_id,
                "id": conversation.conversation_id,
                "contactId": contact.contact_id,
                "deleted": False,
                "inbox": True,
                "starred": conversation.starred,
                "unreadCount": conversation.unread,
            },
        )

    def _maybe_merge(self, conversation: _Conversation, at: float) -> None:
        target = conversation.merge_into
        if target is None or conversation.merged or self.stats.events >= self.target:
            return
        if self.rng.random() >= 0.2:
            return
        conversation.merged = True
        contact = conversation.contact
        self.stats.merges += 1
        self._schedule(
            at + self.rng.uniform(1, 60),
            {
                "type": "ConversationUpdate",
                "locationId": contact.location.location_id,
                "companyId": contact.location.company_id,
                "newConversationId": target.conversation_id,
                "oldConversationId": conversation.conversation_id,
                "contactId": contact.contact_id,
            },
        )


def _accumulate(values: list[float]) -> list[float]:
    total = 0.0
    result = []
    for value in values:
        total += value
        result.append(total)
    return result


def _iso(offset: float) -> str:
    moment = datetime.fromtimestamp(_START + offset, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_corpus(path: Path, events: int, seed: int) -> CorpusStats:
    """Write the corpus to `path` (JSON lines); same `events` and `seed`, same bytes."""
    return _Generator(events, seed).run(path)
