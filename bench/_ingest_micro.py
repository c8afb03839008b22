"""CPU per webhook of the HTTP process's own ingest work, stage by stage, without HTTP.

    python bench/_ingest_micro.py [--events 6000] [--rounds 5]
    python bench/_ingest_micro.py --code /path/to/other/checkout   # A/B another version

Creates a throwaway database, then per round times, on `bench/ingest.py`'s corpus (every
body a distinct message, signed with a fresh Ed25519 key):

- `verify`: the signature check alone;
- `prepare`: bytes to an event (JSON, pydantic, keys);
- `append`: the group-commit writer storing prepared events from 64 concurrent tasks
  (batches form as in the service at concurrency 64), after 128 uncounted ones;
- `receive`: `Ingestor.receive` from 64 concurrent tasks (verify + prepare + append +
  metrics), after 128 uncounted ones: the service's work per webhook minus HTTP and
  Starlette.

CPU is this process's (`time.process_time`, so time spent waiting for PostgreSQL is not
counted) and, for the stages that write, the database backends' (Linux /proc). Rounds
repeat the stages; the table shows each stage's best round (the least disturbed on a
shared machine). `--code DIR` imports `conversations` from DIR instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import inspect
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 64
WARM_UP = 2 * CONCURRENCY


def _setup_path(code: str | None) -> None:
    sys.path.insert(0, str(REPO))
    if code:
        sys.path.insert(0, str(Path(code).resolve()))


def _bodies(count: int, seed: int, key: Any) -> tuple[list[bytes], list[str]]:
    """Distinct webhook bodies (as `seed` gives them) and their Ed25519 signatures."""
    from bench.ingest import Corpus

    corpus = Corpus(seed)
    now = datetime.now(UTC)
    bodies = [json.dumps(corpus.webhook(now), separators=(",", ":")).encode() for _ in range(count)]
    return bodies, [base64.b64encode(key.sign(body)).decode() for body in bodies]


def _public_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


async def _concurrently(items: list[Any], work: Callable[[Any], Awaitable[Any]]) -> None:
    """`work` on every item from CONCURRENCY tasks, each taking the next item when done."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _backends_cpu(name: str) -> float:
    from bench.ingest import backends_cpu

    return sum(backends_cpu(name).values())


async def _round(url: str, name: str, count: int, seed: int) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from sqlalchemy import text

    from conversations.database import create_async_engine
    from conversations.ingest import Ingestor, prepare
    from conversations.metrics import Metrics
    from conversations.signatures import SignatureVerifier
    from conversations.writer import GroupCommitWriter

    # Fresh bodies for each writing stage: the table is immutable, the ids must be new.
    key = Ed25519PrivateKey.generate()
    bodies, signatures = _bodies(count, seed, key)
    verifier = SignatureVerifier(ed25519_pem=_public_pem(key))
    engine = create_async_engine(url, pool_size=2, timeout=30)
    if "engine" in inspect.signature(GroupCommitWriter).parameters:  # older code
        appends: Any = create_async_engine(url, pool_size=2, timeout=30, autocommit=True)
    else:
        from conversations.pool import append_connection

        appends = functools.partial(append_connection, url, 30)
    writer = GroupCommitWriter(appends, batch_max=500, timeout=30)
    await writer.start()
    limit: dict[str, Any] = {}
    if "max_body_bytes" in inspect.signature(Ingestor).parameters:  # newer code
        limit["max_body_bytes"] = 1024 * 1024
    ingestor = Ingestor(
        engine=engine,
        writer=writer,
        verifier=verifier,
        enforce_signatures=True,
        retry_after=1,
        metrics=Metrics(),
        **limit,
    )
    results: dict[str, tuple[float, float]] = {}
    try:
        async with engine.connect() as conn:  # connected before the clock starts
            await conn.execute(text("SELECT 1"))

        t0 = time.process_time()
        for body, signature in zip(bodies, signatures, strict=True):
            verifier.verify(body, signature, None)
        results["verify"] = ((time.process_time() - t0) / count, 0.0)

        t0 = time.process_time()
        events = [prepare(body, "webhook", None) for body in bodies]
        results["prepare"] = ((time.process_time() - t0) / count, 0.0)

        # The first batches (connecting, preparing statements) before the clock starts.
        await _concurrently(events[:WARM_UP], writer.append)
        db0, t0 = _backends_cpu(name), time.process_time()
        await _concurrently(events[WARM_UP:], writer.append)
        results["append"] = (
            (time.process_time() - t0) / (count - WARM_UP),
            (_backends_cpu(name) - db0) / (count - WARM_UP),
        )

        bodies, signatures = _bodies(count, seed + 1, key)
        headers = [{"x-ghl-signature": signature} for signature in signatures]
        pairs = list(zip(bodies, headers, strict=True))

        async def receive(pair: tuple[bytes, dict[str, str]]) -> None:
            outcome = await ingestor.receive(*pair)
            assert outcome.status == 201, outcome

        await _concurrently(pairs[:WARM_UP], receive)
        db0, t0 = _backends_cpu(name), time.process_time()
        await _concurrently(pairs[WARM_UP:], receive)
        results["receive"] = (
            (time.process_time() - t0) / (count - WARM_UP),
            (_backends_cpu(name) - db0) / (count - WARM_UP),
        )
    finally:
        await writer.stop()
        await engine.dispose()
        if hasattr(appends, "dispose"):
            await appends.dispose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--code", default=None, help="import conversations from this checkout")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    _setup_path(args.code)
    import uvloop

    import conversations
    from bench.ingest import scratch_database
    from conversations.database import create_engine
    from conversations.migrate import upgrade

    print(f"code: {Path(conversations.__file__).parent.parent}", flush=True)
    with scratch_database(args.database_url, "bench_ingest_micro") as url:
        name = url.rsplit("/", 1)[1]  # whose backends are measured
        engine = create_engine(url)
        with engine.connect() as conn:
            upgrade(conn)
        engine.dispose()
        best: dict[str, tuple[float, float]] = {}
        for round_ in range(args.rounds):
            seed = args.seed + 2 * round_
            results = uvloop.run(_round(url, name, args.events, seed))
            print(
                "  "
                + ", ".join(
                    f"{k} {py * 1e6:.1f}/{db * 1e6:.1f}" for k, (py, db) in results.items()
                ),
                flush=True,
            )
            for stage, (py, db) in results.items():
                if stage not in best or py + db < sum(best[stage]):
                    best[stage] = (py, db)
        print("| stage | python µs/webhook | database µs/webhook |")
        print("|---|--:|--:|")
        for stage, (py, db) in best.items():
            print(f"| {stage} | {py * 1e6:.1f} | {db * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
