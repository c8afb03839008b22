"""The HTTP/1.1 protocol `serve` runs under uvicorn: httptools', with upgrade offers ignored.

A client may offer to switch protocols on any request (`Connection: Upgrade`, `Upgrade:
h2c`: curl `--http2`, Java's RestClient and Ktor do so by default on `http://` URLs), and
a server that does not switch answers the request as if the offer had not been made (RFC
9110 7.8). llhttp ends such a request at its headers and leaves the body unread, and
uvicorn then serves the request with an empty body (uvicorn#2722, httptools#124): a
webhook delivered that way was kept as "the body is empty", its payload lost, and the
connection answered nothing more. Here the request is replayed to a fresh parser without
the offer, so its body is read as HTTP/1.1 frames it (Content-Length or chunked), and the
requests after it on the connection are served as usual. Nothing is ever upgraded: the
service has no WebSocket endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from conversations.api.framing import framing_error, transfer_coding_refusal
from conversations.api.problems import PROBLEM_JSON, highlevel_error

TRANSPORT = "conversations.transport"
"""The scope extension holding the connection's transport (`{"transport": ...}`): the
event stream bounds what a client that does not read may hold, and closes it at once
(api/feed.py); ASGI offers neither."""


MAX_HEAD_BYTES = 64 * 1024
"""The most a request's head (its request line and header fields, and the trailer
fields of a chunked body) may take. Neither llhttp nor uvicorn bounds it: one request
could make the server hold a head of hundreds of megabytes. HighLevel's are under 2 KiB."""


class HeadTooLarge(Exception):
    """Raised in a parser callback: the head passed MAX_HEAD_BYTES."""


class Refused(Exception):
    """Raised in a parser callback to stop parsing: the request was refused (answered, or
    its refusal deferred until the answers due before it are sent)."""


class Http11Protocol(HttpToolsProtocol):
    _offered_upgrade = False
    """The request being parsed offers an upgrade: it is replayed without the offer."""
    _in_head = True
    """The head of a request is arriving (or awaited, on a new connection)."""
    _head_bytes = 0
    """Bytes of the current request's head, as the parser's callbacks handed them over."""
    _url_bytes = 0
    _heard = False
    """A parser callback ran during the current `data_received`."""
    _unheard = 0
    """Bytes received since the parser last handed anything over: what it buffers (a
    header line is handed over whole) and the callbacks cannot count yet."""
    head_timeout = 30.0
    """Seconds a request's head may take to arrive, from its first byte (or from the
    connection, for its first request): `CONVERSATIONS_BODY_TIMEOUT`."""
    _head_since = 0.0
    _head_begun = False
    """A byte of the awaited head arrived (else the connection is idle: closed unanswered)."""
    _head_timer: asyncio.TimerHandle | None = None
    _in_message = False
    """A request has begun arriving and is not complete yet."""
    _previous: RequestResponseCycle | None = None
    """The request received before the last one (`cycle`): answered before it."""
    _deferred: bytes | None = None
    """The refusal of a request whose head came while the requests before it on the
    connection were still being answered: sent once they are (answers go in order)."""

    @classmethod
    def with_head_timeout(cls, seconds: float) -> type[Http11Protocol]:
        return type(cls.__name__, (cls,), {"head_timeout": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._watch_head(self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """A client may shut its side down once its request is sent (a half-close, as
        `nc -N` and some proxies do). uvicorn then closed the connection: a webhook was
        stored and its answer never sent. Requests received whole whose answers have not
        begun are answered, in order, then the connection closed: also those pipelined
        (the close waits for the last), and the refusal of one after them (a 431 head),
        which closes the connection itself. A FIN looks the same as a half-close, so an
        answer under way (an event stream) still ends there: its client is gone. A
        request cut short is a client gone too (nothing stored): the requests before it
        are answered all the same (they were dropped unanswered, webhooks stored)."""
        if self._deferred is not None:
            return True
        cycle = self.cycle  # the last request received
        if cycle is not None and cycle.more_body and self._withdraw_queued():
            cycle = self.cycle
        if cycle is None or cycle.response_started or cycle.more_body:
            return None
        cycle.keep_alive = False
        return True

    def on_message_begin(self) -> None:
        self._unset_keepalive_if_required()
        self._in_message = True
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT: {"transport": self.transport}}
        self._in_head, self._heard, self._head_begun = True, True, True
        self._head_bytes = self._url_bytes = 0
        self._head_since = self.loop.time()
        if self._head_timer is None:
            self._watch_head(self.head_timeout)

    def _watch_head(self, delay: float) -> None:
        """One timer a connection, not one a request: it checks the head then arriving,
        if any, and is set again only while one is."""
        self._head_timer = self.loop.call_later(delay, self._head_deadline)

    def _head_deadline(self) -> None:
        """Neither uvicorn nor llhttp times a request's head: a client that trickles it
        a byte at a time, or connects and sends nothing, held its connection forever
        (hundreds of them held as many sockets). Past the deadline, a head begun is
        answered 408 and an idle new connection closed; both are closed."""
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._watch_head(self.head_timeout)  # a pipelined head waits on the answer before
            return
        left = self._head_since + self.head_timeout - self.loop.time()
        if left > 0:
            self._watch_head(left)
        elif not self._head_begun:
            self.transport.close()
        else:
            detail = (
                f"The request's head did not arrive within {self.head_timeout:g} s "
                "(CONVERSATIONS_BODY_TIMEOUT)."
            )
            self.logger.warning(detail)
            self._refuse(408, "Request Timeout", "head_timeout", detail)

    def on_url(self, url: bytes) -> None:
        self._heard = True
        self._url_bytes += len(url)
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._heard = True
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge

    def data_received(self, data: bytes) -> None:
        # uvicorn stopped its keep-alive timer at any byte: line breaks after an answer,
        # which the parser skips without beginning a request, stopped it with no head
        # begun to time, and the connection was held forever. Stopped here for the rest of
        # a request begun before the answer went, else once a request begins.
        if self._in_message:
            self._unset_keepalive_if_required()
        pending: bytes | memoryview | None = data
        while pending is not None:  # a loop: a replay in a replay held a stack frame each
            pending = self._feed(pending)

    def _feed(self, data: bytes | memoryview) -> memoryview | None:
        """Parse `data`; when a request offered an upgrade, its head is parsed again
        without the offer (`_replay`), and what followed the head is returned, to parse
        next (a view: a thousand offers pipelined were each a copy of the rest).

        A replay was parsed in the handler of the previous one's HttpParserUpgrade, and
        Python chained that to every error raised there: a head too large was taken for
        a failed callback (a 400 that blamed the service), and a thousand offers
        pipelined ran out of stack (a RecursionError, nothing answered)."""
        if self._deferred is not None or self.transport.is_closing():
            return None  # after a refused request: nothing can be framed
        self._heard = False
        offered = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._refuse_unreadable(error)
            return None
        except httptools.HttpParserUpgrade as upgrade:
            offered = upgrade.args[0]
        if offered is not None:
            if self.parser.get_method() == b"CONNECT":
                self._refuse_connect()
                return None
            self._feed(self._replay())  # a head without the offer: no upgrade again
            return memoryview(data)[offered:]
        self._unheard = 0 if self._heard else self._unheard + len(data)
        if self._unheard > MAX_HEAD_BYTES:  # one header line, still buffered by the parser
            self._refuse_head()
        return None

    def _refuse_unreadable(self, error: httptools.HttpParserError) -> None:
        if isinstance(error.__context__, HeadTooLarge):
            self._refuse_head()
            return
        if isinstance(error.__context__, Refused):
            return
        reason = framing_error(error)
        if reason is None:  # one of uvicorn's callbacks failed: a bug to see
            reason = "the service failed to read it (the error is logged)."
            self.logger.error("failed to read a request", exc_info=error.__context__)
        else:
            self.logger.warning("Invalid HTTP request received: %s", reason)
        self.send_400_response(reason)

    def _refuse_head(self) -> None:
        """431 (414 for the URL alone) for a head past MAX_HEAD_BYTES, trailer fields
        included. Trailers past it dropped the connection: with the request queued behind
        a webhook (pipelined), the webhook was stored and its answer never sent."""
        if self._url_bytes > MAX_HEAD_BYTES:
            status, title, kind, what = 414, "URI Too Long", "uri_too_long", "The URL is"
        else:
            status, title = 431, "Request Header Fields Too Large"
            kind, what = "headers_too_large", "The request's head is"
        detail = f"{what} larger than {MAX_HEAD_BYTES} bytes."
        self.logger.warning(detail)
        self._refuse_parsed(status, title, kind, detail)

    def on_headers_complete(self) -> None:
        refusal = transfer_coding_refusal(self.headers)
        if refusal is not None:
            self._refuse(*refusal, in_order=True)
            raise Refused
        self._in_head = False
        if self.parser.should_upgrade():
            self._offered_upgrade = True  # answered once replayed (`_replay`)
            return
        self._previous = self.cycle
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._heard = True
        if not self._offered_upgrade:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._heard = True
        self._in_message = False
        if not self._offered_upgrade:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """A request the parser cannot read (malformed framing: Content-Length with
        chunked, a bad chunk size, HTTP/2 spoken without an upgrade) is answered with a
        problem document like every other error, then the connection is closed: nothing
        after it on the connection can be framed. `msg` says what is wrong
        (`framing_error`)."""
        detail = f"The request is not valid HTTP/1.1: {msg}"
        self._refuse_parsed(400, "Bad Request", "bad_request", detail)

    def _refuse_parsed(self, status: int, title: str, kind: str, detail: str) -> None:
        """Refuse the request being parsed: in its turn, after the answers due before it,
        if its head is not whole or it is queued behind others; at once if it is the one
        being served (its answer replaces its handler's); if its answer has begun (the
        rest of its body is what is wrong), the connection is dropped."""
        if self._in_head or self._withdraw_queued():
            self._refuse(status, title, kind, detail, in_order=True)
        elif self.cycle is not None and self.cycle.response_started:
            self.transport.close()
        else:
            self._refuse(status, title, kind, detail)

    def _withdraw_queued(self) -> bool:
        """Whether the request being parsed is queued behind others (pipelined): it is
        withdrawn, never to run, and is refused once the answers before it are sent. Its
        refusal (a bad chunk in its body) was written at once, ahead of theirs, which were
        then dropped: a client read the 400 as its webhook's answer, though it was stored."""
        if not self.pipeline or self.pipeline[0][0] is not self.cycle:
            return False
        self.pipeline.popleft()
        self.cycle = self._previous  # type: ignore[assignment]
        return True

    def _refuse_connect(self) -> None:
        """`CONNECT` asks for a tunnel, which llhttp reports as an upgrade: replayed, it
        would be offered again, forever (a RecursionError, and no answer). What follows
        its head is tunnel bytes, not HTTP, so the connection is closed after the 501."""
        self._refuse(
            501,
            "Not Implemented",
            "not_implemented",
            "CONNECT is not supported: this service is not a proxy.",
            in_order=True,
        )

    def _refuse(
        self, status: int, title: str, kind: str, detail: str, in_order: bool = False
    ) -> None:
        """Answer a problem document outside the application, then close the connection.

        `in_order`: the refused request is not the one being answered but the next
        (pipelined). Its refusal was written at once, ahead of the answers still due on
        the connection, which were then dropped: a client took it for its webhook's
        answer (stored, yet told 431). It now waits for them (`on_response_complete`)."""
        body = json.dumps(
            {
                "type": f"urn:conversations:problem:{kind}",
                "title": title,
                "status": status,
                "detail": detail,
                **highlevel_error(status, detail),
            }
        ).encode()
        head = [f"HTTP/1.1 {status} {title}\r\n".encode("ascii")]
        for name, value in self.server_state.default_headers:  # the date, as on every answer
            head += [name, b": ", value, b"\r\n"]
        head.append(
            f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode("ascii")
        )
        answer = b"".join(head) + body
        if in_order and self.cycle is not None and not self.cycle.response_complete:
            self._deferred = answer
            return
        self.transport.write(answer)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request pipelined, if any
        if self._deferred is None or self.transport.is_closing():
            return
        if self.cycle.response_complete:  # the last answer due before the refusal
            self.transport.write(self._deferred)
            self.transport.close()

    def _replay(self) -> bytes:
        """The request's head without the upgrade offer, to parse again with a fresh
        parser; then what followed its headers: its body and whatever comes after it."""
        self._offered_upgrade = False
        version = self.parser.get_http_version().encode("ascii")
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/", version, b"\r\n"]
        for name, value in self.headers:
            if name == b"upgrade":
                continue
            if name == b"connection":
                tokens = [t.strip() for t in value.split(b",")]
                value = b", ".join(t for t in tokens if t and t.lower() != b"upgrade")
                if not value:
                    continue
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # as uvicorn sets up its parser
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return b"".join(head)
