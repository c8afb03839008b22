"""Pydantic models of HighLevel's conversation webhooks, tolerant of the shapes it really sends.

HighLevel's docs disagree with each other and with its real payloads, so the models accept
every documented variant and normalise it: recipient fields become lists, `dateAdded` an
aware UTC datetime, `callDuration` a number. Unknown fields are kept (`model_extra`).

`parse_payload` is the entry point; it raises `PayloadError` and nothing else. (`message_fields`
gives the same answer for messages as plain values, faster, for replays.) Its checks, in
order: `type` (reason "unknown_type"), `locationId` ("missing_location"), the conversation id
("missing_conversation"), then every field ("invalid_field"). An id that is absent, null,
empty or only whitespace is *missing*; an id of the wrong JSON kind (a number, say) is an
*invalid field*.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "EVENT_TYPES",
    "MESSAGE_EVENT_TYPES",
    "ConversationUnreadUpdatePayload",
    "ConversationUpdatePayload",
    "MessagePayload",
    "Payload",
    "PayloadError",
    "PayloadReason",
    "message_fields",
    "parse_payload",
    "plain_message_fields",
]

PayloadReason: TypeAlias = Literal[
    "unknown_type", "missing_location", "missing_conversation", "invalid_field"
]

MESSAGE_EVENT_TYPES: frozenset[str] = frozenset({"InboundMessage", "OutboundMessage"})
EVENT_TYPES: frozenset[str] = MESSAGE_EVENT_TYPES | {
    "ConversationUnreadUpdate",
    "ConversationUpdate",
}


class PayloadError(ValueError):
    """A webhook document that is not a conversation event this service can store.

    `reason` is a stable machine code, `detail` a sentence naming the field and what was wrong,
    `errors` the same per field as JSON-serialisable dicts (`{"field": ..., "message": ...}`).
    """

    def __init__(
        self,
        reason: PayloadReason,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason: PayloadReason = reason
        self.detail = detail
        self.errors: list[dict[str, Any]] = errors if errors is not None else []

    def __repr__(self) -> str:
        return f"PayloadError(reason={self.reason!r}, detail={self.detail!r})"


# --- describing bad values ------------------------------------------------------------------

_MAX_SHOWN = 60


def _describe(value: Any) -> str:
    """A short, safe description of a JSON value for error messages (never the whole value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Huge ints cannot even be turned into text (int max str digits).
        return f"the number {value}" if value.bit_length() <= 64 else "a very large number"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "..."
        return repr(shown)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _invalid(expected: str) -> PydanticCustomError:
    return PydanticCustomError("invalid_field", expected)


# --- field normalisers (BeforeValidators) ---------------------------------------------------


def _string_list(value: Any) -> list[str]:
    """`to`, `cc`, ...: HighLevel sends a string or an array of strings for the same field."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _invalid("expected a string or an array of strings")


def _attachments(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str | dict) for item in value):
        return value
    raise _invalid("expected an array of URLs or objects")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _date(value: Any) -> datetime | None:
    """ISO-8601 (any precision, `Z`, offset or naive = UTC) or epoch milliseconds (a number
    or its text) -> UTC."""
    if value is None:
        return None
    expected = "expected an ISO-8601 date-time or epoch milliseconds"
    try:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if text.isascii() and text.isdigit() and len(text) > 8:
                # Epoch milliseconds sent as text, like other numbers; 8 digits or fewer
                # are ISO 8601's basic date (20240508), which fromisoformat reads.
                return _EPOCH + timedelta(milliseconds=int(text))
            if text[-1] in "zZ":
                text = text[:-1] + "+00:00"
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise _invalid(expected)
            return _EPOCH + timedelta(milliseconds=value)
    except (ValueError, OverflowError):
        raise _invalid(expected) from None
    raise _invalid(expected)


# Larger integers fit no database column and only come from junk; 2**63 - 1 is BIGINT's top.
_MAX_INT = 2**63 - 1

# A number given as text: ASCII digits with an optional sign, point and exponent, as JSON
# writes numbers. (int() and float() also take "1_000", other scripts' digits, "inf".)
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _number_text(text: str, expected: str) -> int | float:
    """The number a text spells (see `_NUMBER_TEXT`), or the field's error."""
    if not _NUMBER_TEXT.fullmatch(text):
        raise _invalid(expected)
    try:
        return int(text)
    except ValueError:
        return float(text)


def _bounded(value: int, expected: str) -> int:
    if -_MAX_INT <= value <= _MAX_INT:
        return value
    raise _invalid(expected)


def _number(value: Any) -> int | float | None:
    """A finite number, or the text of one; an empty string counts as absent."""
    if value is None:
        return None
    expected = "expected a number"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        value = _number_text(text, expected)
    if isinstance(value, bool):
        raise _invalid(expected)
    if isinstance(value, int):
        return _bounded(value, expected)
    if isinstance(value, float) and math.isfinite(value):
        return _bounded(int(value), expected) if value.is_integer() else value
    raise _invalid(expected)


def _integer(value: Any) -> int | None:
    """An integer, an integral float (`2.0`), or the text of either."""
    if value is None:
        return None
    expected = "expected an integer"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        value = _number_text(text, expected)
    if isinstance(value, bool):
        raise _invalid(expected)
    if isinstance(value, int):
        return _bounded(value, expected)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return _bounded(int(value), expected)
    raise _invalid(expected)


def _boolean(value: Any) -> bool | None:
    """JSON booleans and the strings "true"/"false" (any case); numbers are not booleans."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    raise _invalid("expected true or false")


def _blank_is_absent(value: Any) -> Any:
    """An optional id that is empty or only whitespace names nothing: it counts as absent
    (a message without `messageId` gets a derived identity, not "   " shared with others)."""
    return None if isinstance(value, str) and not value.strip() else value


OptStr: TypeAlias = StrictStr | None
OptId: TypeAlias = Annotated[StrictStr | None, BeforeValidator(_blank_is_absent)]
StrList: TypeAlias = Annotated[list[str], BeforeValidator(_string_list)]
Attachments: TypeAlias = Annotated[list[str | dict[str, Any]], BeforeValidator(_attachments)]
UtcDateTime: TypeAlias = Annotated[datetime | None, BeforeValidator(_date)]
Number: TypeAlias = Annotated[int | float | None, BeforeValidator(_number)]
Integer: TypeAlias = Annotated[int | None, BeforeValidator(_integer)]
Boolean: TypeAlias = Annotated[bool | None, BeforeValidator(_boolean)]

_CONFIG = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
_MESSAGE_CONFIG = ConfigDict(extra="allow", frozen=True)


def _as_sent(value: Any) -> Any:
    """The raw `dateAdded`: as sent, but a datetime given in Python as its ISO text."""
    return value.isoformat() if isinstance(value, datetime) else value


# --- models ---------------------------------------------------------------------------------


class MessagePayload(BaseModel):
    """`InboundMessage` / `OutboundMessage`: one message (SMS, call, voicemail, email, ...).

    `direction` may contradict `type` (HighLevel's own examples do); both are kept as sent.
    """

    model_config = _MESSAGE_CONFIG

    type: Literal["InboundMessage", "OutboundMessage"]
    locationId: StrictStr
    conversationId: StrictStr
    messageId: OptId = None
    emailMessageId: OptId = None
    threadId: OptStr = None
    userId: OptStr = None
    contactId: OptId = None
    body: OptStr = None
    status: OptStr = None
    direction: OptStr = None
    messageType: OptStr = None
    messageTypeString: OptStr = None
    messageTypeId: Integer = None
    contentType: OptStr = None
    source: OptStr = None
    subject: OptStr = None
    # `from` is a keyword; `from_` is accepted too (populate_by_name would also let a document
    # set `raw_date_added` by its name, so this model spells the two keys out instead).
    from_: OptStr = Field(
        default=None, validation_alias=AliasChoices("from", "from_"), serialization_alias="from"
    )
    provider: OptStr = None
    plainText: OptStr = None
    callStatus: OptStr = None
    callDuration: Number = None
    conversationProviderId: OptStr = None
    chatWidgetId: OptStr = None
    dateAdded: UtcDateTime = None
    to: StrList = Field(default_factory=list)
    cc: StrList = Field(default_factory=list)
    bcc: StrList = Field(default_factory=list)
    ccList: StrList = Field(default_factory=list)
    bccList: StrList = Field(default_factory=list)
    mentions: StrList = Field(default_factory=list)
    attachments: Attachments = Field(default_factory=list)

    # `dateAdded` as sent, read from the same key as `dateAdded` (a field, not a wrap validator
    # storing a private attribute: that cost a quarter of the validation). Typed Any so it
    # never adds an error of its own; left out of dumps and repr.
    raw_date_added: Annotated[Any, BeforeValidator(_as_sent)] = Field(
        default=None, validation_alias="dateAdded", exclude=True, repr=False
    )

    @property
    def date_added_raw(self) -> str | int | float | None:
        """`dateAdded` exactly as sent (message identity hashes it, not the parsed value)."""
        raw: str | int | float | None = self.raw_date_added
        return raw


class ConversationUnreadUpdatePayload(BaseModel):
    """Unread count / starred / inbox / deleted flags changed; `id` is the conversation id."""

    model_config = _CONFIG

    type: Literal["ConversationUnreadUpdate"]
    locationId: StrictStr
    id: StrictStr
    contactId: OptId = None
    unreadCount: Integer = None
    starred: Boolean = None
    inbox: Boolean = None
    deleted: Boolean = None


class ConversationUpdatePayload(BaseModel):
    """A live-chat conversation was merged: `oldConversationId` -> `newConversationId`."""

    model_config = _CONFIG

    type: Literal["ConversationUpdate"]
    locationId: StrictStr
    oldConversationId: StrictStr
    newConversationId: StrictStr
    contactId: OptId = None
    companyId: OptStr = None


Payload: TypeAlias = MessagePayload | ConversationUnreadUpdatePayload | ConversationUpdatePayload

_MODELS: dict[str, type[Payload]] = {
    "InboundMessage": MessagePayload,
    "OutboundMessage": MessagePayload,
    "ConversationUnreadUpdate": ConversationUnreadUpdatePayload,
    "ConversationUpdate": ConversationUpdatePayload,
}

_CONVERSATION_FIELDS: dict[str, tuple[str, ...]] = {
    "InboundMessage": ("conversationId",),
    "OutboundMessage": ("conversationId",),
    "ConversationUnreadUpdate": ("id",),
    "ConversationUpdate": ("oldConversationId", "newConversationId"),
}


# --- parse_payload --------------------------------------------------------------------------


def _sentence(field: str, message: str) -> str:
    return (
        f"field '{field}' {message}" if message.startswith("is ") else f"field '{field}': {message}"
    )


def _field_error(reason: PayloadReason, field: str, message: str) -> PayloadError:
    return PayloadError(reason, _sentence(field, message), [{"field": field, "message": message}])


def _check_id(document: dict[str, Any], field: str, reason: PayloadReason) -> None:
    """Absent/null/blank -> `reason`; present but not a string -> invalid_field."""
    if field not in document:
        raise _field_error(reason, field, "is missing")
    value = document[field]
    if value is None:
        raise _field_error(reason, field, "is null")
    if not isinstance(value, str):
        raise _field_error("invalid_field", field, f"expected a string, got {_describe(value)}")
    if not value.strip():
        raise _field_error(reason, field, f"is empty ({_describe(value)})")


MAX_ID_BYTES = 512
"""The longest id (in UTF-8 bytes) an event may carry. Ids are keys of the store's and the
projections' indexes, whose entries PostgreSQL caps near 2.7 kB: a longer id would be refused
by the database, or worse, stop a projection. HighLevel's ids are about 20 characters and an
email's Message-ID rarely passes 250; a longer one is quarantined as `invalid_field`."""

_BOUNDED_IDS = (
    "locationId",
    "conversationId",
    "contactId",
    "messageId",
    "emailMessageId",
    "id",
    "oldConversationId",
    "newConversationId",
    "webhookId",
)


# What no text column stores (PostgreSQL refuses NUL; a lone surrogate is not UTF-8). Other
# fields keep them in the raw bytes and show U+FFFD; an id would have to change to be stored.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_id_values(document: dict[str, Any]) -> None:
    """Ids the store can key: at most MAX_ID_BYTES, and nothing a text column refuses."""
    for field in _BOUNDED_IDS:
        value = document.get(field)
        if not isinstance(value, str):
            continue
        if len(value) * 4 > MAX_ID_BYTES:
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_ID_BYTES:
                message = f"is {size} bytes long; ids longer than {MAX_ID_BYTES} bytes are not kept"
                raise _field_error("invalid_field", field, message)
        if "\x00" in value or (not value.isascii() and _UNSTORABLE.search(value)):
            message = "contains a NUL character or an unpaired surrogate, which no id can hold"
            raise _field_error("invalid_field", field, message)
    location = document.get("locationId")
    if isinstance(location, str) and location.strip() and not nameable_location(location):
        message = (
            "has whitespace at an end, a comma or a character that is not printable: no API"
            " key could name this location"
        )
        raise _field_error("invalid_field", "locationId", message)


def nameable_location(location: str) -> bool:
    """Whether an API key can name `location` (`keys create --location`): events stored
    under any other location id would be readable by no location-scoped key. A comma is
    out too: `--location A,B` names two locations (HighLevel's ids hold none), so a stored
    "A,B" would be read by a key for A and B instead of by its own."""
    return location.isprintable() and location == location.strip() and "," not in location


_PYDANTIC_MESSAGES: dict[str, str] = {
    "string_type": "expected a string",
    "literal_error": "expected one of the event types",
    "dict_type": "expected an object",
    "invalid_key": "keys must be strings",
}


def _field_name(loc: tuple[str | int, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name or "(document)"


def _translate(error: ValidationError) -> PayloadError:
    errors: list[dict[str, Any]] = []
    for item in error.errors(include_url=False, include_context=False):
        field = _field_name(item["loc"])
        if item["type"] == "missing":
            message = "is missing"
        else:
            expected = _PYDANTIC_MESSAGES.get(item["type"], item["msg"])
            message = f"{expected}, got {_describe(item.get('input'))}"
        errors.append({"field": field, "message": message})
    shown = "; ".join(_sentence(e["field"], e["message"]) for e in errors[:5])
    if len(errors) > 5:
        shown += f"; and {len(errors) - 5} more"
    return PayloadError("invalid_field", shown, errors)


def parse_payload(document: dict[str, Any]) -> Payload:
    """Validate one decoded webhook document; raise `PayloadError` (only) if it is unusable."""
    if not isinstance(document, dict):
        raise PayloadError(
            "unknown_type",
            f"the payload is {_describe(document)}, not an object with a 'type'",
            [{"field": "type", "message": "the payload is not an object"}],
        )
    event_type = document.get("type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        got = "nothing" if "type" not in document else _describe(event_type)
        message = f"expected one of {', '.join(sorted(EVENT_TYPES))}, got {got}"
        raise _field_error("unknown_type", "type", message)
    _check_id(document, "locationId", "missing_location")
    for field in _CONVERSATION_FIELDS[event_type]:
        _check_id(document, field, "missing_conversation")
    _check_id_values(document)
    validate: Callable[[Any], Payload] = _MODELS[event_type].model_validate
    try:
        return validate(document)
    except ValidationError as error:
        raise _translate(error) from None


# --- message_fields: parse_payload's answer for a message, without pydantic -----------------

# Python calls are the cost here, so the common shapes are checked inline and the
# normalisers above are only called for the others.

_MESSAGE_FIELDS: tuple[str, ...] = tuple(MessagePayload.model_fields)
_S = TypeVar("_S")


class _Unsure(Exception):
    """The fast path cannot vouch for a value: pydantic decides."""


def _plain_object(value: Any) -> bool:
    return type(value) is dict and _STRING.issuperset(map(type, value))


def _plain_attachments(value: Any) -> list[str | dict[str, Any]]:
    if value is None:
        return []
    if type(value) is str:
        return [value] if value else []
    if _plain_object(value):
        return [value]
    if type(value) is list and all(type(item) is str or _plain_object(item) for item in value):
        return value
    raise _Unsure


def _plain_scalar(value: Any, normalise: Callable[[Any], _S]) -> _S:
    """A number or date field given as a JSON string or number, through its normaliser."""
    if type(value) is str or type(value) is int or type(value) is float:
        try:
            return normalise(value)
        except PydanticCustomError:
            raise _Unsure from None
    raise _Unsure


# The MessagePayload fields by kind, as `_plain_message` reads them (a test checks that they
# are the model's fields).
_PLAIN_STRINGS: tuple[str, ...] = (
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
    "provider",
    "plainText",
    "callStatus",
    "conversationProviderId",
    "chatWidgetId",
)
_PLAIN_LISTS: tuple[str, ...] = ("to", "cc", "bcc", "ccList", "bccList", "mentions")
_OPTIONAL_IDS: tuple[str, ...] = ("messageId", "emailMessageId", "contactId")  # `OptId`s
_PLAIN_KEYS = frozenset(
    {
        *_PLAIN_STRINGS,
        *_PLAIN_LISTS,
        "type",
        "locationId",
        "conversationId",
        "from",
        "attachments",
        "messageTypeId",
        "callDuration",
        "dateAdded",
    }
)
_PLAIN_DEFAULTS: dict[str, None] = dict.fromkeys(_MESSAGE_FIELDS)
_STRING = frozenset({str})
_STRING_OR_NONE = frozenset({str, type(None)})


def message_fields(document: Any) -> dict[str, Any] | None:
    """The field values of `parse_payload(document)` (MessagePayload field name -> value) when
    it is a message; None when it raises or is another event type.

    For replays, which fold stored payloads by the million: a document whose fields all have
    plain JSON shapes (exact `str`, `int`, `float`, `list`, `dict`: what ingest stores) is
    checked and normalised here by the model's own rules, without pydantic and faster; any
    other goes through `parse_payload`. The answer is the same either way (a test checks),
    but for lists and objects it may share with `document`: treat it as read-only.
    """
    try:
        return _plain_message(document)
    except _Unsure:
        pass
    try:
        payload = parse_payload(document)
    except PayloadError:
        return None
    if not isinstance(payload, MessagePayload):
        return None
    return {name: getattr(payload, name) for name in _MESSAGE_FIELDS}


def plain_message_fields(document: Any) -> dict[str, Any] | None:
    """`message_fields`' fast half alone: the field values of a message of plain JSON shapes,
    or None when pydantic must decide (`parse_payload` then gives the answer, or the error).

    For ingest: nearly every webhook is such a message, and this costs about two thirds
    of `parse_payload`'s CPU. Read-only, as for `message_fields`.
    """
    try:
        return _plain_message(document)
    except _Unsure:
        return None


def _plain_message(document: Any) -> dict[str, Any]:
    """`message_fields` for a document of plain JSON shapes; raises `_Unsure` for any other,
    and for whatever `parse_payload` rejects or reads as another event type."""
    if type(document) is not dict:
        raise _Unsure
    # The document over the defaults, less its unknown keys (a key that is not a string can
    # only be one of those); then every field checked and normalised in place.
    values: dict[str, Any] = {**_PLAIN_DEFAULTS, **document}
    kind = values["type"]
    location = values["locationId"]
    conversation = values["conversationId"]
    if not (
        type(kind) is str
        and kind in MESSAGE_EVENT_TYPES
        and type(location) is str
        and location.strip()
        and type(conversation) is str
        and conversation.strip()
        and "from_" not in document  # by name: which of `from`/`from_` wins is pydantic's rule
    ):
        raise _Unsure
    try:
        _check_id_values(document)
    except PayloadError:
        raise _Unsure from None
    for key in document.keys() - _PLAIN_KEYS:
        if type(key) is not str:
            raise _Unsure
        del values[key]
    if not _STRING_OR_NONE.issuperset(map(type, map(values.__getitem__, _PLAIN_STRINGS))):
        raise _Unsure
    for name in _OPTIONAL_IDS:
        values[name] = _blank_is_absent(values[name])
    sender = values.pop("from", None)
    if sender is not None and type(sender) is not str:
        raise _Unsure
    values["from_"] = sender
    for name in _PLAIN_LISTS:
        value = values[name]
        if value is None:
            values[name] = []
        elif type(value) is str:
            values[name] = [value] if value else []
        elif type(value) is not list or (value and not _STRING.issuperset(map(type, value))):
            raise _Unsure
    value = values["attachments"]
    if value is None:
        values["attachments"] = []
    elif type(value) is not list or value:
        values["attachments"] = _plain_attachments(value)
    value = values["messageTypeId"]
    if value is not None and not (type(value) is int and -_MAX_INT <= value <= _MAX_INT):
        values["messageTypeId"] = _plain_scalar(value, _integer)
    value = values["callDuration"]
    if value is not None and not (type(value) is int and -_MAX_INT <= value <= _MAX_INT):
        values["callDuration"] = _plain_scalar(value, _number)
    value = values["dateAdded"]
    values["raw_date_added"] = value
    if value is not None:
        values["dateAdded"] = _plain_scalar(value, _date)
    return values
