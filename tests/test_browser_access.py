"""The event feed from a browser: the key as `?access_token=` (an EventSource cannot send
headers) and CORS, only where `CONVERSATIONS_CORS_ORIGINS` allows it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy

from conversations.settings import Settings, SettingsError
from tests.api_support import assert_problem, eventually, make_key, post_all
from tests.conftest import start_server
from tests.helpers import KeyPair, Server, message, new_id

APP = "https://app.example.com"


# --- the setting ----------------------------------------------------------------------------


def test_cors_is_off_unless_configured() -> None:
    assert Settings.from_env({}).cors_origins == ()


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("*", ("*",)),
        (
            " https://a.example.com/, http://localhost:3000 ",
            ("https://a.example.com", "http://localhost:3000"),
        ),
    ],
)
def test_cors_origins_are_read(value: str, origins: tuple[str, ...]) -> None:
    assert Settings.from_env({"CONVERSATIONS_CORS_ORIGINS": value}).cors_origins == origins


@pytest.mark.parametrize("value", ["app.example.com", "*, https://a.example.com", "https://a/b"])
def test_a_bad_cors_origin_names_the_setting(value: str) -> None:
    with pytest.raises(SettingsError, match="CONVERSATIONS_CORS_ORIGINS"):
        Settings.from_env({"CONVERSATIONS_CORS_ORIGINS": value})


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_server(database_url: str, keys: KeyPair) -> Iterator[Server]:
    server = start_server(
        database_url, keys, CONVERSATIONS_CORS_ORIGINS=APP, CONVERSATIONS_LOG_LEVEL="info"
    )
    yield server
    server.stop()


@pytest.mark.e2e
def test_the_feed_takes_the_key_as_access_token_and_it_is_not_logged(
    browser_server: Server, engine: sqlalchemy.Engine
) -> None:
    location = new_id("loc")
    key = make_key(engine, location)
    (position,) = post_all(browser_server, [message(locationId=location)])
    response = httpx.get(
        f"{browser_server.url}/events", params={"access_token": key, "after": 0}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert [event["position"] for event in response.json()["events"]] == [position]
    eventually(lambda: assert_in('"path": "/events"', browser_server.output))
    assert key not in browser_server.output


def assert_in(part: str, whole: str) -> None:
    assert part in whole


@pytest.mark.e2e
def test_the_key_is_given_once(browser_server: Server, engine: sqlalchemy.Engine) -> None:
    key = make_key(engine, new_id("loc"))
    url = f"{browser_server.url}/events"
    both = httpx.get(url, params={"access_token": key}, headers={"Authorization": f"Bearer {key}"})
    assert_problem(both, 400)
    twice = httpx.get(url, params=[("access_token", key), ("access_token", key)])
    assert_problem(twice, 400)
    unknown = httpx.get(url, params={"access_token": "not-a-key"})
    assert_problem(unknown, 401)
    # Only the feed takes it; elsewhere the header is the way.
    elsewhere = httpx.get(
        f"{browser_server.url}/contacts/{new_id('c')}/channels", params={"access_token": key}
    )
    assert elsewhere.status_code in (400, 401), elsewhere.text


@pytest.mark.e2e
def test_a_preflight_is_answered_for_a_configured_origin(browser_server: Server) -> None:
    response = httpx.options(
        f"{browser_server.url}/events/stream",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "last-event-id" in allowed
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.e2e
@pytest.mark.parametrize(
    "requested",
    [
        "authorization, version",  # HighLevel's SDKs send `Version` on every call
        "authorization, content-type, version, x-sdk-version",  # the JS SDK's defaults
        "Authorization, Version, GHL-SDK-Version, Accept",  # the Python SDK's
    ],
)
def test_a_preflight_allows_the_headers_highlevel_clients_send(
    browser_server: Server, requested: str
) -> None:
    response = httpx.options(
        f"{browser_server.url}/conversations/search",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": requested,
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    allowed = {
        h.strip() for h in response.headers["access-control-allow-headers"].lower().split(",")
    }
    assert {h.strip().lower() for h in requested.split(",")} <= allowed


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}, "origin"),
        ({"Origin": APP, "Access-Control-Request-Method": "DELETE"}, "DELETE"),
        (
            {
                "Origin": APP,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, x-custom",
            },
            "x-custom",
        ),
    ],
    ids=["origin", "method", "header"],
)
def test_a_refused_preflight_is_a_problem_document(
    browser_server: Server, headers: dict[str, str], named: str
) -> None:
    response = httpx.options(f"{browser_server.url}/conversations/search", headers=headers)
    document = assert_problem(response, 400)
    assert named in document["detail"], document
    if headers["Origin"] != APP:
        assert "access-control-allow-origin" not in response.headers


@pytest.mark.e2e
def test_another_origin_gets_no_cors(browser_server: Server, engine: sqlalchemy.Engine) -> None:
    key = make_key(engine, new_id("loc"))
    response = httpx.get(
        f"{browser_server.url}/events",
        params={"access_token": key},
        headers={"Origin": "https://evil.example.com"},
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.e2e
def test_without_the_setting_there_are_no_cors_headers(
    server: Server, engine: sqlalchemy.Engine
) -> None:
    key = make_key(engine, new_id("loc"))
    response = httpx.get(
        f"{server.url}/events", params={"access_token": key}, headers={"Origin": APP}
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        f"{server.url}/events",
        headers={"Origin": APP, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/webhooks/highlevel", "/webhooks/highlevel/"])
def test_a_webhook_goes_through_the_same_layers_as_any_request(
    browser_server: Server, path: str
) -> None:
    """Webhooks skip the router (`webhooks.WebhookRoute`), not what is outside it: CORS
    answers an allowed origin, the access line is logged and the latency counted under
    the route, as for any request."""
    body = json.dumps(message()).encode()
    headers = {
        "Content-Type": "application/json",
        "Origin": APP,
        **browser_server.keys.headers(body, "ed25519"),
    }
    response = httpx.post(f"{browser_server.url}{path}", content=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["outcome"] == "stored"
    assert response.headers["access-control-allow-origin"] == APP
    eventually(lambda: assert_in(f'"path": "{path}", "status": 201', browser_server.output))
    exposition = httpx.get(f"{browser_server.url}/metrics").text
    assert 'conversations_request_duration_seconds_count{route="/webhooks/highlevel"}' in (
        exposition
    )
    assert 'route="/webhooks/highlevel/"' not in exposition
