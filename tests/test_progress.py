"""The progress line of long commands (`import`, `replay`, `verify`), as written to a
stream that is not a terminal: one plain line per state."""

from __future__ import annotations

import io
import re

from conversations.progress import Progress

AMOUNTS = re.compile(r"([\d,]+) of ([\d,]+) events")


def amounts(text: str) -> list[tuple[int, int]]:
    return [
        (int(done.replace(",", "")), int(total.replace(",", "")))
        for done, total in AMOUNTS.findall(text)
    ]


def test_the_total_grows_with_what_is_done_beyond_it() -> None:
    """A replay counts the events in the store when it starts, but folds those that
    arrive meanwhile too: never `3,234 of 2,772 events`."""
    stream = io.StringIO()
    bar = Progress("replay", 2772, unit="events", stream=stream)
    bar.update_to(3234)
    bar.close()
    assert amounts(stream.getvalue()) == [(3234, 3234)]
    assert "100%" in stream.getvalue()


def test_a_total_not_reached_is_kept() -> None:
    stream = io.StringIO()
    bar = Progress("verify", 1000, unit="events", stream=stream)
    bar.update_to(250)
    bar.close()
    assert amounts(stream.getvalue()) == [(250, 1000)]
    assert " 25%" in stream.getvalue()
