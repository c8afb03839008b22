"""Location-scoped API keys: created once, stored only as hashes, revocable.

A key reads as `cvk_<key id>_<secret>`. The key id is public (it names the key in `keys
list` and `keys revoke`); the secret is 256 random bits, so a plain SHA-256 is a sound
hash for it (no password stretching needed for machine-generated secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from conversations.payloads import MAX_ID_BYTES, nameable_location
from conversations.schema import metadata

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

PREFIX = "cvk"

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("secret_sha256", Text, nullable=False),
    Column("locations", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("all_locations", Boolean, nullable=False, server_default=text("false")),
    Column("label", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Scope:
    """What one key may read."""

    key_id: str
    locations: frozenset[str]
    all_locations: bool

    def allows(self, location_id: str) -> bool:
        return self.all_locations or location_id in self.locations


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    locations: tuple[str, ...]
    all_locations: bool
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


MAX_KEY_CHARS = 128
"""More than any key `create_key` makes (about 60 characters): a longer token is no key."""


def _split(token: str) -> tuple[str, str] | None:
    token = token.strip()
    if len(token) > MAX_KEY_CHARS:
        return None
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or not key_id or not secret or not key_id.isalnum():
        return None
    return key_id, secret


def create_key(
    conn: Connection,
    locations: Sequence[str],
    *,
    all_locations: bool = False,
    label: str | None = None,
) -> str:
    """Store a new key's hash; returns the key itself, which is never shown again."""
    if not all_locations and not [loc for loc in locations if loc.strip()]:
        raise ValueError("a key needs at least one location, or all locations")
    for location in locations:  # one no event can have would make a key that sees nothing
        name = location.strip()
        if len(name.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES or not (
            nameable_location(name)
        ):
            raise ValueError(
                f"location {location[:40]!r}: not a location id (longer than "
                f"{MAX_ID_BYTES} bytes, or holding control characters or a comma)"
            )
    if label is not None and not _storable(label):
        # Bytes that are not UTF-8 on the command line reach Python as lone surrogates,
        # which no text column takes: it was the codec's "surrogates not allowed".
        raise ValueError("--label: not UTF-8 text (or holding a NUL): give the label as UTF-8")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        insert(api_keys).values(
            key_id=key_id,
            secret_sha256=_hash(secret),
            locations=sorted({loc.strip() for loc in locations if loc.strip()}),
            all_locations=all_locations,
            label=label,
        )
    )
    return f"{PREFIX}_{key_id}_{secret}"


def _storable(text_: str) -> bool:
    """Whether PostgreSQL can store `text_`: UTF-8 (no lone surrogate), no NUL."""
    try:
        text_.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text_


def list_keys(conn: Connection) -> list[KeyInfo]:
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id))
    return [
        KeyInfo(
            r.key_id,
            tuple(r.locations),
            r.all_locations,
            r.label,
            r.created_at,
            r.revoked_at,
        )
        for r in rows
    ]


def shown(key: str) -> str:
    """What a message may show of `key`, a key id or a whole key given on the command
    line: only a key id, never a secret (a terminal's scrollback and a log collecting
    stderr keep it). Anything else, perhaps a key mistyped or pasted with more around it,
    is not shown at all."""
    parts = _split(key)
    key_id = parts[0] if parts else key.strip()
    if key_id.isascii() and key_id.isalnum() and len(key_id) <= _SHOWN_ID_CHARS:
        return f"with id {key_id!r}"
    return "matching the argument (not shown: neither a key id nor a whole key)"


_SHOWN_ID_CHARS = 16
"""Key ids are 12 characters; a longer word may be a secret (43 characters)."""


def revoke_key(conn: Connection, key: str) -> bool:
    """Revoke by key id (or by the whole key); False if there is no such live key."""
    parts = _split(key)
    key_id = parts[0] if parts else key.strip()
    if not _storable(key_id):  # no key id holds it: the codec's error was exit 2
        return False
    result = conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    return result.rowcount == 1


def lookup(conn: Connection, token: str) -> Scope | None:
    """The scope of a presented key, or None when it is unknown, wrong or revoked."""
    parts = _split(token)
    if parts is None:
        return None
    key_id, secret = parts
    row = conn.execute(
        select(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.secret_sha256, _hash(secret)):
        return None
    return Scope(row.key_id, frozenset(row.locations), row.all_locations)


_LOOKUP = (
    "SELECT key_id, secret_sha256, locations, all_locations FROM api_keys"
    " WHERE key_id = %s AND revoked_at IS NULL"
)


async def lookup_async(conn: AsyncConnection[Any], token: str) -> Scope | None:
    """`lookup` on an async psycopg connection."""
    parts = _split(token)
    if parts is None:
        return None
    key_id, secret = parts
    cursor = await conn.execute(_LOOKUP, (key_id,))
    row = await cursor.fetchone()
    if row is None or not hmac.compare_digest(row[1], _hash(secret)):
        return None
    return Scope(row[0], frozenset(row[2]), row[3])


class KeyCache:
    """Remembers looked-up keys for a few seconds so a read costs no extra query; a
    revocation takes effect within `ttl` seconds in every process. Only tokens shaped
    as keys are remembered: anything a client sends as one would otherwise be kept
    (10,000 headers of a megabyte each: gigabytes held for requests without a key)."""

    def __init__(self, engine: Engine, ttl: float = 2.0) -> None:
        self._engine = engine
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Scope | None]] = {}

    def cached(self, token: str) -> tuple[bool, Scope | None]:
        """`(True, scope)` while a lookup of `token` is fresh (no query), else
        `(False, None)`: for the event loop, which must not wait on the database."""
        cached = self._entries.get(token)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return True, cached[1]
        return False, None

    def scope(self, token: str) -> Scope | None:
        if _split(token) is None:
            return None  # no query made: nothing to remember (and a token may be huge)
        now = time.monotonic()
        fresh, scope = self.cached(token)
        if fresh:
            return scope
        with self._engine.connect() as conn:
            scope = lookup(conn, token)
        self._remember(token, now, scope)
        return scope

    async def scope_async(self, token: str, pool: AsyncConnectionPool[Any]) -> Scope | None:
        """`scope` for async endpoints: a miss is looked up on the async pool."""
        if _split(token) is None:
            return None
        now = time.monotonic()
        fresh, scope = self.cached(token)
        if fresh:
            return scope
        from conversations.pool import run  # the CLI imports this module, not the pool

        scope = await run(pool, lambda conn: lookup_async(conn, token))
        self._remember(token, now, scope)
        return scope

    def __len__(self) -> int:
        """Tokens remembered (each at most `MAX_KEY_CHARS` long)."""
        return len(self._entries)

    def _remember(self, token: str, now: float, scope: Scope | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[token] = (now, scope)
