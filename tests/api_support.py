"""What the read API tests share: keys, an authenticated client, waiting for the
projections to fold what was posted."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import httpx
import sqlalchemy
from sqlalchemy import text

import conversations.keys
from conversations.projections.registry import PROJECTIONS
from tests.helpers import Server

PROBLEM_JSON = "application/problem+json"

T = TypeVar("T")
Query = dict[str, Any] | list[tuple[str, Any]]
"""Query parameters: a dict, or pairs (a name repeated, or in an order)."""


def make_key(engine: sqlalchemy.Engine, *locations: str, all_locations: bool = False) -> str:
    with engine.begin() as conn:
        return conversations.keys.create_key(conn, locations, all_locations=all_locations)


class Reader:
    """GETs against the server with one key (or none)."""

    def __init__(self, server: Server, key: str | None) -> None:
        self.server = server
        self.key = key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def get(self, path: str, params: Query | None = None, **extra: Any) -> httpx.Response:
        return httpx.get(
            f"{self.server.url}{path}",
            params=params,
            headers={**self.headers, **extra.pop("headers", {})},
            timeout=30,
            **extra,
        )

    def json(self, path: str, params: Query | None = None) -> Any:
        response = self.get(path, params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        return response.json()


def post_all(server: Server, documents: Iterable[dict[str, Any] | bytes]) -> list[int]:
    """Post each webhook; their positions (each must be stored)."""
    positions = []
    for document in documents:
        response = server.post(document)
        assert response.status_code in (200, 201), response.text
        positions.append(int(response.json()["position"]))
    return positions


def head(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT coalesce(max(position), 0) FROM events")) or 0)


def wait_folded(
    engine: sqlalchemy.Engine, position: int | None = None, timeout: float = 15
) -> None:
    """Wait until every projection has folded the store up to `position` (the head)."""
    target = head(engine) if position is None else position
    names = [p.name for p in PROJECTIONS]
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            rows: dict[str, int] = dict(
                conn.execute(
                    text(
                        "SELECT name, position FROM projection_checkpoints WHERE name = ANY(:names)"
                    ),
                    {"names": names},
                ).all()
            )
        if len(rows) == len(names) and min(rows.values()) >= target:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"projections did not reach {target}: {rows}")
        time.sleep(0.05)


def eventually(check: Callable[[], T], timeout: float = 10, interval: float = 0.05) -> T:
    """`check()`'s value once it returns without an AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    document: dict[str, Any] = response.json()
    assert document["status"] == status
    # HighLevel's error members (BadRequestDTO, UnauthorizedDTO), for its clients.
    assert (document["statusCode"], document["message"]) == (status, document["detail"])
    assert "Traceback" not in response.text
    return document
