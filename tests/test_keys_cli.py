"""`conversations keys create | list | revoke`: a key is printed alone on stdout once,
is stored only as a hash, reads exactly its locations over HTTP, and stops working once
revoked."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy
from sqlalchemy import text

from conversations.cli import main
from conversations.keys import KeyCache, create_key
from tests.api_support import assert_problem, post_all, wait_folded
from tests.helpers import Server, message, new_id

KEY = re.compile(r"cvk_([0-9a-f]+)_([A-Za-z0-9_-]+)")


@dataclass
class Result:
    status: int
    out: str
    err: str


class Cli:
    """`conversations ARGS...` run in this process against the test database."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> Result:
        self.capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exit:  # argparse refusing the arguments
            status = exit.code if isinstance(exit.code, int) else 1
        captured = self.capsys.readouterr()
        assert "Traceback" not in captured.err
        return Result(status, captured.out, captured.err)

    def create(self, *argv: str) -> str:
        result = self("keys", "create", *argv)
        assert result.status == 0, result.err
        assert KEY.fullmatch(result.out.rstrip("\n")), result.out
        assert result.out.count("\n") == 1 and result.out.endswith("\n")
        return result.out.strip()


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database_url: str
) -> Iterator[Cli]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CONVERSATIONS_LOG_LEVEL", "info")  # logs go to stderr, never stdout
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield Cli(capsys)
    root.handlers[:] = handlers  # main() pointed logging at the captured stderr
    root.setLevel(level)


def parts(key: str) -> tuple[str, str]:
    """The key id and the secret of a key."""
    found = KEY.fullmatch(key)
    assert found is not None, key
    return found.group(1), found.group(2)


def events(server: Server, key: str, location: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/events",
        params={"locationId": location},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def positions(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [event["position"] for event in response.json()["events"]]


@pytest.fixture
def locations(server: Server, engine: sqlalchemy.Engine) -> tuple[str, str, str]:
    """Three locations with one event each."""
    names = (new_id("loc"), new_id("loc"), new_id("loc"))
    wait_folded(engine, max(post_all(server, [message(locationId=name) for name in names])))
    return names


def test_create_prints_the_key_alone_and_it_reads_its_locations(
    cli: Cli, server: Server, engine: sqlalchemy.Engine, locations: tuple[str, str, str]
) -> None:
    first, second, other = locations
    key = cli.create("--location", first, "--location", second, "--label", "reporting")
    for location in (first, second):
        assert len(positions(events(server, key, location))) == 1
    assert positions(events(server, key, other)) == []  # outside the key: like no data

    # Stored as a hash: neither the key nor its secret is anywhere in the table.
    key_id, secret = parts(key)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys WHERE key_id = :id"), {"id": key_id}).one()
    assert secret not in str(tuple(row)) and key not in str(tuple(row))
    assert sorted(row.locations) == sorted([first, second])
    assert row.label == "reporting"


def test_an_all_locations_key_reads_every_location(
    cli: Cli, server: Server, locations: tuple[str, str, str]
) -> None:
    key = cli.create("--all-locations")
    for location in locations:
        assert len(positions(events(server, key, location))) == 1


def test_list_shows_ids_and_scopes_but_never_a_secret(
    cli: Cli, locations: tuple[str, str, str]
) -> None:
    first, second, _ = locations
    scoped = cli.create("--location", first, "--location", second)
    everywhere = cli.create("--all-locations", "--label", "ops-dashboard")
    listing = cli("keys", "list")
    assert listing.status == 0, listing.err
    lines = {line.split()[0]: line for line in listing.out.splitlines()[1:]}
    for key in (scoped, everywhere):
        key_id, secret = parts(key)
        assert key_id in lines
        assert secret not in listing.out + listing.err
    scoped_line, everywhere_line = lines[parts(scoped)[0]], lines[parts(everywhere)[0]]
    assert first in scoped_line and second in scoped_line
    assert "(all locations)" in everywhere_line and "ops-dashboard" in everywhere_line


def test_a_revoked_key_answers_401(
    cli: Cli, server: Server, locations: tuple[str, str, str]
) -> None:
    location = locations[0]
    key = cli.create("--location", location)
    assert len(positions(events(server, key, location))) == 1  # and now cached by the server
    key_id = parts(key)[0]

    revoked = cli("keys", "revoke", key_id)
    assert revoked.status == 0, revoked.err
    assert revoked.out == ""
    deadline = time.monotonic() + 10  # the server remembers a key for up to 2 s
    while (response := events(server, key, location)).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key still reads after 10 s"
        time.sleep(0.2)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")

    listing = cli("keys", "list")
    line = next(line for line in listing.out.splitlines() if line.startswith(key_id))
    assert re.search(r"\d{4}-\d\d-\d\dT", line.split(None, 2)[2]), line  # a revoked time

    again = cli("keys", "revoke", key_id)
    assert again.status == 1
    assert key_id in again.err and again.out == ""


def test_revoke_by_the_whole_key_works_too(
    cli: Cli, server: Server, locations: tuple[str, str, str]
) -> None:
    location = locations[1]
    key = cli.create("--location", location)
    assert cli("keys", "revoke", key).status == 0
    deadline = time.monotonic() + 10
    while events(server, key, location).status_code != 401:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("given", ["{key}", " {key}\n", "Bearer {key}", "{key}x", "cvk-{secret}"])
def test_revoke_never_echoes_a_secret(
    cli: Cli, locations: tuple[str, str, str], given: str
) -> None:
    """A key revoked already (or mistyped) is refused without the secret reaching the
    terminal, its scrollback or a log collecting stderr: only the key id is named."""
    key = cli.create("--location", locations[0])
    key_id, secret = parts(key)
    assert cli("keys", "revoke", key_id).status == 0
    again = cli("keys", "revoke", given.format(key=key, secret=secret))
    assert again.status == 1
    assert again.out == ""
    assert secret not in again.err and secret[:8] not in again.err, again.err
    message = again.err.splitlines()[-1]
    assert message.startswith("conversations: no live key"), again.err
    if given.strip().startswith("cvk_"):  # a whole key: named by its id
        assert f"with id '{key_id}'" in message, again.err


@pytest.mark.parametrize(
    "argv",
    [
        ("keys", "create"),
        ("keys", "create", "--label", "no scope"),
        ("keys", "create", "--location", "x", "--all-locations"),
    ],
)
def test_create_needs_exactly_one_kind_of_scope(cli: Cli, argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.status == 2
    assert result.out == ""
    assert "--location" in result.err and "error" in result.err


def test_a_blank_location_is_refused(cli: Cli) -> None:
    result = cli("keys", "create", "--location", "  ")
    assert result.status == 2
    assert result.out == ""
    assert "location" in result.err


@pytest.mark.parametrize("location", ["x" * 600, "loc\x01", "loc\x1b[31m"])
def test_a_location_no_event_can_have_is_refused(cli: Cli, location: str) -> None:
    result = cli("keys", "create", "--location", location)
    assert result.status == 2
    assert result.out == ""
    assert "not a location id" in result.err


def test_list_does_not_let_a_label_drive_the_terminal(cli: Cli) -> None:
    key = cli.create("--all-locations", "--label", "\x1b[31mred")
    listing = cli("keys", "list")
    line = next(line for line in listing.out.splitlines() if line.startswith(parts(key)[0]))
    assert "\x1b" not in line and "\\x1b[31mred" in line


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("a\nfake row", "a\\x0afake row"),
        ("tab\there", "tab\\x09here"),
        ("line\u2028sep", "line\\u2028sep"),  # Zl
        ("para\u2029sep", "para\\u2029sep"),  # Zp
        ("next\x85line", "next\\x85line"),  # Cc beyond ASCII
        ("\u202eright-to-left", "\\u202eright-to-left"),  # Cf: a bidi override
    ],
)
def test_list_shows_a_label_on_its_own_line_whatever_it_holds(
    cli: Cli, label: str, shown: str
) -> None:
    """A label cannot fake a row: every line separator, tab and format character in it is
    escaped, so each key is one line."""
    key = cli.create("--all-locations", "--label", label)
    listing = cli("keys", "list")
    assert listing.status == 0, listing.err
    mine = [line for line in listing.out.splitlines() if parts(key)[0] in line]
    assert len(mine) == 1, listing.out
    assert shown in mine[0]
    for char in label:
        if not char.isprintable() and char != "\n":  # "\n" ends each line
            assert char not in listing.out


def test_comma_separated_locations_are_several_locations(
    cli: Cli, server: Server, locations: tuple[str, str, str]
) -> None:
    """HighLevel ids never hold a comma: `--location A,B` means two locations, not one
    location named "A,B" that nothing would ever match."""
    first, second, other = locations
    key = cli.create("--location", f"{first}, {second}")
    for location in (first, second):
        assert len(positions(events(server, key, location))) == 1
    assert positions(events(server, key, other)) == []


def test_a_token_shaped_as_no_key_is_never_remembered(engine: sqlalchemy.Engine) -> None:
    """The key cache kept every token a request presented, whatever its size, up to
    10,000 of them: requests without a key (a header may carry a megabyte) made a server
    hold gigabytes. What is not shaped as a key is refused without being kept."""
    cache = KeyCache(engine)
    with engine.begin() as conn:
        key = create_key(conn, [new_id("loc")])
    key_id = key.split("_")[1]
    for token in (
        "x" * 1_000_000,
        "cvk_0123456789ab_" + "s" * 1_000_000,
        f"{key}{'s' * 1_000_000}",
        f"cvk_{'a' * 1_000}_secret",
    ):
        assert cache.scope(token) is None
    assert len(cache) == 0
    assert cache.scope(f"cvk_{key_id}_wrong") is None  # shaped as a key: remembered
    assert cache.scope(key) is not None
    assert len(cache) == 2


def test_a_huge_bearer_token_is_401(server: Server) -> None:
    response = httpx.get(
        f"{server.url}/conversations/search",
        # Under the 64 KiB a request's head may take (past it: 431 before any lookup).
        headers={"Authorization": "Bearer cvk_0123456789ab_" + "s" * 60_000},
    )
    assert_problem(response, 401)


def test_text_that_is_not_utf8_is_told_as_such(cli: Cli) -> None:
    """Bytes that are not UTF-8 on the command line (`--label $'caf\\xe9'`, Latin-1)
    reach Python as lone surrogates: `create` said only "'utf-8' codec can't encode
    character '\\udce9' ... surrogates not allowed", and `revoke` exited 2 with it rather
    than 1 for a key that is not there."""
    created = cli("keys", "create", "--all-locations", "--label", "caf\udce9")
    assert created.status == 2
    assert created.out == ""
    assert created.err.splitlines()[-1].startswith("conversations: --label: not UTF-8"), created.err

    revoked = cli("keys", "revoke", "k\udce9")
    assert revoked.status == 1
    assert revoked.err.splitlines()[-1].startswith("conversations: no live key"), revoked.err
