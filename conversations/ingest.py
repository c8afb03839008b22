"""One webhook delivery in, one answer out: verify, parse, append or quarantine.

The order of the checks is the contract: the body's Content-Encoding is undone first (a
body that does not decode is refused, or kept as received under verification `off`); an
unauthenticated body is never stored; a body that is not a JSON object is kept and
answered 400; a JSON object that is not a usable event is kept and answered 202
(HighLevel retries any non-2xx, which would only repeat a payload that will never
parse); everything else is appended and answered 201, or 200 with the original's
position when it is a redelivery. Nothing is acknowledged before it
is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from conversations.deadline import within
from conversations.encodings import (
    SUPPORTED,
    BadEncoding,
    DecodedTooLarge,
    UnsupportedEncoding,
    decode,
)
from conversations.events import (
    NewEvent,
    NotJSONError,
    UnusableJSONError,
    message_event,
    parse_json_object,
    to_new_event,
)
from conversations.metrics import Metrics
from conversations.payloads import PayloadError, parse_payload, plain_message_fields
from conversations.signatures import ED25519_HEADER, RSA_HEADER, SignatureVerifier, Verification
from conversations.store import (
    EventRejected,
    StoreUnavailable,
    is_unavailable,
    quarantine_body,
)
from conversations.writer import GroupCommitWriter

log = logging.getLogger("conversations.ingest")

Source = Literal["webhook", "import"]

# Headers worth keeping with a quarantined body: enough to re-verify and trace it.
KEPT_HEADERS = (
    "content-type",
    "content-length",
    "user-agent",
    ED25519_HEADER,
    RSA_HEADER,
    "x-forwarded-for",
    "x-request-id",
)

CHALLENGE = 'Signature realm="webhooks", headers="X-GHL-Signature X-WH-Signature"'
"""`WWW-Authenticate` of a 401 (RFC 9110 11.6.1 wants one): the headers that carry
HighLevel's signatures, for whoever wonders why the webhook was refused."""


@dataclass(frozen=True)
class Outcome:
    """The answer to one delivery: an HTTP status and a JSON document."""

    status: int
    document: dict[str, Any]
    problem: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.document.get("outcome", "error"))


def problem(status: int, kind: str, title: str, detail: str, **extra: Any) -> Outcome:
    """An RFC 9457 problem document; `outcome` names it for logs and metrics."""
    document = {
        "type": f"urn:conversations:problem:{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        # HighLevel's error members, as every problem of the HTTP API has them.
        "statusCode": status,
        "message": detail,
        "outcome": kind,
        **extra,
    }
    return Outcome(status, document, problem=True)


class Ingestor:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        writer: GroupCommitWriter,
        verifier: SignatureVerifier,
        enforce_signatures: bool,
        retry_after: int,
        metrics: Metrics,
        max_body_bytes: int,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._verifier = verifier
        self._enforce = enforce_signatures
        self._retry_after = retry_after
        self._metrics = metrics
        self._limit = max_body_bytes

    async def receive(
        self, raw: bytes, headers: Mapping[str, str], source: Source = "webhook"
    ) -> Outcome:
        """Handle one delivery, its body as received (Content-Encoding not undone yet);
        never raises."""
        kept, encoded = raw, True  # what a failure keeps: the body as received, until decoded
        try:
            body = decoded(raw, headers, self._limit)
            if isinstance(body, Rejection):
                outcome = await self._undecodable(raw, headers, body)
            else:
                kept, encoded = body, False
                outcome = await self._receive(body, headers, source)
        except StoreUnavailable as error:
            outcome = self.unavailable(str(error))
        except Exception as error:  # an answer is owed whatever happened
            outcome = await self._internal_error(kept, _kept(headers, encoded), source, error)
        self._metrics.webhooks.inc(outcome.name)
        return outcome

    async def _internal_error(
        self, raw: bytes, kept: Mapping[str, str], source: Source, error: Exception
    ) -> Outcome:
        """A bug must not lose the body: keep it aside (202) so it can be retried after
        the fix, or ask HighLevel to retry (503) if even that fails."""
        if is_unavailable(error) and isinstance(error, DBAPIError):
            return self.unavailable(type(error).__name__)
        log.exception("unexpected error while ingesting a webhook")
        try:
            qid = await self._quarantine(
                raw, kept, source, "internal_error", f"{type(error).__name__}: {error}"
            )
        except StoreUnavailable as failure:
            return self.unavailable(str(failure))
        return _quarantined(qid, "internal_error", "the service failed on this body")

    async def _undecodable(
        self, raw: bytes, headers: Mapping[str, str], rejection: Rejection
    ) -> Outcome:
        """A body whose Content-Encoding cannot be undone: a coding not supported (415,
        naming those that are), one that inflates past the limit (413), or a body that
        is not valid in its coding (400).

        Nothing of the first two is stored. The last one's signature covers the decoded
        JSON, which cannot be had, so it is unauthenticated: with signatures enforced it
        is refused and not kept (nothing unauthenticated is stored). With verification
        off it is kept in the quarantine as received, with its Content-Encoding header,
        so that `quarantine retry` decodes it as this would have.
        """
        reason, detail = rejection.reason, rejection.detail
        if reason == "unsupported_encoding":
            outcome = problem(415, reason, "Unsupported content encoding", detail)
            outcome.headers["Accept-Encoding"] = ", ".join(SUPPORTED)
            return outcome
        if reason == "too_large":
            outcome = problem(413, reason, "Payload too large", detail)
            outcome.headers["Connection"] = "close"
            return outcome
        if self._enforce:
            log.warning("webhook refused: %s", detail, extra={"bytes": len(raw)})
            return problem(400, reason, "Body cannot be decoded", detail)
        qid = await self._quarantine(raw, _kept(headers, encoded=True), "webhook", reason, detail)
        return problem(400, reason, "Body cannot be decoded", detail, quarantineId=qid)

    def unavailable(self, detail: str) -> Outcome:
        outcome = problem(
            503,
            "unavailable",
            "Database unavailable",
            # Not "not stored": a write the database did not confirm in time may commit
            # after the answer. Either way the retry is right (a duplicate, if it did).
            f"The event is not confirmed stored ({detail}); retry later: if it was stored"
            " after all, the retry is answered as a duplicate.",
        )
        outcome.headers["Retry-After"] = str(self._retry_after)
        return outcome

    async def _receive(self, raw: bytes, headers: Mapping[str, str], source: Source) -> Outcome:
        verification = check_signature(self._verifier, raw, headers)
        if self._enforce and not verification.valid:
            log.warning(
                "webhook refused: %s",
                verification.reason,
                extra={"bytes": len(raw), "signature": verification.header},
            )
            refused = problem(401, "unauthenticated", "Invalid signature", verification.reason)
            refused.headers["WWW-Authenticate"] = CHALLENGE
            return refused
        prepared = prepare(raw, source, verification)
        if isinstance(prepared, Rejection):
            qid = await self._quarantine(
                raw,
                _kept(headers),
                source,
                prepared.reason,
                prepared.detail,
                prepared.errors,
                prepared.location_id,
            )
            if prepared.reason == "not_json":
                return problem(
                    400, "not_json", "Body is not a JSON object", prepared.detail, quarantineId=qid
                )
            return _quarantined(qid, prepared.reason, prepared.detail)
        event = prepared
        try:
            result = await self._writer.append(event)
        except EventRejected as error:
            qid = await self._quarantine(
                raw,
                _kept(headers),
                source,
                "rejected_by_database",
                str(error),
                (),
                event.location_id,
            )
            return _quarantined(qid, "rejected_by_database", str(error))
        return Outcome(
            200 if result.duplicate else 201,
            {
                "outcome": "duplicate" if result.duplicate else "stored",
                "position": result.position,
                "eventId": str(result.event_id),
                "streamId": result.stream_id,
                "version": result.version,
            },
        )

    async def _quarantine(
        self,
        raw: bytes,
        headers: Mapping[str, str],
        source: Source,
        reason: str,
        detail: str,
        errors: Any = (),
        location_id: str | None = None,
    ) -> int:
        async def store() -> int:
            async with self._engine.begin() as conn:
                return await quarantine_body(
                    conn,
                    body=raw,
                    reason=reason,
                    detail=detail,
                    errors=errors,
                    headers=headers,
                    source=source,
                    location_id=location_id,
                )

        try:
            # Bounded like an append; if it commits after all, a retry is another attempt.
            qid = await within(store(), self._writer.timeout)
        except TimeoutError:
            raise StoreUnavailable("the database did not confirm the quarantine in time") from None
        except Exception as error:
            raise StoreUnavailable(f"quarantine failed: {type(error).__name__}") from error
        # A warning, as README promises: a body kept aside waits for someone to look at it
        # (`conversations quarantine retry` after a fix), at any log level but `error`.
        log.warning("webhook quarantined", extra={"reason": reason, "quarantine_id": qid})
        return qid


@dataclass(frozen=True)
class Rejection:
    """Why a body cannot become an event: `not_json`, an UnusableJSONError's reason, or
    a PayloadError reason."""

    reason: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    location_id: str | None = None


def decoded(raw: bytes, headers: Mapping[str, str], limit: int) -> bytes | Rejection:
    """The body with the Content-Encoding of `headers` undone (at most `limit` bytes), or
    why it cannot be: `unsupported_encoding`, `too_large` or `bad_encoding`.

    The one decoding of a body, for the webhook endpoint and for `quarantine retry`: a
    body kept still encoded keeps its `content-encoding` header, one kept decoded does
    not, so a retry decodes exactly what the endpoint would have.
    """
    encoding = headers.get("content-encoding")
    if encoding is None:  # the common case: nothing to undo
        return raw
    try:
        return decode(raw, encoding, limit)
    except UnsupportedEncoding as error:
        return Rejection(
            "unsupported_encoding",
            f"Content-Encoding {error.coding[:40]!r} is not supported; "
            f"use one of {', '.join(SUPPORTED)}.",
        )
    except DecodedTooLarge:
        return Rejection("too_large", f"The body decodes to more than {limit} bytes.")
    except BadEncoding as error:
        return Rejection("bad_encoding", f"The body is not valid in its Content-Encoding: {error}")


def prepare(raw: bytes, source: Source, verification: Verification | None) -> NewEvent | Rejection:
    """The pure half of ingest, shared with `import`: bytes to an event, or why not."""
    try:
        document, raw_text = parse_json_object(raw)
    except NotJSONError as error:
        return Rejection("not_json", error.detail)
    except UnusableJSONError as error:
        return Rejection(error.reason, error.detail)
    metadata = _metadata(verification, document, source)
    fields = plain_message_fields(document)
    if fields is not None:  # nearly every webhook: a message checked without pydantic
        return message_event(fields, document, raw, raw_text, metadata)
    try:
        payload = parse_payload(document)
    except PayloadError as error:
        location = document.get("locationId")
        return Rejection(
            error.reason,
            error.detail,
            list(error.errors),
            location if isinstance(location, str) and location.strip() else None,
        )
    return to_new_event(payload, document, raw, raw_text, metadata)


def _kept(headers: Mapping[str, str], encoded: bool = False) -> dict[str, str]:
    """The headers kept with a quarantined body (only built when one is kept). A body kept
    as received (`encoded`) keeps its Content-Encoding too, for a retry to undo it; a
    decoded one does not, or a retry would decode it twice."""
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    if encoded and "content-encoding" in headers:
        kept["content-encoding"] = headers["content-encoding"]
    return kept


def check_signature(
    verifier: SignatureVerifier, body: bytes, headers: Mapping[str, str]
) -> Verification:
    """The verification of `body` by the signature headers it came with (lower-case
    names), as the endpoint records it in an event's metadata."""
    ed25519, rsa = _first(headers.get(ED25519_HEADER)), _first(headers.get(RSA_HEADER))
    return verifier.verify(body, ed25519, rsa)


def _first(signature: str | None) -> str | None:
    """The first value of a signature header: one sent on several lines arrives joined
    with ", " (as any header), and the first line counts. Base64 has no comma, so a
    single value is itself."""
    if signature is None or "," not in signature:
        return signature
    return signature.partition(",")[0].strip()


def _quarantined(qid: int, reason: str, detail: str) -> Outcome:
    return Outcome(
        202, {"outcome": "quarantined", "quarantineId": qid, "reason": reason, "detail": detail}
    )


def _metadata(
    verification: Verification | None, document: Mapping[str, Any], source: Source
) -> dict[str, Any]:
    webhook_id = document.get("webhookId")
    return {
        "source": source,
        "signature": verification.header if verification else None,
        "signatureValid": verification.valid if verification else None,
        "webhookId": webhook_id if isinstance(webhook_id, str) else None,
    }
