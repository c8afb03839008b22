"""Operations over real HTTP: readiness fails while a projection is behind by more than
CONVERSATIONS_READY_MAX_LAG, /metrics reads projection lag and quarantine size from the
database, and every request leaves one structured log line without any body text.

These run against their own server on their own database, with the projection worker
off, so that what is behind stays behind until the test catches it up."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

from conversations import migrate
from conversations.database import create_database, create_engine, drop_database
from conversations.metrics import WEBHOOK_OUTCOMES
from conversations.projections.registry import PROJECTIONS
from conversations.projections.runner import catch_up_all
from tests.api_support import PROBLEM_JSON, assert_problem, eventually, make_key
from tests.conftest import REPO, migrated_database, start_server
from tests.helpers import KeyPair, Server, message, new_id

pytestmark = pytest.mark.e2e

MAX_LAG = 1.0
NAMES = sorted(p.name for p in PROJECTIONS)
README = REPO / "README.md"


@pytest.fixture(scope="module")
def ops_database(server_url: str) -> Iterator[str]:
    with migrated_database(server_url, "conversations_ops") as url:
        yield url


@pytest.fixture(scope="module")
def ops_engine(ops_database: str) -> Iterator[sqlalchemy.Engine]:
    engine = create_engine(ops_database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def ops_server(ops_database: str, keys: KeyPair) -> Iterator[Server]:
    server = start_server(
        ops_database,
        keys,
        CONVERSATIONS_PROJECTION_WORKER="false",
        CONVERSATIONS_READY_MAX_LAG=str(MAX_LAG),
        CONVERSATIONS_LOG_LEVEL="info",
        CONVERSATIONS_LOG_FORMAT="json",
    )
    yield server
    server.stop()


def scrape(server: Server) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def sample(exposition: str, name: str, labels: str = "") -> float | None:
    """The value of one sample (`labels` as written inside the braces), None if absent."""
    selector = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    found = re.search(rf"^{selector} (\S+)$", exposition, re.M)
    return float(found.group(1)) if found else None


def catch_up(engine: sqlalchemy.Engine) -> None:
    with engine.begin() as conn:
        for projection in PROJECTIONS:
            conn.execute(
                text(
                    "INSERT INTO projection_checkpoints (name) VALUES (:n) ON CONFLICT DO NOTHING"
                ),
                {"n": projection.name},
            )
    catch_up_all(engine, PROJECTIONS)


# --- readiness ------------------------------------------------------------------------------


def test_readyz_fails_while_a_projection_is_behind_the_bound(
    ops_server: Server, ops_engine: sqlalchemy.Engine
) -> None:
    catch_up(ops_engine)
    ready = httpx.get(f"{ops_server.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert set(ready.json()["projections"]) == set(NAMES)

    # Stored, but nothing folds it (no worker): once it is older than the bound, the
    # service is not ready, and says which projections are behind.
    assert ops_server.post(message()).status_code == 201
    time.sleep(MAX_LAG + 0.2)
    behind = httpx.get(f"{ops_server.url}/readyz", timeout=10)
    problem = assert_problem(behind, 503)
    assert behind.headers["retry-after"].isdigit()
    for name in NAMES:
        assert f"{name} is " in problem["detail"], problem["detail"]
    # Liveness does not depend on it.
    assert httpx.get(f"{ops_server.url}/healthz", timeout=10).status_code == 200

    catch_up(ops_engine)
    assert httpx.get(f"{ops_server.url}/readyz", timeout=10).status_code == 200


def test_a_projection_that_never_ran_is_behind(
    ops_server: Server, ops_engine: sqlalchemy.Engine
) -> None:
    """No checkpoint row at all (no worker ever started) is not "caught up"."""
    catch_up(ops_engine)
    with ops_engine.begin() as conn:
        saved = conn.execute(text("SELECT name, position FROM projection_checkpoints")).all()
        conn.execute(text("DELETE FROM projection_checkpoints"))
    try:
        time.sleep(MAX_LAG + 0.2)  # the first event is older than the bound by now
        problem = assert_problem(httpx.get(f"{ops_server.url}/readyz", timeout=10), 503)
        assert "behind" in problem["detail"]
    finally:
        with ops_engine.begin() as conn:
            for name, position in saved:
                conn.execute(
                    text("INSERT INTO projection_checkpoints (name, position) VALUES (:n, :p)"),
                    {"n": name, "p": position},
                )
    assert httpx.get(f"{ops_server.url}/readyz", timeout=10).status_code == 200


# --- metrics --------------------------------------------------------------------------------


def test_metrics_show_projection_lag_and_how_many_events_behind(
    ops_server: Server, ops_engine: sqlalchemy.Engine
) -> None:
    def gauges(exposition: str, name: str) -> tuple[float | None, float | None]:
        labels = f'projection="{name}"'
        return (
            sample(exposition, "conversations_projection_lag_seconds", labels),
            sample(exposition, "conversations_projection_behind_events", labels),
        )

    catch_up(ops_engine)
    caught_up = scrape(ops_server)
    assert sample(caught_up, "conversations_database_reachable") == 1
    assert "# TYPE conversations_projection_lag_seconds gauge" in caught_up
    assert "# TYPE conversations_projection_behind_events gauge" in caught_up
    assert all(gauges(caught_up, name) == (0, 0) for name in NAMES), caught_up

    for _ in range(3):
        assert ops_server.post(message()).status_code == 201
    time.sleep(0.3)
    behind = scrape(ops_server)
    for name in NAMES:
        lag, events = gauges(behind, name)
        assert lag is not None and lag >= 0.3
        assert events is not None and events >= 3

    catch_up(ops_engine)
    again = scrape(ops_server)
    assert all(gauges(again, name) == (0, 0) for name in NAMES), again


def test_metrics_show_the_pending_quarantine_from_the_database(
    ops_server: Server, ops_engine: sqlalchemy.Engine
) -> None:
    before = sample(scrape(ops_server), "conversations_quarantine_pending")
    unusable = ops_server.post(message(messageId=..., conversationId=...))
    assert unusable.status_code == 202, unusable.text
    exposition = scrape(ops_server)
    with ops_engine.connect() as conn:
        pending = conn.scalar(text("SELECT count(*) FROM quarantine WHERE status = 'pending'"))
    assert sample(exposition, "conversations_quarantine_pending") == pending
    assert pending == (before or 0) + 1
    assert "# TYPE conversations_quarantine_pending gauge" in exposition


def test_metrics_keep_webhook_outcomes_and_latency_histograms(ops_server: Server) -> None:
    stored_before = sample(scrape(ops_server), "conversations_webhooks_total", 'outcome="stored"')
    assert ops_server.post(message()).status_code == 201
    assert ops_server.post(message(), scheme="none").status_code == 401
    exposition = scrape(ops_server)
    stored = sample(exposition, "conversations_webhooks_total", 'outcome="stored"')
    assert stored == (stored_before or 0) + 1
    assert (
        sample(exposition, "conversations_webhooks_total", 'outcome="unauthenticated"') or 0
    ) >= 1
    assert "# TYPE conversations_request_duration_seconds histogram" in exposition
    route = 'route="/webhooks/highlevel"'
    count = sample(exposition, "conversations_request_duration_seconds_count", route)
    inf = sample(exposition, "conversations_request_duration_seconds_bucket", route + ',le="+Inf"')
    assert count is not None and count >= 2
    assert inf == count


def test_metrics_render_every_outcome_before_its_first_webhook(ops_server: Server) -> None:
    """Each outcome README lists is a series from the start, at 0 until it happens: one
    that first appears at 1 hides that webhook from `increase()`, so an alert on the
    first `unavailable` or `unauthenticated` after a restart would never fire."""
    table = README.read_text().split("`conversations_webhooks_total{outcome}`", 1)[1]
    listed = re.findall(r"`(\w+)`", table.split("\n", 1)[0].split("by outcome:", 1)[1])
    assert listed == list(WEBHOOK_OUTCOMES)
    exposition = scrape(ops_server)
    for outcome in WEBHOOK_OUTCOMES:
        labels = f'outcome="{outcome}"'
        assert sample(exposition, "conversations_webhooks_total", labels) is not None, outcome
    for result in ("hit", "miss"):
        labels = f'result="{result}"'
        assert sample(exposition, "conversations_read_cache_total", labels) is not None, result


def test_metrics_answer_without_gauges_when_the_database_is_away(
    server_url: str, keys: KeyPair
) -> None:
    """The process' own counters still render; the database's gauges are left out (not
    stale) and `conversations_database_reachable` says why."""
    name = f"conversations_ops_gone_{uuid.uuid4().hex[:8]}"
    url = create_database(server_url, name)
    engine = create_engine(url)
    with engine.connect() as conn:
        migrate.upgrade(conn)
    engine.dispose()
    server = start_server(url, keys, CONVERSATIONS_DB_TIMEOUT="2")
    try:
        assert sample(scrape(server), "conversations_database_reachable") == 1
        drop_database(server_url, name)
        exposition = scrape(server)
        assert sample(exposition, "conversations_database_reachable") == 0
        assert "conversations_projection_lag_seconds" not in exposition
        assert "conversations_quarantine_pending" not in exposition
        assert "# TYPE conversations_webhooks_total counter" in exposition
        assert_problem(httpx.get(f"{server.url}/readyz", timeout=10), 503)
    finally:
        server.stop()
        drop_database(server_url, name)


# --- structured request logs ----------------------------------------------------------------


def access_lines(server: Server, path: str) -> list[dict[str, Any]]:
    found = []
    for line in list(server.lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "conversations.access" and entry.get("path") == path:
            found.append(entry)
    return found


def test_each_request_is_one_json_line_without_bodies(
    ops_server: Server, ops_engine: sqlalchemy.Engine
) -> None:
    secret = f"do not log me {uuid.uuid4().hex}"
    location = new_id("loc")
    stored = ops_server.post(message(locationId=location, body=secret))
    assert stored.status_code == 201
    unusable = ops_server.post(message(conversationId=..., messageId=..., body=secret))
    assert unusable.status_code == 202
    not_json = ops_server.post(f"not JSON {secret}".encode())
    assert not_json.status_code == 400
    catch_up(ops_engine)
    key = make_key(ops_engine, location)
    path = f"/contacts/{new_id('con')}/messages"
    read = httpx.get(
        f"{ops_server.url}{path}",
        params={"locationId": location},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert read.status_code == 200
    refused = httpx.get(f"{ops_server.url}{path}", params={"bogus": secret}, timeout=10)
    assert refused.headers["content-type"].startswith(PROBLEM_JSON)

    def logged() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        webhooks = access_lines(ops_server, "/webhooks/highlevel")
        reads = access_lines(ops_server, path)
        assert len(reads) == 2
        return webhooks, reads

    webhooks, reads = eventually(logged)
    assert [entry["status"] for entry in reads] == [200, 401]
    assert [entry["status"] for entry in webhooks[-3:]] == [201, 202, 400]
    for entry in [*webhooks, *reads]:
        assert {"time", "level", "logger", "method", "path", "status", "duration_ms"} <= set(entry)
        assert isinstance(entry["duration_ms"], int | float) and entry["duration_ms"] >= 0
    assert {entry["method"] for entry in reads} == {"GET"}
    # Neither the bodies nor the query strings (which may hold anything) are logged.
    assert secret not in ops_server.output
    assert "Bearer" not in ops_server.output and key not in ops_server.output


def test_json_logs_have_the_same_keys_on_every_line_and_warn_of_quarantined_bodies(
    ops_database: str, keys: KeyPair
) -> None:
    """Every line a JSON object with `time`, `level`, `logger` and `message`, the server's
    own lines included (uvicorn's carried a `color_message` full of ANSI escape codes);
    a quarantined body is a warning, as README says, so it shows at level `warning`."""
    server = start_server(
        ops_database,
        keys,
        CONVERSATIONS_PROJECTION_WORKER="false",
        CONVERSATIONS_LOG_LEVEL="info",
        CONVERSATIONS_LOG_FORMAT="json",
    )
    try:
        assert server.post(message(type="LCEmailStats")).status_code == 202
    finally:
        server.stop()
    lines = server.output.splitlines()
    entries = [json.loads(line) for line in lines]
    assert any(entry["logger"] == "uvicorn.error" for entry in entries)
    for line, entry in zip(lines, entries, strict=True):
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert "color_message" not in entry and "\\u001b" not in line, line
    quarantined = [entry for entry in entries if entry["message"] == "webhook quarantined"]
    assert [entry["level"] for entry in quarantined] == ["warning"]
    assert quarantined[0]["reason"] == "unknown_type"


def test_a_database_without_the_schema_is_a_503_that_says_to_migrate(
    server_url: str, keys: KeyPair
) -> None:
    """`serve` told not to migrate, on an empty database: not a 500, not "unreachable"."""
    name = f"conversations_noschema_{uuid.uuid4().hex[:10]}"
    url = create_database(server_url, name)
    server = start_server(
        url, keys, CONVERSATIONS_AUTO_MIGRATE="false", CONVERSATIONS_PROJECTION_WORKER="false"
    )
    try:
        for path in ("/projections", "/readyz"):
            problem = assert_problem(httpx.get(f"{server.url}{path}", timeout=10), 503)
            assert "conversations migrate" in problem["detail"], (path, problem)
        assert "Traceback" not in server.output
    finally:
        server.stop()
        drop_database(server_url, name)
