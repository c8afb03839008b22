"""The progress line of long commands (`import`, `replay`, `verify`), as written to a
stream that is not a terminal: one plain line per state."""

from __future__ import annotations

import io
import re

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
