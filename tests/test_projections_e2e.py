"""Projections kept current by `conversations serve` processes, rebuilt and verified by
the operator's CLI while webhooks keep arriving."""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import make_url, text

from conversations import migrate
from conversations.cli import main
from conversations.database import create_engine, drop_database
from conversations.projections.registry import PROJECTIONS
from conversations.projections.runner import catch_up_all, ensure_checkpoints
from tests.api_support import Reader, make_key, post_all, wait_folded
from tests.conftest import migrated_database, start_server
from tests.helpers import KeyPair, Server, message, new_id
from tests.projection_support import append_documents

pytestmark = pytest.mark.e2e


def caught_up(server: Server, timeout: float = 20.0) -> float:
    """Seconds until every projection reached the head (fails after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        body = httpx.get(f"{server.url}/projections", timeout=5).json()
        if all(p["behindEvents"] == 0 for p in body["projections"]):
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"projections still behind after {timeout} s: {body}")


@pytest.fixture
def servers(database_url: str, keys: KeyPair) -> Iterator[tuple[Server, Server]]:
    first, second = start_server(database_url, keys), start_server(database_url, keys)
    yield first, second
    first.stop()
    second.stop()


def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setenv("DATABASE_URL", database_url)
    return main(list(argv))


def timeline_rows(engine: sqlalchemy.Engine, location: str) -> int:
    with engine.connect() as conn:
        count = conn.scalar(
            text("SELECT count(*) FROM timeline_messages WHERE location_id = :l"), {"l": location}
        )
    return int(count or 0)


@pytest.mark.smoke
def test_a_stored_webhook_is_readable_promptly(server: Server, engine: sqlalchemy.Engine) -> None:
    location = new_id("loc")
    assert server.post(message(locationId=location)).status_code == 201
    caught_up(server)
    assert timeline_rows(engine, location) == 1


def test_two_servers_fold_concurrent_webhooks_exactly_once(
    servers: tuple[Server, Server],
    database_url: str,
    engine: sqlalchemy.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    location = new_id("loc")
    conversation = new_id("cnv")
    bodies = [
        message(locationId=location, conversationId=conversation, status=status)
        for status in ("sent", "delivered")
        for _ in range(40)
    ]

    def send(server: Server, part: list[dict[str, object]]) -> None:
        for body in part:
            assert server.post(body).status_code == 201

    threads = [threading.Thread(target=send, args=(servers[n % 2], bodies[n::4])) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for server in servers:
        caught_up(server)
    assert timeline_rows(engine, location) == len(bodies)
    assert cli(database_url, monkeypatch, "verify") == 0


def test_replay_while_webhooks_arrive_loses_nothing(
    server: Server,
    database_url: str,
    engine: sqlalchemy.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    location = new_id("loc")
    for _ in range(30):
        assert server.post(message(locationId=location)).status_code == 201
    stop = threading.Event()
    sent = [30]

    def keep_sending() -> None:
        while not stop.is_set():
            assert server.post(message(locationId=location)).status_code == 201
            sent[0] += 1

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        assert cli(database_url, monkeypatch, "replay") == 0
    finally:
        stop.set()
        sender.join()
    captured = capsys.readouterr()
    assert "switched over" in captured.out
    # Its progress counts the events that arrived meanwhile in its total too.
    shown = re.findall(r"([\d,]+) of ([\d,]+) events", captured.err)
    assert shown, captured.err
    for done, total in shown:
        assert int(done.replace(",", "")) <= int(total.replace(",", "")), captured.err
    caught_up(server)
    assert timeline_rows(engine, location) == sent[0]
    assert cli(database_url, monkeypatch, "verify") == 0


def test_verify_reports_a_corrupted_row(
    server: Server,
    database_url: str,
    engine: sqlalchemy.Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    location = new_id("loc")
    assert server.post(message(locationId=location, body="original")).status_code == 201
    caught_up(server)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE timeline_messages SET body = 'forged' WHERE location_id = :l"),
            {"l": location},
        )
    capsys.readouterr()
    assert cli(database_url, monkeypatch, "verify", "--projection", "timeline") == 1
    out = capsys.readouterr().out
    assert "timeline: DIFFERS" in out
    assert "forged" in out and "original" in out
    assert cli(database_url, monkeypatch, "replay", "--projection", "timeline") == 0
    assert cli(database_url, monkeypatch, "verify", "--projection", "timeline") == 0


def test_status_shows_events_projections_and_quarantine(
    server: Server,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert server.post(message()).status_code == 201
    caught_up(server)
    capsys.readouterr()
    assert cli(database_url, monkeypatch, "status") == 0
    out = capsys.readouterr().out
    for expected in ("database:", "events:", "quarantine:", "timeline", "contact_channels"):
        assert expected in out


def test_unknown_projection_is_refused(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(database_url, monkeypatch, "replay", "--projection", "nope") == 2
    assert "unknown projection 'nope'" in capsys.readouterr().err


@contextlib.contextmanager
def linguistic_database(server_url: str) -> Iterator[str]:
    """A migrated database whose default collation is ICU's en-US (as `en_US.UTF-8` is
    the default of many PostgreSQL servers, and of an embedded one under such a locale):
    there "ma" sorts before "Mb", while code points put "M" first."""
    name = f"conversations_icu_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f'CREATE DATABASE "{name}" TEMPLATE template0'
                " LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
    except sqlalchemy.exc.DBAPIError as error:  # no ICU in this build, or before 15
        pytest.skip(f"no ICU collation here: {error.orig}")
    finally:
        admin.dispose()
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            migrate.upgrade(conn)
        yield url
    finally:
        engine.dispose()
        drop_database(server_url, name)


@pytest.mark.parametrize("together", [True, False], ids=["one-fold", "fold-by-fold"])
def test_every_read_agrees_on_the_last_message_in_a_linguistic_collation(
    server_url: str, keys: KeyPair, monkeypatch: pytest.MonkeyPatch, together: bool
) -> None:
    # Messages on one date: the message key breaks the tie, and every read must break it
    # the same way. The contact summary used to compare keys by code point while the
    # conversation and its timeline used the database's collation.
    with linguistic_database(server_url) as url:
        engine = create_engine(url)
        server = start_server(url, keys)
        try:
            common = {"locationId": new_id("loc"), "contactId": new_id("con")}
            common |= {"conversationId": new_id("cnv"), "dateAdded": "2024-05-08T12:00:00Z"}
            ids = [f"ma-{new_id()}", f"Mb-{new_id()}"]  # en-US: ma < Mb; code points: M < m
            for batch in [ids] if together else [[i] for i in ids]:
                post_all(server, [message(**common, messageId=i, body=i) for i in batch])
                wait_folded(engine)
            reader = Reader(server, make_key(engine, common["locationId"]))
            conversation = reader.json(f"/conversations/{common['conversationId']}")
            listed = reader.json(f"/conversations/{common['conversationId']}/messages")
            channels = reader.json(f"/contacts/{common['contactId']}/channels")["channels"]
            assert conversation["lastMessageBody"] == ids[1]
            assert listed["messages"]["messages"][0]["id"] == ids[1]
            assert channels[0]["lastMessageId"] == ids[1]
            assert cli(url, monkeypatch, "verify") == 0
        finally:
            server.stop()
            engine.dispose()


@pytest.fixture(scope="module")
def linguistic_server(server_url: str, keys: KeyPair) -> Iterator[tuple[sqlalchemy.Engine, Server]]:
    """`serve` on a `linguistic_database`, shared by the tests below."""
    with linguistic_database(server_url) as url:
        engine = create_engine(url)
        server = start_server(url, keys)
        try:
            yield engine, server
        finally:
            server.stop()
            engine.dispose()


def test_the_channel_summary_breaks_ties_in_a_linguistic_collation(
    linguistic_server: tuple[sqlalchemy.Engine, Server],
) -> None:
    # Channels whose last messages share a date: the first one listed is the channel of
    # the contact's last message (the greater key in the database's collation, as the
    # conversation names it), and across locations the later last message of a channel
    # is picked the same way. Both used to compare keys by code point.
    engine, server = linguistic_server
    first, second, contact, conversation = new_id("loc"), new_id("loc"), new_id("con"), new_id()
    common = {"contactId": contact, "dateAdded": "2024-05-08T12:00:00Z"}
    # en-US: ma < Mb < Mc; code points: Mb < Mc < ma.
    sms, whatsapp, elsewhere = f"ma-{new_id()}", f"Mb-{new_id()}", f"Mc-{new_id()}"
    post_all(
        server,
        [
            message(**common, locationId=first, conversationId=conversation, messageId=sms),
            message(
                **common,
                locationId=first,
                conversationId=conversation,
                messageId=whatsapp,
                messageType="WhatsApp",
            ),
            message(**common, locationId=second, messageId=elsewhere),
        ],
    )
    wait_folded(engine)
    one = Reader(server, make_key(engine, first))
    assert one.json(f"/conversations/{conversation}")["lastMessageType"] == "TYPE_WHATSAPP"
    channels = one.json(f"/contacts/{contact}/channels")["channels"]
    assert [(c["channel"], c["lastMessageId"]) for c in channels] == [
        ("WhatsApp", whatsapp),
        ("SMS", sms),
    ]
    both = Reader(server, make_key(engine, all_locations=True))
    channels = both.json(f"/contacts/{contact}/channels")["channels"]
    assert [(c["channel"], c["lastMessageId"]) for c in channels] == [
        ("SMS", elsewhere),
        ("WhatsApp", whatsapp),
    ]


def test_a_contacts_messages_across_locations_in_a_linguistic_collation(
    linguistic_server: tuple[sqlalchemy.Engine, Server],
) -> None:
    # Messages of one date in two locations: the merged list orders them by key in the
    # database's collation, as each location's own list does (the merge used to compare
    # keys by code point, interleaving the locations in neither order).
    engine, server = linguistic_server
    first, second, contact = new_id("loc"), new_id("loc"), new_id("con")
    common = {"contactId": contact, "dateAdded": "2024-05-08T12:00:00Z"}
    # en-US: a1 < A3 < B2; code points: A3 < B2 < a1.
    ids = {name: f"{name}-{new_id()}" for name in ("a1", "A3", "B2")}
    post_all(
        server,
        [
            message(**common, locationId=first, messageId=ids["a1"]),
            message(**common, locationId=first, messageId=ids["B2"]),
            message(**common, locationId=second, messageId=ids["A3"]),
        ],
    )
    wait_folded(engine)
    reader = Reader(server, make_key(engine, first, second))
    expected = [ids["a1"], ids["A3"], ids["B2"]]
    for sort, order in (("asc", expected), ("desc", expected[::-1])):
        for limit in (1, 2, 3):
            got: list[str] = []
            params: dict[str, Any] = {"sort": sort, "limit": limit}
            while True:
                page = reader.json(f"/contacts/{contact}/messages", params)
                got += [m["id"] for m in page["messages"]]
                if page["nextCursor"] is None:
                    break
                params["cursor"] = page["nextCursor"]
            assert got == order, (sort, limit)


def test_verify_counts_up_to_the_position_it_compares_at(
    server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # While webhooks arrive the projection is behind the newest event: verify rebuilds and
    # compares up to its checkpoint, so its progress ends there ("2 of 2"), not at the
    # newest event ("2 of 3", shown as 67 %, or as 100 % at "355,377 of 355,391").
    with migrated_database(server_url, "conversations_verify") as url:
        engine = create_engine(url)
        try:
            append_documents(url, engine, [message(), message()])
            with engine.begin() as conn:
                ensure_checkpoints(conn, PROJECTIONS)
            catch_up_all(engine, PROJECTIONS)
            append_documents(url, engine, [message()])
            assert cli(url, monkeypatch, "verify", "--projection", "timeline") == 0
        finally:
            engine.dispose()
    lines = [line for line in capsys.readouterr().err.splitlines() if "verify timeline" in line]
    assert "100%" in lines[-1] and "2 of 2 events" in lines[-1], lines
