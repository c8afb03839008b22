"""HighLevel's official Python SDK (`gohighlevel-api-client`), pointed at our server with one
of our keys as its token, reads our data through its own conversation methods.

Two SDK quirks: its methods return `response.json()` without validating it, and
`get_message` / `get_email_by_id` take no id (the generated code never fills `{id}` in),
so callers pass the URL through `options`, which the SDK merges into its request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import sqlalchemy
from highlevel import HighLevel
from highlevel.services.conversations.models import conversations as models
from pydantic import BaseModel

from tests.api_support import eventually, make_key, post_all
from tests.helpers import Server, message, new_id

_T = TypeVar("_T")

pytestmark = pytest.mark.e2e


@pytest.fixture
def base_url(server: Server) -> Iterator[str]:
    original = HighLevel.BASE_URL
    HighLevel.BASE_URL = server.url
    try:
        yield server.url
    finally:
        HighLevel.BASE_URL = original


def _sdk_run(reads: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run(reads)` for `eventually`: the SDK raises its own error for a 404 (a
    conversation the worker has not folded yet), which counts as "not yet"."""
    try:
        return asyncio.run(reads)
    except Exception as error:
        raise AssertionError(f"not readable yet: {error!r}") from error


def test_the_official_sdk_reads_our_data(
    base_url: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    location, contact = new_id("loc"), new_id("con")
    conversation, sms_id, email_id = new_id("cnv"), new_id("msg"), new_id("eml")
    common = {"locationId": location, "contactId": contact, "conversationId": conversation}
    post_all(
        server,
        [
            message(
                **common, messageId=sms_id, body="hi from sms", dateAdded="2025-01-02T03:04:05.678Z"
            ),
            message(
                **common,
                type="OutboundMessage",
                direction="outbound",
                messageId=...,
                messageType="Email",
                emailMessageId=email_id,
                subject="Quote",
                body="<p>Your quote</p>",
                to=["client@example.com"],
                ccList=["boss@example.com"],
                threadId="t1",
                dateAdded="2025-01-02T04:00:00.000Z",
            ),
        ],
    )
    key = make_key(engine, location)

    def folded() -> tuple[dict[str, Any], ...]:
        """Both messages are in every read model (the worker folds them asynchronously)."""
        read = _sdk_run(_read(key, location, conversation, sms_id, email_id))
        assert read[0]["conversations"] and read[0]["conversations"][0]["lastMessageType"] == (
            "TYPE_EMAIL"
        )
        assert len(read[2]["messages"]["messages"]) == 2
        return read

    results = eventually(folded)

    search, got, messages, sms, email, export = results
    assert search["total"] == 1
    (found,) = search["conversations"]
    assert (found["id"], found["contactId"], found["locationId"]) == (
        conversation,
        contact,
        location,
    )
    assert found["lastMessageType"] == "TYPE_EMAIL"
    assert (got["id"], got["type"], got["deleted"]) == (conversation, 1, False)
    inner = messages["messages"]
    assert inner["nextPage"] is False
    assert [m["id"] for m in inner["messages"]] == [email_id, sms_id]
    assert inner["messages"][0]["body"] == "<p>Your quote</p>"
    assert (sms["id"], sms["type"], sms["messageType"]) == (sms_id, 2, "TYPE_SMS")
    assert (sms["body"], sms["dateAdded"]) == ("hi from sms", "2025-01-02T03:04:05.678Z")
    assert (email["id"], email["subject"], email["threadId"]) == (email_id, "Quote", "t1")
    assert (email["to"], email["cc"]) == (["client@example.com"], ["boss@example.com"])
    assert export["total"] == 1 and export["nextCursor"] is None
    assert [m["id"] for m in export["messages"]] == [sms_id]


async def _read(
    key: str, location: str, conversation: str, sms_id: str, email_id: str
) -> tuple[dict[str, Any], ...]:
    client = HighLevel(private_integration_token=key)
    try:
        conversations = client.conversations
        search = await conversations.search_conversation(location_id=location, limit=10)
        assert search.get("total") == 1, search
        got = await conversations.get_conversation(conversation_id=conversation)
        messages = await conversations.get_messages(
            conversation_id=conversation, limit=20, type="TYPE_SMS,TYPE_EMAIL"
        )
        assert len(messages["messages"]["messages"]) == 2, messages
        sms = await conversations.get_message(options={"url": f"/conversations/messages/{sms_id}"})
        email = await conversations.get_email_by_id(
            options={"url": f"/conversations/messages/email/{email_id}"}
        )
        export = await conversations.export_messages_by_location(
            location_id=location, channel="SMS", limit=10, sort_order="asc"
        )
        return search, got, messages, sms, email, export
    finally:
        await client.http_client.aclose()


def test_the_sdks_float_typed_dates_are_epoch_milliseconds(
    base_url: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    """The SDK types `start_date`, `end_date` (and takes `start_after_date`) as floats, so
    a caller passing `time.time() * 1000` sends `1735787045678.0`."""
    location = new_id("loc")
    post_all(server, [message(locationId=location, dateAdded="2025-01-02T03:04:05.678Z")])
    key = make_key(engine, location)

    async def search(**dates: float) -> dict[str, Any]:
        client = HighLevel(private_integration_token=key)
        try:
            found: dict[str, Any] = await client.conversations.search_conversation(
                location_id=location, **dates
            )
            return found
        finally:
            await client.http_client.aclose()

    def total(**dates: float) -> int:
        found = asyncio.run(search(**dates))
        assert "total" in found, found  # the SDK returns an error's body as if it were data
        return int(found["total"])

    eventually(lambda: _equal(total(), 1))
    day = 1735787045678.0  # the message's dateAdded, in milliseconds
    assert total(start_date=day - 1000.0, end_date=day + 1000.0) == 1
    assert total(start_date=day + 1000.0) == 0
    assert total(end_date=day - 1000.5) == 0
    # HighLevel's cursor: newest first, what comes after that last message date.
    assert asyncio.run(search(start_after_date=day + 1.0))["conversations"] != []
    assert asyncio.run(search(start_after_date=day + 0.0))["conversations"] == []


def _equal(actual: int, expected: int) -> None:
    assert actual == expected


def _fields(model: type[BaseModel]) -> set[str]:
    """The JSON names of a model of the SDK (its `from_` is the JSON's `from`)."""
    return {name.rstrip("_") for name in model.model_fields}


def test_every_field_the_sdks_response_models_declare_is_in_our_answers(
    base_url: str, server: Server, engine: sqlalchemy.Engine
) -> None:
    """The SDK's models are HighLevel's response DTOs: a client reading one of their
    fields (`conversation["fullName"]`) finds it, null when the webhooks never gave it."""
    location, conversation, email_id = new_id("loc"), new_id("cnv"), new_id("eml")
    common = {"locationId": location, "conversationId": conversation}
    sms = message(**common, dateAdded="2025-01-02T03:04:05.678Z")
    email = message(**common, messageType="Email", emailMessageId=email_id, messageId=...)
    post_all(server, [sms, email])
    key = make_key(engine, location)

    async def read() -> dict[str, Any]:
        client = HighLevel(private_integration_token=key)
        try:
            c = client.conversations
            return {
                "search": await c.search_conversation(location_id=location),
                "conversation": await c.get_conversation(conversation_id=conversation),
                "messages": await c.get_messages(conversation_id=conversation),
                "message": await c.get_message(
                    options={"url": f"/conversations/messages/{sms['messageId']}"}
                ),
                "email": await c.get_email_by_id(
                    options={"url": f"/conversations/messages/email/{email_id}"}
                ),
                "export": await c.export_messages_by_location(location_id=location),
            }
        finally:
            await client.http_client.aclose()

    def folded() -> dict[str, Any]:
        # Each read waits for the fold: a page kept before it can be served until the
        # fold's notification arrives (README), after a later read already shows it.
        answers = _sdk_run(read())
        assert len(answers["messages"]["messages"]["messages"]) == 2, answers
        assert len(answers["search"]["conversations"]) == 1, answers
        return answers

    answers = eventually(folded)
    (found,) = answers["search"]["conversations"]
    expected: list[tuple[type[BaseModel], dict[str, Any]]] = [
        (models.SendConversationResponseDto, answers["search"]),
        (models.ConversationSchema, found),
        (models.GetConversationByIdResponse, answers["conversation"]),
        (models.GetMessagesByConversationResponseDto, answers["messages"]["messages"]),
        (models.GetMessageResponseDto, answers["message"]),
        (models.MessageMeta, answers["message"]["meta"]),
        (models.GetEmailMessageResponseDto, answers["email"]),
        (models.ExportMessagesResponseDto, answers["export"]),
    ]
    for model, answer in expected:
        assert _fields(model) <= set(answer), (model.__name__, _fields(model) - set(answer))
    assert {name: found[name] for name in ("fullName", "contactName", "email", "phone")} == (
        dict.fromkeys(("fullName", "contactName", "email", "phone"))
    )
    assert answers["conversation"]["assignedTo"] is None
