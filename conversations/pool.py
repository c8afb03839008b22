"""The async connection pool of the read endpoints: psycopg's own, without an ORM layer
between a request and its one statement.

Connections are not checked when taken (that would cost a round trip per request).
Instead a read that finds its connection dead (the database restarted, a proxy or
firewall dropped an idle connection) runs again on another one: reads are idempotent.
While the database is really away, the retries end when the pool cannot connect within
its timeout, and the caller answers 503.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection, OperationalError
from psycopg.types.array import ListBinaryDumper
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conversations.database import LIVENESS, libpq_url

T = TypeVar("T")


def read_pool(database_url: str, size: int, timeout: float) -> AsyncConnectionPool[Any]:
    """Autocommit connections: a read is one statement, so no BEGIN/COMMIT round trips;
    psycopg prepares a statement on a connection once it has run it twice. Opened by
    the caller (`await pool.open(wait=False)`), so the service starts without the
    database."""
    return AsyncConnectionPool(
        libpq_url(database_url),
        min_size=min(4, size),
        max_size=size,
        timeout=timeout,
        kwargs={
            **LIVENESS,
            "autocommit": True,
            "prepare_threshold": 2,
            "connect_timeout": int(max(2, timeout)),
        },
        configure=_generic_plans,
        # Plans are made once per connection: renewing connections now and then lets a
        # store that grew since (a new one, say) get plans for its size.
        max_lifetime=600,
        open=False,
        name="reads",
    )


async def append_connection(database_url: str, connect_seconds: float) -> AsyncConnection[Any]:
    """The group-commit writer's connection: autocommit (each batch's INSERT is one durable
    statement, one round trip), lists sent as binary arrays, connecting bounded by
    `connect_seconds`. No pool: one writer task holds it, and drops it when it fails."""
    options: dict[str, Any] = {**LIVENESS, "connect_timeout": int(max(1, connect_seconds))}
    conn = await AsyncConnection.connect(libpq_url(database_url), autocommit=True, **options)
    # In text format psycopg escapes every quote of every element (a batch of JSON
    # payloads), which costs more than the INSERT itself.
    conn.adapters.register_dumper(list, ListBinaryDumper)
    return conn


async def _generic_plans(conn: AsyncConnection[Any]) -> None:
    """Plan each prepared read once per connection, not once per request.

    PostgreSQL re-plans a prepared statement for every execution while it estimates that
    a plan for the parameters at hand beats the generic one. For the messages page (a
    dozen joins, CTEs and window functions) it keeps estimating so, and planning took
    0.65 ms of a 1.1 ms read on the 1M-event store; the generic plan then executes as
    fast (every read is an index scan in keyset order under a LIMIT). See
    docs/performance.md (Read API) for the measured variants.
    """
    await conn.execute("SET plan_cache_mode = force_generic_plan")


async def run(
    pool: AsyncConnectionPool[Any], work: Callable[[AsyncConnection[Any]], Awaitable[T]]
) -> T:
    """`await work(connection)` on a pooled connection, again on another one while the
    connection it got turns out dead (at most once per pooled connection, and never
    longer than the pool's timeout to get a live one)."""
    for _ in range(pool.max_size):
        async with pool.connection() as conn:
            try:
                return await work(conn)
            except OperationalError as error:
                if isinstance(error, PoolTimeout) or not conn.closed:
                    raise  # the query failed, not the connection
                # Returned closed, the connection is discarded and replaced by the pool.
    async with pool.connection() as conn:
        return await work(conn)
