"""The event feed over real HTTP against `conversations serve` on real PostgreSQL:
`GET /events` pages (complete and in order while webhooks keep arriving, payloads byte
for byte as posted, bounded by the key) and `GET /events/stream` (Server-Sent Events:
live within a second, resumable with Last-Event-ID, heartbeats, no leftovers)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

import conversations.keys
from conversations.api.feed import APPLICATION_NAME as FEED_LISTENER
from conversations.database import create_engine
from tests.api_support import (
    Reader,
    assert_problem,
    eventually,
    head,
    make_key,
    post_all,
)
from tests.conftest import migrated_database, start_server
from tests.helpers import KeyPair, Server, message, new_id
from tests.proxy import Proxy
from tests.test_http_protocol import exchange

pytestmark = pytest.mark.e2e


def positions_in(engine: sqlalchemy.Engine, *locations: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.scalars(
                text(
                    "SELECT position FROM events WHERE location_id = ANY(:locations)"
                    " ORDER BY position"
                ),
                {"locations": list(locations)},
            )
        )


def read_feed(reader: Reader, after: int = 0, **params: Any) -> list[dict[str, Any]]:
    """Every event after `after`, page by page, until a page comes back empty."""
    events: list[dict[str, Any]] = []
    while True:
        page = reader.json("/events", {"after": after, **params})
        if not page["events"]:
            assert page["next"] == after
            return events
        assert page["next"] == page["events"][-1]["position"]
        events.extend(page["events"])
        after = page["next"]


# --- GET /events ----------------------------------------------------------------------------


def test_paging_sees_every_event_of_the_keys_locations_once_while_webhooks_arrive(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    mine, other = [new_id("loc"), new_id("loc")], new_id("loc")
    reader = Reader(server, make_key(engine, *mine))
    start = head(engine)
    done = threading.Event()

    def write(count: int) -> None:
        for i in range(count):
            post_all(server, [message(locationId=[*mine, other][i % 3])])

    def write_all() -> None:
        writers = [threading.Thread(target=write, args=(30,)) for _ in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        done.set()

    threading.Thread(target=write_all).start()
    seen: list[dict[str, Any]] = []
    after, pages = start, 0
    while True:
        finished = done.is_set()  # read before the page: a page after it sees everything
        page = reader.json("/events", {"after": after, "limit": 7})
        pages += 1
        seen.extend(page["events"])
        after = page["next"]
        if finished and not page["events"]:
            break
    positions = [e["position"] for e in seen]
    assert positions == sorted(set(positions)), "out of order or repeated"
    assert positions == positions_in(engine, *mine)
    assert {e["locationId"] for e in seen} == set(mine)
    assert len(seen) == 80 and pages > 10


def test_payloads_are_exactly_the_bytes_posted(server: Server, engine: sqlalchemy.Engine) -> None:
    loc = new_id("loc")
    document = message(locationId=loc)
    fields = ",\r\n\t".join(f'  "{k}"  :\t{json.dumps(v)}' for k, v in reversed(document.items()))
    raw_text = (
        "\n {"
        + fields
        + ',\n"extra" : { "z":1.50, "a" : 1E+2, "n": -0.0, "big": 123456789012345678901234567890,'
        + ' "é": "caf\\u00e9 café \\/ \\ud83d\\ude00", "list": [ 1 , 2.0 ,[]] }'
        + "  }\n\t "
    )
    raw = raw_text.encode()
    assert json.loads(raw)["extra"]["z"] == 1.5
    post_all(server, [raw])
    reader = Reader(server, make_key(engine, loc))
    response = reader.get("/events")
    assert response.status_code == 200
    assert f'"payload": {raw_text}, "metadata": ' in response.text
    (event,) = response.json()["events"]
    assert event["payload"] == json.loads(raw)
    assert list(event["payload"]) == list(json.loads(raw))  # key order as sent
    assert event["type"] == "InboundMessage" and event["locationId"] == loc
    assert event["streamId"] == document["conversationId"] and event["version"] == 1
    assert event["occurredAt"] == "2024-05-08T12:00:56.193Z"
    assert event["metadata"]["webhookId"] == document["webhookId"]
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT event_id, raw FROM events WHERE position = :p"),
            {"p": event["position"]},
        ).one()
    assert row.raw == raw and event["eventId"] == str(row.event_id)


def test_next_never_hints_at_other_tenants_events(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    mine, theirs = new_id("loc"), new_id("loc")
    reader = Reader(server, make_key(engine, mine))
    assert reader.json("/events") == {"events": [], "next": 0}
    start = head(engine)
    post_all(server, [message(locationId=theirs) for _ in range(3)])
    for after in (0, start, start + 1, head(engine)):
        assert reader.json("/events", {"after": after}) == {"events": [], "next": after}
    (position,) = post_all(server, [message(locationId=mine)])
    page = reader.json("/events", {"after": start})
    assert [e["position"] for e in page["events"]] == [position] and page["next"] == position


def test_location_filter_and_all_locations_keys(server: Server, engine: sqlalchemy.Engine) -> None:
    first, second, other = new_id("loc"), new_id("loc"), new_id("loc")
    start = head(engine)
    posted = post_all(server, [message(locationId=loc) for loc in (first, second, other, first)])
    both = Reader(server, make_key(engine, first, second))
    assert [e["position"] for e in read_feed(both, start)] == [posted[0], posted[1], posted[3]]
    only_first = read_feed(both, start, locationId=first)
    assert [e["position"] for e in only_first] == [posted[0], posted[3]]
    assert both.json("/events", {"after": start, "locationId": other}) == {
        "events": [],
        "next": start,
    }
    everything = Reader(server, make_key(engine, all_locations=True))
    seen = [e["position"] for e in read_feed(everything, start, limit=1000)]
    assert set(posted) <= set(seen) and seen == sorted(seen)
    assert [e["position"] for e in read_feed(everything, start, locationId=other)] == [posted[2]]


def test_a_page_stops_early_rather_than_grow_past_its_byte_budget(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    loc = new_id("loc")
    bodies = [message(locationId=loc, body=f"{i}" * 900_000) for i in range(6)]
    posted = post_all(server, bodies)
    reader = Reader(server, make_key(engine, loc))
    first = reader.json("/events", {"limit": 10})
    count = len(first["events"])
    assert 1 <= count < 6 and first["next"] == posted[count - 1]
    assert [e["position"] for e in read_feed(reader, 0, limit=10)] == posted


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"after": "-1"},
        {"after": "1.5"},
        {"after": str(2**63)},
        {"cursor": "x"},
        {"after": ["1", "2"]},
    ],
)
def test_bad_feed_parameters_are_400_problems(
    server: Server, engine: sqlalchemy.Engine, params: dict[str, Any]
) -> None:
    reader = Reader(server, make_key(engine, new_id("loc")))
    assert_problem(reader.get("/events", params), 400)


@pytest.mark.parametrize("path", ["/events", "/events/stream"])
def test_the_feed_needs_a_key(server: Server, path: str) -> None:
    assert_problem(Reader(server, None).get(path), 401)
    assert_problem(Reader(server, "cvk_000000000000_nope").get(path), 401)


# --- GET /events/stream ---------------------------------------------------------------------


@dataclass
class Frame:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads("\n".join(self.data))
        return parsed


class Stream:
    """An open SSE response, read frame by frame."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def frame(self) -> Frame:
        frame = Frame()
        for line in self._lines:
            if line == "":
                if frame.data or frame.comments or frame.retry or frame.id:
                    return frame
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                frame.comments.append(value)
            elif name == "data":
                frame.data.append(value)
            elif name in ("id", "event", "retry"):
                setattr(frame, name, value)
        raise EOFError("the stream ended")

    def event(self) -> Frame:
        """The next event frame (skipping heartbeats)."""
        while True:
            frame = self.frame()
            if frame.data:
                return frame


@contextmanager
def stream(
    reader: Reader, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Iterator[Stream]:
    with (
        httpx.Client(timeout=httpx.Timeout(10.0)) as client,
        client.stream(
            "GET",
            f"{reader.server.url}/events/stream",
            params=params,
            headers={**reader.headers, **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        opened = Stream(response)
        assert opened.frame().retry == "1000"
        yield opened


def listeners(engine: sqlalchemy.Engine) -> int:
    """LISTEN connections on this database (the projection worker's and the feed's)."""
    with engine.connect() as conn:
        return int(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query = 'LISTEN conversations_events'"
                )
            )
            or 0
        )


def test_the_stream_delivers_live_and_resumes_after_last_event_id(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    loc, other = new_id("loc"), new_id("loc")
    reader = Reader(server, make_key(engine, loc))
    (earlier,) = post_all(server, [message(locationId=loc)])
    received: list[int] = []
    # The default heartbeat (15 s) is also the fallback poll: only NOTIFY is this fast.
    with stream(reader) as live:
        first = live.event()
        assert int(first.id or 0) == earlier  # from the start by default
        for _ in range(3):
            post_all(server, [message(locationId=other)])  # never shown
            (position,) = post_all(server, [message(locationId=loc)])
            posted_at = time.monotonic()
            frame = live.event()
            delay = time.monotonic() - posted_at
            assert int(frame.id or 0) == position
            assert delay < 1.5, f"event arrived after {delay:.2f} s"
            assert frame.event == "InboundMessage"
            (as_paged,) = reader.json("/events", {"after": position - 1})["events"]
            assert frame.document == as_paged
            received.append(position)
    missed = post_all(server, [message(locationId=loc) for _ in range(3)])
    post_all(server, [message(locationId=other)])
    resume = {"Last-Event-ID": str(received[-1])}
    # Last-Event-ID wins over `after`, as a reconnecting EventSource keeps its URL.
    with stream(reader, {"heartbeat": 1, "after": 0}, resume) as again:
        got = [int(again.event().id or 0) for _ in missed]
        assert got == missed
        frame = again.frame()  # and nothing more: the next frame is a heartbeat
        assert frame.comments == ["heartbeat"] and not frame.data
    with stream(reader, {"after": missed[0]}) as from_param:
        assert [int(from_param.event().id or 0) for _ in missed[1:]] == missed[1:]


def test_stream_lines_hold_payloads_with_line_breaks(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    loc = new_id("loc")
    document = message(locationId=loc)
    raw = json.dumps(document, indent="\t").replace("\n", "\r\n").encode()
    (position,) = post_all(server, [raw])
    reader = Reader(server, make_key(engine, loc))
    with stream(reader) as live:
        frame = live.event()
    assert int(frame.id or 0) == position and len(frame.data) == 1
    assert frame.document["payload"] == document
    assert list(frame.document["payload"]) == list(document)


def test_heartbeats_keep_an_idle_stream_alive(server: Server, engine: sqlalchemy.Engine) -> None:
    reader = Reader(server, make_key(engine, new_id("loc")))
    with stream(reader, {"heartbeat": 1}) as idle:
        started = time.monotonic()
        for _ in range(2):
            assert idle.frame().comments == ["heartbeat"]
        assert 1.5 < time.monotonic() - started < 5


def test_the_stream_is_bounded_by_the_key(server: Server, engine: sqlalchemy.Engine) -> None:
    mine, theirs = new_id("loc"), new_id("loc")
    reader = Reader(server, make_key(engine, mine))
    with stream(reader, {"heartbeat": 1, "locationId": theirs}) as foreign:
        post_all(server, [message(locationId=theirs)])
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert not foreign.frame().data, "another tenant's event came through"


def test_a_revoked_key_ends_its_stream(server: Server, engine: sqlalchemy.Engine) -> None:
    reader = Reader(server, make_key(engine, new_id("loc")))
    with stream(reader, {"heartbeat": 1}) as live:
        with engine.begin() as conn:
            assert conversations.keys.revoke_key(conn, reader.key or "")
        started = time.monotonic()
        with pytest.raises(EOFError):
            while True:
                live.frame()
        assert time.monotonic() - started < 8
    assert_problem(reader.get("/events/stream"), 401)


def test_a_revoked_key_ends_its_idle_stream_within_seconds(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A stream with nothing to send was only checked at its heartbeat: a revoked key's
    stream stayed open for up to `heartbeat` seconds (300 at most), not the 2 s a
    revocation takes everywhere else."""
    reader = Reader(server, make_key(engine, new_id("loc")))
    with stream(reader, {"heartbeat": 60}) as live:
        with engine.begin() as conn:
            assert conversations.keys.revoke_key(conn, reader.key or "")
        started = time.monotonic()
        with pytest.raises(EOFError):
            while True:
                live.frame()  # the stream's read timeout is 10 s: well before a heartbeat
        assert time.monotonic() - started < 5
    assert_problem(reader.get("/events/stream"), 401)


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"heartbeat": "0"}, {}),
        ({"heartbeat": "301"}, {}),
        ({"after": "-3"}, {}),
        ({"limit": "5"}, {}),
        ({}, {"Last-Event-ID": "abc"}),
        ({}, {"Last-Event-ID": "-1"}),
        ({}, {"Last-Event-ID": "9" * 30}),
    ],
)
def test_bad_stream_requests_are_400_before_streaming(
    server: Server, engine: sqlalchemy.Engine, params: dict[str, Any], headers: dict[str, str]
) -> None:
    reader = Reader(server, make_key(engine, new_id("loc")))
    assert_problem(reader.get("/events/stream", params, headers=headers), 400)


def test_a_head_of_the_stream_ends_and_the_connection_serves_the_next_request(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """HEAD got the stream's head, then the stream ran on with nothing sent, for ever: the
    connection was held, and the request after it on the connection never answered."""
    key = make_key(engine, new_id("loc"))
    request = (
        f"HEAD /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode()

    [(status, headers, body), (then, _, _)] = exchange(server, [request], 2)

    assert (status, then) == (200, 200)
    assert headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in headers and body == b""


def test_streams_share_one_listener_and_leave_nothing_behind(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    loc = new_id("loc")
    reader = Reader(server, make_key(engine, loc))
    baseline = listeners(engine)
    for _ in range(3):
        with stream(reader, {"heartbeat": 1}) as one, stream(reader, {"heartbeat": 1}) as two:
            eventually(lambda: _assert_equal(listeners(engine), baseline + 1))
            (position,) = post_all(server, [message(locationId=loc)])
            for live in (one, two):
                while int(live.event().id or 0) < position:
                    pass
        eventually(lambda: _assert_equal(listeners(engine), baseline))
    # Clients that vanish without reading keep nothing open either.
    for _ in range(5):
        with stream(reader):
            pass
    eventually(lambda: _assert_equal(listeners(engine), baseline))
    # `listeners` counts connections that ran LISTEN; one cancelled while it connected
    # has not, and is still closing: it must be gone soon after, not at once.
    eventually(lambda: _assert_equal(feed_listeners(engine), 0))
    assert reader.get("/events").status_code == 200


def _assert_equal(actual: int, expected: int) -> None:
    assert actual == expected, (actual, expected)


def test_a_client_that_does_not_read_is_dropped_with_little_held_for_it(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """A stream whose client never reads blocks once a small buffer is full, and is reset
    after CONVERSATIONS_STREAM_STALL_TIMEOUT: it holds neither the kernel's default send
    buffer (up to 4 MiB a socket) nor the connection forever."""
    loc = new_id("loc")
    key = make_key(engine, loc)
    server = start_server(database_url, keys, CONVERSATIONS_STREAM_STALL_TIMEOUT="1")
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # never read below
        client.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
        request = (
            f"GET /events/stream?heartbeat=300 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}"
        )
        client.sendall(f"{request}\r\n\r\n".encode())
        post_all(server, [message(locationId=loc, body="x" * 8000) for _ in range(64)])
        time.sleep(2)  # the stream blocked on its full buffers, and then waited out 1 s
        received = 0
        client.settimeout(5)  # heartbeats come every 300 s: a stream still open is silent
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += len(chunk)
        client.close()
        # 512 KB were posted; what reached the client is what the buffers held for it.
        assert received < 300_000
        assert server.post(message(locationId=loc)).status_code == 201
    finally:
        server.stop()


def _events_stat(engine: sqlalchemy.Engine, counters: str) -> int:
    """The sum of `counters` of `events` in pg_stat_user_tables (as flushed so far)."""
    with engine.connect() as conn:
        found = conn.scalar(
            text(f"SELECT {counters} FROM pg_stat_user_tables WHERE relname = 'events'")
        )
    return int(found or 0)


def feed_scans(engine: sqlalchemy.Engine) -> int:
    """Index and sequential scans of `events` in this database so far (as flushed)."""
    return _events_stat(engine, "coalesce(idx_scan, 0) + coalesce(seq_scan, 0)")


def test_streams_that_caught_up_share_one_read_per_append(
    database_url: str, keys: KeyPair, server: Server, engine: sqlalchemy.Engine
) -> None:
    """Each stream read the feed itself after every append: 30 streams made 30 reads of
    every webhook (200 slowed intake several times over, whether they read or not). So
    did, after the shared tail came, every stream of a location without recent events
    (one read on its own found nothing, and left it behind the tail for good): 40 of
    them here."""
    loc, quiet = new_id("loc"), new_id("loc")
    _, newest = post_all(server, [message(locationId=quiet), message(locationId=loc)])
    # A server of its own: its shared tail starts at the newest event, above the quiet
    # location's, as in a server that has been running for a while.
    own = start_server(database_url, keys)
    try:
        reader = Reader(own, make_key(engine, loc))
        quiet_reader = Reader(own, make_key(engine, quiet))
        with contextlib.ExitStack() as streams:
            opened = [streams.enter_context(stream(reader, {"after": newest})) for _ in range(15)]
            for _ in range(40):
                streams.enter_context(stream(quiet_reader))
            time.sleep(11)  # PostgreSQL flushes an idle session's statistics within 10 s
            before = feed_scans(engine)
            for _ in range(10):
                (position,) = post_all(own, [message(locationId=loc)])
                for live in opened:
                    assert int(live.event().id or 0) == position
            time.sleep(11)
            scans = feed_scans(engine) - before
    finally:
        own.stop()
    # One read of the tail per append (and the projection workers' own), not 30.
    assert scans < 150, scans


def events_rows_read(engine: sqlalchemy.Engine) -> int:
    """Rows of `events` read by scans in this database so far (as flushed)."""
    return _events_stat(engine, "coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)")


_BULK = text(
    """
    WITH made AS (
        SELECT g, jsonb_build_object(
                   'type', 'InboundMessage', 'locationId', CAST(:loc AS text),
                   'conversationId', :loc || '-c' || (g % 50), 'messageId', :loc || '-m' || g,
                   'contactId', 'con', 'messageType', 'SMS', 'direction', 'inbound',
                   'body', 'hello', 'dateAdded', '2024-05-08T12:00:56.193Z') AS payload
          FROM generate_series(1, :count) AS g
    )
    INSERT INTO events (location_id, stream_id, event_type, message_id, payload, raw, dedup_key)
    SELECT :loc, payload->>'conversationId', 'InboundMessage', payload->>'messageId', payload,
           convert_to(payload::text, 'UTF8'), :loc || '-' || g
      FROM made
    """
)


def test_the_first_stream_after_a_quiet_spell_does_not_read_what_came_meanwhile(
    server_url: str, keys: KeyPair
) -> None:
    """The shared tail follows every append while a stream is open. Once the last one
    closed, it stayed where it was: the next stream, hours and a million events later,
    waited while the tail read and framed every one of them, 1,000 at a time (100,000
    events: 3 s before its first event; every other stream of the server waited too)."""
    with migrated_database(server_url, "conversations_feed_tail") as url:
        engine = create_engine(url)
        with engine.begin() as conn:  # the plans of a store of millions of events: index steps
            name = conn.scalar(text("SELECT current_database()"))
            for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
                conn.execute(text(f'ALTER DATABASE "{name}" SET {setting} = off'))
        own = start_server(url, keys, CONVERSATIONS_PROJECTION_WORKER="false")
        try:
            loc = new_id("loc")
            reader = Reader(own, make_key(engine, loc))
            (first,) = post_all(own, [message(locationId=loc)])
            with stream(reader) as live:
                assert int(live.event().id or 0) == first
            eventually(lambda: _assert_equal(feed_listeners(engine), 0))
            count = 20_000
            with engine.begin() as conn:  # appended while no stream is open
                conn.execute(_BULK, {"loc": new_id("bulk"), "count": count})
                conn.execute(text("SELECT pg_stat_force_next_flush()"))
            before = events_rows_read(engine)
            with stream(reader, {"after": first}) as live:
                (position,) = post_all(own, [message(locationId=loc)])
                assert int(live.event().id or 0) == position
                time.sleep(11)  # PostgreSQL flushes an idle session's statistics within 10 s
                read = events_rows_read(engine) - before
        finally:
            own.stop()
            engine.dispose()
    assert read < count // 2, read


def test_streams_end_at_once_when_the_server_stops(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """uvicorn waits for open responses before it stops; a stream never ends by itself,
    so it must end when the server is told to stop, not be cancelled 10 s later."""
    own = start_server(database_url, keys)
    try:
        reader = Reader(own, make_key(engine, new_id("loc")))
        with stream(reader) as live:
            started = time.monotonic()
            own.process.terminate()
            with pytest.raises((EOFError, httpx.RemoteProtocolError)):
                while True:
                    live.frame()
            assert time.monotonic() - started < 5
        own.process.wait(timeout=8)
        assert time.monotonic() - started < 8
    finally:
        own.stop()
    assert "Traceback" not in own.output and "Cancel" not in own.output, own.output


def feed_listeners(engine: sqlalchemy.Engine, terminate: bool = False) -> int:
    """The feed's LISTEN connections on this database (terminated first, if asked)."""
    what = "count(pg_terminate_backend(pid))" if terminate else "count(*)"
    with engine.connect() as conn:  # a new transaction: pg_stat_activity is a snapshot
        found = conn.scalar(
            text(
                f"SELECT {what} FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": FEED_LISTENER},
        )
    return int(found or 0)


def test_a_lost_listener_connection_is_replaced_without_losing_events(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    loc = new_id("loc")
    reader = Reader(server, make_key(engine, loc))
    with stream(reader) as live:  # default heartbeat: only NOTIFY wakes it quickly
        eventually(lambda: _assert_equal(feed_listeners(engine, terminate=True), 1))
        time.sleep(0.2)
        (position,) = post_all(server, [message(locationId=loc)])
        posted_at = time.monotonic()
        assert int(live.event().id or 0) == position
        assert time.monotonic() - posted_at < 5
        eventually(lambda: _assert_equal(feed_listeners(engine), 1))
        (position,) = post_all(server, [message(locationId=loc)])
        posted_at = time.monotonic()
        assert int(live.event().id or 0) == position
        assert time.monotonic() - posted_at < 1.5


def test_a_listener_closed_for_idling_is_replaced_without_a_warning(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """PostgreSQL's `idle_session_timeout` (set here for the server's sessions only)
    closes the feed's listening connection whenever no append commits for that long.
    That is no outage: the stream goes on, the next event arrives, and the log has no
    warning that the listener failed (it had one at every timeout)."""
    own = start_server(database_url, keys, PGOPTIONS="-c idle_session_timeout=1500")
    try:
        loc = new_id("loc")
        reader = Reader(own, make_key(engine, loc))
        with stream(reader, {"heartbeat": 1}) as live:
            assert heartbeats_only(live, seconds=4) >= 3
            for _ in range(2):
                (position,) = post_all(own, [message(locationId=loc)])
                posted_at = time.monotonic()
                assert int(live.event().id or 0) == position
                assert time.monotonic() - posted_at < 1.5
                time.sleep(2)
    finally:
        own.stop()
    feed_lines = [line for line in own.lines if '"conversations.api.feed"' in line]
    assert not feed_lines, feed_lines


def test_a_stream_outlives_a_database_outage(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    with Proxy.to(database_url).running() as proxy:
        own = start_server(proxy.url_for(database_url), keys, CONVERSATIONS_DB_TIMEOUT="2")
        try:
            loc = new_id("loc")
            reader = Reader(own, make_key(engine, loc))
            with (
                stream(reader, {"heartbeat": 1}) as live,
                stream(reader, {"heartbeat": 1}) as other,
            ):
                proxy.cut()
                try:
                    assert heartbeats_only(live, seconds=4) >= 2
                finally:
                    proxy.restore()
                (position,) = post_all(own, [message(locationId=loc)])
                for opened in (live, other):
                    while int(opened.event().id or 0) < position:
                        pass
        finally:
            own.stop()
    # (The projection worker logs its own reconnections with their tracebacks.)
    assert "Exception in ASGI application" not in own.output, own.output
    feed_lines = [line for line in own.lines if '"conversations.api.feed"' in line]
    assert feed_lines and not [line for line in feed_lines if "Traceback" in line]
    # One line when reads start failing and one when they work again, for all streams:
    # not one per stream and heartbeat.
    failing = [line for line in feed_lines if "reads failing" in line]
    assert len(failing) == 1, feed_lines
    assert len([line for line in feed_lines if "reads work again" in line]) == 1, feed_lines


def heartbeats_only(live: Stream, seconds: float) -> int:
    """Read `live` for `seconds`: no event may come; how many heartbeats did."""
    started = time.monotonic()
    beats = 0
    while time.monotonic() - started < seconds:
        frame = live.frame()
        assert not frame.data
        beats += frame.comments == ["heartbeat"]
    return beats


def test_a_stream_keeps_its_heartbeats_while_the_database_hangs(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """A database that keeps its connections open and stops answering held the stream's
    read, and with it every heartbeat, for as long as it hung (a proxy in front closes a
    silent stream); a stream opened meanwhile got no answer at all."""
    with Proxy.to(database_url).running() as proxy:
        own = start_server(proxy.url_for(database_url), keys, CONVERSATIONS_DB_TIMEOUT="2")
        try:
            loc = new_id("loc")
            reader = Reader(own, make_key(engine, loc))
            with stream(reader, {"heartbeat": 1}) as live:
                time.sleep(0.5)
                proxy.stall()
                try:
                    assert heartbeats_only(live, seconds=4) >= 3
                    # The key lookup hangs too (the key cache keeps keys for 2 s).
                    started = time.monotonic()
                    assert_problem(reader.get("/events/stream", {"heartbeat": 1}), 503)
                    assert time.monotonic() - started < 4
                finally:
                    proxy.flow()
                (position,) = post_all(own, [message(locationId=loc)])
                while int(live.event().id or 0) < position:
                    pass
        finally:
            own.stop()
    assert "Exception in ASGI application" not in own.output, own.output


def test_a_position_past_the_newest_event_is_409_not_a_silent_skip(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A reader holding a position from another store (or from this one before it was
    recreated) waited in silence, then skipped every event up to that position."""
    loc = new_id("loc")
    reader = Reader(server, make_key(engine, loc))
    (newest,) = post_all(server, [message(locationId=loc)])
    beyond = head(engine) + 1000
    assert_problem(reader.get("/events", {"after": beyond}), 409)
    assert_problem(reader.get("/events/stream", {"after": beyond}), 409)
    assert_problem(reader.get("/events/stream", {}, headers={"Last-Event-ID": str(beyond)}), 409)
    # At the newest event itself: nothing yet, and the stream opens.
    assert reader.json("/events", {"after": newest})["events"] == []
    with stream(reader, {"after": newest - 1, "heartbeat": 1}) as live:
        assert int(live.event().id or 0) == newest
