"""Query parameters, validated: a bad value is a 400 problem naming the parameter."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from starlette.exceptions import HTTPException
from starlette.requests import Request

from conversations import dialect
from conversations.payloads import MAX_ID_BYTES

_INTEGER_TEXT = re.compile(r"-?\d+(?:\.0*)?", re.ASCII)


class Params:
    def __init__(self, request: Request, allowed: Sequence[str]) -> None:
        self._query = request.query_params
        unknown = sorted(set(self._query.keys()) - set(allowed))
        if unknown:
            raise bad(unknown[0], f"unknown parameter; allowed: {', '.join(allowed)}")

    def text(self, name: str, *, max_length: int = MAX_ID_BYTES) -> str | None:
        values = self._query.getlist(name)
        if not values:
            return None
        if len(values) > 1:
            raise bad(name, "given more than once")
        value = values[0]
        if value == "":
            return None
        if len(value) > max_length or "\x00" in value:
            raise bad(name, f"longer than {max_length} characters or not text")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.text(name, max_length=20)
        if raw is None:
            return default
        # "20.0" too: HighLevel's SDKs type their limits as floats. ASCII digits only, as
        # JSON and the webhooks spell numbers (int() would take "1_0", "٣", " 5").
        if not _INTEGER_TEXT.fullmatch(raw):
            raise bad(name, f"{raw!r} is not an integer")
        try:
            value = int(raw) if "." not in raw else _whole(float(raw))
        except (ValueError, OverflowError):
            raise bad(name, f"{raw!r} is not an integer") from None
        if not minimum <= value <= maximum:
            raise bad(name, f"{value} is not between {minimum} and {maximum}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str | None:
        raw = self.text(name)
        if raw is None:
            return default
        if raw not in choices:
            raise bad(name, f"{raw!r} is not one of {', '.join(choices)}")
        return raw

    def choices(self, name: str, choices: Sequence[str]) -> list[str] | None:
        """A comma-separated list of choices (each validated)."""
        raw = self.text(name, max_length=1024)
        if raw is None:
            return None
        values = [v.strip() for v in raw.split(",") if v.strip()]
        for value in values:
            if value not in choices:
                raise bad(name, f"{value!r} is not one of {', '.join(choices)}")
        return values or None

    def channels(self, name: str) -> list[str] | None:
        """A comma-separated list of channels as HighLevel or we spell them (`SMS`,
        `Live_Chat`, `FB`, any case): our channel names, sorted, each once. The same on
        every endpoint that takes a `channel`."""
        raw = self.text(name, max_length=1024)
        if raw is None:
            return None
        found = []
        for value in (v.strip() for v in raw.split(",")):
            channel = dialect.channel_named(value) if value else None
            if channel is None:
                raise bad(name, f"{value!r} is not a channel")
            found.append(channel)
        return sorted(set(found))

    def timestamp(self, name: str) -> datetime | None:
        """ISO-8601 (a naive time is UTC) or epoch milliseconds, as HighLevel takes; the
        milliseconds may have a fraction ("1735787045678.0": the SDKs type them as floats)
        and a minus sign (a time before 1970, as `sort` and `lastMessageDate` show one)."""
        raw = self.text(name, max_length=40)
        return None if raw is None else _timestamp(name, raw)

    def sort_value(self, name: str) -> datetime | None:
        """A timestamp sent as HighLevel's `sort` array of one element (what
        `startAfterDate` takes: "the sort value of the last document"): as `name=V`, as
        `name[]=V` (axios, so HighLevel's JavaScript SDK, writes an array that way), or
        repeated. Ours holds one value, the last message date; more is refused."""
        values = [
            value
            for key in (name, f"{name}[]")
            for value in self._query.getlist(key)
            if value != ""
        ]
        if not values:
            return None
        if len(values) > 1:
            raise bad(name, "takes one value (the `sort` of the last conversation read)")
        if len(values[0]) > 40 or "\x00" in values[0]:
            raise bad(name, "longer than 40 characters or not text")
        return _timestamp(name, values[0])


def _timestamp(name: str, raw: str) -> datetime:
    try:
        if _MILLISECONDS.fullmatch(raw):
            # timedelta, not fromtimestamp(ms / 1000): no float rounding of whole ms.
            value = _EPOCH + timedelta(milliseconds=float(raw) if "." in raw else int(raw))
        else:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise bad(name, f"{raw!r} is not an ISO-8601 time or epoch milliseconds") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# A leading minus too: a message dated before 1970 (a zero date some systems write as
# 0001-01-01) reads with a negative `sort`, which `startAfterDate` must take back.
_MILLISECONDS = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _whole(value: float) -> int:
    if not value.is_integer():
        raise ValueError(value)
    return int(value)


def bad(name: str, message: str) -> HTTPException:
    return HTTPException(400, f"query parameter {name!r}: {message}")
