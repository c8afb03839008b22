"""A database outage, end to end: `conversations serve` reaches PostgreSQL through a proxy
the test cuts and restores.

The contract: while the database is unreachable a webhook is answered 503 with
`Retry-After` and a problem document, in bounded time (never a 500, never a hang); once
it is back the service recovers by itself; and every acknowledged (2xx) event is in the
`events` table, once, at the position its answer gave.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy

from tests.conftest import start_server
from tests.helpers import KeyPair, Server, message
from tests.proxy import Proxy

pytestmark = pytest.mark.e2e

DB_TIMEOUT = 2
RETRY_AFTER = 1
# A 503 must come within the database timeout, plus this for everything else.
SLACK = 3.0
CLIENT_TIMEOUT = DB_TIMEOUT + SLACK + 5


@dataclass
class Outage:
    proxy: Proxy
    server: Server


@pytest.fixture
def outage(database_url: str, keys: KeyPair) -> Iterator[Outage]:
    """A server whose only way to the database is a proxy the test controls."""
    with Proxy.to(database_url).running() as proxy:
        server = start_server(
            proxy.url_for(database_url),
            keys,
            CONVERSATIONS_DB_TIMEOUT=str(DB_TIMEOUT),
            CONVERSATIONS_RETRY_AFTER=str(RETRY_AFTER),
        )
        try:
            yield Outage(proxy, server)
        finally:
            server.stop()


@dataclass
class Answer:
    raw: bytes
    webhook_id: str
    sent: float
    received: float
    status: int
    headers: httpx.Headers
    document: dict[str, Any]

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
    return Answer(
        raw,
        json.loads(raw)["webhookId"],
        sent,
        received,
        response.status_code,
        response.headers,
        document,
    )


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
                except httpx.HTTPError as error:  # a hang or a dropped connection
                    with lock:
                        failures.append(error)
                    continue
                with lock:
                    answers.append(answer)

    def resumed_after(moment: float) -> list[Answer]:
        with lock:
            return [a for a in answers if a.sent >= moment and a.status == 201]

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        cut_at = time.monotonic()
        proxy.cut()
        time.sleep(3)
        restored_at = time.monotonic()
        proxy.restore()
        deadline = restored_at + 10
        while not resumed_after(restored_at) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=CLIENT_TIMEOUT + 5)

    assert not failures, failures[:3]
    statuses = {a.status for a in answers}
    assert statuses <= {200, 201, 503}, [a for a in answers if a.status not in (200, 201, 503)][:3]

    before = [a for a in answers if a.received < cut_at]
    assert any(a.status == 201 for a in before), "nothing was stored before the outage"
    during = [a for a in answers if cut_at <= a.sent and a.received <= restored_at]
    assert any(a.status == 503 for a in during), "no 503 while the database was cut"
    unavailable = [a for a in answers if a.status == 503]
    for answer in unavailable:
        assert_unavailable(answer)

    resumed = resumed_after(restored_at)
    assert resumed, "no webhook stored after the database came back"
    recovery = min(a.received for a in resumed) - restored_at
    assert recovery < 5, f"the first 201 after the restore took {recovery:.2f} s"
    # Recovered for good: nothing but 201s once the first one came back.
    settled = min(a.received for a in resumed)
    assert all(a.status == 201 for a in answers if a.sent > settled)

    # HighLevel retries every non-2xx; the retries must all be acknowledged now.
    retried: list[Answer] = []
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        for answer in unavailable:
            retried.append(send(client, server, answer.raw))
    assert {a.status for a in retried} <= {200, 201}, [a for a in retried if a.status >= 300]

    print("STATS", len(answers), len(unavailable), recovery, collections.Counter(a.status for a in retried), time.monotonic() - restored_at)
    acknowledged = [a for a in answers if a.status in (200, 201)] + retried
    rows = stored(engine, [a.webhook_id for a in answers])
    for answer in acknowledged:
        found = rows[answer.webhook_id]
        assert len(found) == 1, f"{answer.webhook_id} stored {len(found)} times"
        (row,) = found
        assert row.position == answer.document["position"], answer
        assert row.dedup_key == f"webhook:{answer.webhook_id}"
        assert bytes(row.raw) == answer.raw
    # Every body sent is stored exactly once, and none twice.
    assert all(len(found) == 1 for found in rows.values())


def test_cut_database_answers_503_quickly_and_readyz_tells(outage: Outage) -> None:
    proxy, server = outage.proxy, outage.server
    raw = json.dumps(message()).encode()
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        assert send(client, server, json.dumps(message()).encode()).status == 201

        proxy.cut()
        try:
            answer = send(client, server, raw)
            assert_unavailable(answer)

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
        assert retry.status in (200, 201), retry
        assert client.get(f"{server.url}/readyz").status_code == 200
