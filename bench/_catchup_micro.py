"""CPU per event of the live projection worker's catch-up, in Python and in PostgreSQL.

    python bench/_catchup_micro.py [--events 6000] [--batch 50,150,500] [--rounds 3]
    python bench/_catchup_micro.py --code /path/to/other/checkout   # A/B another version
    python bench/_catchup_micro.py --default-gc   # CPython's collector settings, not the worker's

Creates a throwaway database, stores `--events` webhooks of `bench/ingest.py`'s corpus
(distinct messages, as the ingest benchmark sends them) through the store's own append,
then, per round and batch size, empties the projections and times `catch_up_all` from
position 0 in batches of that size: the CPU of this process (`time.process_time`) and of
the database's backends (Linux /proc) per event. Rounds alternate batch sizes, so a
busy moment of a shared machine spreads over all of them; the table shows the best round
(the least disturbed). `--code DIR` imports `conversations` from DIR instead (its schema
must be the same, or pass its own migrations with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _setup_path(code: str | None) -> None:
    sys.path.insert(0, str(REPO))
    if code:
        sys.path.insert(0, str(Path(code).resolve()))


def _database_cpu(name: str) -> dict[int, float]:
    from bench.ingest import backends_cpu

    return backends_cpu(name)


async def _store(url: str, events: int, seed: int) -> None:
    from bench.ingest import Corpus
    from conversations.database import create_async_engine
    from conversations.ingest import prepare
    from conversations.store import append_events

    corpus = Corpus(seed)
    engine = create_async_engine(url, pool_size=1, timeout=30, autocommit=True)
    try:
        batch = []
        for _ in range(events):
            raw = json.dumps(corpus.webhook(datetime.now(UTC)), separators=(",", ":")).encode()
            event = prepare(raw, "webhook", None)
            batch.append(event)
            if len(batch) == 64:
                async with engine.connect() as conn:
                    await append_events(conn, batch)  # type: ignore[arg-type]
                batch = []
        if batch:
            async with engine.connect() as conn:
                await append_events(conn, batch)  # type: ignore[arg-type]
    finally:
        await engine.dispose()


def _seq_scanned(engine: Any) -> int:
    """Rows the database's sequential scans have read so far (every table)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.scalar(text("SELECT sum(seq_tup_read) FROM pg_stat_user_tables")) or 0)


def _reset(engine: Any, projections: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        for projection in projections:
            for table in projection.tables:
                conn.exec_driver_sql(f'TRUNCATE "{table.name}"')
        conn.execute(text("UPDATE projection_checkpoints SET position = 0"))
        conn.exec_driver_sql("CHECKPOINT")


def _tune_gc() -> None:
    """The collector settings of the worker (`conversations work` freezes its startup heap
    and raises the young threshold): with CPython's defaults, young collections during the
    fold cost this process ~10 µs per event more than the worker pays (8,000 events in
    batches of 700: Python 74-82 against 63-71 µs). Older code without them: as it is."""
    try:
        from conversations.gc_tuning import freeze_startup_heap
    except ImportError:
        print("gc: CPython's defaults (this code has no gc_tuning)", flush=True)
        return
    freeze_startup_heap()
    print("gc: the worker's settings (gc_tuning.freeze_startup_heap)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--batch", default="50,150,500")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--code", default=None, help="import conversations from this checkout")
    parser.add_argument("--options", default="", help="libpq options of the folding connection")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's collector settings (the worker freezes its heap, `gc_tuning`)",
    )
    args = parser.parse_args()
    _setup_path(args.code)
    import conversations
    from bench.ingest import scratch_database
    from conversations.database import create_engine
    from conversations.migrate import upgrade
    from conversations.projections.registry import PROJECTIONS
    from conversations.projections.runner import catch_up_all, ensure_checkpoints

    plan_folds: Callable[[Any], None] | None
    try:
        from conversations.projections.worker import plan_folds
    except ImportError:
        plan_folds = None

    print(f"code: {Path(conversations.__file__).parent.parent}", flush=True)
    with scratch_database(args.database_url, "bench_catchup") as url:
        name = url.rsplit("/", 1)[1]  # whose backends are measured
        engine = create_engine(url, connect_args={"options": args.options} if args.options else {})
        if plan_folds is not None:  # as the worker's (older code: without)
            plan_folds(engine)
        with engine.connect() as conn:
            upgrade(conn)
        asyncio.run(_store(url, args.events, args.seed))
        with engine.begin() as conn:
            ensure_checkpoints(conn, PROJECTIONS)  # nothing analysed, as on a new store
        if not args.default_gc:
            _tune_gc()
        sizes = [int(s) for s in args.batch.split(",")]
        best: dict[int, tuple[float, float, float]] = {}
        for round_ in range(args.rounds):
            for size in sizes if round_ % 2 == 0 else sizes[::-1]:
                _reset(engine, PROJECTIONS)
                scanned = _seq_scanned(engine)
                db0, py0, wall0 = _database_cpu(name), time.process_time(), time.perf_counter()
                catch_up_all(engine, PROJECTIONS, batch_size=size)
                wall = time.perf_counter() - wall0
                py = time.process_time() - py0
                db = sum(c - db0.get(pid, 0.0) for pid, c in _database_cpu(name).items())
                per = 1e6 / args.events
                time.sleep(0.6)  # the statistics of the last transactions
                scanned = (_seq_scanned(engine) - scanned) / args.events
                print(
                    f"  batch {size:>5}: python {py * per:6.1f} µs/event, database "
                    f"{db * per:6.1f} µs/event, wall {wall:5.2f} s, rows read by "
                    f"sequential scans {scanned:.0f} per event",
                    flush=True,
                )
                total = (py + db) * per
                if size not in best or total < sum(best[size][:2]):
                    best[size] = (py * per, db * per, wall)
        print("| batch | python µs/event | database µs/event | total |")
        print("|--:|--:|--:|--:|")
        for size in sizes:
            py, db, _ = best[size]
            print(f"| {size} | {py:.1f} | {db:.1f} | {py + db:.1f} |")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
