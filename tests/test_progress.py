"""The progress line of long commands (`import`, `replay`, `verify`), as written to a
stream that is not a terminal: one plain line per state."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import re
import select
import struct
import termios
import time

import pytest

from conversations.progress import Progress

AMOUNTS = re.compile(r"([\d,]+) of ([\d,]+) events")


def amounts(text: str) -> list[tuple[int, int]]:
    return [
        (int(done.replace(",", "")), int(total.replace(",", "")))
        for done, total in AMOUNTS.findall(text)
    ]


@pytest.mark.parametrize(
    ("label", "total", "done", "shown", "percent"),
    [
        # A replay counts the events in the store when it starts, but folds those that
        # arrive meanwhile too: never `3,234 of 2,772 events`.
        ("replay", 2772, 3234, (3234, 3234), "100%"),
        ("verify", 1000, 250, (250, 1000), " 25%"),  # a total not reached is kept
    ],
    ids=["the total grows with what is done beyond it", "a total not reached is kept"],
)
def test_the_last_line_shows_what_was_done_of_the_total(
    label: str, total: int, done: int, shown: tuple[int, int], percent: str
) -> None:
    stream = io.StringIO()
    bar = Progress(label, total, unit="events", stream=stream)
    bar.update_to(done)
    bar.close()
    assert amounts(stream.getvalue()) == [shown]
    assert percent in stream.getvalue()


def drained(master: int) -> str:
    """What was written to the pseudo-terminal whose master side is `master` (closed)."""
    written = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the slave side is closed and everything read
            break
        if not chunk:
            break
        written += chunk
    os.close(master)
    return written.decode()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("columns", [80, 40])
def test_on_a_terminal_each_redraw_fits_on_one_row(columns: int) -> None:
    """A redraw goes back with `\\r` to the start of the row only: a bar wider than the
    terminal wrapped, and each redraw added a row (`replay` of every projection is about
    150 characters). The bar, then the label's end, give way; the figures stay."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(slave, "w") as terminal:
        label = "replay timeline, contact_channels, location_conversations"
        bar = Progress(label, 420_000, unit="events", stream=terminal)
        for done in (95_000, 190_000):
            time.sleep(0.11)  # past the redraw interval
            bar.update_to(done)
        bar.close()
    rows = [row for row in re.split(r"[\r\n]+", drained(master)) if row.strip()]
    assert len(rows) == 3, rows
    assert all(len(row) < columns for row in rows), rows
    if columns == 80:
        assert "190,000 of 420,000 events" in rows[1], rows
        assert rows[-1].startswith("replay timeline") and "…" in rows[-1], rows


def screen(written: str) -> list[str]:
    """The rows a terminal shows for `written`: `\\r` goes back to the row's start, and
    what follows overwrites it."""
    rows: list[str] = []
    row: list[str] = []
    column = 0
    for char in written:
        if char == "\n":
            rows.append("".join(row).rstrip())
            row, column = [], 0
        elif char == "\r":
            column = 0
        else:
            if column < len(row):
                row[column] = char
            else:
                row.append(char)
            column += 1
    return [*rows, "".join(row).rstrip()]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_line_logged_while_the_bar_is_drawn_takes_its_row() -> None:
    """`replay` logs "projections rebuilt" while its bar is on the terminal: the line was
    written on after the bar, `...0:00 left2026-12-01 ... projections rebuilt`."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with os.fdopen(slave, "w") as terminal:
        handler = logging.StreamHandler(terminal)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.handlers[:], root.level = [handler], logging.INFO
        try:
            bar = Progress("replay timeline", 1000, unit="events", stream=terminal)
            time.sleep(0.11)
            bar.update_to(500)
            logging.getLogger("conversations.test").info("projections rebuilt")
            bar.close()
            logging.getLogger("conversations.test").info("after the bar")
        finally:
            root.handlers[:], root.level = handlers, level
    rows = [row for row in screen(drained(master)) if row]
    assert rows[0] == "INFO projections rebuilt", rows
    assert rows[1].startswith("replay timeline") and "1,000 events" in rows[1], rows
    assert rows[2] == "INFO after the bar", rows
    assert len(rows) == 3, rows
