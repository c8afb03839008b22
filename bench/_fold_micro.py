"""Micro benchmark of `conversations.messages.build_message`, the hot spot of a replay.

    python bench/_fold_micro.py [--events 20000] [--seed 1] [--rounds 5]
    python bench/_fold_micro.py --against REV    # also REV's build_message, interleaved
    python bench/_fold_micro.py --dump FILE      # every entry's repr, one a line

Generates a corpus with `bench/_corpus.py` (every channel, status sequences, redeliveries),
prepares every line as ingest would (`conversations.ingest.prepare`), drops redeliveries and
groups the events by message as the event table hands them over (`payload` decoded from the
stored jsonb text), then times `build_message` on the groups.

Prints µs per message (the best of `--rounds` rounds, in CPU time of this thread: steadier
than wall time on a loaded machine) for the messages of one event and of three events, per
channel, and over the whole corpus. `--against REV` loads `conversations/messages.py` and
`payloads.py` of the git revision REV beside the working tree's and times both, round by
round, after checking that they build the same entries (same repr) from every group.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/_fold_micro.py` puts bench/, not the repo, first
    sys.path.insert(0, str(REPO))

from bench._corpus import write_corpus  # noqa: E402
from conversations.events import NewEvent  # noqa: E402
from conversations.ingest import prepare  # noqa: E402
from conversations.messages import build_message  # noqa: E402
from conversations.payloads import MESSAGE_EVENT_TYPES  # noqa: E402
from conversations.store import StoredEvent  # noqa: E402

Group = list[StoredEvent]
Build = Callable[[Iterable[StoredEvent]], Any]


def _stored(event: NewEvent, position: int) -> StoredEvent:
    return StoredEvent(
        position=position,
        event_id=uuid.uuid5(uuid.NAMESPACE_OID, str(position)),
        location_id=event.location_id,
        stream_id=event.stream_id,
        version=position,
        event_type=event.event_type,
        message_id=event.message_id,
        occurred_at=event.occurred_at,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload=json.loads(event.payload_json),
        raw=event.raw,
        metadata=event.metadata,
    )


def load_groups(events: int, seed: int) -> list[Group]:
    """The message events of a generated corpus, one list per message, positions ascending."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "corpus.jsonl"
        write_corpus(path, events, seed)
        lines = path.read_bytes().splitlines()
    seen: set[str] = set()
    grouped: defaultdict[tuple[str, str], Group] = defaultdict(list)
    position = 0
    for line in lines:
        event = prepare(line, "import", None)
        if not isinstance(event, NewEvent) or event.dedup_key in seen:
            continue
        seen.add(event.dedup_key)
        position += 1
        if event.event_type in MESSAGE_EVENT_TYPES and event.message_id:
            grouped[(event.location_id, event.message_id)].append(_stored(event, position))
    return list(grouped.values())


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def build_of(revision: str) -> Build:
    """`build_message` of a git revision, with that revision's payload models."""

    def show(path: str) -> str:
        command = ["git", "-C", str(REPO), "show", f"{revision}:{path}"]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    _module("_fold_payloads", show("conversations/payloads.py"))
    messages = show("conversations/messages.py").replace(
        "from conversations.payloads import", "from _fold_payloads import"
    )
    build: Build = _module("_fold_messages", messages).build_message
    return build


def _time(build: Build, groups: list[Group]) -> float:
    """µs of CPU time per message for one round."""
    start = time.thread_time()
    for group in groups:
        build(group)
    return (time.thread_time() - start) / len(groups) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", metavar="REV", help="git revision to compare with")
    parser.add_argument("--dump", type=Path, help="write every entry's repr to this file")
    args = parser.parse_args()

    groups = load_groups(args.events, args.seed)
    entries = [build_message(group) for group in groups]
    if args.dump:
        args.dump.write_text("".join(f"{entry!r}\n" for entry in entries))
    builds: dict[str, Build] = {"µs/message": build_message}
    if args.against:
        before = build_of(args.against)
        for group, entry in zip(groups, entries, strict=True):
            if repr(before(group)) != repr(entry):
                sys.exit(f"{args.against} builds another entry from {group!r}")
        builds = {args.against[:10]: before, "now": build_message}

    shapes: dict[str, list[Group]] = {
        "1 event (all)": [group for group in groups if len(group) == 1],
        "3 events (all)": [group for group in groups if len(group) == 3],
        "corpus (1-9 events)": groups,
    }
    by_channel: defaultdict[str, list[Group]] = defaultdict(list)
    for group, entry in zip(groups, entries, strict=True):
        if len(group) in (1, 3):
            by_channel[f"{len(group)} event{'s' * (len(group) > 1)}: {entry.channel}"].append(group)
    shapes |= {name: found for name, found in sorted(by_channel.items()) if len(found) >= 50}

    print(f"{len(groups)} messages from {args.events} events; best of {args.rounds} rounds")
    header = "".join(f"{name:>12}" for name in builds)
    print(f"{'messages':<28}{'count':>6}{header}" + ("     speedup" if len(builds) > 1 else ""))
    for name, found in shapes.items():
        best = {label: float("inf") for label in builds}
        for _ in range(args.rounds):
            for label, build in builds.items():
                best[label] = min(best[label], _time(build, found))
        line = f"{name:<28}{len(found):>6}" + "".join(f"{us:>12.1f}" for us in best.values())
        if len(builds) > 1:
            first, last = best.values()
            line += f"{first / last:>11.2f}x"
        print(line)


if __name__ == "__main__":
    main()
