"""What a projection transaction tells readers when it commits: which locations' read
models it changed.

Every transaction that writes the projections' tables (a catch-up batch, a rebuild's
switch-over) sends one NOTIFY on `CHANNEL` with the locations it touched, so a `serve`
process can keep finished read pages until they change (`conversations.api.page_cache`).
PostgreSQL delivers a NOTIFY when its transaction commits, never before and never for a
transaction that rolled back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

CHANNEL = "conversations_projected"
EVERYTHING = "*"
"""The payload that means every location changed (a rebuild, or too many to list)."""
MAX_PAYLOAD_BYTES = 7_000
"""PostgreSQL refuses payloads of 8,000 bytes or more."""

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(locations: Iterable[str] | None) -> str:
    """The payload for these locations (None: every location)."""
    if locations is None:
        return EVERYTHING
    text = _COMPACT.encode(sorted(set(locations)))
    return text if len(text.encode()) <= MAX_PAYLOAD_BYTES else EVERYTHING


def decode(payload: str) -> list[str] | None:
    """The locations a payload names; None for every location (also for one that is not
    ours to read: a reader that cannot tell must assume everything changed)."""
    if payload == EVERYTHING:
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return value
