"""Content codings of a webhook body (`Content-Encoding`), undone with a bound.

HighLevel signs the JSON it sends, not the bytes on the wire, so a compressed body is
decoded before its signature is checked, and the event keeps the decoded JSON. Decoding
never produces more than `limit` bytes: zlib is asked for at most what is left of the
limit, so a small body that would inflate to gigabytes (a decompression bomb) costs at
most `limit` bytes of memory before it is refused.

Pure: no I/O.
"""

from __future__ import annotations

import zlib

GZIP = ("gzip", "x-gzip")
DEFLATE = "deflate"
IDENTITY = "identity"
SUPPORTED = (*GZIP, DEFLATE, IDENTITY)
"""What `Accept-Encoding` names in a 415 answer."""

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS  # RFC 9110 8.4.1.2: "deflate" is the zlib format


class UnsupportedEncoding(Exception):
    """A coding this service does not decode (415)."""

    def __init__(self, coding: str) -> None:
        super().__init__(coding)
        self.coding = coding


class BadEncoding(Exception):
    """The body is not valid in the coding it declares (400)."""


class DecodedTooLarge(Exception):
    """The decoded body would pass the limit (413)."""


def codings(header: str) -> list[str]:
    """The codings of a Content-Encoding value, in the order they were applied."""
    return [name for name in (part.strip().lower() for part in header.split(",")) if name]


def decode(body: bytes, header: str, limit: int) -> bytes:
    """`body` with the codings `header` names undone (last applied, first undone)."""
    applied = codings(header)
    for name in applied:
        if name not in SUPPORTED:
            raise UnsupportedEncoding(name)
    for name in reversed(applied):
        if name == IDENTITY:
            continue
        body = _inflate(body, _GZIP_WBITS if name in GZIP else _ZLIB_WBITS, limit)
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    """Inflate a gzip (one or more members, RFC 1952 2.2) or zlib stream, at most `limit`
    bytes out."""
    out: list[bytes] = []
    size = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            # One byte more than is left: getting it means the limit is passed.
            chunk = inflater.decompress(rest, limit - size + 1)
        except zlib.error as error:
            raise BadEncoding(str(error)) from None
        size += len(chunk)
        if size > limit:
            raise DecodedTooLarge
        out.append(chunk)
        if not inflater.eof:  # all input used, output below the cap: it stops early
            raise BadEncoding("the compressed data ends early (truncated)")
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)
        if wbits != _GZIP_WBITS:
            raise BadEncoding("data after the end of the compressed stream")
