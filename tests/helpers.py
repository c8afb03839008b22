"""What tests share: signing keys, a handle on a running server, payload builders."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import sqlalchemy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

FIXTURES = Path(__file__).parent / "fixtures" / "highlevel"

Scheme = Literal["ed25519", "rsa", "none"]


def _public_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass(frozen=True)
class KeyPair:
    """Test-owned stand-ins for HighLevel's signing keys."""

    ed25519_key: ed25519.Ed25519PrivateKey
    rsa_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(
            ed25519.Ed25519PrivateKey.generate(),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    @property
    def ed25519_public_pem(self) -> str:
        return _public_pem(self.ed25519_key)

    @property
    def rsa_public_pem(self) -> str:
        return _public_pem(self.rsa_key)

    def headers(self, body: bytes, scheme: Scheme = "ed25519") -> dict[str, str]:
        if scheme == "ed25519":
            return {"X-GHL-Signature": base64.b64encode(self.ed25519_key.sign(body)).decode()}
        if scheme == "rsa":
            signature = self.rsa_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
            return {"X-WH-Signature": base64.b64encode(signature).decode()}
        return {}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    keys: KeyPair
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=1000))
    """The last lines the server wrote (stdout and stderr)."""

    def __post_init__(self) -> None:
        # Drain the pipe: a server whose output nobody reads blocks on its next log line
        # once the pipe buffer (64 KiB) is full, and then answers nothing at all.
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()

    def _read_output(self) -> None:
        if self.process.stdout is None:
            return
        for line in self.process.stdout:
            self.lines.append(line.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def post(
        self,
        body: bytes | dict[str, Any],
        scheme: Scheme = "ed25519",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST a webhook as HighLevel would: the exact bytes, signed."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **self.keys.headers(raw, scheme)}
        sent.update(headers or {})
        return httpx.post(f"{self.url}/webhooks/highlevel", content=raw, headers=sent, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drain.join(timeout=5)


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


def fixture_names() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def new_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:20]


def message(**fields: Any) -> dict[str, Any]:
    """A fresh InboundMessage SMS in its own location and conversation."""
    document: dict[str, Any] = {
        "type": "InboundMessage",
        "locationId": new_id("loc"),
        "attachments": [],
        "body": "hello",
        "contactId": new_id("con"),
        "contentType": "text/plain",
        "conversationId": new_id("cnv"),
        "dateAdded": "2024-05-08T12:00:56.193Z",
        "direction": "inbound",
        "messageType": "SMS",
        "messageId": new_id("msg"),
        "status": "delivered",
        "webhookId": str(uuid.uuid4()),
    }
    document.update(fields)
    return {key: value for key, value in document.items() if value is not ...}


REFUSED = "refused-"
"""The prefix of the conversations `events_refusing` makes the database refuse."""


@contextmanager
def events_refusing(engine: sqlalchemy.Engine) -> Iterator[str]:
    """While open, PostgreSQL refuses every event of a conversation whose id starts with
    `REFUSED` (a check constraint, NOT VALID: stored rows are not checked). Validation
    now keeps out what a text column cannot hold, so this is how a body that passes it
    but that the database still will not store is made."""
    name = f"test_refuse_{uuid.uuid4().hex[:8]}"
    check = f"CHECK (stream_id NOT LIKE '{REFUSED}%') NOT VALID"
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"ALTER TABLE events ADD CONSTRAINT {name} {check}"))
    try:
        yield REFUSED
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"ALTER TABLE events DROP CONSTRAINT {name}"))
