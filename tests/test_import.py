"""`conversations import`: JSON lines and JSON arrays, plain or gzipped, from files or
stdin, through the webhook's validation, idempotency and quarantine, on real PostgreSQL."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import signal
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import RowMapping, text
from sqlalchemy.engine import make_url

from conversations.cli import main
from conversations.importer import Record, records
from tests.conftest import REPO, migrated_database
from tests.helpers import events_refusing, message, new_id


@dataclass
class Result:
    status: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> Iterator[Run]:
    """`conversations ARGS...` in this process, against the test database."""
    monkeypatch.setenv("DATABASE_URL", database_url)
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


def events_in(engine: sqlalchemy.Engine, location_id: str) -> list[RowMapping]:
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT * FROM events WHERE location_id = :l ORDER BY position"),
            {"l": location_id},
        )
        return list(result.mappings())


def kept(engine: sqlalchemy.Engine, file: Path | str) -> list[RowMapping]:
    """The quarantine rows an import of `file` left, in file order."""
    with engine.connect() as conn:
        result = conn.execute(
            text(
                "SELECT * FROM quarantine WHERE headers->>'x-import-file' = :f"
                " ORDER BY coalesce(headers->>'x-import-line', headers->>'x-import-element')::int"
            ),
            {"f": str(file)},
        )
        return list(result.mappings())


def documents(count: int, **fields: Any) -> list[dict[str, Any]]:
    location = new_id("loc")
    return [message(locationId=location, body=f"héllo ✓ {i} 😀", **fields) for i in range(count)]


def spaced(document: dict[str, Any]) -> bytes:
    """Unusual but valid formatting, so a re-serialisation would be caught."""
    return json.dumps(document, ensure_ascii=False, separators=(" , ", " :  ")).encode()


def jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def array(elements: list[bytes]) -> bytes:
    return b"  [\n" + b" ,\n".join(elements) + b"\n]\n"


def pretty(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, ensure_ascii=False).encode()


# --- reading: chunk boundaries cannot change what is read ----------------------------------


def read_in_pieces(data: bytes, piece: int, limit: int = 1 << 20) -> tuple[str, list[Record]]:
    chunks = iter([data[i : i + piece] for i in range(0, len(data), piece)])
    kind, found = records(chunks, limit)
    return kind, list(found)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 1 << 20])
def test_json_lines_are_read_whatever_the_chunk_size(piece: int) -> None:
    data = b'\xef\xbb\xbf{"a": 1}\r\n\n   \n{"b": "\xc3\xa9"}\nnot json\n{"c": 3}'
    kind, found = read_in_pieces(data, piece)
    assert kind == "lines"
    assert found == [
        Record(1, b'{"a": 1}'),
        Record(4, b'{"b": "\xc3\xa9"}'),
        Record(5, b"not json"),
        Record(6, b'{"c": 3}'),
    ]


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 64, 1 << 20])
def test_json_array_elements_are_read_whatever_the_chunk_size(piece: int) -> None:
    data = (
        b'\xef\xbb\xbf \n[ {"a": [1, {"b": "]"}]} ,12345,\n"x\\"y",'
        b' {"\xc3\xa9": "\xe2\x9c\x93"}, -1.5e3 ]\n'
    )
    kind, found = read_in_pieces(data, piece)
    assert kind == "array"
    assert found == [
        Record(0, b'{"a": [1, {"b": "]"}]}'),
        Record(1, b"12345"),
        Record(2, b'"x\\"y"'),
        Record(3, b'{"\xc3\xa9": "\xe2\x9c\x93"}'),
        Record(4, b"-1.5e3"),
    ]


def test_array_elements_keep_bytes_that_are_not_utf8() -> None:
    _, found = read_in_pieces(b'[{"a": "\xff\xfe"}, {}]', 3)
    assert found == [Record(0, b'{"a": "\xff\xfe"}'), Record(1, b"{}")]


def test_lines_and_elements_over_the_limit_are_not_kept() -> None:
    long = b'{"a": "' + b"x" * 100 + b'"}'
    _, lines = read_in_pieces(b"{}\n" + long + b"\n{}\n", 16, limit=50)
    assert lines == [Record(1, b"{}"), Record(2, None), Record(3, b"{}")]
    tricky = b'{"a": ["]}\\"{[", {"b": "' + b"y" * 100 + b'"}], "c": 1}'
    string = b'"' + b"z" * 100 + b'\\" ]"'
    number = b"1" * 100
    data = b"[{}, " + long + b", " + tricky + b",\n" + string + b", " + number + b", 7]"
    _, elements = read_in_pieces(data, 16, limit=50)
    assert elements == [
        Record(0, b"{}"),
        Record(1, None),
        Record(2, None),
        Record(3, None),
        Record(4, None),
        Record(5, b"7"),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[{"a": 1} {"b": 2}]', "expected ',' or ']' after element 0"),
        (b'[{"a": 1}, {"b": ]', "element 1 is not valid JSON"),
        (b'[{"a": 1}', "after element 0, found the end of the file"),
        (b'[{"a": 1}] {"b": 2}', "data after the end of the JSON array"),
    ],
)
def test_a_broken_array_stops_with_a_clear_error(data: bytes, message: str) -> None:
    from conversations.importer import Unreadable

    with pytest.raises(Unreadable, match=message):
        read_in_pieces(data, 4)


@pytest.mark.parametrize("piece", [1, 4, 1 << 20])
def test_json_that_does_not_parse_says_on_which_line_of_the_file(piece: int) -> None:
    """The decoder's message alone read "element 2 is not valid JSON: Unterminated
    string starting at", at nothing: the line is counted across the pieces read."""
    from conversations.importer import Unreadable

    data = b'[\n{"a": 1},\n{"b":\n 2},\n\n{"c": "no end}\n]'
    with pytest.raises(Unreadable) as raised:
        read_in_pieces(data, piece)
    assert str(raised.value) == (
        "element 2 is not valid JSON: Unterminated string starting at line 6 of the file"
    )


# --- importing -------------------------------------------------------------------------------


@pytest.mark.smoke
def test_json_lines_are_stored_with_their_exact_bytes(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(3)
    lines = [spaced(d) for d in docs]
    path = tmp_path / "export.jsonl"
    path.write_bytes(lines[0] + b"\r\n\n  \n" + lines[1] + b"\n" + lines[2])  # no final newline

    result = cli("import", str(path))

    assert result.status == 0, result
    assert f"{path}: 3 stored, 0 duplicate, 0 quarantined" in result.out
    stored = events_in(engine, docs[0]["locationId"])
    assert [bytes(row["raw"]) for row in stored] == lines
    assert [row["payload"]["body"] for row in stored] == [d["body"] for d in docs]
    assert {row["metadata"]["source"] for row in stored} == {"import"}


def test_importing_the_same_file_again_adds_nothing(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(5)
    path = tmp_path / "again.jsonl"
    path.write_bytes(jsonl([json.dumps(d).encode() for d in docs]))

    first = cli("import", str(path))
    second = cli("import", str(path))

    assert first.status == second.status == 0
    assert "5 stored, 0 duplicate, 0 quarantined" in first.out
    assert "0 stored, 5 duplicate, 0 quarantined" in second.out
    assert len(events_in(engine, docs[0]["locationId"])) == 5


def test_the_same_payload_twice_in_one_file_is_stored_once(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    [doc] = documents(1)
    without_id = {k: v for k, v in doc.items() if k != "webhookId"}
    reordered = dict(reversed(list(without_id.items())))
    path = tmp_path / "twice.jsonl"
    path.write_bytes(jsonl([json.dumps(without_id).encode(), json.dumps(reordered).encode()]))

    result = cli("import", str(path))

    assert "1 stored, 1 duplicate, 0 quarantined" in result.out, result
    assert len(events_in(engine, doc["locationId"])) == 1


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzipped"])
def test_a_json_array_stores_each_element_with_its_exact_bytes(
    compress: bool, cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(3)
    elements = [pretty(d) for d in docs]
    data = b"\xef\xbb\xbf" + array(elements)
    path = tmp_path / ("export.json.gz" if compress else "export.json")
    path.write_bytes(gzip.compress(data) if compress else data)

    result = cli("import", str(path))

    assert result.status == 0, result
    assert f"{path}: 3 stored, 0 duplicate, 0 quarantined" in result.out
    assert [bytes(row["raw"]) for row in events_in(engine, docs[0]["locationId"])] == elements


@pytest.mark.parametrize("piece", [1, 2, 5, 64, 1 << 20])
def test_pretty_printed_objects_one_after_another_are_read_whatever_the_chunk_size(
    piece: int,
) -> None:
    """What `jq . export.json` prints, or one webhook copied from HighLevel's docs."""
    data = b'\xef\xbb\xbf{\n  "a": [1, {"b": "}"}]\n}\n{\n  "\xc3\xa9": "x"\n}\n\n{"c": 3}'
    kind, found = read_in_pieces(data, piece)
    assert kind == "values"
    assert found == [
        Record(0, b'{\n  "a": [1, {"b": "}"}]\n}'),
        Record(1, b'{\n  "\xc3\xa9": "x"\n}'),
        Record(2, b'{"c": 3}'),
    ]


def test_a_pretty_printed_webhook_is_one_payload(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(2)
    path = tmp_path / "webhook.json"
    path.write_bytes(pretty(docs[0]) + b"\n" + pretty(docs[1]) + b"\n")

    result = cli("import", str(path))

    assert result.status == 0, result
    assert f"{path}: 2 stored, 0 duplicate, 0 quarantined" in result.out
    assert [bytes(row["raw"]) for row in events_in(engine, docs[0]["locationId"])] == [
        pretty(d) for d in docs
    ]
    assert kept(engine, path) == []


def test_a_broken_pretty_printed_file_stops_with_a_clear_error(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(2)
    path = tmp_path / "broken.json"
    path.write_bytes(pretty(docs[0]) + b"\n" + pretty(docs[1])[:-5])

    result = cli("import", str(path))

    assert result.status == 2, result
    assert "element 1 is not valid JSON" in result.err
    assert len(events_in(engine, docs[0]["locationId"])) == 1


def test_gzipped_json_lines_are_stored(cli: Run, engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    docs = documents(4)
    lines = [spaced(d) for d in docs]
    path = tmp_path / "export.jsonl.gz"  # two gzip members, as `cat a.gz b.gz` makes
    path.write_bytes(gzip.compress(jsonl(lines[:2])) + gzip.compress(jsonl(lines[2:])))

    result = cli("import", str(path))

    assert "4 stored, 0 duplicate, 0 quarantined" in result.out, result
    assert [bytes(row["raw"]) for row in events_in(engine, docs[0]["locationId"])] == lines


@pytest.mark.parametrize("shape", ["lines", "array", "gzipped lines"])
def test_standard_input(
    shape: str,
    cli: Run,
    engine: sqlalchemy.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = documents(3)
    raws = [spaced(d) for d in docs]
    data = array(raws) if shape == "array" else jsonl(raws)
    if shape.startswith("gzipped"):
        data = gzip.compress(data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    result = cli("import", "-")

    assert result.status == 0, result
    assert "<stdin>: 3 stored, 0 duplicate, 0 quarantined" in result.out
    assert [bytes(row["raw"]) for row in events_in(engine, docs[0]["locationId"])] == raws


def test_bad_lines_are_quarantined_with_their_line_numbers(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    good = documents(2)
    not_json = f"not json {new_id()}".encode()
    unknown = json.dumps(message(type="ContactCreate")).encode()
    a_list = f'["{new_id()}"]'.encode()
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(good[0]).encode(), not_json, b"", unknown, a_list]
    path.write_bytes(jsonl([*lines, json.dumps(good[1]).encode()]))

    result = cli("import", str(path))

    assert result.status == 1, result
    assert f"{path}: 2 stored, 0 duplicate, 3 quarantined" in result.out
    assert f"{path}:2: not_json: the body is not valid JSON" in result.out
    assert f"{path}:4: unknown_type: " in result.out
    assert f"{path}:5: not_json: the body is a JSON array, not an object" in result.out
    rows = kept(engine, path)
    assert [bytes(row["body"]) for row in rows] == [not_json, unknown, a_list]
    assert [row["headers"] for row in rows] == [
        {"x-import-file": str(path), "x-import-line": line} for line in ("2", "4", "5")
    ]
    assert [row["reason"] for row in rows] == ["not_json", "unknown_type", "not_json"]
    assert {row["source"] for row in rows} == {"import"}
    assert {row["status"] for row in rows} == {"pending"}
    assert len(events_in(engine, good[0]["locationId"])) == 2
    listed = [line for line in result.out.splitlines() if "quarantine id" in line]
    ids = [str(row["id"]) for row in rows]
    assert [line.rsplit(" ", 1)[-1].rstrip(")") for line in listed] == ids


def test_array_elements_are_quarantined_with_their_index(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    [good] = documents(1)
    bad = f'"just a string {new_id()}"'.encode()
    path = tmp_path / "bad.json"
    path.write_bytes(array([pretty(good), bad]))

    result = cli("import", str(path))

    assert result.status == 1, result
    assert f"{path}[1]: not_json: the body is a JSON string, not an object" in result.out
    [row] = kept(engine, path)
    assert bytes(row["body"]) == bad
    assert row["headers"] == {"x-import-file": str(path), "x-import-element": "1"}


def test_a_payload_the_database_refuses_costs_only_itself(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    """The batch holding payloads the database refuses is retried payload by payload."""
    docs = documents(6)
    lines = [json.dumps(d).encode() for d in docs]
    path = tmp_path / "unstorable.jsonl"

    with events_refusing(engine) as refused:
        for index in (1, 4):
            lines[index] = lines[index].replace(
                b'"conversationId": "cnv', f'"conversationId": "{refused}cnv'.encode()
            )
        path.write_bytes(jsonl(lines))
        result = cli("import", str(path))

    assert result.status == 1, result
    assert "4 stored, 0 duplicate, 2 quarantined" in result.out
    assert f"{path}:2: rejected_by_database: " in result.out
    assert f"{path}:5: rejected_by_database: " in result.out
    stored = events_in(engine, docs[0]["locationId"])
    assert [bytes(row["raw"]) for row in stored] == [lines[i] for i in (0, 2, 3, 5)]
    assert [bytes(row["body"]) for row in kept(engine, path)] == [lines[1], lines[4]]


def test_too_large_lines_are_refused_like_the_webhook_does(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVERSATIONS_MAX_BODY_BYTES", "2000")
    docs = documents(3)
    docs[1]["body"] = "x" * 3000
    path = tmp_path / "large.jsonl"
    path.write_bytes(jsonl([json.dumps(d).encode() for d in docs]))

    result = cli("import", str(path))

    assert result.status == 1, result
    assert "2 stored, 0 duplicate, 0 quarantined, 1 too large (not stored)" in result.out
    assert f"{path}:2: too_large: over 2000 bytes (not stored)" in result.out
    assert len(events_in(engine, docs[0]["locationId"])) == 2
    assert kept(engine, path) == []


def test_the_listing_of_problems_is_capped(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_bytes(jsonl([f"bad {new_id()}".encode() for _ in range(25)]))

    result = cli("import", str(path))

    assert result.status == 1
    assert "0 stored, 0 duplicate, 25 quarantined" in result.out
    assert sum(line.startswith(f"  {path}:") for line in result.out.splitlines()) == 20
    assert f"{path}:20: not_json" in result.out
    assert f"{path}:21: not_json" not in result.out
    assert "  ... and 5 more" in result.out


def test_a_large_file_is_stored_in_batches(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(20_000)
    lines = [json.dumps(d).encode() for d in docs]
    path = tmp_path / "large.jsonl.gz"
    # Repeats far apart (another batch) and close together (the same batch).
    path.write_bytes(gzip.compress(jsonl([*lines, lines[5], lines[-1], lines[-1]])))

    result = cli("import", str(path))

    assert result.status == 0, result
    assert f"{path}: 20000 stored, 3 duplicate, 0 quarantined" in result.out
    stored = events_in(engine, docs[0]["locationId"])
    assert len(stored) == 20_000
    assert bytes(stored[12_345]["raw"]) == lines[12_345]


def test_several_files_are_counted_apart_and_together(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(3)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.json"
    first.write_bytes(jsonl([json.dumps(d).encode() for d in docs[:2]]))
    second.write_bytes(array([pretty(d) for d in docs[1:]]))

    result = cli("import", str(first), str(second))

    assert result.status == 0, result
    assert f"{first}: 2 stored, 0 duplicate, 0 quarantined" in result.out
    assert f"{second}: 1 stored, 1 duplicate, 0 quarantined" in result.out
    assert "total: 3 stored, 1 duplicate, 0 quarantined" in result.out


def test_a_closed_standard_input_is_one_line_and_exit_2(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`conversations import - <&-` (or a service manager starting it without a standard
    input): Python leaves `sys.stdin` None; that was an AttributeError traceback."""
    monkeypatch.setattr(sys, "stdin", None)

    result = cli("import", "-")

    assert result.status == 2
    assert result.err.strip() == "conversations: cannot read <stdin>: standard input is closed"


def test_a_missing_file_stops_before_anything_is_imported(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(1)
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl([json.dumps(docs[0]).encode()]))

    result = cli("import", str(good), str(tmp_path / "missing.jsonl"), str(tmp_path))

    assert result.status == 2
    assert f"cannot read {tmp_path / 'missing.jsonl'}: No such file or directory" in result.err
    assert f"cannot read {tmp_path}: Is a directory" in result.err
    assert events_in(engine, docs[0]["locationId"]) == []


@pytest.mark.parametrize("damage", ["truncated gzip", "not gzip after all", "broken array"])
def test_an_unreadable_file_keeps_what_was_read_before_and_exits_2(
    damage: str, cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    docs = documents(2)
    path = tmp_path / "damaged"
    if damage == "truncated gzip":
        data = gzip.compress(jsonl([json.dumps(d).encode() for d in docs]))[:-12]
    elif damage == "not gzip after all":
        data = b"\x1f\x8b" + b"\x00" * 30
    else:
        data = b"[" + json.dumps(docs[0]).encode() + b", {oops}]"
    path.write_bytes(data)

    result = cli("import", str(path))

    assert result.status == 2, result
    assert f"conversations: {path}: " in result.err
    assert "stopped reading it" in result.err
    if damage == "not gzip after all":
        return
    # What came before the damage is stored: the first line or element, whole.
    assert f"{path}: 1 stored, 0 duplicate, 0 quarantined" in result.out
    assert len(events_in(engine, docs[0]["locationId"])) == 1
    if damage == "broken array":
        assert "element 1 is not valid JSON" in result.err
    else:
        assert "the gzip data ends early (truncated)" in result.err


def test_a_truncated_gzip_keeps_every_whole_line_before_the_cut(
    cli: Run, engine: sqlalchemy.Engine, tmp_path: Path
) -> None:
    """An interrupted download of a large export: over several chunks of output, two
    members, zero padding between them; all but the cut last line are stored."""
    docs = documents(3000)
    lines = [json.dumps(d).encode() for d in docs]
    first, second = gzip.compress(jsonl(lines[:1000])), gzip.compress(jsonl(lines[1000:]))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(first + b"\0" * 100 + second[: len(second) * 3 // 4])

    result = cli("import", str(path))

    assert result.status == 2, result
    assert "the gzip data ends early (truncated)" in result.err
    cut = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(second[: len(second) * 3 // 4])
    whole = 1000 + cut.count(b"\n")
    assert 1000 < whole < 3000
    assert f"{path}: {whole} stored, 0 duplicate, 0 quarantined" in result.out
    stored = [row["payload"] for row in events_in(engine, docs[0]["locationId"])]
    assert stored == docs[:whole]


def test_a_database_that_fails_stops_the_import_with_status_2(
    cli: Run, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = make_url(database_url).set(database=f"missing_{new_id()}")
    monkeypatch.setenv("DATABASE_URL", missing.render_as_string(hide_password=False))
    path = tmp_path / "one.jsonl"
    path.write_bytes(jsonl([json.dumps(documents(1)[0]).encode()]))

    result = cli("import", str(path))

    assert result.status == 2
    assert "conversations: import stopped, database error: " in result.err
    assert "does not exist" in result.err


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_an_import_as_ctrl_c_does(
    server_url: str, tmp_path: Path, sigint: str
) -> None:
    """Exit 130 with its one line, and no traceback of a task that died with the signal
    (the way asyncio.run handles Ctrl-C), also where SIGINT is ignored (a shell's
    background job, nohup). Stopped as soon as each run has stored something new, on a
    database of its own: what the interrupted imports stored stays there, and a last run
    completes the import."""
    location = new_id("loc")
    path = tmp_path / "many.jsonl"
    path.write_bytes(
        b"".join(json.dumps(message(locationId=location)).encode() + b"\n" for _ in range(30_000))
    )
    with migrated_database(server_url, "conversations_import_term") as url:
        environment = {**os.environ, "DATABASE_URL": url, "CONVERSATIONS_LOG_LEVEL": "warning"}
        command = [sys.executable, "-m", "conversations", "import", str(path)]
        engine = sqlalchemy.create_engine(make_url(url).set(drivername="postgresql+psycopg"))

        def stored() -> int:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())

        try:
            interrupted = 0
            for _ in range(3):
                before = stored()
                process = subprocess.Popen(
                    command,
                    env=environment,
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    preexec_fn=ignore_sigint if sigint == "ignored" else None,
                )
                while stored() == before and process.poll() is None:
                    time.sleep(0.01)
                process.send_signal(signal.SIGTERM)
                out, err = process.communicate(timeout=60)
                if f"{path}: " in out:
                    continue  # it finished before the signal came (and may have died of it)
                assert process.returncode == 130, err
                assert "interrupted" in err
                assert "Traceback" not in err and "never retrieved" not in err, err
                interrupted += 1
            assert interrupted, "every run finished before it was stopped"
            assert stored() < 30_000
            last = subprocess.run(
                command, env=environment, cwd=REPO, capture_output=True, text=True
            )
            assert last.returncode == 0, last.stderr
            assert stored() == 30_000
        finally:
            engine.dispose()


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_two_imports_of_the_same_bad_payloads_in_other_orders_both_finish(
    server_url: str, tmp_path: Path
) -> None:
    """Each batch quarantines its bad payloads in one transaction, each upsert locking its
    body's key until the commit: two imports at once of the same bad lines in opposite
    orders (exports read newest first and oldest first) locked them crosswise, and one
    stopped with "database error: deadlock detected", status 2."""
    lines = [f"not json {i}".encode() for i in range(6000)]  # three batches each
    forward, backward = tmp_path / "forward.jsonl", tmp_path / "backward.jsonl"
    forward.write_bytes(jsonl(lines))
    backward.write_bytes(jsonl(lines[::-1]))
    with migrated_database(server_url, "conversations_import_crosswise") as url:
        environment = {**os.environ, "DATABASE_URL": url, "CONVERSATIONS_LOG_LEVEL": "warning"}
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "conversations", "import", str(path)],
                env=environment,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for path in (forward, backward)
        ]
        results = [(process, *process.communicate(timeout=120)) for process in processes]
        for process, out, err in results:
            assert process.returncode == 1, err  # quarantined: 1, not a database failure
            assert "6000 quarantined" in out, out
        engine = sqlalchemy.create_engine(make_url(url).set(drivername="postgresql+psycopg"))
        try:
            with engine.connect() as conn:
                count, attempts = conn.execute(
                    text("SELECT count(*), sum(attempts) FROM quarantine")
                ).one()
        finally:
            engine.dispose()
        assert (count, attempts) == (6000, 12000)


def test_progress_on_a_standard_error_that_is_no_terminal_is_a_log_line(
    database_url: str, tmp_path: Path
) -> None:
    """stderr that is not a terminal is where the logs go, JSON lines by default: the
    progress line was written there as plain text among them, which a log collector
    parsing JSON lines took for garbage. It is logged, in the logs' format."""
    path = tmp_path / "few.jsonl"
    path.write_bytes(jsonl([json.dumps(d).encode() for d in documents(3)]))
    result = subprocess.run(
        [sys.executable, "-m", "conversations", "import", str(path)],
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "CONVERSATIONS_LOG_FORMAT": "auto",
            "CONVERSATIONS_LOG_LEVEL": "info",
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # each one JSON
    [progress] = [line for line in lines if line["logger"] == "conversations.progress"]
    assert progress["message"].startswith(f"import {path}  100%")
    assert progress["done"] == progress["total"] == path.stat().st_size


def _zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("export.jsonl", data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("compress", "named"),
    [
        (lzma.compress, "xz"),
        (bz2.compress, "bzip2"),
        (_zipped, "a zip archive"),
        (lambda data: b"\x28\xb5\x2f\xfd" + data, "zstd"),  # the magic is what is read
        (lambda data: data.decode().encode("utf-16"), "UTF-16"),  # PowerShell's `>`
    ],
    ids=["xz", "bzip2", "zip", "zstd", "utf-16"],
)
def test_a_file_compressed_otherwise_or_in_utf16_is_refused_not_quarantined(
    cli: Run,
    engine: sqlalchemy.Engine,
    tmp_path: Path,
    compress: Callable[[bytes], bytes],
    named: str,
) -> None:
    """Read as JSON lines, its binary bytes were cut at each newline byte into bodies,
    every one quarantined as `not_json` (82 of them for a zip of 2,000 payloads)."""
    docs = documents(300)
    path = tmp_path / "export.jsonl.packed"
    path.write_bytes(compress(jsonl([json.dumps(d).encode() for d in docs])))

    result = cli("import", str(path))

    assert result.status == 2, result
    assert f"{path}: " in result.err and f" {named}, which import does not read" in result.err
    assert kept(engine, path) == []
    assert events_in(engine, docs[0]["locationId"]) == []
