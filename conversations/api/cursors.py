"""Opaque, signed keyset cursors.

A cursor carries the sort key of the last row a page returned, bound to the endpoint,
its filters and the caller's key, and signed with the service's secret (made by a
migration, shared by every process). A cursor that was altered, or replayed against
other filters or by another key, is refused with 400: it can never select another
tenant's rows or crash a query.
"""

from __future__ import annotations

import base64
import hmac
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from starlette.exceptions import HTTPException

from conversations.pool import run

MAX_CURSOR = 8192
"""Characters a cursor may have: it carries a few ids of at most `MAX_ID_BYTES` each."""
MAX_MERGED_CURSOR = 60 * 1024
"""Characters a contact's cursor may have: it carries a position in every location the
contact has messages in (of the key's), so it grows with them. Any cursor a request head
can carry (64 KiB) is taken: the signature, not the length, tells ours from others, and a
bound of its own would refuse the `nextCursor` the previous page gave."""

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool


class Cursors:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._secret: bytes | None = None

    @property
    def secret(self) -> bytes:
        """Read once, on first use (so the service starts even if the database is late)."""
        if self._secret is None:
            with self._engine.connect() as conn:
                value = conn.scalar(text("SELECT value FROM service_secrets WHERE name = 'cursor'"))
            if not value:
                raise RuntimeError("no cursor secret: run `conversations migrate`")
            self._secret = bytes.fromhex(value)
        return self._secret

    async def load(self, pool: AsyncConnectionPool[Any]) -> None:
        """Read the secret on the async pool, unless known (call before `encode` and
        `decode` in async endpoints, so they never block the event loop)."""
        if self._secret is not None:
            return

        async def read(conn: AsyncConnection[Any]) -> Any:
            cursor = await conn.execute("SELECT value FROM service_secrets WHERE name = 'cursor'")
            return await cursor.fetchone()

        row = await run(pool, read)
        if row is None or not row[0]:
            raise RuntimeError("no cursor secret: run `conversations migrate`")
        self._secret = bytes.fromhex(row[0])

    def _mac(self, body: bytes, context: str) -> bytes:
        # hmac.digest: one call into OpenSSL, several times cheaper than hmac.new(...).
        return hmac.digest(self.secret, body + b"\x00" + context.encode(), "sha256")[:16]

    def encode(self, position: list[Any], context: str) -> str:
        body = json.dumps(position, separators=(",", ":"), default=str).encode()
        token = base64.urlsafe_b64encode(body + self._mac(body, context)).rstrip(b"=")
        return token.decode()

    def decode(self, token: str, context: str, name: str = "cursor") -> list[Any]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            body, mac = raw[:-16], raw[-16:]
            if len(raw) <= 16 or not hmac.compare_digest(mac, self._mac(body, context)):
                raise ValueError
            position = json.loads(body)
            if not isinstance(position, list):
                raise ValueError
        except ValueError:
            raise HTTPException(
                400, f"query parameter {name!r}: not a cursor this service gave for this query"
            ) from None
        return position
