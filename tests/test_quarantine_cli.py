"""`conversations quarantine list | show | retry`: the operator's view of the bodies kept
aside, and their retry once the reason they failed for has gone away."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import RowMapping, text
from sqlalchemy.engine import make_url

from conversations.cli import main
from conversations.database import create_engine
from tests.conftest import migrated_database, run_cli_into_closed_pipe
from tests.helpers import KeyPair, Scheme, Server, events_refusing, message, new_id


@dataclass
class Result:
    status: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def fresh_url(server_url: str) -> Iterator[str]:
    """A database of its own, migrated to head: `list` and `retry --all` see every row."""
    with migrated_database(server_url, "conversations_test_q") as url:
        yield url


@pytest.fixture
def fresh_engine(fresh_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = create_engine(fresh_url)
    yield engine
    engine.dispose()


def _runner(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str
) -> Iterator[Run]:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CONVERSATIONS_LOG_LEVEL", "warning")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*argv: str) -> Result:
        capsys.readouterr()
        status = main(list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return Result(status, captured.out, captured.err)

    yield run
    root.handlers[:] = handlers  # main() configured logging to the captured stderr
    root.setLevel(level)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> Iterator[Run]:
    """`conversations ARGS...` in this process, against the shared test database."""
    yield from _runner(monkeypatch, capsys, database_url)


@pytest.fixture
def fresh_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fresh_url: str
) -> Iterator[Run]:
    """`conversations ARGS...` against a database of its own."""
    yield from _runner(monkeypatch, capsys, fresh_url)


def keep(
    engine: sqlalchemy.Engine,
    body: bytes,
    reason: str = "internal_error",
    *,
    source: str = "webhook",
    headers: dict[str, str] | None = None,
) -> int:
    """A quarantine row as ingest leaves it; `internal_error` with a valid body stands for
    a bug fixed since."""
    with engine.begin() as conn:
        qid = conn.scalar(
            text(
                "INSERT INTO quarantine (source, reason, detail, headers, body, body_sha256)"
                " VALUES (:source, :reason, 'RuntimeError: a bug', CAST(:headers AS jsonb),"
                " :body, :sha) RETURNING id"
            ),
            {
                "source": source,
                "reason": reason,
                "headers": json.dumps(headers or {}),
                "body": body,
                "sha": hashlib.sha256(body).hexdigest(),
            },
        )
    assert isinstance(qid, int)
    return qid


def row(engine: sqlalchemy.Engine, qid: int) -> RowMapping:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT * FROM quarantine WHERE id = :id"), {"id": qid})
            .mappings()
            .one()
        )


def event_at(engine: sqlalchemy.Engine, position: int) -> RowMapping:
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT * FROM events WHERE position = :p"), {"p": position})
            .mappings()
            .one()
        )


def event_count(engine: sqlalchemy.Engine, location_id: str) -> int:
    with engine.connect() as conn:
        count = conn.scalar(
            text("SELECT count(*) FROM events WHERE location_id = :l"), {"l": location_id}
        )
    return int(count or 0)


def body(**fields: Any) -> tuple[dict[str, Any], bytes]:
    document = message(**fields)
    return document, json.dumps(document, indent=1).encode()


# --- a webhook kept aside, end to end ---------------------------------------------------------


@pytest.mark.e2e
def test_a_quarantined_webhook_is_listed_shown_and_still_fails_on_retry(
    server: Server, cli: Run, engine: sqlalchemy.Engine
) -> None:
    document, raw = body(type="ContactCreate")
    response = server.post(raw)
    assert response.status_code == 202, response.text
    qid = response.json()["quarantineId"]

    listing = cli("quarantine", "list", "--limit", "1")
    shown = cli("quarantine", "show", str(qid))
    retried = cli("quarantine", "retry", str(qid))

    assert listing.status == 0
    header, first = listing.out.splitlines()[:2]
    assert header.split() == [
        "ID", "RECEIVED", "ATTEMPTS", "SOURCE", "REASON", "LOCATION", "SIZE", "STATUS"
    ]  # fmt: skip
    assert first.split()[0] == str(qid)
    assert first.split()[4:] == [
        "webhook", "unknown_type", document["locationId"], str(len(raw)), "B", "pending"
    ]  # fmt: skip
    assert shown.status == 0
    assert f"id: {qid}\n" in shown.out
    assert "status: pending\n" in shown.out
    assert "reason: unknown_type\n" in shown.out
    assert "attempts: 1\n" in shown.out
    assert "  x-ghl-signature: " in shown.out
    assert '"field": "type"' in shown.out
    assert shown.out.endswith(f"body ({len(raw)} bytes, UTF-8):\n{raw.decode()}\n")
    assert retried.status == 1
    assert retried.out == (
        f"quarantine {qid}: still failing: unknown_type: {row(engine, qid)['detail']}\n"
    )
    assert row(engine, qid)["status"] == "pending"
    assert event_count(engine, document["locationId"]) == 0


def test_show_of_an_unknown_id_exits_1(cli: Run) -> None:
    result = cli("quarantine", "show", "987654321")
    assert result.status == 1
    assert result.err == "conversations: no quarantined body with id 987654321\n"


def test_show_keeps_the_terminal_safe_and_dumps_what_is_not_utf8(
    cli: Run, engine: sqlalchemy.Engine
) -> None:
    escape = keep(engine, f'{{"a": "\x1b[2J{new_id()}"}}'.encode(), "unknown_type")
    binary = keep(engine, b"\xff\xfe" + new_id().encode(), "not_json")

    escaped = cli("quarantine", "show", str(escape))
    dumped = cli("quarantine", "show", str(binary))

    assert "control characters escaped" in escaped.out
    assert "\x1b" not in escaped.out
    assert '{"a": "\\x1b[2J' in escaped.out
    assert "not UTF-8, hex dump" in dumped.out
    assert "00000000  ff fe " in dumped.out


def test_show_escapes_what_came_from_the_internet_besides_the_body(
    cli: Run, engine: sqlalchemy.Engine
) -> None:
    """The location, the detail (which may quote the body) and the headers kept are the
    sender's text too: one line each, escapes escaped."""
    qid = keep(
        engine,
        f'{{"b": "{new_id()}"}}'.encode(),
        "unknown_type",
        headers={"user-agent": "agent\x9b2J\u2028x"},
    )
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE quarantine SET location_id = :l, detail = :d WHERE id = :id"),
            {"l": "loc\x1b[31m", "d": "bad\nfake: line", "id": qid},
        )
    shown = cli("quarantine", "show", str(qid))
    assert shown.status == 0
    assert "location: loc\\x1b[31m\n" in shown.out
    assert "detail: bad\\x0afake: line\n" in shown.out
    assert "  user-agent: agent\\x9b2J\\u2028x\n" in shown.out
    assert not {"\x1b", "\x9b", "\u2028"} & set(shown.out)


# --- retry ------------------------------------------------------------------------------------


def test_retry_stores_a_body_whose_failure_went_away(cli: Run, engine: sqlalchemy.Engine) -> None:
    document, raw = body()
    qid = keep(engine, raw)

    first = cli("quarantine", "retry", str(qid))
    again = cli("quarantine", "retry", str(qid))

    assert first.status == 0, first
    kept = row(engine, qid)
    assert kept["status"] == "ingested"
    assert kept["resolved_at"] is not None
    position = kept["resolved_position"]
    assert first.out == f"quarantine {qid}: stored at position {position}\n"
    event = event_at(engine, position)
    assert bytes(event["raw"]) == raw
    assert event["location_id"] == document["locationId"]
    assert event["metadata"]["quarantineId"] == qid
    assert event["metadata"]["source"] == "webhook"
    assert again.status == 0
    assert again.out == f"quarantine {qid}: already ingested (position {position})\n"
    assert event_count(engine, document["locationId"]) == 1
    assert row(engine, qid)["resolved_at"] == kept["resolved_at"]


@pytest.mark.parametrize("scheme", ["ed25519", "rsa"])
def test_retry_records_the_signature_a_webhook_came_with(
    cli: Run,
    engine: sqlalchemy.Engine,
    keys: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
    scheme: Scheme,
) -> None:
    # The metadata says which header verified an event, whichever way it got stored: the
    # endpoint verified the body when it kept it aside, the retry checks it again.
    monkeypatch.setenv("CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY", keys.ed25519_public_pem)
    monkeypatch.setenv("CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY", keys.rsa_public_pem)
    _, raw = body()
    headers = {name.lower(): value for name, value in keys.headers(raw, scheme).items()}
    _, forged_raw = body()
    forged_headers = {name: "A" + value[1:] for name, value in headers.items()}
    for kept, sent, valid in ((raw, headers, True), (forged_raw, forged_headers, False)):
        qid = keep(engine, kept, headers=sent)
        assert cli("quarantine", "retry", str(qid)).status == 0
        metadata = event_at(engine, row(engine, qid)["resolved_position"])["metadata"]
        header = {"ed25519": "X-GHL-Signature", "rsa": "X-WH-Signature"}[scheme]
        assert (metadata["signature"], metadata["signatureValid"]) == (header, valid)


def test_retry_of_a_body_stored_meanwhile_is_a_duplicate(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    document, raw = body()
    path = tmp_path / "first.jsonl"
    path.write_bytes(json.dumps(document).encode() + b"\n")
    assert cli("import", str(path)).status == 0
    qid = keep(engine, raw, source="import", headers={"x-import-file": "old.jsonl"})

    result = cli("quarantine", "retry", str(qid))

    assert result.status == 0, result
    position = int(result.out.rsplit(" ", 1)[1])
    assert result.out == f"quarantine {qid}: duplicate of the event at position {position}\n"
    assert row(engine, qid)["resolved_position"] == position
    assert event_count(engine, document["locationId"]) == 1


def test_retry_records_the_current_reason_of_a_body_that_still_fails(
    cli: Run, engine: sqlalchemy.Engine
) -> None:
    """A body the database refuses: the savepoint keeps the row's update possible."""
    with events_refusing(engine) as refused:
        document, raw = body(conversationId=refused + new_id("cnv"))
        qid = keep(engine, raw)
        result = cli("quarantine", "retry", str(qid))

    assert result.status == 1
    assert f"quarantine {qid}: still failing: rejected_by_database: " in result.out
    kept = row(engine, qid)
    assert (kept["status"], kept["reason"]) == ("pending", "rejected_by_database")
    assert kept["location_id"] == document["locationId"]
    assert kept["attempts"] == 1


@pytest.mark.parametrize("encoding", ["gzip", "identity, gzip"])
def test_retry_decodes_a_body_kept_with_its_content_encoding(
    encoding: str, cli: Run, engine: sqlalchemy.Engine
) -> None:
    """A body kept as received (compressed) is decoded as the endpoint would: this one
    stands for a decoder bug fixed since."""
    document, raw = body()
    qid = keep(engine, gzip.compress(raw), "bad_encoding", headers={"content-encoding": encoding})

    result = cli("quarantine", "retry", str(qid))

    assert result.status == 0, result
    position = row(engine, qid)["resolved_position"]
    assert result.out == f"quarantine {qid}: stored at position {position}\n"
    assert bytes(event_at(engine, position)["raw"]) == raw
    assert event_count(engine, document["locationId"]) == 1


@pytest.mark.e2e
def test_retry_of_a_body_that_still_does_not_decode_keeps_its_reason(
    lenient_server: Server, cli: Run, engine: sqlalchemy.Engine
) -> None:
    document, raw = body()
    trailing = gzip.compress(raw) + b"\0" * 8
    response = httpx.post(
        f"{lenient_server.url}/webhooks/highlevel",
        content=trailing,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    qid = response.json()["quarantineId"]
    before = row(engine, qid)

    result = cli("quarantine", "retry", str(qid))

    assert result.status == 1
    assert result.out == f"quarantine {qid}: still failing: bad_encoding: {before['detail']}\n"
    after = row(engine, qid)
    assert (after["status"], after["reason"], after["detail"]) == (
        "pending",
        "bad_encoding",
        before["detail"],
    )
    assert after["headers"]["content-encoding"] == "gzip"
    assert event_count(engine, document["locationId"]) == 0


def test_retry_of_an_unknown_id_exits_1(cli: Run) -> None:
    result = cli("quarantine", "retry", "987654321")
    assert result.status == 1
    assert result.err == "conversations: no quarantined body with id 987654321\n"


def test_retry_all_reports_each_body(fresh_cli: Run, fresh_engine: sqlalchemy.Engine) -> None:
    good = [body() for _ in range(2)]
    good_ids = [keep(fresh_engine, raw) for _, raw in good]
    stored_document, stored_raw = body()
    duplicate_id = keep(fresh_engine, stored_raw)
    assert fresh_cli("quarantine", "retry", str(duplicate_id)).status == 0
    twin = json.dumps(stored_document).encode()  # other bytes, the same delivery
    twin_id = keep(fresh_engine, twin)
    _, bad_raw = body(type="ContactCreate")
    bad_id = keep(fresh_engine, bad_raw)  # "internal_error", really an unknown type

    result = fresh_cli("quarantine", "retry", "--all")

    assert result.status == 1, result
    lines = result.out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"quarantine {qid}" for qid in (*good_ids, twin_id, bad_id)
    ]
    assert "stored at position" in lines[0] and "stored at position" in lines[1]
    assert "duplicate of the event at position" in lines[2]
    assert lines[3].startswith(f"quarantine {bad_id}: still failing: unknown_type: ")
    assert lines[-1] == "retried 4: 2 stored, 1 duplicate, 1 still failing"
    assert [row(fresh_engine, qid)["status"] for qid in (*good_ids, twin_id)] == ["ingested"] * 3
    assert (
        row(fresh_engine, twin_id)["resolved_position"]
        == (row(fresh_engine, duplicate_id)["resolved_position"])
    )
    bad = row(fresh_engine, bad_id)
    assert (bad["status"], bad["reason"]) == ("pending", "unknown_type")
    assert bad["errors"] and bad["errors"][0]["field"] == "type"

    again = fresh_cli("quarantine", "retry", "--all")

    assert again.status == 1
    assert again.out.splitlines()[-1] == "retried 1: 0 stored, 0 duplicate, 1 still failing"


def test_retry_all_exits_0_when_every_body_is_ingested(
    fresh_cli: Run, fresh_engine: sqlalchemy.Engine
) -> None:
    assert fresh_cli("quarantine", "retry", "--all").out == "nothing to retry: no pending bodies\n"
    for _ in range(3):
        keep(fresh_engine, body()[1])

    result = fresh_cli("quarantine", "retry", "--all")
    after = fresh_cli("quarantine", "list")

    assert result.status == 0, result
    assert result.out.splitlines()[-1] == "retried 3: 3 stored, 0 duplicate, 0 still failing"
    assert after.out == "no pending bodies in the quarantine\n"


# --- list -------------------------------------------------------------------------------------


def test_list_shows_pending_bodies_newest_first(
    fresh_cli: Run, fresh_engine: sqlalchemy.Engine
) -> None:
    assert fresh_cli("quarantine", "list").out == "no pending bodies in the quarantine\n"
    assert fresh_cli("quarantine", "list", "--all").out == "the quarantine is empty\n"
    imported = keep(
        fresh_engine,
        b"not json",
        "not_json",
        source="import",
        headers={"x-import-file": "export.jsonl", "x-import-line": "7"},
    )
    element = keep(
        fresh_engine,
        b"[]",
        "not_json",
        source="import",
        headers={"x-import-file": "export.json", "x-import-element": "3"},
    )
    ingested = keep(fresh_engine, body()[1])
    assert fresh_cli("quarantine", "retry", str(ingested)).status == 0
    newest = keep(fresh_engine, b"{}", "unknown_type")

    pending = fresh_cli("quarantine", "list")
    everything = fresh_cli("quarantine", "list", "--all")
    limited = fresh_cli("quarantine", "list", "--limit", "2")

    assert pending.status == 0
    ids = [line.split()[0] for line in pending.out.splitlines()[1:-1]]
    assert ids == [str(newest), str(element), str(imported)]
    assert "import export.json[3]  not_json" in pending.out
    assert "import export.jsonl:7  not_json" in pending.out
    assert pending.out.splitlines()[-1] == "3 pending bodies"
    assert [line.split()[0] for line in everything.out.splitlines()[1:-1]] == [
        str(newest),
        str(ingested),
        str(element),
        str(imported),
    ]
    assert everything.out.splitlines()[2].endswith("ingested")
    assert everything.out.splitlines()[-1] == "4 bodies"
    assert [line.split()[0] for line in limited.out.splitlines()[1:-1]] == [
        str(newest),
        str(element),
    ]
    assert limited.out.splitlines()[-1] == "2 of 3 pending bodies shown (--limit N for more)"


def test_list_caps_a_long_value_and_show_gives_it_whole(
    fresh_cli: Run, fresh_engine: sqlalchemy.Engine
) -> None:
    """A body from the internet can name a 600-byte location: the table shows its start
    (every other line keeps its width), `show ID` all of it; and no cell spans lines."""
    short = keep(fresh_engine, b'{"a": 1}', "unknown_type")
    long = keep(fresh_engine, b'{"a": 2}', "unknown_type")
    location = "L" * 600
    with fresh_engine.begin() as conn:
        conn.execute(
            text("UPDATE quarantine SET location_id = :l WHERE id = :id"),
            {"l": location, "id": long},
        )
        conn.execute(
            text("UPDATE quarantine SET location_id = :l WHERE id = :id"),
            {"l": "loc\nfake\u2028row", "id": short},
        )

    listing = fresh_cli("quarantine", "list")
    shown = fresh_cli("quarantine", "show", str(long))

    assert listing.status == 0
    lines = listing.out.splitlines()
    assert len(lines) == 4, listing.out  # the header, two rows, the count
    assert max(len(line) for line in lines) < 150, listing.out
    cells = lines[1].split()
    assert cells[0] == str(long)
    assert f" {'L' * 39}… " in lines[1]
    assert "loc\\x0afake\\u2028row" in lines[2]
    assert f"location: {location}\n" in shown.out


@pytest.mark.parametrize("action", [["list"], ["show", "1"], ["retry", "--all"]])
def test_a_database_that_fails_exits_2(
    action: list[str], cli: Run, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = make_url(database_url).set(database=f"missing_{new_id()}")
    monkeypatch.setenv("DATABASE_URL", missing.render_as_string(hide_password=False))

    result = cli("quarantine", *action)

    assert result.status == 2
    assert result.err.startswith("conversations: database error: ")


@pytest.mark.parametrize("action", [["list"], ["show"], ["retry", "--all"]])
def test_a_reader_that_goes_away_stops_quietly_not_as_a_database_error(
    action: list[str], fresh_url: str, fresh_engine: sqlalchemy.Engine
) -> None:
    """`conversations quarantine list | head -1`: the pipe closes under the command, which
    stops with the shell's 141 as every command does. Its BrokenPipeError (an OSError) was
    reported as "database error: [Errno 32] Broken pipe", status 2."""
    qid = keep(fresh_engine, b"not json", "not_json")
    argv = [*action, str(qid)] if action == ["show"] else action
    process = run_cli_into_closed_pipe(["quarantine", *argv], fresh_url)
    assert process.returncode == 141, process.stderr
    assert process.stderr == ""
