"""A database outage, end to end: `conversations serve` reaches PostgreSQL only through a
proxy the test cuts and restores (or stalls and lets flow again).

The contract: while the database is unreachable a webhook is answered 503 with
`Retry-After` and a problem document, in bounded time (never a 500, never a hang); once
it is back the service recovers by itself; and every acknowledged (2xx) event is in the
`events` table, once, at the position its answer gave.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy

from conversations.api import page_cache
from conversations.keys import create_key
from tests.api_support import make_key
from tests.conftest import start_server
from tests.helpers import KeyPair, Server, message, new_id
from tests.proxy import Proxy

pytestmark = pytest.mark.e2e

DB_TIMEOUT = 2
RETRY_AFTER = 1
# An answer must come within the database timeout, plus this for everything else.
SLACK = 3.0
CLIENT_TIMEOUT = DB_TIMEOUT + SLACK + 5
SENDERS = 8

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Outage:
    proxy: Proxy
    server: Server


@contextmanager
def proxied(database_url: str, keys: KeyPair, **env: str) -> Iterator[Outage]:
    """A server whose only way to the database is a proxy the tests control."""
    with Proxy.to(database_url).running() as proxy:
        server = start_server(
            proxy.url_for(database_url),
            keys,
            CONVERSATIONS_DB_TIMEOUT=str(DB_TIMEOUT),
            CONVERSATIONS_RETRY_AFTER=str(RETRY_AFTER),
            **env,
        )
        try:
            yield Outage(proxy, server)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def through_proxy(database_url: str, keys: KeyPair) -> Iterator[Outage]:
    with proxied(database_url, keys) as outage:
        yield outage


@pytest.fixture
def outage(through_proxy: Outage) -> Iterator[Outage]:
    """The shared server; whatever a test does to the proxy is undone after it. Each test
    starts by storing a webhook, so it also proves the previous one left no damage."""
    try:
        yield through_proxy
    finally:
        through_proxy.proxy.heal()


@dataclass
class Answer:
    raw: bytes
    sent: float
    received: float
    status: int
    headers: httpx.Headers
    document: dict[str, Any]

    @property
    def webhook_id(self) -> str:
        webhook_id: str = json.loads(self.raw)["webhookId"]
        return webhook_id

    @property
    def seconds(self) -> float:
        return self.received - self.sent


def send(client: httpx.Client, server: Server, raw: bytes) -> Answer:
    """POST one signed webhook body, as HighLevel does, and keep what came back."""
    headers = {"Content-Type": "application/json", **server.keys.headers(raw)}
    sent = time.monotonic()
    response = client.post(f"{server.url}/webhooks/highlevel", content=raw, headers=headers)
    received = time.monotonic()
    try:
        document = response.json()
    except ValueError:
        document = {"unparsable": response.text}
    return Answer(raw, sent, received, response.status_code, response.headers, document)


def in_parallel(work: Callable[[httpx.Client, T], R], items: Sequence[T]) -> list[R]:
    """`work(client, item)` for every item, from SENDERS threads with a client each."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def run(item: T) -> R:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=CLIENT_TIMEOUT)
            clients.append(local.client)
        client: httpx.Client = local.client
        return work(client, item)

    try:
        with ThreadPoolExecutor(SENDERS) as pool:
            return list(pool.map(run, items))
    finally:
        for client in clients:
            client.close()


def assert_unavailable(answer: Answer) -> None:
    assert answer.status == 503, answer
    assert answer.headers.get("retry-after") == str(RETRY_AFTER), answer.headers
    assert answer.headers.get("content-type", "").startswith("application/problem+json")
    assert answer.document["status"] == 503
    assert answer.document["type"] == "urn:conversations:problem:unavailable"
    assert answer.seconds < DB_TIMEOUT + SLACK, f"503 took {answer.seconds:.2f} s"


def stored(engine: sqlalchemy.Engine, webhook_ids: list[str]) -> dict[str, list[Any]]:
    """The rows of `events` for these webhook ids, read directly (not through the proxy)."""
    rows: dict[str, list[Any]] = {webhook_id: [] for webhook_id in webhook_ids}
    with engine.connect() as conn:
        result = conn.execute(
            sqlalchemy.text(
                "SELECT metadata->>'webhookId' AS webhook_id, dedup_key, position, raw"
                "  FROM events WHERE metadata->>'webhookId' = ANY(CAST(:ids AS text[]))"
            ),
            {"ids": webhook_ids},
        )
        for row in result:
            rows[row.webhook_id].append(row)
    return rows


def assert_stored_once(engine: sqlalchemy.Engine, acknowledged: list[Answer]) -> None:
    """Every acknowledged body is in `events` exactly once, at the position answered."""
    rows = stored(engine, [answer.webhook_id for answer in acknowledged])
    for answer in acknowledged:
        assert answer.status in (200, 201), answer
        found = rows[answer.webhook_id]
        assert len(found) == 1, f"{answer.webhook_id} stored {len(found)} times"
        (row,) = found
        assert row.position == answer.document["position"], answer
        assert row.dedup_key == f"webhook:{answer.webhook_id}"
        assert bytes(row.raw) == answer.raw


def test_outage_answers_503_then_recovers_and_loses_nothing(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    proxy, server = outage.proxy, outage.server
    answers: list[Answer] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender() -> None:
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            while not stop.is_set():
                raw = json.dumps(message()).encode()
                try:
                    answer = send(client, server, raw)
                except httpx.HTTPError as error:  # a hang, or a dropped connection
                    with lock:
                        failures.append(error)
                    continue
                with lock:
                    answers.append(answer)
                if answer.status == 503:
                    time.sleep(0.05)  # enough 503s without thousands of retries later

    def stored_since(moment: float, count: int = 1) -> bool:
        with lock:
            return sum(a.sent >= moment and a.status == 201 for a in answers) >= count

    def wait_until_stored(moment: float, count: int) -> None:
        deadline = time.monotonic() + 10
        while not stored_since(moment, count) and time.monotonic() < deadline:
            time.sleep(0.02)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    started_at = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_until_stored(started_at, 5 * SENDERS)
        time.sleep(0.5)
        cut_at = time.monotonic()
        proxy.cut()
        time.sleep(3)
        restored_at = time.monotonic()
        proxy.restore()
        wait_until_stored(restored_at, 1)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT + 5)

    assert not failures, failures[:3]
    others = [a for a in answers if a.status not in (200, 201, 503)]
    assert not others, others[:3]

    assert any(a.status == 201 for a in answers if a.received < cut_at), "none stored before"
    during = [a for a in answers if cut_at <= a.sent and a.received <= restored_at]
    assert any(a.status == 503 for a in during), "no 503 while the database was cut"
    unavailable = [a for a in answers if a.status == 503]
    for answer in unavailable:
        assert_unavailable(answer)

    resumed = [a for a in answers if a.sent >= restored_at and a.status == 201]
    assert resumed, "nothing stored after the database came back"
    first = min(a.received for a in resumed)
    assert first - restored_at < 5, f"the first 201 came {first - restored_at:.2f} s after"
    # Recovered for good: only 201s for what was sent once the first came back.
    assert all(a.status == 201 for a in answers if a.sent > first)

    # HighLevel retries every non-2xx answer; each retry is acknowledged now.
    retried = in_parallel(lambda client, a: send(client, server, a.raw), unavailable)
    acknowledged = [a for a in answers if a.status in (200, 201)] + retried
    assert_stored_once(engine, acknowledged)
    # Nothing sent is missing from the store, and nothing is in it twice.
    rows = stored(engine, [a.webhook_id for a in answers])
    assert all(len(found) == 1 for found in rows.values())


def test_a_webhook_after_a_blip_is_stored_not_answered_503(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    """Every connection is reset (PostgreSQL restarted, a failover, an idle timeout) and the
    database is back at once: the writer's kept connection is dead, and the next webhook
    is stored on a new one, not answered 503 for an outage that is over."""
    proxy, server = outage.proxy, outage.server
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        deadline = time.monotonic() + 5  # an earlier test's cut may still be felt
        while send(client, server, json.dumps(message()).encode()).status != 201:
            assert time.monotonic() < deadline, "the writer did not recover"
        for _ in range(3):
            proxy.cut()
            proxy.restore()
            time.sleep(0.2)  # the reset reaches the server before the next webhook
            answer = send(client, server, json.dumps(message()).encode())
            assert answer.status == 201, answer
            assert_stored_once(engine, [answer])


def test_cut_database_answers_503_quickly_and_readyz_tells(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    proxy, server = outage.proxy, outage.server
    raw = json.dumps(message()).encode()
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        assert send(client, server, json.dumps(message()).encode()).status == 201

        proxy.cut()
        try:
            assert_unavailable(send(client, server, raw))
            started = time.monotonic()
            ready = client.get(f"{server.url}/readyz")
            assert time.monotonic() - started < DB_TIMEOUT + SLACK
            assert ready.status_code == 503
            assert ready.headers["content-type"].startswith("application/problem+json")
            assert ready.headers.get("retry-after") == str(RETRY_AFTER)
            assert client.get(f"{server.url}/healthz").status_code == 200
        finally:
            proxy.restore()

        deadline = time.monotonic() + 5
        while (retry := send(client, server, raw)).status == 503:
            assert time.monotonic() < deadline, "still 503 five seconds after the restore"
            time.sleep(0.1)
        assert retry.status == 201, retry
        assert client.get(f"{server.url}/readyz").status_code == 200
    assert_stored_once(engine, [retry])


def test_hung_database_is_answered_in_bounded_time(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    """A database that hangs (nothing refused, nothing reset) must not hold any answer,
    whichever path the request takes: append, quarantine, or readiness probe."""
    proxy, server = outage.proxy, outage.server
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        assert send(client, server, json.dumps(message()).encode()).status == 201
    # Idle connections in the pool, so that requests meet hung ones, not only new ones.
    in_parallel(lambda client, _: client.get(f"{server.url}/readyz"), range(3 * SENDERS))
    assert proxy.open > 2

    good = json.dumps(message()).encode()
    unusable = json.dumps(message(messageId=..., conversationId=...)).encode()
    not_json = b"this is not JSON " + json.dumps(message()).encode()

    def request(client: httpx.Client, what: str) -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        if what in ("readyz", "metrics"):
            response = client.get(f"{server.url}/{what}")
        else:
            raw = {"good": good, "unusable": unusable, "not_json": not_json}[what]
            headers = {"Content-Type": "application/json", **server.keys.headers(raw)}
            response = client.post(f"{server.url}/webhooks/highlevel", content=raw, headers=headers)
        return response.status_code, time.monotonic() - started, response

    paths = ["good", "unusable", "not_json", "readyz", "metrics"]
    proxy.stall()
    try:
        answers = dict(zip(paths, in_parallel(request, paths), strict=True))
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200
    finally:
        proxy.flow()
    # A scrape still gets every counter (the outage's included), with the gauge at 0.
    status, seconds, scraped = answers.pop("metrics")
    assert status == 200, scraped.text
    assert seconds < DB_TIMEOUT + SLACK, f"metrics took {seconds:.2f} s"
    assert "\nconversations_database_reachable 0\n" in scraped.text
    assert "conversations_webhooks_total{" in scraped.text
    for what, (status, seconds, response) in answers.items():
        assert status == 503, (what, response.text)
        assert seconds < DB_TIMEOUT + SLACK, f"{what} took {seconds:.2f} s"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers.get("retry-after") == str(RETRY_AFTER), what

    # Retried once the database answers again: stored (or found stored: the hung append
    # may have committed after its 503), quarantined, and ready.
    deadline = time.monotonic() + 5
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        while (retry := send(client, server, good)).status == 503:
            assert time.monotonic() < deadline, "still 503 five seconds after the stall"
            time.sleep(0.1)
        assert request(client, "unusable")[0] == 202
        assert request(client, "not_json")[0] == 400
        assert request(client, "readyz")[0] == 200
    assert_stored_once(engine, [retry])


def test_read_during_an_outage_is_logged_as_answered(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """A keyed read that finds no database is a 503 problem, and the access log line says
    503 too: one structured line, no traceback from the server underneath."""
    key = make_key(engine, new_id("loc_"))
    with proxied(database_url, keys, CONVERSATIONS_LOG_LEVEL="info") as outage:
        proxy, server = outage.proxy, outage.server
        try:
            proxy.cut()
            response = httpx.get(
                f"{server.url}/conversations/search",
                headers={"Authorization": f"Bearer {key}"},
                timeout=CLIENT_TIMEOUT,
            )
        finally:
            proxy.restore()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers.get("retry-after") == str(RETRY_AFTER)
    lines = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("path") == "/conversations/search"]
    assert [line["status"] for line in access] == [503], access
    assert not [line for line in lines if line["level"] == "error" and "uvicorn" in line["logger"]]


def readable(engine: sqlalchemy.Engine) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """A message to post, headers with a key to its location, and read paths that show it:
    the two async endpoints first, then two on the thread pool."""
    document = message()
    with engine.begin() as conn:
        key = create_key(conn, [document["locationId"]])
    paths = [
        f"/conversations/{document['conversationId']}/messages",
        f"/conversations/search?locationId={document['locationId']}",
        f"/conversations/messages/{document['messageId']}",
        f"/contacts/{document['contactId']}/channels",
    ]
    return document, {"Authorization": f"Bearer {key}"}, paths


def test_reads_answer_503_while_the_database_is_cut_then_recover(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    """The async read endpoints (their own connection pool) answer a lost database as the
    webhook does: 503 with Retry-After, in bounded time, and serve again once it is back."""
    proxy, server = outage.proxy, outage.server
    document, headers, paths = readable(engine)
    paths = paths[:2]  # the async endpoints
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        assert send(client, server, json.dumps(document).encode()).status == 201
        for path in paths:  # pooled connections and the key cache in use
            assert client.get(f"{server.url}{path}", headers=headers).status_code in (200, 404)
        # A blip: every pooled connection is reset, the database is back at once. The
        # next reads find dead connections and must go on with live ones, not fail.
        proxy.cut()
        proxy.restore()
        for path in paths:
            assert client.get(f"{server.url}{path}", headers=headers).status_code in (200, 404)
        time.sleep(2.5)  # past the key cache's 2 s: the key is looked up again, too
        proxy.cut()
        try:
            for path in paths * 2:
                started = time.monotonic()
                response = client.get(f"{server.url}{path}", headers=headers)
                assert time.monotonic() - started < DB_TIMEOUT + SLACK, path
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.headers.get("retry-after") == str(RETRY_AFTER)
        finally:
            proxy.restore()
        deadline = time.monotonic() + 10
        for path in paths:
            while (answer := client.get(f"{server.url}{path}", headers=headers)).status_code == 503:
                assert time.monotonic() < deadline, "still 503 ten seconds after the restore"
                time.sleep(0.1)
            assert answer.status_code in (200, 404), answer.text


def test_an_outage_is_logged_going_and_coming_back_not_at_every_retry(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    """Five seconds cut, with reads and webhooks meanwhile: the page cache says once that
    it is off and once that it is on again, and so do the reads (they logged a warning
    for each read answered 503); the connection pools' warnings at every failed
    reconnection stay at debug level."""
    proxy, server = outage.proxy, outage.server
    _, headers, paths = readable(engine)
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        deadline = time.monotonic() + 15  # an earlier test's outage may not be over for it
        while (
            "\nconversations_read_cache_serving 1\n" not in client.get(f"{server.url}/metrics").text
        ):
            assert time.monotonic() < deadline, "the page cache did not come back"
            time.sleep(0.2)
        seen = len(server.lines)
        proxy.cut()
        try:
            until = time.monotonic() + 5
            while time.monotonic() < until:
                client.get(f"{server.url}{paths[0]}", headers=headers)
                send(client, server, json.dumps(message()).encode())
                time.sleep(0.2)
        finally:
            proxy.restore()
        deadline = time.monotonic() + 15
        back = ("page cache on again", "reads work again")
        while not all(any(b in line for line in list(server.lines)[seen:]) for b in back):
            assert time.monotonic() < deadline, "".join(list(server.lines)[seen:])
            client.get(f"{server.url}{paths[0]}", headers=headers)
            time.sleep(0.2)
    logged = list(server.lines)[seen:]
    assert not [line for line in logged if "psycopg.pool" in line], logged
    assert len([line for line in logged if "page cache off" in line]) == 1, logged
    assert len([line for line in logged if "page cache on again" in line]) == 1, logged
    assert len([line for line in logged if "reads answering 503" in line]) == 1, logged
    assert len([line for line in logged if "reads work again" in line]) == 1, logged
    assert not [line for line in logged if "database unavailable on" in line], logged


def test_reads_on_a_hung_database_are_answered_in_bounded_time(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    """A database that hangs must not hold a read either, on the async endpoints (their
    own pool) or on the others (the thread pool): 503 with Retry-After, then 200 again."""
    proxy, server = outage.proxy, outage.server
    document, headers, paths = readable(engine)
    deadline = time.monotonic() + 5
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        # The writer may first meet a connection an earlier test's cut left dead (a 503).
        while send(client, server, json.dumps(document).encode()).status == 503:
            assert time.monotonic() < deadline, "the writer did not recover"

    def read(client: httpx.Client, path: str) -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        response = client.get(f"{server.url}{path}", headers=headers)
        return response.status_code, time.monotonic() - started, response

    in_parallel(read, paths)  # pools and the key cache in use (and those pages kept)
    # Pages not kept in memory (another page size), so they need the database.
    fresh = [f"{path}{'&' if '?' in path else '?'}limit=3" for path in paths[:2]] + paths[2:]
    proxy.stall()
    try:
        answers = in_parallel(read, fresh)
        # Kept pages too, once the page cache's listener has been silent too long.
        time.sleep(page_cache.MAX_SILENCE + page_cache.PROBE_EVERY + 0.2)
        answers += in_parallel(read, paths[:2])
    finally:
        proxy.flow()
    for path, (status, seconds, response) in zip(fresh + paths[:2], answers, strict=True):
        assert status == 503, (path, response.text)
        assert seconds < DB_TIMEOUT + SLACK, f"{path} took {seconds:.2f} s"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers.get("retry-after") == str(RETRY_AFTER), path

    deadline = time.monotonic() + 10
    for path in paths:
        while (status := read(httpx.Client(timeout=CLIENT_TIMEOUT), path)[0]) == 503:
            assert time.monotonic() < deadline, f"{path} still 503 after the stall"
            time.sleep(0.1)
        assert status in (200, 404), path


def test_the_worker_says_once_that_catch_up_fails_and_once_that_it_works_again(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """An outage is one warning with its traceback, then one line when folding works
    again: not a traceback per retry."""
    with proxied(database_url, keys) as outage:
        proxy, server = outage.proxy, outage.server
        proxy.cut()
        try:
            time.sleep(4)  # retries after 0.5, 1 and 2 s
        finally:
            proxy.restore()
        deadline = time.monotonic() + 30
        while "catch-up works again" not in server.output and time.monotonic() < deadline:
            time.sleep(0.1)
        output = server.output
    assert output.count("projection catch-up failed") == 1, output
    assert output.count("projection catch-up works again") == 1, output


def test_a_hung_database_is_logged_for_the_webhooks_going_and_coming_back(
    outage: Outage, engine: sqlalchemy.Engine
) -> None:
    """A database that hangs (a frozen server, a lock another session holds) fails no
    statement: webhooks are answered 503 at their deadline. The log says so once, as for
    a database that refuses, and once when a write commits again; not once per webhook."""
    proxy, server = outage.proxy, outage.server
    deadline = time.monotonic() + 10
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        # The writer may first meet a connection an earlier test's cut left dead (a 503).
        while send(client, server, json.dumps(message()).encode()).status == 503:
            assert time.monotonic() < deadline, "the writer did not recover"
        seen = len(server.lines)
        proxy.stall()
        try:
            answers = in_parallel(
                lambda client, raw: send(client, server, raw),
                [json.dumps(message()).encode() for _ in range(2 * SENDERS)],
            )
        finally:
            proxy.flow()
        for answer in answers:
            assert_unavailable(answer)
        while (retry := send(client, server, json.dumps(message()).encode())).status == 503:
            assert time.monotonic() < deadline + 10, "still 503 after the stall"
            time.sleep(0.1)
        assert retry.status == 201, retry
    logged = list(server.lines)[seen:]
    going = [line for line in logged if "database unavailable, answering 503" in line]
    assert len(going) == 1, logged
    assert f"within {DB_TIMEOUT} s" in going[0], going
    assert len([line for line in logged if "database available again" in line]) == 1, logged


def test_serve_stops_on_sigterm_while_the_database_hangs(
    database_url: str, keys: KeyPair, engine: sqlalchemy.Engine
) -> None:
    """A read on a hung database is answered 503 at its deadline, but its thread stays
    blocked in the driver; Python waits for it before the process exits, so `serve`
    stopped by SIGTERM while the database hung did not exit until it answered again
    (minutes, or never). It must stop as usual, with status 0."""
    with proxied(database_url, keys, CONVERSATIONS_LOG_LEVEL="info") as outage:
        proxy, server = outage.proxy, outage.server
        with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
            assert client.get(f"{server.url}/projections").status_code == 200
            proxy.stall()
            try:
                started = time.monotonic()
                response = client.get(f"{server.url}/projections")
                assert response.status_code == 503, response.text
                assert time.monotonic() - started < DB_TIMEOUT + SLACK
                server.process.send_signal(signal.SIGTERM)
                try:
                    server.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pytest.fail("serve did not stop within 20 s of SIGTERM")
            finally:
                proxy.flow()
    assert server.process.returncode == 0, server.output
    assert "Finished server process" in server.output
