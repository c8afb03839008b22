"""The same-run baselines the ingest benchmark compares the service with.

`POST /bare` reads the body, parses the JSON and answers `{}`: the floor set by
Starlette, uvicorn and the HTTP round trip. `POST /insert` also stores the body with one
plain autocommit `INSERT` through a psycopg pool of 10 connections: the floor of a
durable write per webhook. Both are served exactly as `conversations serve` is served.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/db python bench/baselines.py --port 8001
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import uvicorn
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from conversations.cli import HTTP_SERVER

POOL_SIZE = 10
INSERT_SQL = "INSERT INTO baseline_events (body) VALUES (%s)"


class State(TypedDict):
    pool: AsyncConnectionPool[AsyncConnection]


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[State]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("Setting 'DATABASE_URL' is missing, and has no default.")
    pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
        url,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=True)
    try:
        yield {"pool": pool}
    finally:
        await pool.close()


async def bare(request: Request) -> JSONResponse:
    json.loads(await request.body())
    return JSONResponse({})


async def insert(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    pool: AsyncConnectionPool[AsyncConnection] = request.state.pool
    async with pool.connection() as conn:
        await conn.execute(INSERT_SQL, (Jsonb(body),))
    return JSONResponse({}, status_code=201)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/bare", bare, methods=["POST"]),
        Route("/insert", insert, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        **HTTP_SERVER,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
