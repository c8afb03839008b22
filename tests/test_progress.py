"""The progress line of long commands (`import`, `replay`, `verify`), as written to a
stream that is not a terminal: one plain line per state."""

from __future__ import annotations

import fcntl
import io
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
    written = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        written += chunk
    os.close(master)
    rows = [row for row in re.split(r"[\r\n]+", written.decode()) if row.strip()]
    assert len(rows) == 3, rows
    assert all(len(row) < columns for row in rows), rows
    if columns == 80:
        assert "190,000 of 420,000 events" in rows[1], rows
        assert rows[-1].startswith("replay timeline") and "…" in rows[-1], rows
