"""What is wrong with a request the HTTP/1.1 parser cannot read, or whose body it cannot
frame, said to the client in one sentence (api/protocol.py answers it)."""

from __future__ import annotations

import httptools

Refusal = tuple[int, str, str, str]
"""A refusal's status, title, problem kind and detail."""


def transfer_coding_refusal(headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    """Whether the request's `Transfer-Encoding` (lines joined) can be read, checked before
    the request reaches the application.

    `gzip, chunked`: llhttp frames the chunks and handed the application the gzip bytes
    as the body, which was then quarantined as not JSON and answered 400, a retry of it
    quarantined again each time. A transfer coding the server does not implement is a
    501, closing the connection (RFC 9112 6.1), and nothing is stored: as for a
    `Content-Encoding` it does not know (415), the sender still holds the delivery.
    One that does not end in chunked (`gzip` alone) leaves the body's length unknown: a
    400 (RFC 9112 6.3); llhttp found it only after uvicorn had started the request."""
    values = [value for name, value in headers if name == b"transfer-encoding"]
    if not values:
        return None
    codings = [
        coding.strip().lower().decode("latin-1")  # chunked takes no parameters
        for value in values
        for coding in value.split(b",")
        if coding.strip()
    ]
    if codings == ["chunked"]:
        return None
    if not codings or codings[-1] != "chunked" or codings.count("chunked") > 1:
        reason = FRAMING_REASONS["Request has invalid `Transfer-Encoding`"]
        return 400, "Bad Request", "bad_request", f"The request is not valid HTTP/1.1: {reason}"
    unknown = ", ".join(codings[:-1])[:200]
    detail = (
        f"The transfer coding {unknown!r} is not implemented, only chunked is (compress "
        "the body with Content-Encoding: gzip instead); nothing was stored."
    )
    return 501, "Not Implemented", "unsupported_transfer_coding", detail


_TARGET = (
    "the request target holds a character a URL may not (a space, a control character "
    "or a byte outside ASCII: percent-encode it)."
)
_LINE_END = "a line of its head does not end in CRLF (a bare CR or LF)."
_BOTH_LENGTHS = (
    "it has both Content-Length and Transfer-Encoding, so its body's length is ambiguous "
    "(send one of them)."
)
_CHUNK_END = "a chunk's data does not end where its size says (CRLF expected after it)."
_CHUNK_EXTENSIONS = "a chunk's extensions (after its size, from `;`) are malformed."
_REQUEST_LINE = "the request line is not `METHOD target HTTP/1.1` (a space in the URL?)."
_VERSION = "its HTTP version is neither 1.0 nor 1.1."
_HEADER_NAME = (
    "a header field's name holds a character names may not (such as a space before its colon)."
)
FRAMING_REASONS = {
    "Transfer-Encoding can't be present with Content-Length": _BOTH_LENGTHS,
    "Content-Length can't be present with Transfer-Encoding": _BOTH_LENGTHS,
    "Duplicate Content-Length": "Content-Length is sent more than once (send it once).",
    "Invalid character in Content-Length": "Content-Length is not a number of bytes "
    "(decimal digits only).",
    "Empty Content-Length": "Content-Length is empty.",
    "Content-Length overflow": "Content-Length is too large a number.",
    "Invalid character in chunk size": "a chunk's size is not a hexadecimal number.",
    "Chunk size overflow": "a chunk's size is too large a number.",
    "Missing expected CR after chunk size": "a chunk's size line does not end in CRLF.",
    "Expected LF after chunk size": "a chunk's size line does not end in CRLF.",
    "Missing expected CR after chunk data": _CHUNK_END,
    "Expected LF after chunk data": _CHUNK_END,
    "Invalid character in chunk extensions": _CHUNK_EXTENSIONS,
    "Invalid character in chunk extensions name": _CHUNK_EXTENSIONS,
    "Invalid character in chunk extensions value": _CHUNK_EXTENSIONS,
    "Invalid character in chunk extensions quote value": _CHUNK_EXTENSIONS,
    "Invalid character in chunk extensions quoted value": _CHUNK_EXTENSIONS,
    "Invalid quoted-pair in chunk extensions quoted value": _CHUNK_EXTENSIONS,
    "Missing expected CR after chunk extension name": _CHUNK_EXTENSIONS,
    "Missing expected CR after chunk extension value": _CHUNK_EXTENSIONS,
    "Empty Transfer-Encoding": "Transfer-Encoding is empty.",
    "Invalid `Transfer-Encoding` header value": "Transfer-Encoding must name chunked once, "
    "as its last coding.",
    "Request has invalid `Transfer-Encoding`": "Transfer-Encoding does not end in chunked, "
    "so its body's length cannot be known.",
    "Pause on PRI/Upgrade": "it is HTTP/2's connection preface, and this service speaks "
    "HTTP/1.1 (offer HTTP/2 as an upgrade, or send HTTP/1.1).",
    "Unexpected whitespace after header value": "a header field is folded onto a line that "
    "starts with whitespace (obs-fold, RFC 9112 5.2): send each field on one line.",
    "Unexpected space after start line": "a line after the request line starts with whitespace.",
    "Invalid header token": _HEADER_NAME,
    "Invalid header field char": _HEADER_NAME,
    "Invalid header value char": "a header field's value holds a control character.",
    "Missing expected CR after header value": _LINE_END,
    "Missing expected LF after header value": _LINE_END,
    "Expected LF after CR": _LINE_END,
    "Expected LF after headers": _LINE_END,
    "Expected CRLF after version": _LINE_END,
    "Expected CRLF": _LINE_END,
    "Invalid method encountered": "its method is not an HTTP method.",
    "Invalid char in url path": _TARGET,
    "Invalid char in url query": _TARGET,
    "Invalid char in url fragment start": _TARGET,
    "Invalid characters in url": _TARGET,
    "Unexpected char in url schema": _TARGET,
    "Unexpected char in url server": _TARGET,
    "Unexpected start char in url": _TARGET,
    "Expected HTTP/, RTSP/ or ICE/": _REQUEST_LINE,
    "Expected space after method": _REQUEST_LINE,
    "Expected space after version": _REQUEST_LINE,
    "Invalid word encountered": _REQUEST_LINE,
    "Invalid HTTP version": _VERSION,
    "Invalid major version": _VERSION,
    "Invalid minor version": _VERSION,
    "Expected dot": _VERSION,
}
"""What llhttp's reasons (its `llhttp_get_error_reason`, the text of httptools'
exceptions) mean to a client, in one sentence each. A client was told only "Invalid HTTP
request received." and had to guess which of a dozen framing faults it made."""


def framing_error(error: httptools.HttpParserError) -> str | None:
    """Why the parser refused the request, as a sentence for the problem's `detail`;
    None when a callback failed for a reason that is not the request's."""
    cause = error.__context__
    if isinstance(cause, httptools.HttpParserInvalidURLError | UnicodeDecodeError):
        return _TARGET  # raised in uvicorn's callback, as it splits the URL
    if isinstance(error, httptools.HttpParserCallbackError):
        return None
    reason = str(error)
    return FRAMING_REASONS.get(reason, f"the parser stopped at: {reason}.")
