"""The event value ingest hands to the store, its identity keys and the JSON helpers (pure)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from conversations.payloads import (
    ConversationUnreadUpdatePayload,
    MessagePayload,
    Payload,
)

__all__ = [
    "NewEvent",
    "NotJSONError",
    "canonical_json",
    "dedup_key",
    "jsonb_text",
    "message_event",
    "message_identity",
    "parse_json_object",
    "to_new_event",
]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One accepted webhook delivery, ready to append to its conversation's stream."""

    location_id: str
    stream_id: str
    event_type: str
    message_id: str | None
    occurred_at: datetime | None
    payload_json: str
    raw: bytes
    metadata: dict[str, Any]
    dedup_key: str
    payload_is_raw: bool = False
    """`payload_json` is exactly `raw` decoded (the usual case): the store then sends
    the bytes once and lets PostgreSQL decode them, instead of sending both."""


# --- canonical JSON and keys ----------------------------------------------------------------


def canonical_json(document: Any) -> str:
    """One text per JSON value: sorted keys, no whitespace, UTF-8 as is, no NaN/Infinity."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _sha256(text: str) -> str:
    # surrogatepass: a lone surrogate (legal in a JSON escape) must hash, not crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def message_identity(payload: MessagePayload) -> str:
    """The id of the message a payload describes, the same for every event about it.

    `messageId` when present, else `emailMessageId` (emails may lack `messageId`), else
    `"derived:"` + the SHA-256 of the canonical JSON of
    `[locationId, conversationId, contactId, type, messageType, direction, dateAdded, body,
    attachments, from, to]`: what describes the message itself. Delivery state (`status`,
    `callStatus`) and the envelope (`webhookId`, `timestamp`, `appId`, `versionId`) are left
    out, so a retry or a status change of the same message gets the same identity.
    `dateAdded` is hashed as sent, not parsed; `attachments` and `to` after normalisation (a
    string `to` and a one-element list are the same message).
    """
    return _identity(_fields(payload))


_Fields = Mapping[str, Any]
"""A message's field values by MessagePayload field name, as `plain_message_fields` gives
them (and `_fields` reads them off a model)."""

_DESCRIBED = (
    "locationId",
    "conversationId",
    "contactId",
    "type",
    "messageType",
    "direction",
    "raw_date_added",  # `dateAdded` as sent
    "body",
    "attachments",
    "from_",
    "to",
)


def _fields(payload: MessagePayload) -> dict[str, Any]:
    return {name: getattr(payload, name) for name in MessagePayload.model_fields}


def _identity(fields: _Fields) -> str:
    """`message_identity` on field values."""
    message_id: str | None = fields["messageId"] or fields["emailMessageId"]
    if message_id:
        return message_id
    return "derived:" + _sha256(canonical_json([fields[name] for name in _DESCRIBED]))


def dedup_key(document: dict[str, Any]) -> str:
    """The key that makes a redelivery a duplicate.

    HighLevel keeps `webhookId` across retries of one delivery; without one (or with a blank
    one, which cannot tell deliveries apart), the SHA-256 of
    the canonical JSON, so the same document with other whitespace or key order is the same
    delivery. Raises ValueError on NaN/Infinity (`parse_json_object` never yields them).
    """
    webhook_id = document.get("webhookId")
    if isinstance(webhook_id, str) and webhook_id.strip():  # a blank one is none at all
        return "webhook:" + webhook_id
    return "sha256:" + _sha256(canonical_json(document))


# --- text PostgreSQL's jsonb accepts --------------------------------------------------------

# jsonb rejects the escape \u0000 and lone surrogate escapes. Valid surrogate pairs are fine
# but also take the slow path: rare, and telling them apart in text is not worth it.
_UNSAFE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSAFE_CHAR = re.compile("[\x00\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def _scrub_text(text: str) -> str:
    return _UNSAFE_CHAR.sub(_REPLACEMENT, text)


def _scrub(document: Any) -> Any:
    """A copy with NUL and lone surrogates replaced by U+FFFD, in keys too.

    Iterative: the document can be nested nearly as deep as json.loads allows.
    """
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(document, root, 0)]
    while stack:
        value, parent, key = stack.pop()
        if isinstance(value, str):
            parent[key] = _scrub_text(value)
        elif isinstance(value, dict):
            copy: dict[Any, Any] = {}
            parent[key] = copy
            for item_key, item in value.items():
                clean_key = _scrub_text(item_key) if isinstance(item_key, str) else item_key
                copy[clean_key] = None
                stack.append((item, copy, clean_key))
        elif isinstance(value, list):
            items: list[Any] = [None] * len(value)
            parent[key] = items
            stack.extend((item, items, index) for index, item in enumerate(value))
        else:
            parent[key] = value
    return root[0]


def jsonb_text(raw_text: str, document: Any) -> str:
    """The text to store as jsonb: `raw_text` itself unless it has escapes jsonb rejects.

    Then `document` is re-serialised with NUL and lone surrogates replaced by U+FFFD; the raw
    bytes, stored beside it, keep the original.
    """
    if "\\u" not in raw_text or not _UNSAFE_ESCAPE.search(raw_text):
        return raw_text
    return json.dumps(_scrub(document), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- building the event ---------------------------------------------------------------------


def _stream_id(payload: Payload) -> str:
    if isinstance(payload, MessagePayload):
        return payload.conversationId
    if isinstance(payload, ConversationUnreadUpdatePayload):
        return payload.id
    return payload.newConversationId


def to_new_event(
    payload: Payload,
    document: dict[str, Any],
    raw: bytes,
    raw_text: str,
    metadata: dict[str, Any],
) -> NewEvent:
    """The event for one delivery; `document`/`raw_text` are what `parse_json_object` gave."""
    if isinstance(payload, MessagePayload):
        return message_event(_fields(payload), document, raw, raw_text, metadata)
    head = (payload.locationId, _stream_id(payload), payload.type, None, None)
    return _event(*head, document, raw, raw_text, metadata)


def message_event(
    fields: _Fields,
    document: dict[str, Any],
    raw: bytes,
    raw_text: str,
    metadata: dict[str, Any],
) -> NewEvent:
    """`to_new_event` for a message given by its field values (`plain_message_fields`):
    ingest's common case, without building a pydantic model."""
    head = (
        fields["locationId"],
        fields["conversationId"],
        fields["type"],
        _identity(fields),
        fields["dateAdded"],
    )
    return _event(*head, document, raw, raw_text, metadata)


def _event(
    location_id: str,
    stream_id: str,
    event_type: str,
    message_id: str | None,
    occurred_at: datetime | None,
    document: dict[str, Any],
    raw: bytes,
    raw_text: str,
    metadata: dict[str, Any],
) -> NewEvent:
    payload_json = jsonb_text(raw_text, document)
    return NewEvent(
        location_id=location_id,
        stream_id=stream_id,
        event_type=event_type,
        message_id=message_id,
        occurred_at=occurred_at,
        payload_json=payload_json,
        raw=raw,
        metadata=metadata,
        dedup_key=dedup_key(document),
        payload_is_raw=payload_json is raw_text,
    )


# --- parsing the body -----------------------------------------------------------------------


class NotJSONError(ValueError):
    """The body is not a UTF-8 JSON object; `detail` says why, for the 400 answer."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnusableJSONError(ValueError):
    """The body is a JSON object, but one we cannot use: it is kept aside with a 202 under
    `reason` (HighLevel would retry a 4xx for hours), not refused as not JSON."""

    reason = "unusable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NumberOutOfRangeError(UnusableJSONError):
    """A number beyond a 64-bit float (1e400) or an integer too long to convert (over
    4,300 digits)."""

    reason = "number_out_of_range"


class NestedTooDeeplyError(UnusableJSONError):
    """Arrays and objects nested more than MAX_NESTING levels deep."""

    reason = "nested_too_deeply"


MAX_NESTING = 128
"""The deepest nesting of objects and arrays a body may have (its own braces are level 1).

HighLevel's payloads nest three levels deep. The bound is the same for the webhook,
`import` and `quarantine retry`, and keeps every stored payload within what each reader
decodes alike: pydantic-core stops at about 200 levels, and Python's `json` at the
interpreter's recursion limit less the caller's own stack, which differs from one code
path to another (a payload stored through one path once stopped the projection worker,
which could not decode it)."""


def _nested_too_deeply() -> NestedTooDeeplyError:
    return NestedTooDeeplyError(
        f"the body nests objects and arrays more than {MAX_NESTING} levels deep"
    )


def _nests_deeper(document: dict[str, Any], text: str) -> bool:
    """Whether `document` nests deeper than MAX_NESTING (walked without recursion; the
    bracket count spares nearly every body the walk)."""
    if text.count("{") + text.count("[") <= MAX_NESTING:
        return False
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _reject_constant(name: str) -> NoReturn:
    raise NotJSONError(f"the body contains {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf, which no JSON writer can write back
        raise NumberOutOfRangeError(
            f"the body contains the number {text[:40]}, beyond the range of a 64-bit float"
        )
    return value


# Built once: json.loads with hooks builds a new decoder for every body.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)

_KINDS: tuple[tuple[type, str], ...] = (
    (list, "a JSON array"),
    (str, "a JSON string"),
    (bool, "a JSON boolean"),
    (int, "a JSON number"),
    (float, "a JSON number"),
)


def parse_json_object(raw: bytes) -> tuple[dict[str, Any], str]:
    """Decode a webhook body: strict UTF-8 (no BOM), strict JSON, an object at the top.

    Returns the document and the decoded text (the text is what jsonb_text stores). Raises
    NotJSONError, or NumberOutOfRangeError for JSON with a number we cannot hold.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raise NotJSONError("the body starts with a UTF-8 byte order mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotJSONError(
            f"the body is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    if not text.strip():
        raise NotJSONError("the body is empty")
    try:
        document = _DECODER.decode(text)
    except (NotJSONError, NumberOutOfRangeError):
        raise
    except json.JSONDecodeError as error:
        raise NotJSONError(
            f"the body is not valid JSON: {error.msg.removesuffix(' at')}"
            f" at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        if not text.lstrip().startswith("{"):
            raise NotJSONError("the body is not a JSON object (and nests too deeply)") from None
        raise _nested_too_deeply() from None
    except ValueError as error:
        if "digits" not in str(error):
            raise NotJSONError(f"the body is not valid JSON: {error}") from None
        limit = sys.get_int_max_str_digits()  # int() refuses longer digit strings
        raise NumberOutOfRangeError(
            f"the body contains an integer of more than {limit:,} digits"
        ) from None
    if isinstance(document, dict):
        if _nests_deeper(document, text):
            raise _nested_too_deeply()
        return document, text
    if document is None:
        raise NotJSONError("the body is JSON null, not an object")
    kind = next(name for cls, name in _KINDS if isinstance(document, cls))
    raise NotJSONError(f"the body is {kind}, not an object")
