"""Finished read pages are kept in memory until the projections change their locations
(`conversations.api.page_cache`): never served to another key, never kept past a
change, and off while the process cannot hear the changes."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

from conversations.api.page_cache import PageCache
from conversations.projections import changes, timeline
from tests.api_support import Reader, make_key, post_all, wait_folded
from tests.helpers import Server, message, new_id

LISTENER = "conversations page cache"


def _metric(server: Server, series: str) -> int:
    body = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(series)} (\d+)$", body, re.M)
    return int(found[1]) if found else 0


def _hits(server: Server) -> int:
    return _metric(server, 'conversations_read_cache_total{result="hit"}')


def _conversation(server: Server, engine: sqlalchemy.Engine, count: int = 3) -> tuple[str, str]:
    location, conversation = new_id("loc"), new_id("cnv")
    post_all(
        server,
        [
            message(
                locationId=location,
                conversationId=conversation,
                body=f"m{n}",
                dateAdded=f"2025-01-01T00:00:{n:02d}Z",
            )
            for n in range(count)
        ],
    )
    wait_folded(engine)
    return location, conversation


def _bodies(reader: Reader, conversation: str) -> list[str]:
    page = reader.json(f"/conversations/{conversation}/messages")
    return [m["body"] for m in page["messages"]["messages"]]


@pytest.mark.e2e
def test_a_page_read_again_comes_from_memory_and_is_the_same(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    location, conversation = _conversation(server, engine)
    reader = Reader(server, make_key(engine, location))
    for path, params in (
        (f"/conversations/{conversation}/messages", {"limit": 2}),
        ("/conversations/search", {"locationId": location}),
    ):
        first = reader.get(path, params)
        before = _hits(server)
        again = reader.get(path, params)
        assert _hits(server) == before + 1
        assert _metric(server, "conversations_read_cache_bytes") >= len(first.content)
        assert (again.status_code, again.content) == (200, first.content)
        assert again.headers["content-type"] == first.headers["content-type"]


@pytest.mark.e2e
def test_a_change_is_read_as_soon_as_it_is_folded(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    location, conversation = _conversation(server, engine)
    reader = Reader(server, make_key(engine, location))
    _bodies(reader, conversation)
    cached = _bodies(reader, conversation)
    assert cached == ["m2", "m1", "m0"]
    later = {"dateAdded": "2025-01-02T00:00:00Z"}
    post_all(
        server, [message(locationId=location, conversationId=conversation, body="new", **later)]
    )
    wait_folded(engine)
    assert _bodies(reader, conversation) == ["new", *cached]
    search = reader.json("/conversations/search", {"locationId": location})
    assert search["conversations"][0]["lastMessageBody"] == "new"


@pytest.mark.e2e
def test_a_change_elsewhere_keeps_the_page(server: Server, engine: sqlalchemy.Engine) -> None:
    location, conversation = _conversation(server, engine)
    reader = Reader(server, make_key(engine, location))
    _bodies(reader, conversation)
    _conversation(server, engine, count=1)  # another location
    before = _hits(server)
    _bodies(reader, conversation)
    assert _hits(server) == before + 1


@pytest.mark.e2e
def test_a_page_is_never_served_to_another_key(server: Server, engine: sqlalchemy.Engine) -> None:
    location, conversation = _conversation(server, engine)
    path = f"/conversations/{conversation}/messages"
    owner = Reader(server, make_key(engine, location))
    page = owner.json(path, {"limit": 1})
    assert owner.json(path, {"limit": 1}) == page  # kept
    stranger = Reader(server, make_key(engine, new_id("loc")))
    assert stranger.get(path, {"limit": 1}).status_code == 404
    colleague = Reader(server, make_key(engine, location))
    theirs = colleague.json(path, {"limit": 1})
    # Their own page: the same messages, a cursor signed for their key (owner's is refused).
    assert theirs["messages"]["messages"] == page["messages"]["messages"]
    assert theirs["messages"]["nextCursor"] != page["messages"]["nextCursor"]
    refused = colleague.get(path, {"limit": 1, "cursor": page["messages"]["nextCursor"]})
    assert refused.status_code == 400


def _listeners(engine: sqlalchemy.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": LISTENER},
            )
        )


def _wait(condition: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.e2e
def test_without_its_listener_the_cache_is_off_and_misses_nothing(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    """A change whose notification was lost (the listener's connection dropped) is read
    all the same: nothing is served from memory until the listener is back, and what was
    kept before is dropped then."""
    location, conversation = _conversation(server, engine, count=1)
    reader = Reader(server, make_key(engine, location))
    assert _bodies(reader, conversation) == ["m0"]
    old = _listeners(engine)
    assert old
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) pid"), {"pids": old})
    _wait(lambda: not set(old) & set(_listeners(engine)), "the listener to be gone")
    # A change no notification tells of (projection rows are written by the worker only;
    # here by hand, outside any projection transaction).
    _edit(engine, location, '"m0"', '"edited"')
    try:
        assert _bodies(reader, conversation) == ["edited"]
        _wait(lambda: bool(_listeners(engine)), "the listener to reconnect")
        _wait(lambda: _metric(server, "conversations_read_cache_serving") == 1, "the cache on")
        _bodies(reader, conversation)
        before = _hits(server)
        assert _bodies(reader, conversation) == ["edited"]
        assert _hits(server) == before + 1  # kept again
    finally:  # as the projection has it (`verify` compares the session's store)
        _edit(engine, location, '"edited"', '"m0"')


def _edit(engine: sqlalchemy.Engine, location: str, old: str, new: str) -> None:
    table = timeline.timeline_messages
    with engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.location_id == location)
            .values(doc=sqlalchemy.func.replace(table.c.doc, old, new))
        )


# --- the parts, without a server --------------------------------------------------------------


def test_pages_are_dropped_when_their_stamp_changes_or_they_age() -> None:
    cache = PageCache(max_bytes=1 << 20, max_age=60)
    key = ("key", "/conversations/c/messages", b"limit=1")
    cache.put(key, (1, 5), b"page")
    assert cache.get(key, (1, 5)) == b"page"
    assert cache.get(key, (1, 6)) is None
    assert cache.get(key, (1, 5)) is None  # dropped, not kept for the old stamp
    aged = PageCache(max_bytes=1 << 20, max_age=0)
    aged.put(key, (1, 5), b"page")
    time.sleep(0.01)
    assert aged.get(key, (1, 5)) is None


def test_the_least_recently_used_pages_go_first_within_the_budget() -> None:
    cache = PageCache(max_bytes=2_500)  # four pages of 400 bytes (and overhead), not five
    keys = [("key", f"/p{n}", b"") for n in range(5)]
    for key in keys[:4]:
        cache.put(key, (1,), b"x" * 400)
    assert cache.get(keys[0], (1,)) is not None  # used: the last to go now
    cache.put(keys[4], (1,), b"x" * 400)
    assert len(cache) == 4
    assert cache.get(keys[1], (1,)) is None
    assert all(cache.get(key, (1,)) is not None for key in (keys[0], *keys[2:]))
    cache.put(("key", "/big", b""), (1,), b"x" * 700)  # over a quarter: not kept
    assert cache.get(("key", "/big", b""), (1,)) is None
    assert len(cache) == 4


def test_change_payloads_name_locations_or_everything() -> None:
    assert changes.decode(changes.encode(["b", "a", "a"])) == ["a", "b"]
    assert changes.encode(None) == changes.EVERYTHING
    assert changes.decode(changes.EVERYTHING) is None
    many = [new_id("loc") for _ in range(1_000)]
    assert changes.encode(many) == changes.EVERYTHING  # over PostgreSQL's limit
    assert changes.decode("not json") is None
    assert changes.decode('{"a": 1}') is None
