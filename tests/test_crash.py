"""`kill -9` of `serve` in the middle of a load of webhooks: every acknowledged webhook is
stored, at the position it was acknowledged with; a restarted server takes the rest as
new or duplicates; the projections catch up with nothing counted twice."""

from __future__ import annotations

import json
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import sqlalchemy
from sqlalchemy import text

from tests.api_support import wait_folded
from tests.conftest import start_server
from tests.helpers import KeyPair, message, new_id

TOTAL = 240
KILL_AFTER = 80
CONCURRENCY = 16


def test_kill_9_during_a_load_loses_no_acknowledged_webhook(
    database_url: str, engine: sqlalchemy.Engine, keys: KeyPair
) -> None:
    location = new_id("loc")
    documents = [
        message(
            locationId=location,
            conversationId=f"cnv{i % 12}",
            contactId=f"con{i % 5}",
            messageId=f"msg{i}",
            webhookId=str(uuid.uuid4()),
        )
        for i in range(TOTAL)
    ]
    server = start_server(database_url, keys)
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    killed = threading.Event()

    def deliver(document: dict[str, object]) -> None:
        raw = json.dumps(document).encode()
        try:
            response = httpx.post(
                f"{server.url}/webhooks/highlevel",
                content=raw,
                headers={"Content-Type": "application/json", **keys.headers(raw)},
                timeout=10,
            )
        except httpx.TransportError:
            return  # not acknowledged: HighLevel would retry it
        if response.status_code in (200, 201):
            with lock:
                acknowledged[str(document["messageId"])] = response.json()["position"]
                if len(acknowledged) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    server.process.send_signal(signal.SIGKILL)

    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(deliver, documents))
        assert killed.is_set()
        server.process.wait(timeout=10)
        assert server.process.returncode == -signal.SIGKILL
    finally:
        server.stop()

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT message_id, position FROM events WHERE location_id = :l"),
            {"l": location},
        ).all()
    stored: dict[str, int] = {str(message_id): int(position) for message_id, position in rows}
    missing = {m: p for m, p in acknowledged.items() if stored.get(m) != p}
    assert not missing, f"acknowledged but not stored as acknowledged: {missing}"
    assert len(acknowledged) < TOTAL  # the kill did cut the load short

    # HighLevel retries what was not acknowledged (and some of what was): a new server
    # stores the rest once and answers the others as duplicates.
    server = start_server(database_url, keys)
    try:
        for document in documents:
            response = server.post(document)
            assert response.status_code in (200, 201), response.text
            if document["messageId"] in stored:
                assert response.status_code == 200
                assert response.json()["position"] == stored[str(document["messageId"])]
        wait_folded(engine)
    finally:
        server.stop()

    with engine.connect() as conn:
        events = conn.scalar(
            text("SELECT count(*) FROM events WHERE location_id = :l"), {"l": location}
        )
        timeline = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT message_id), max(cardinality(positions))"
                " FROM timeline_messages WHERE location_id = :l"
            ),
            {"l": location},
        ).one()
        per_contact = conn.scalar(
            text("SELECT sum(message_count) FROM contact_channels WHERE location_id = :l"),
            {"l": location},
        )
        per_conversation = conn.scalar(
            text("SELECT sum(message_count) FROM location_conversations WHERE location_id = :l"),
            {"l": location},
        )
    assert events == TOTAL
    assert tuple(timeline) == (TOTAL, TOTAL, 1)
    assert per_contact == TOTAL
    assert per_conversation == TOTAL
