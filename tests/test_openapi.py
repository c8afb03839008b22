"""GET /openapi.json: a valid OpenAPI 3.1 document of every route the app serves, and
what a running server answers conforms to it (schemathesis: generated requests, no 5xx,
every status, content type and body as documented)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import schemathesis
import sqlalchemy
from hypothesis import HealthCheck, assume, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from conversations.api.app import create_app
from conversations.api.openapi import DOCUMENT
from conversations.settings import Settings
from tests.api_support import make_key, post_all, wait_folded
from tests.helpers import Server, fixture, message, new_id

# --- the document ---------------------------------------------------------------------------


def _served_operations() -> set[tuple[str, str]]:
    """(method, path) of every route of the app (HEAD is implied by GET)."""
    app = create_app(Settings.from_env({}), "postgresql://unused@127.0.0.1:1/none")
    found = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: only plain routes are expected"
        if route.path == "/webhooks/highlevel/":
            continue  # the webhook URL with a trailing slash: the same operation
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method.lower(), route.path))
    return found


def _documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(DOCUMENT)


def test_every_route_is_documented_and_nothing_else() -> None:
    served, documented = _served_operations(), _documented_operations()
    assert served - documented == set(), "routes missing from conversations/api/openapi.py"
    assert documented - served == set(), "documented operations the app does not serve"


def test_reads_need_a_key_and_webhooks_and_probes_do_not() -> None:
    keyless = {"/webhooks/highlevel", "/healthz", "/readyz", "/metrics", "/projections"}
    keyless.add("/openapi.json")
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            secured = operation["security"] == [{"bearerAuth": []}]
            assert secured == (path not in keyless), (method, path)
            if secured:
                assert "401" in operation["responses"], (method, path)


def test_every_error_is_a_problem_document() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (method, path, status)


def test_every_query_parameter_has_a_typed_schema() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            for parameter in operation["parameters"]:
                schema = parameter["schema"]
                assert "type" in schema or "anyOf" in schema, (method, path, parameter["name"])
                if schema.get("type") == "integer":
                    assert {"minimum", "maximum"} <= set(schema), (path, parameter["name"])


@pytest.mark.e2e
def test_the_server_serves_the_document(server: Server) -> None:
    response = httpx.get(f"{server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == DOCUMENT


# --- schemathesis against the running server ------------------------------------------------


@pytest.fixture(scope="module")
def reader_key(server: Server, engine: sqlalchemy.Engine) -> dict[str, str]:
    """A key for one location holding a bit of everything, and ids in it to aim at."""
    location, contact, conversation = new_id("loc"), new_id("con"), new_id("cnv")
    common = {"locationId": location, "contactId": contact, "conversationId": conversation}
    documents: list[dict[str, Any]] = [
        message(**common, body=f"message {n}", dateAdded=f"2024-05-08T12:00:{n:02d}.000Z")
        for n in range(12)
    ]
    # Fields the document must type as HighLevel does (string | null), with strings in them.
    documents[0].update(body="", chatWidgetId="67b0cc8cf14b19d85ace7s35")
    for name in ("doc_email", "doc_outbound_call", "doc_inbound_voicemail"):
        document = fixture(name)
        document.update(common, messageId=new_id("msg"), webhookId=str(uuid.uuid4()))
        if "emailMessageId" in document:
            document["emailMessageId"] = document["messageId"]
            document["provider"] = "Leadconnector Gmail"
        documents.append(document)
    unread = fixture("doc_unread_update")
    unread.update(locationId=location, id=conversation, contactId=contact)
    documents.append(unread)
    wait_folded(engine, max(post_all(server, documents)))
    return {
        "key": make_key(engine, location),
        "location": location,
        "contact": contact,
        "conversation": conversation,
        "message": documents[0]["messageId"],
        "email": documents[12]["messageId"],
    }


def _operation_ids() -> list[str]:
    return sorted(
        operation["operationId"]
        for item in DOCUMENT["paths"].values()
        for operation in item.values()
        # It never ends by itself: each request would wait out the client's timeout.
        if operation["operationId"] != "streamEvents"
    )


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # A request the document calls invalid must be refused (4xx): the document says what
    # the parameters really take (an empty value is absent; epoch ms may have a fraction).
    negative_data_rejection,
]
EXAMPLES = 25
"""Per operation and kind of generated request (fuzzed, aimed at real ids, invalid)."""


MAX_HEAD = 32 * 1024
"""uvicorn's HTTP parser refuses a request line or headers past ~64 KiB with its own
`400 text/plain` before the app sees the request: a limit of the HTTP server, not
something the document describes. Generated requests stay well below it."""


def _request_head_size(case: Any) -> int:
    """Roughly the bytes of the request line and headers `case` makes (percent-encoded)."""
    size = len(urlencode(case.query or {}, doseq=True))
    size += sum(len(quote(str(value), safe="")) for value in (case.path_parameters or {}).values())
    size += sum(len(str(k)) + len(str(v).encode()) for k, v in (case.headers or {}).items())
    return size


def _invalid_only_in_its_headers(case: Any) -> bool:
    """Whether `case` was made invalid in its headers alone: a missing or malformed
    Authorization, which the reader's key sent with every case replaces; such a request
    is valid once sent, and rightly answered 200 (negative_data_rejection would fail it)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    elsewhere = (ParameterLocation.QUERY, ParameterLocation.PATH, ParameterLocation.BODY)
    return not any(meta.is_negative_at(location) for location in elsewhere)


def _takes_input(operation_id: str) -> bool:
    for item in DOCUMENT["paths"].values():
        for operation in item.values():
            if operation["operationId"] == operation_id:
                return bool(operation["parameters"] or operation.get("requestBody"))
    raise KeyError(operation_id)


def _real_ids(path: str, ids: dict[str, str]) -> dict[str, str]:
    values = {"conversationId": ids["conversation"], "contactId": ids["contact"]}
    values["id"] = ids["email"] if "/email/" in path else ids["message"]
    return {name: value for name, value in values.items() if f"{{{name}}}" in path}


@pytest.mark.e2e
@pytest.mark.parametrize("operation_id", _operation_ids())
def test_generated_requests_get_documented_answers(
    api_schema: Any, reader_key: dict[str, str], operation_id: str
) -> None:
    """Requests generated from the served document (valid ones, valid ones aimed at
    ids that exist, and invalid ones) are answered as the document says: never a 5xx,
    and each status, content type and body documented for the operation.

    schemathesis' own pytest integration (`from_fixture`) fails on pytest 9 (it sets
    `Function._nodeid`), so the cases are drawn with Hypothesis directly.
    """
    operation = api_schema.find_operation_by_id(operation_id)
    auth = {"Authorization": f"Bearer {reader_key['key']}"}
    aimed = _real_ids(operation.path, reader_key)
    strategies = [operation.as_strategy()]
    if aimed:
        strategies.append(operation.as_strategy(path_parameters=aimed))
    if _takes_input(operation_id):  # else nothing can be invalid
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))

    for strategy in strategies:

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            assume(_request_head_size(case) < MAX_HEAD)
            assume(not _invalid_only_in_its_headers(case))
            case.call_and_validate(headers=auth, checks=CHECKS, timeout=30)

        call()


def _query_parameters() -> list[tuple[str, str, dict[str, Any]]]:
    """(operation id, path, parameter) of every query parameter, the stream's aside."""
    return [
        (operation["operationId"], path, parameter)
        for path, item in DOCUMENT["paths"].items()
        for operation in item.values()
        for parameter in operation["parameters"]
        if parameter["in"] == "query" and operation["operationId"] != "streamEvents"
    ]


@pytest.mark.e2e
def test_the_document_admits_every_value_the_parameters_take(
    server: Server, reader_key: dict[str, str]
) -> None:
    """What the service accepts (README: an empty value is absent; epoch milliseconds
    may have a fraction, as HighLevel's SDKs send them) is what the document admits, so
    a client that checks its requests against the document can send them."""
    auth = {"Authorization": f"Bearer {reader_key['key']}"}
    for operation_id, path, parameter in _query_parameters():
        url = server.url + path.format(**_real_ids(path, reader_key))
        name = parameter["name"]
        values = [""]
        if "anyOf" in parameter["schema"]:  # a time: ISO-8601 or epoch ms
            values.append("1735787045678.5")
        for value in values:
            response = httpx.get(url, params={name: value}, headers=auth, timeout=10)
            assert response.status_code == 200, (operation_id, name, value, response.text)
            assert parameter.get("allowEmptyValue") is True or value, (operation_id, name)
            if value:
                assert any(
                    branch.get("type") == "number"
                    and branch["minimum"] <= float(value) <= branch["maximum"]
                    for branch in parameter["schema"]["anyOf"]
                ), (operation_id, name, value)
