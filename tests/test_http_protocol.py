"""Requests that offer a protocol upgrade (`Connection: Upgrade`, `Upgrade: h2c`, as curl
`--http2`, Java's RestClient and Ktor send on `http://` URLs) are answered as if the offer
had not been made: the webhook's body is read and stored, and the connection goes on
serving the requests after it. Spoken over raw sockets, byte for byte."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy

from tests.conftest import start_server
from tests.helpers import KeyPair, Server, message
from tests.test_content_encoding import quarantined
from tests.test_webhooks import events_in, only_event

Answer = tuple[int, dict[str, str], bytes]


def exchange(server: Server, segments: list[bytes], answers: int) -> list[Answer]:
    """Send `segments` on one connection, a moment apart (so the server reads them one by
    one), and read `answers` responses."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for segment in segments:
            sock.sendall(segment)
            time.sleep(0.05)
        received, parsed = b"", list[Answer]()
        while len(parsed) < answers:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {parsed} in {received!r}"
            received += chunk
            while (answer := _response(received)) is not None:
                length, status, headers, body = answer
                parsed.append((status, headers, body))
                received = received[length:]
    return parsed


def _response(data: bytes) -> tuple[int, int, dict[str, str], bytes] | None:
    """The first whole response in `data` (length, status, headers, body), or None."""
    head, found, rest = data.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    size = int(headers.get("content-length", "0"))
    if len(rest) < size:
        return None
    return len(head) + 4 + size, int(lines[0].split()[1]), headers, rest[:size]


def webhook(server: Server, body: bytes, *, offer: str, chunked: bool = False) -> bytes:
    """A signed webhook request head offering an upgrade to `offer`, then its body."""
    signature = server.keys.headers(body)["X-GHL-Signature"]
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n"
    head = (
        "POST /webhooks/highlevel HTTP/1.1\r\nHost: hooks.example\r\n"
        f"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: {offer}\r\n"
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Type: application/json\r\n"
        f"X-GHL-Signature: {signature}\r\n{framing}\r\n"
    ).encode()
    if not chunked:
        return head + body
    half = len(body) // 2
    return (
        head
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
        + b"0\r\n\r\n"
    )


@pytest.mark.parametrize("offer", ["h2c", "websocket"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("split", [False, True], ids=["one-segment", "segments"])
def test_a_webhook_offering_an_upgrade_is_stored_as_sent(
    server: Server, engine: sqlalchemy.Engine, offer: str, chunked: bool, split: bool
) -> None:
    document = message()
    body = json.dumps(document).encode()
    request = webhook(server, body, offer=offer, chunked=chunked)
    headers_end = request.index(b"\r\n\r\n") + 4
    segments = (
        [request[: headers_end + 10], request[headers_end + 10 : -20], request[-20:]]
        if split
        else [request]
    )

    [(status, headers, answer)] = exchange(server, segments, 1)

    assert status == 201, answer
    assert "upgrade" not in headers
    stored = only_event(engine, document["locationId"])
    assert json.loads(answer)["position"] == stored["position"]
    assert bytes(stored["raw"]) == body


def test_requests_after_an_upgrade_offer_on_the_connection_are_served(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """Pipelined: the offering webhook, a GET offering an upgrade too, then a plain GET."""
    document = message()
    body = json.dumps(document).encode()
    get_offering = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    plain_get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    answers = exchange(server, [webhook(server, body, offer="h2c") + get_offering + plain_get], 3)

    assert [status for status, _, _ in answers] == [201, 200, 200], answers
    assert bytes(only_event(engine, document["locationId"])["raw"]) == body


POST = b"POST /webhooks/highlevel HTTP/1.1\r\nHost: x\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (
            POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", "a chunk's size is not a hexadecimal"),
        (CHUNKED + b"2\r\nhello\r\n0\r\n\r\n", "a chunk's data does not end where"),
        (CHUNKED + b"f" * 20 + b"\r\nab", "a chunk's size is too large"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2's connection preface"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            "Content-Length is not a number of bytes",
        ),
        (POST + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nab", "more than once"),
        (POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "more than once"),
        (POST + b"Content-Length: 2, 2\r\n\r\nab", "Content-Length is not a number"),
        (POST + b"Content-Length: " + b"9" * 30 + b"\r\n\r\n", "too large a number"),
        (
            POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "must name chunked once, as its last coding",
        ),
        (POST + b"Transfer-Encoding: \r\n\r\n", "Transfer-Encoding is empty"),
        (POST + b"Transfer-Encoding: chunked;a=b\r\n\r\n0\r\n\r\n", "does not end in chunked"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", "obs-fold"),
        (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", "a space before its colon"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", "does not end in CRLF"),
        (b"GET /healthz HTTP/1.1\r\nX: a\x01b\r\n\r\n", "a control character"),
        ("GET /conversations/é HTTP/1.1\r\n\r\n".encode(), "percent-encode it"),
        (b"GET /healthz HTTP/1.7\r\n\r\n", "neither 1.0 nor 1.1"),
    ],
    ids=[
        "length-and-chunked",
        "chunked-and-length",
        "bad-chunk-size",
        "chunk-longer-than-its-size",
        "chunk-size-overflow",
        "http2-preface",
        "negative-length",
        "equal-lengths-twice",
        "unequal-lengths",
        "length-list",
        "length-overflow",
        "chunked-twice",
        "empty-transfer-encoding",
        "chunked-with-a-parameter",
        "obs-fold",
        "space-before-colon",
        "bare-lf",
        "control-character",
        "non-ascii-url",
        "http-1-7",
    ],
)
def test_a_request_that_is_not_http_1_1_gets_a_problem_document_saying_why(
    server: Server, request_bytes: bytes, reason: str
) -> None:
    """The detail said only "Invalid HTTP request received.": a client had to guess which
    of a dozen framing faults it made. It now names the fault."""
    [(status, headers, body)] = exchange(server, [request_bytes], 1)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == 400 and "not valid HTTP/1.1" in problem["detail"]
    assert reason in problem["detail"], problem["detail"]


@pytest.mark.parametrize(
    "codings",
    ["Transfer-Encoding: gzip, chunked", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"],
    ids=["one-line", "two-lines"],
)
def test_a_transfer_coding_other_than_chunked_is_501_and_nothing_is_kept(
    lenient_server: Server, engine: sqlalchemy.Engine, codings: str
) -> None:
    """llhttp framed the chunks and handed on the gzip bytes as the body: they were
    quarantined as not JSON and answered 400 (a retry quarantined them again). A transfer
    coding the server does not implement is a 501, and the connection is closed (RFC 9112
    6.1); nothing is kept, as for a Content-Encoding it does not know: the sender still
    holds the delivery."""
    document = message()
    body = gzip.compress(json.dumps(document).encode())
    request = (
        POST
        + f"Content-Type: application/json\r\n{codings}\r\n\r\n".encode()
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )

    answer = refusal(lenient_server, request)

    assert answer.startswith(b"HTTP/1.1 501 "), answer[:300]
    head, _, problem = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    assert b"connection: close" in head
    document_answered = json.loads(problem)
    assert document_answered["type"] == "urn:conversations:problem:unsupported_transfer_coding"
    assert "'gzip' is not implemented" in document_answered["detail"]
    time.sleep(0.3)
    assert events_in(engine, document["locationId"]) == []
    assert quarantined(engine, body) == []


@pytest.mark.parametrize("target", ["hooks.example:443", "/webhooks/highlevel"])
def test_connect_is_refused_with_a_problem_document(server: Server, target: str) -> None:
    """llhttp reports CONNECT as an upgrade: replayed, it was offered again and again until
    a RecursionError, and the client got no answer at all."""
    request = f"CONNECT {target} HTTP/1.1\r\nHost: hooks.example:443\r\n\r\n".encode()

    [(status, headers, body)] = exchange(server, [request], 1)

    assert status == 501
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert json.loads(body)["type"] == "urn:conversations:problem:not_implemented"
    assert "RecursionError" not in server.output
    [(status, _, _)] = exchange(server, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], 1)
    assert status == 200


def refusal(server: Server, request: bytes) -> bytes:
    """Send `request` (whole, or as much of it as the server takes before it answers),
    then read until the server closes the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(OSError):  # refused before it was all sent
            sock.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


@pytest.mark.parametrize(
    ("url", "headers", "status", "kind"),
    [
        ("/healthz?" + "a" * 70_000, "", 414, "uri_too_long"),
        ("/healthz", f"X-Long: {'a' * 70_000}\r\n", 431, "headers_too_large"),
        (
            "/healthz",
            "".join(f"X-H{i}: {'v' * 60}\r\n" for i in range(1200)),
            431,
            "headers_too_large",
        ),
    ],
    ids=["url", "one-header", "many-headers"],
)
def test_a_head_past_64_kib_is_refused(
    server: Server, url: str, headers: str, status: int, kind: str
) -> None:
    answer = refusal(server, f"GET {url} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())

    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    assert b"connection: close" in head
    assert json.loads(body)["type"] == f"urn:conversations:problem:{kind}"


def test_a_head_under_64_kib_is_served(server: Server) -> None:
    headers = f"X-Long: {'a' * 30_000}\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(1000))
    request = f"GET /healthz?{'q' * 20_000} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()

    [(status, _, _)] = exchange(server, [request], 1)

    assert status == 200


def test_a_header_line_that_never_ends_is_refused_before_it_ends(server: Server) -> None:
    """The parser buffers a header line until it ends: 64 MiB of one, sent without its
    end, was all held in memory (a head of any size was). It is refused after 64 KiB."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert sent < 4 * 1024 * 1024, sent
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


TRAILERS_PAST_64_KIB = "".join(f"X-T{i}: {'v' * 100}\r\n" for i in range(1000)).encode()


def test_trailer_fields_past_64_kib_refuse_the_request(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A chunked body's trailer fields count in the head's bound: 431, nothing stored."""
    document = message()
    body = json.dumps(document).encode()
    signature = server.keys.headers(body)["X-GHL-Signature"]
    request = (
        "POST /webhooks/highlevel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-GHL-Signature: {signature}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, TRAILERS_PAST_64_KIB)

    answer = refusal(server, request)

    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    time.sleep(0.5)
    assert events_in(engine, document["locationId"]) == []


def signed_webhook(server: Server, document: dict[str, Any]) -> bytes:
    """A whole signed webhook request, as raw bytes for a socket."""
    body = json.dumps(document).encode()
    return (
        "POST /webhooks/highlevel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-GHL-Signature: {server.keys.headers(body)['X-GHL-Signature']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


REFUSED_AFTER_A_WEBHOOK = pytest.mark.parametrize(
    ("refused", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400),
        (b"CONNECT hooks.example:443 HTTP/1.1\r\nHost: hooks.example:443\r\n\r\n", 501),
        (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n", 501),
        (POST + b"Transfer-Encoding: gzip\r\n\r\nab", 400),
        (CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", 400),
        (CHUNKED + b"2\r\n{}\r\n0\r\n" + TRAILERS_PAST_64_KIB + b"\r\n", 431),
    ],
    ids=[
        "head-too-large",
        "invalid",
        "connect",
        "transfer-coding",
        "not-chunked-last",
        "bad-chunk-in-its-body",
        "trailers-too-large",
    ],
)
"""A request refused outside the application, to send behind a webhook on its connection."""


@REFUSED_AFTER_A_WEBHOOK
def test_a_refused_request_pipelined_after_a_webhook_is_answered_after_it(
    server: Server, engine: sqlalchemy.Engine, refused: bytes, status: int
) -> None:
    """Answers go in request order. The refusal of a request pipelined behind a webhook
    was written at once, ahead of the webhook's answer, which was then dropped: the
    client read 431 as its webhook's answer, though the webhook was stored. So was a 400
    for a bad chunk in the body of a request queued behind the webhook."""
    document = message()
    request = signed_webhook(server, document)

    answers = exchange(server, [request + refused], 2)

    assert [answer[0] for answer in answers] == [201, status], answers
    stored = only_event(engine, document["locationId"])
    assert json.loads(answers[0][2])["position"] == stored["position"]
    assert answers[1][1]["connection"] == "close"


@pytest.fixture(scope="module")
def impatient_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    """Requests (heads, and webhook bodies) must arrive within 1 s."""
    server = start_server(database_url, keys, CONVERSATIONS_BODY_TIMEOUT="1")
    yield server
    server.stop()


def test_a_head_trickled_past_the_deadline_is_408(impatient_server: Server) -> None:
    """A slowloris client sends its head a byte at a time and holds its connection
    forever: no deadline covered the head, only a webhook's body."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    host, port = impatient_server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(OSError):  # refused while still sending
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.02)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    took = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 1 <= took < 3, took
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head
    assert b"connection: close" in head
    assert json.loads(body)["type"] == "urn:conversations:problem:head_timeout"


def test_an_idle_new_connection_is_closed_at_the_deadline(impatient_server: Server) -> None:
    host, port = impatient_server.url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
    started = time.monotonic()
    try:
        assert [sock.recv(100) for sock in socks] == [b""] * 50  # closed, unanswered
        assert time.monotonic() - started < 3
    finally:
        for sock in socks:
            sock.close()


def test_a_head_within_the_deadline_is_served_on_a_kept_connection(
    impatient_server: Server,
) -> None:
    """The deadline is each head's, from its first byte: a connection kept alive (idle
    for less than uvicorn's 5 s keep-alive) serves heads that each take under 1 s."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    segments = [request[:10], request[10:20], request[20:]]
    host, port = impatient_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(3):
            for segment in segments:
                sock.sendall(segment)
                time.sleep(0.25)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(1.5)


def test_line_breaks_after_an_answer_do_not_hold_the_connection(
    impatient_server: Server,
) -> None:
    """Line breaks between requests are allowed and skipped (no request begins): they
    stopped uvicorn's keep-alive timer, with no head begun for the head's deadline to
    time, and the connection was held for ever (one CRLF after each answer of a pooled
    connection, a socket a client)."""
    host, port = impatient_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"\r\n")
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # the rest of the answer, then the close
            answer += chunk
        assert time.monotonic() - started < 8  # uvicorn's keep-alive: 5 s
    assert b"HTTP/" not in answer


def test_a_webhook_whose_sender_half_closes_is_answered(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A client may shut down its sending side once the request is sent; uvicorn took
    that for a disconnect: the webhook was stored and its answer never sent."""
    document = message()
    request = signed_webhook(server, document)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    assert answer.startswith(b"HTTP/1.1 201 "), answer
    assert b"connection: close" in answer.lower()
    stored = only_event(engine, document["locationId"])
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["position"] == stored["position"]


def test_a_webhook_cut_short_by_a_half_close_is_not_stored(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    document = message()
    request = signed_webhook(server, document)[:-10]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536) == b""  # closed at once, not left to the body's deadline
    time.sleep(0.5)
    assert events_in(engine, document["locationId"]) == []


def half_closed(server: Server, request: bytes) -> tuple[list[Answer], bytes]:
    """Send `request`, shut down the sending side, and read every answer until the server
    closes the connection: the answers, and any bytes after the last whole one."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answers = list[Answer]()
    while (answer := _response(received)) is not None:
        length, status, headers, body = answer
        answers.append((status, headers, body))
        received = received[length:]
    return answers, received


@REFUSED_AFTER_A_WEBHOOK
def test_a_half_close_after_a_webhook_and_a_refused_request_gets_both_answers(
    server: Server, engine: sqlalchemy.Engine, refused: bytes, status: int
) -> None:
    """The half-close ended the connection once the webhook was answered: its answer
    closed it, and the refusal due after it was dropped."""
    document = message()

    answers, rest = half_closed(server, signed_webhook(server, document) + refused)

    assert [answer[0] for answer in answers] == [201, status], (answers, rest)
    assert rest == b""
    assert answers[1][1]["connection"] == "close"
    stored = only_event(engine, document["locationId"])
    assert json.loads(answers[0][2])["position"] == stored["position"]


def test_a_half_close_after_pipelined_requests_gets_every_answer(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """With requests queued behind the one being answered, a half-close closed the
    connection at once: the webhooks were stored and no answer was sent."""
    documents = [message(), message()]
    request = b"".join(signed_webhook(server, document) for document in documents)

    answers, rest = half_closed(server, request + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")

    assert [answer[0] for answer in answers] == [201, 201, 200], (answers, rest)
    assert rest == b""
    assert answers[2][1]["connection"] == "close"
    for document, (_, _, body) in zip(documents, answers, strict=False):
        stored = only_event(engine, document["locationId"])
        assert json.loads(body)["position"] == stored["position"]


def test_a_half_close_cutting_a_pipelined_webhook_short_answers_the_one_before(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """The webhook cut short is a client gone (nothing stored); the whole one before it
    was stored, and dropped unanswered with the connection."""
    whole, cut = message(), message()
    request = signed_webhook(server, whole) + signed_webhook(server, cut)[:-10]

    answers, rest = half_closed(server, request)

    assert [answer[0] for answer in answers] == [201], (answers, rest)
    assert rest == b""
    assert answers[0][1]["connection"] == "close"
    assert (
        json.loads(answers[0][2])["position"] == only_event(engine, whole["locationId"])["position"]
    )
    time.sleep(0.3)
    assert events_in(engine, cut["locationId"]) == []


def test_a_thousand_pipelined_upgrade_offers_are_all_answered(server: Server) -> None:
    """Each offer's request was parsed again one stack frame deeper: a thousand pipelined
    ran out of stack (a RecursionError logged, the connection dropped unanswered)."""
    offer = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"

    answers = exchange(server, [offer * 1000], 1000)

    assert {status for status, _, _ in answers} == {200}
    assert "RecursionError" not in server.output


def test_a_head_too_large_after_webhooks_offering_an_upgrade_is_431(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """Parsed in the handler of the upgrade before it, the oversize head's error was
    chained to that upgrade and taken for a failed callback: a 400 blaming the service."""
    documents = [message(), message()]
    webhooks = [
        webhook(server, json.dumps(document).encode(), offer="h2c") for document in documents
    ]
    oversize = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"

    answers = exchange(server, [b"".join(webhooks) + oversize], 3)

    assert [status for status, _, _ in answers] == [201, 201, 431], answers
    assert json.loads(answers[2][2])["type"] == "urn:conversations:problem:headers_too_large"
    for document, (_, _, body) in zip(documents, answers, strict=False):
        assert (
            json.loads(body)["position"] == only_event(engine, document["locationId"])["position"]
        )
