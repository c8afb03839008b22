"""Realistic HighLevel deliveries of every channel, and the other shapes HighLevel sends to
the same URL, posted to a real server: each is kept verbatim and reads back through the
HighLevel dialect as HighLevel shows it, or is quarantined with the documented reason.

The payloads are in `tests/fixtures/highlevel/channels/`, their sources in its SOURCES.md.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

from tests.api_support import Reader, eventually, make_key
from tests.helpers import Server, new_id

pytestmark = pytest.mark.e2e

CHANNELS = Path(__file__).parent / "fixtures" / "highlevel" / "channels"

# fixture -> what GET /conversations/messages/{id} shows: (messageType, type, direction)
MESSAGES: dict[str, tuple[str, int, str]] = {
    "outbound_voicemail": ("TYPE_VOICEMAIL", 10, "outbound"),
    "outbound_sms_provider": ("TYPE_SMS", 2, "inbound"),  # its direction, as sent
    "inbound_whatsapp": ("TYPE_WHATSAPP", 19, "inbound"),
    "inbound_live_chat": ("TYPE_LIVE_CHAT", 29, "inbound"),
    "inbound_gmb": ("TYPE_GMB", 15, "inbound"),
    "inbound_fb": ("TYPE_FACEBOOK", 11, "inbound"),
    "inbound_ig": ("TYPE_INSTAGRAM", 18, "inbound"),
    "inbound_mms": ("TYPE_SMS", 2, "inbound"),
}
NOT_EVENTS = ("provider_outbound_sms", "provider_outbound_email", "lc_email_stats")


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CHANNELS / f"{name}.json").read_text())
    return document


def test_every_channel_fixture_is_covered() -> None:
    assert sorted(p.stem for p in CHANNELS.glob("*.json")) == sorted([*MESSAGES, *NOT_EVENTS])


def _stored_raw(engine: sqlalchemy.Engine, location: str) -> list[bytes]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT raw FROM events WHERE location_id = :l ORDER BY position"), {"l": location}
        )
        return [bytes(row.raw) for row in rows]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_a_channels_message_reads_back_as_highlevel_shows_it(
    name: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    document = _load(name)
    location = new_id("loc")
    document.update(locationId=location, webhookId=str(uuid.uuid4()))
    raw = json.dumps(document, ensure_ascii=False, indent=2).encode()

    response = server.post(raw)

    assert response.status_code == 201, response.text
    assert _stored_raw(engine, location) == [raw]
    reader = Reader(server, make_key(engine, location))
    path = f"/conversations/{document['conversationId']}/messages"
    shown = eventually(lambda: reader.json(path)["messages"]["messages"][0])
    message_type, type_code, direction = MESSAGES[name]
    assert (shown["messageType"], shown["type"], shown["direction"]) == (
        message_type,
        type_code,
        direction,
    )
    assert (shown["locationId"], shown["conversationId"]) == (location, document["conversationId"])
    assert shown["contactId"] == document["contactId"]
    assert shown["body"] == document.get("body")
    assert shown["attachments"] == document["attachments"]
    assert shown["status"] == document.get("status")
    assert shown["dateAdded"] == document["dateAdded"]
    assert shown["chatWidgetId"] == document.get("chatWidgetId")
    assert shown["conversationProviderId"] == document.get("conversationProviderId")
    assert reader.json(f"/conversations/messages/{shown['id']}")["id"] == shown["id"]
    if "messageId" in document:
        assert shown["id"] == document["messageId"]
    found = reader.json("/conversations/search")["conversations"]
    assert [c["lastMessageType"] for c in found] == [message_type]


@pytest.mark.parametrize("name", NOT_EVENTS)
def test_other_shapes_on_the_same_url_are_quarantined_as_unknown_types(
    name: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    """A custom provider's Delivery URL payload and LCEmailStats are not conversation
    events: a 202 (HighLevel does not retry it), the body kept with the reason."""
    document = _load(name)
    document["locationId"] = new_id("loc")
    raw = json.dumps(document).encode()

    response = server.post(raw)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert (answer["outcome"], answer["reason"]) == ("quarantined", "unknown_type")
    assert repr(document["type"]) in answer["detail"]
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT body, reason, location_id FROM quarantine WHERE id = :id"),
            {"id": answer["quarantineId"]},
        ).one()
    assert (bytes(row.body), row.reason, row.location_id) == (
        raw,
        "unknown_type",
        document["locationId"],
    )
    assert _stored_raw(engine, document["locationId"]) == []
