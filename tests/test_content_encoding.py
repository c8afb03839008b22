"""Webhook bodies with a Content-Encoding: decoded (bounded) before the signature is
checked, or refused; the pure decoder first, then end to end through `serve`."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

from conversations.encodings import (
    BadEncoding,
    DecodedTooLarge,
    UnsupportedEncoding,
    codings,
    decode,
)
from tests.helpers import Server, message

PROBLEM_JSON = "application/problem+json"
JSON_BODY = b'{"type": "InboundMessage", "body": "h\xc3\xa9llo"}'


# --- the decoder ----------------------------------------------------------------------------


def test_codings_are_read_in_the_order_applied() -> None:
    assert codings(" GZIP , identity,,x-gzip ") == ["gzip", "identity", "x-gzip"]
    assert codings("") == []


@pytest.mark.parametrize(
    ("header", "encoded"),
    [
        ("gzip", gzip.compress(JSON_BODY)),
        ("x-gzip", gzip.compress(JSON_BODY)),
        ("deflate", zlib.compress(JSON_BODY)),
        ("identity", JSON_BODY),
        ("", JSON_BODY),
        ("deflate, gzip", gzip.compress(zlib.compress(JSON_BODY))),
        # RFC 1952 2.2: a gzip file is a series of members.
        ("gzip", gzip.compress(JSON_BODY[:10]) + gzip.compress(JSON_BODY[10:])),
    ],
)
def test_supported_codings_decode(header: str, encoded: bytes) -> None:
    assert decode(encoded, header, 1024) == JSON_BODY


def test_a_body_that_decodes_to_exactly_the_limit_is_taken_and_one_byte_more_is_not() -> None:
    assert decode(gzip.compress(JSON_BODY), "gzip", len(JSON_BODY)) == JSON_BODY
    with pytest.raises(DecodedTooLarge):
        decode(gzip.compress(JSON_BODY), "gzip", len(JSON_BODY) - 1)
    split = gzip.compress(JSON_BODY[:10]) + gzip.compress(JSON_BODY[10:])
    with pytest.raises(DecodedTooLarge):  # the limit holds across members
        decode(split, "gzip", len(JSON_BODY) - 1)


def test_a_decompression_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # ~64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(DecodedTooLarge):
        decode(bomb, "gzip", 1024 * 1024)


@pytest.mark.parametrize(
    ("header", "encoded"),
    [
        ("gzip", JSON_BODY),  # not gzip at all
        ("gzip", gzip.compress(JSON_BODY)[:-6]),  # truncated
        ("gzip", b""),
        ("gzip", gzip.compress(JSON_BODY) + b"trailing garbage"),
        ("deflate", gzip.compress(JSON_BODY)),  # the wrong format
        ("deflate", zlib.compress(JSON_BODY) + b"x"),
    ],
)
def test_a_corrupt_body_is_a_bad_encoding(header: str, encoded: bytes) -> None:
    with pytest.raises(BadEncoding):
        decode(encoded, header, 1024 * 1024)


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, br"])
def test_other_codings_are_unsupported(header: str) -> None:
    with pytest.raises(UnsupportedEncoding):
        decode(gzip.compress(JSON_BODY), header, 1024 * 1024)


# --- end to end -----------------------------------------------------------------------------


def post(server: Server, body: bytes, encoded: bytes, encoding: str) -> httpx.Response:
    """POST `encoded` with `Content-Encoding: encoding`, signed over the decoded `body`
    (as HighLevel signs the JSON it sends)."""
    return httpx.post(
        f"{server.url}/webhooks/highlevel",
        content=encoded,
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": encoding,
            **server.keys.headers(body),
        },
        timeout=30,
    )


def stored_raw(engine: sqlalchemy.Engine, position: int) -> bytes:
    with engine.connect() as conn:
        raw = conn.scalar(text("SELECT raw FROM events WHERE position = :p"), {"p": position})
    return bytes(raw)


def quarantined(engine: sqlalchemy.Engine, body: bytes) -> list[sqlalchemy.RowMapping]:
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT * FROM quarantine WHERE body_sha256 = :sha ORDER BY id"),
            {"sha": hashlib.sha256(body).hexdigest()},
        )
        return list(result.mappings())


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    document: dict[str, object] = response.json()
    assert document["type"] == f"urn:conversations:problem:{kind}"
    return document


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes)],
)
def test_an_encoded_webhook_is_verified_and_stored_decoded(
    server: Server, engine: sqlalchemy.Engine, encoding: str, compress: type[bytes]
) -> None:
    raw = json.dumps(message(), indent=1).encode()
    response = post(server, raw, compress(raw), encoding)
    assert response.status_code == 201, response.text
    assert stored_raw(engine, response.json()["position"]) == raw
    again = post(server, raw, compress(raw), encoding)
    assert again.status_code == 200, again.text  # a redelivery, as uncompressed


@pytest.mark.e2e
def test_a_signature_over_the_compressed_bytes_is_not_valid(server: Server) -> None:
    raw = json.dumps(message()).encode()
    encoded = gzip.compress(raw)
    response = post(server, encoded, encoded, "gzip")
    assert_problem(response, 401, "unauthenticated")


@pytest.mark.e2e
def test_an_unsupported_encoding_is_415(server: Server) -> None:
    raw = json.dumps(message()).encode()
    response = post(server, raw, raw, "br")
    document = assert_problem(response, 415, "unsupported_encoding")
    assert "br" in str(document["detail"])
    assert "gzip" in response.headers["accept-encoding"]


@pytest.mark.e2e
def test_a_gzip_bomb_is_413(server: Server) -> None:
    bomb = gzip.compress(b" " * (8 * 1024 * 1024), compresslevel=9)
    response = post(server, b"{}", bomb, "gzip")
    assert_problem(response, 413, "too_large")


@pytest.mark.e2e
def test_a_corrupt_body_is_refused_unkept_when_signatures_are_enforced(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    raw = json.dumps(message()).encode()
    corrupt = gzip.compress(raw)[:-8]
    response = post(server, raw, corrupt, "gzip")
    document = assert_problem(response, 400, "bad_encoding")
    assert "quarantineId" not in document  # unauthenticated: never stored
    assert quarantined(engine, corrupt) == []


@pytest.mark.e2e
def test_a_corrupt_body_is_quarantined_with_its_encoding_when_verification_is_off(
    lenient_server: Server, engine: sqlalchemy.Engine
) -> None:
    raw = json.dumps(message()).encode()
    corrupt = gzip.compress(raw)[:-8]
    response = post(lenient_server, raw, corrupt, "gzip")
    document = assert_problem(response, 400, "bad_encoding")
    [row] = quarantined(engine, corrupt)
    assert row["id"] == document["quarantineId"]
    assert row["reason"] == "bad_encoding"
    assert row["headers"]["content-encoding"] == "gzip"
    assert bytes(row["body"]) == corrupt


def post_lines(server: Server, body: bytes, encoded: bytes, *encodings: str) -> httpx.Response:
    """`post`, with one `Content-Encoding` field line for each of `encodings`."""
    return httpx.post(
        f"{server.url}/webhooks/highlevel",
        content=encoded,
        headers=[
            ("Content-Type", "application/json"),
            *(("Content-Encoding", encoding) for encoding in encodings),
            *server.keys.headers(body).items(),
        ],
        timeout=30,
    )


@pytest.mark.e2e
def test_repeated_content_encoding_lines_are_one_list(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """RFC 9110 5.3: two field lines mean `identity, gzip`, not the first one alone."""
    raw = json.dumps(message()).encode()
    response = post_lines(server, raw, gzip.compress(raw), "identity", "gzip")
    assert response.status_code == 201, response.text
    assert stored_raw(engine, response.json()["position"]) == raw


@pytest.mark.e2e
def test_a_corrupt_body_keeps_every_content_encoding_line(
    lenient_server: Server, engine: sqlalchemy.Engine
) -> None:
    raw = json.dumps(message()).encode()
    corrupt = gzip.compress(raw)[:-8]
    response = post_lines(lenient_server, raw, corrupt, "identity", "gzip")
    assert_problem(response, 400, "bad_encoding")
    [row] = quarantined(engine, corrupt)
    assert row["headers"]["content-encoding"] == "identity, gzip"
