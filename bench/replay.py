"""Replay and import throughput: `conversations replay` and `conversations import` against
same-run set-based baselines, on a generated store of N events.

    python bench/replay.py [--events 1000000] [--database-url URL] [--seed 1]
    python bench/replay.py --smoke    # CI: ~5,000 events; exit 1 on any failure

Steps (nothing is kept: both databases and the temp dir are dropped at the end, also on
Ctrl-C or SIGTERM):

1. Generate N distinct events deterministically (`bench/_corpus.py`: every channel,
   status sequences, redeliveries, unread updates, merges) as a JSON-lines file, one
   webhook body per line in delivery order, redeliveries included.
2. Prepare every line with `conversations.ingest.prepare` (untimed), fold redeliveries
   and write the `events` rows as COPY text.
3. `copy`: COPY those rows into the event table of a fresh database (the row and
   statement triggers fire, as for any append), with an ANALYZE after the first
   PRIME_ROWS (see `time_copy`). The baseline of the import.
4. `import`: `python -m conversations import FILE` (a subprocess) on a second fresh,
   migrated database, from the same JSON-lines file. Target: at least 25 % of COPY's
   events/s. Stopped after 1/target times the COPY's time (the target is missed by then).
5. `sql rebuild`: the three read models rebuilt by plain `INSERT ... SELECT` into
   ordinary tables shaped like the projections' (`bench/_baseline_sql.py`), in one
   transaction. The baseline of the replay.
6. `replay`: `python -m conversations replay` (a subprocess) on the first database: every
   projection rebuilt from the first event. Targets: at least 50 % of the SQL rebuild's
   events/s, and peak RSS of the process under 300 MB.

Rates are stored events (redeliveries excluded) per second of wall time. The first
database is VACUUM ANALYZEd and CHECKPOINTed after the COPY and again before the replay,
so hint bits and dirty pages left by one phase favour neither the SQL rebuild nor the
replay; the import's database is left never-analyzed, as a fresh deployment's is. After
the replay every checkpoint must be at the head and every projection table must have as
many rows as its SQL twin. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/replay.py` puts bench/, not the repo, first
    sys.path.insert(0, str(REPO))

from bench._baseline_sql import STATEMENTS, TABLES  # noqa: E402
from bench._corpus import CorpusStats, write_corpus  # noqa: E402
from bench.ingest import scratch_database  # noqa: E402
from conversations.database import create_engine  # noqa: E402
from conversations.events import NewEvent  # noqa: E402
from conversations.ingest import Rejection, prepare  # noqa: E402
from conversations.migrate import upgrade  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SMOKE_EVENTS = 5_000
PRIME_ROWS = 2_000
IMPORT_TARGET = 0.25
REPLAY_TARGET = 0.50
MEMORY_TARGET_MB = 300.0
IMPORT_DEADLINE_FACTOR = 1 / IMPORT_TARGET
# Projection tables whose row count must equal their SQL twin's.
PROJECTION_ROWS = (
    "timeline_messages",
    "timeline_merges",
    "contact_channel_messages",
    "contact_channels",
    "location_conversation_messages",
    "location_conversation_flags",
    "location_conversation_merges",
    "location_conversations",
)
COPY_EVENTS = (
    "COPY events (location_id, stream_id, event_type, message_id, occurred_at, payload, raw,"
    " metadata, dedup_key) FROM STDIN"
)


class BenchFailure(Exception):
    """Something the benchmark checks went wrong: the run fails (exit 1)."""


def _note(text: str) -> None:
    """Progress goes to stderr (with the load average: the machine may be shared), stdout
    is the report."""
    print(f"{text}  [load {os.getloadavg()[0]:.1f}]", file=sys.stderr, flush=True)


# --- databases ----------------------------------------------------------------------------


@contextmanager
def throwaway_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A fresh database migrated to head; dropped on the way out, whatever happens."""
    with scratch_database(admin_url, prefix) as url:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                upgrade(conn)
        finally:
            engine.dispose()
        yield url


def _settle(url: str, *, vacuum: bool = True) -> None:
    """(VACUUM ANALYZE and) CHECKPOINT, so the next timed phase starts from a clean state:
    hint bits set, no dirty pages of an earlier phase to write."""
    with psycopg.connect(url, autocommit=True) as conn:
        if vacuum:
            conn.execute("VACUUM (ANALYZE) events")
        conn.execute("CHECKPOINT")


def _scalar(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


# --- preparing the rows -------------------------------------------------------------------


def _copy_text(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )


def _copy_line(event: NewEvent) -> str:
    fields = (
        _copy_text(event.location_id),
        _copy_text(event.stream_id),
        _copy_text(event.event_type),
        "\\N" if event.message_id is None else _copy_text(event.message_id),
        "\\N" if event.occurred_at is None else event.occurred_at.isoformat(),
        _copy_text(event.payload_json),
        "\\\\x" + event.raw.hex(),
        _copy_text(json.dumps(event.metadata, separators=(",", ":"))),
        _copy_text(event.dedup_key),
    )
    return "\t".join(fields) + "\n"


@dataclass
class Prepared:
    lines: int = 0
    events: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def prepare_rows(source: Path, target: Path) -> Prepared:
    """Every line through `prepare`, redeliveries folded, as COPY text in `target`."""
    result = Prepared()
    seen: set[str] = set()
    with source.open("rb") as lines, target.open("w", encoding="utf-8", newline="") as out:
        for line in lines:
            result.lines += 1
            prepared = prepare(line.rstrip(b"\n"), "import", None)
            if isinstance(prepared, Rejection):
                result.rejected[prepared.reason] = result.rejected.get(prepared.reason, 0) + 1
                continue
            if prepared.dedup_key in seen:
                result.duplicates += 1
                continue
            seen.add(prepared.dedup_key)
            out.write(_copy_line(prepared))
            result.events += 1
    return result


# --- timed phases -------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    name: str
    events: int
    seconds: float
    peak_mb: float | None = None
    baseline: Phase | None = None
    target: float | None = None
    """Minimum ratio of this phase's rate to its baseline's."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ratio(self) -> float | None:
        return self.rate / self.baseline.rate if self.baseline else None


def time_copy(url: str, rows: Path, events: int) -> Phase:
    """COPY the rows in two statements with an ANALYZE between them (all timed).

    On a never-analyzed event table the planner runs the version trigger's
    `max(version) ... WHERE location_id = $1 AND stream_id = $2` on the
    `(location_id, message_id)` index, i.e. it reads every earlier event of the location
    for each new row: a single COPY into a fresh table is quadratic. Statistics from the
    first PRIME_ROWS rows give the trigger the `(location_id, stream_id, version)` index.
    """
    with psycopg.connect(url) as conn, rows.open("rb") as source:
        started = time.perf_counter()
        with conn.cursor() as cursor:
            with cursor.copy(COPY_EVENTS) as copy:
                for _ in range(PRIME_ROWS):
                    line = source.readline()
                    if not line:
                        break
                    copy.write(line)
            conn.commit()
            cursor.execute("ANALYZE events")
            conn.commit()
            with cursor.copy(COPY_EVENTS) as copy:
                while chunk := source.read(1 << 20):
                    copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
    stored = _scalar(url, "SELECT count(*) FROM events")
    if stored != events:
        raise BenchFailure(f"COPY stored {stored} events, expected {events}")
    return Phase("COPY into events", events, seconds)


@dataclass(frozen=True)
class Child:
    returncode: int
    seconds: float
    peak_mb: float
    lines: list[tuple[float, str]]
    """stdout lines with the seconds since the start at which each arrived."""
    stopped: bool
    """The deadline passed and the process was terminated."""


def _collect(stream: IO[bytes], lines: list[tuple[float, str]], started: float) -> None:
    for raw in stream:
        lines.append((time.perf_counter() - started, raw.decode(errors="replace").rstrip()))


def _stop(pid: int) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there 15 s later."""
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def run_child(
    command: Sequence[str], env: dict[str, str], log: Path, deadline: float | None = None
) -> Child:
    """Run a command: wall time, stdout lines, and the peak RSS of that process alone.
    Terminated once `deadline` seconds have passed.

    The peak is the child's `VmHWM` (/proc), read every 50 ms while it runs: `wait4`'s
    `ru_maxrss` is no use here, as Linux carries the high-water mark of the memory the
    child had *before* exec (this benchmark's own, a copy of it at fork) into it, so it
    reported this script's size whenever that was the larger (209 MB for both the import
    and the replay on 2026-11-30). `ru_maxrss` is the fallback without /proc."""
    with log.open("wb") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    assert process.stdout is not None
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_collect, args=(process.stdout, lines, started), daemon=True)
    reader.start()
    stopped = False
    high_water = 0.0
    try:
        while True:
            high_water = max(high_water, _high_water_mb(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            seconds = time.perf_counter() - started
            if pid:
                break
            if deadline is not None and seconds > deadline and not stopped:
                stopped = True
                os.killpg(process.pid, signal.SIGTERM)
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        if process.returncode is None:
            _stop(process.pid)
            process.returncode = -1
        raise
    finally:
        reader.join(5)
        process.stdout.close()
    peak = high_water or usage.ru_maxrss / 1024
    return Child(process.returncode, seconds, peak, lines, stopped)


def _high_water_mb(pid: int) -> float:
    """The process's peak resident set so far (`VmHWM`), in MiB; 0 when unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return 0.0
    return 0.0


def _child_env(url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "CONVERSATIONS_LOG_LEVEL": "warning"}


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def time_import(
    url: str, corpus: Path, events: int, log: Path, baseline: Phase, deadline: float
) -> Phase:
    """`conversations import FILE`; stopped after `deadline` s (then the phase counts the
    events stored by then: the rate is still a rate, the target is missed anyway)."""
    command = [sys.executable, "-m", "conversations", "import", str(corpus)]
    child = run_child(command, _child_env(url), log, deadline)
    for _, line in child.lines[-5:]:
        _note(f"    import: {line}")
    stored = _scalar(url, "SELECT count(*) FROM events")
    quarantined = _scalar(url, "SELECT count(*) FROM quarantine")
    if child.stopped:
        _note(f"    import stopped after {child.seconds:.0f} s, {stored:,} events stored")
        name = f"conversations import (stopped at {stored / events:.0%})"
        return Phase(name, stored, child.seconds, child.peak_mb, baseline, IMPORT_TARGET)
    if child.returncode != 0:
        raise BenchFailure(f"import exited {child.returncode}:\n{_log_tail(log)}")
    if stored != events or quarantined:
        raise BenchFailure(
            f"import stored {stored} events (expected {events}), quarantined {quarantined}"
        )
    return Phase(
        "conversations import", events, child.seconds, child.peak_mb, baseline, IMPORT_TARGET
    )


def time_baseline(url: str, events: int) -> tuple[Phase, dict[str, float]]:
    """The SQL rebuild in one transaction (tables created first, untimed)."""
    with psycopg.connect(url) as conn:
        for live, twin in TABLES:
            conn.execute(f"CREATE TABLE {twin} (LIKE {live} INCLUDING ALL)")
        conn.commit()
        split: dict[str, float] = {}
        started = time.perf_counter()
        for projection, statement in STATEMENTS:
            began = time.perf_counter()
            conn.execute(statement)
            split[projection] = split.get(projection, 0.0) + time.perf_counter() - began
        conn.commit()
        seconds = time.perf_counter() - started
    return Phase("SQL rebuild (INSERT ... SELECT)", events, seconds), split


def time_replay(url: str, events: int, log: Path, baseline: Phase) -> tuple[Phase, list[Phase]]:
    command = [sys.executable, "-m", "conversations", "replay"]
    child = run_child(command, _child_env(url), log)
    if child.returncode != 0:
        raise BenchFailure(f"replay exited {child.returncode}:\n{_log_tail(log)}")
    split: list[Phase] = []
    previous = 0.0
    for at, line in child.lines:  # "<names>: rebuilt up to position N, switched over"
        name, _, rest = line.partition(":")
        if "rebuilt" in rest:
            split.append(Phase(f"  {name}", events, at - previous))
            previous = at
    if len(split) < 2:  # one pass for all projections: no split to show
        split = []
    phase = Phase(
        "conversations replay", events, child.seconds, child.peak_mb, baseline, REPLAY_TARGET
    )
    return phase, split


# --- checks -------------------------------------------------------------------------------


def check_replay(url: str) -> list[str]:
    """Problems with the replayed projections: checkpoints short of the head, or row
    counts that differ from the SQL rebuild's."""
    problems = []
    head = _scalar(url, "SELECT max(position) FROM events")
    behind = _scalar(url, f"SELECT count(*) FROM projection_checkpoints WHERE position <> {head}")
    names = _scalar(url, "SELECT count(*) FROM projection_checkpoints")
    if behind or names < 3:
        problems.append(f"{behind} of {names} checkpoints are not at the head ({head})")
    for table in PROJECTION_ROWS:
        rows = _scalar(url, f"SELECT count(*) FROM {table}")
        expected = _scalar(url, f"SELECT count(*) FROM bench_{table}")
        verdict = "ok" if rows == expected else "DIFFERS"
        _note(f"  rows: {table} {rows}, SQL rebuild {expected}: {verdict}")
        if rows != expected:
            problems.append(f"{table} has {rows} rows, the SQL rebuild {expected}")
    return problems


# --- report -------------------------------------------------------------------------------


def _print_table(phases: Sequence[Phase]) -> None:
    print()
    print("| phase | events | seconds | events/s | peak MB | vs baseline | target | met? |")
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for phase in phases:
        peak = f"{phase.peak_mb:,.0f}" if phase.peak_mb is not None else ""
        ratio = f"{phase.ratio:.2f}x" if phase.ratio is not None else ""
        target = f">= {phase.target:.2f}x" if phase.target is not None else ""
        met = ""
        if phase.target is not None and phase.ratio is not None:
            met = "yes" if phase.ratio >= phase.target else "NO"
        print(
            f"| {phase.name} | {phase.events:,} | {phase.seconds:.1f} | {phase.rate:,.0f} "
            f"| {peak} | {ratio} | {target} | {met} |"
        )
    replay = next((p for p in phases if p.name == "conversations replay"), None)
    if replay is not None and replay.peak_mb is not None:
        met = "yes" if replay.peak_mb < MEMORY_TARGET_MB else "NO"
        print(
            f"| replay peak RSS | | | | {replay.peak_mb:,.0f} | | < {MEMORY_TARGET_MB:.0f} MB "
            f"| {met} |"
        )


def _describe(stats: CorpusStats, prepared: Prepared, corpus: Path) -> str:
    types = ", ".join(f"{name} {count:,}" for name, count in sorted(stats.by_type.items()))
    return (
        f"store: {prepared.events:,} events ({types}); {stats.messages:,} messages in "
        f"{stats.conversations:,} conversations of {stats.contacts:,} contacts in "
        f"{stats.locations} locations, {stats.merges} merges; file {prepared.lines:,} lines "
        f"({prepared.duplicates:,} redeliveries), {corpus.stat().st_size / 2**20:,.0f} MiB"
    )


# --- main ---------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> list[Phase]:
    corpus = tmp / "webhooks.jsonl"
    rows = tmp / "events.copy"
    started = time.perf_counter()
    stats = write_corpus(corpus, args.events, args.seed)
    _note(f"  generated {stats.lines:,} lines in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    prepared = prepare_rows(corpus, rows)
    _note(f"  prepared {prepared.events:,} rows in {time.perf_counter() - started:.0f} s")
    if prepared.rejected:
        raise BenchFailure(f"prepare rejected generated payloads: {prepared.rejected}")
    if prepared.events != stats.events:
        raise BenchFailure(f"{prepared.events} distinct events, the generator made {stats.events}")
    print(_describe(stats, prepared, corpus), flush=True)
    events = prepared.events
    replay_db = stack.enter_context(throwaway_database(args.database_url, "bench_replay"))
    copy = time_copy(replay_db, rows, events)
    _note(f"  COPY: {copy.seconds:.1f} s, {copy.rate:,.0f} events/s")
    rows.unlink()
    _settle(replay_db)

    with throwaway_database(args.database_url, "bench_replay_import") as import_db:
        _settle(import_db, vacuum=False)  # a fresh, never-analyzed database, as in use
        deadline = max(args.import_deadline, IMPORT_DEADLINE_FACTOR * copy.seconds)
        imported = time_import(import_db, corpus, events, tmp / "import.log", copy, deadline)
        if imported.events < events and args.smoke:
            raise BenchFailure(f"import did not finish in {deadline:.0f} s")
    _note(f"  import: {imported.seconds:.1f} s, {imported.rate:,.0f} events/s")

    baseline, baseline_split = time_baseline(replay_db, events)
    _note(
        f"  SQL rebuild: {baseline.seconds:.1f} s, {baseline.rate:,.0f} events/s ("
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in baseline_split.items())
        + ")"
    )
    _settle(replay_db)
    replay, replay_split = time_replay(replay_db, events, tmp / "replay.log", baseline)
    _note(f"  replay: {replay.seconds:.1f} s, {replay.rate:,.0f} events/s")
    problems = check_replay(replay_db)
    if problems:
        raise BenchFailure("; ".join(problems))
    split = [Phase(f"  {name}", events, seconds) for name, seconds in baseline_split.items()]
    return [copy, imported, baseline, *split, replay, *replay_split]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Replay and import benchmark: conversations replay/import vs SQL and COPY."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="distinct events")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL),
        help="a server where this may CREATE and DROP databases",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--import-deadline",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help=f"stop the import after this long or {IMPORT_DEADLINE_FACTOR:.0f}x the COPY's"
        " time, whichever is longer (by then its target is missed anyway)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_EVENTS:,} events; exit 1 on any failure"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.events = SMOKE_EVENTS
    if args.events < 100:
        parser.error("--events must be at least 100")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{_memory_gb():.0f} GB; {args.events:,} events, seed {args.seed}",
        flush=True,
    )
    try:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_replay_")))
            phases = run(args, tmp, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; subprocesses stopped and the databases dropped", file=sys.stderr)
        return 130
    except BenchFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    _print_table(phases)
    return 0


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 0.0


if __name__ == "__main__":
    raise SystemExit(main())
