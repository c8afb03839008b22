"""A progress line on stderr for long commands: a redrawn bar on a terminal, else a plain
line now and then (logs and CI output stay readable)."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from typing import TextIO

OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""What writing a command's output to a file may fail with (a full disk, a quota, a
file size limit): no database error, and no bug to show a traceback for."""


def output_failed(error: OSError) -> bool:
    """Whether `error` is the command's output that could not be written."""
    return error.errno in OUTPUT_ERRNOS


log = logging.getLogger("conversations.progress")

_TTY_INTERVAL = 0.1
_PLAIN_INTERVAL = 5.0
_BAR_WIDTH = 24


def size(count: float) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 12.3 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError(count)


def duration(seconds: float) -> str:
    """Seconds as 0:07, 3:25 or 1:02:03."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """How far a long command is: `done` of `total` in `unit` ("bytes" are shown as sizes;
    `total` None when unknown, e.g. a pipe), and optionally a count of `items` done.

    `update_to` is cheap enough to call per item: it redraws at most every 0.1 s on a
    terminal and writes a line at most every 5 s elsewhere; `close` writes the last state.
    Standard error that is not a terminal is where the command's logs go, JSON lines by
    default: there each line is logged (`conversations.progress`, in the logs' format),
    as a plain line among JSON ones was garbage to a log collector parsing them.
    A total passed is raised to what is done beyond it: a replay counts the events in the
    store when it starts but folds those that arrive meanwhile too, and `3,234 of 2,772`
    would read as a bug.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        unit: str = "bytes",
        items: str = "events",
        stream: TextIO | None = None,
    ) -> None:
        self._label = label
        self._total = total
        self._unit = unit
        self._items_name = items
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._logged = stream is None and not self._tty
        self._start = time.monotonic()
        self._next = self._start + (_TTY_INTERVAL if self._tty else _PLAIN_INTERVAL)
        self._done = 0
        self._items: int | None = None
        self._width = 0
        self._closed = False
        self._clearing = _ClearBeforeLogs(self) if self._tty else None
        if self._clearing is not None:
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._clearing)

    def update_to(self, done: int, items: int | None = None) -> None:
        self._done, self._items = done, items
        if self._total is not None and done > self._total:
            self._total = done
        now = time.monotonic()
        if now >= self._next:
            self._next = now + (_TTY_INTERVAL if self._tty else _PLAIN_INTERVAL)
            self._draw(now, final=False)

    def close(self) -> None:
        """Write the final state, once."""
        if not self._closed:
            self._closed = True
            self._draw(time.monotonic(), final=True)
            if self._clearing is not None:
                for handler in logging.getLogger().handlers:
                    handler.removeFilter(self._clearing)

    def clear(self) -> None:
        """Blank the bar's row, for a log line to take it (the next update draws the bar
        again, below): a line logged while the bar was drawn was written on after it,
        `...0:00 left2026-12-01 14:09:03 INFO ... projections rebuilt`."""
        if self._width and not self._closed:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _draw(self, now: float, *, final: bool) -> None:
        text = self._text(now - self._start, final)
        if self._logged:
            log.info(
                "%s", text, extra={"done": self._done, "total": self._total, "unit": self._unit}
            )
            return
        if self._tty:
            text = self._fitted(text, now - self._start, final)
            padding = " " * max(0, self._width - len(text))
            self._width = len(text)
            self._stream.write(f"\r{text}{padding}" + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def _fitted(self, text: str, elapsed: float, final: bool) -> str:
        """`text` within one line of the terminal: a line that wraps is not redrawn by
        `\r` (which goes back to the start of the last row only), so each redraw added a
        row (a replay of every projection, or an import of a long path, on 80 columns).
        The bar goes first, then the end of the label (`…`); the figures stay."""
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):  # not a terminal after all
            return text
        room = columns - 1  # writing the last column may wrap at once on some terminals
        if columns <= 0 or len(text) <= room:
            return text
        text = self._text(elapsed, final, bar=False)
        excess = len(text) - room
        if excess > 0 and excess < len(self._label):
            text = self._label[: len(self._label) - excess - 1] + "…" + text[len(self._label) :]
        return text if len(text) <= room else text[: max(0, room - 1)] + "…"

    def _amount(self, count: float) -> str:
        return size(count) if self._unit == "bytes" else f"{count:,.0f}"

    def _text(self, elapsed: float, final: bool, *, bar: bool = True) -> str:
        parts = [self._label]
        if self._total:
            fraction = min(1.0, self._done / self._total)
            if self._tty and bar:
                filled = round(fraction * _BAR_WIDTH)
                parts.append("[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]")
            parts.append(f"{fraction:4.0%}")
            parts.append(f"{self._amount(self._done)} of {self._amount(self._total)}")
        else:
            parts.append(self._amount(self._done))
        if self._unit != "bytes":
            parts[-1] += f" {_noun(self._unit, self._total or self._done)}"
        if self._items is not None:
            parts.append(f"{self._items:,} {_noun(self._items_name, self._items)}")
        if elapsed > 0:
            parts.append(self._rate(elapsed))
        if final:
            parts.append(f"in {duration(elapsed)}")
        elif self._total and self._done and elapsed > 0:
            left = (self._total - self._done) * elapsed / self._done
            parts.append(f"{duration(left)} left")
        return "  ".join(parts)

    def _rate(self, elapsed: float) -> str:
        if self._items is not None:
            return f"{self._items / elapsed:,.0f} {self._items_name}/s"
        if self._unit == "bytes":
            return f"{size(self._done / elapsed)}/s"
        return f"{self._done / elapsed:,.0f} {self._unit}/s"


class _ClearBeforeLogs(logging.Filter):
    """On the log handlers while a bar is drawn on a terminal: each record about to be
    written clears the bar's row first."""

    def __init__(self, bar: Progress) -> None:
        super().__init__()
        self._bar = bar

    def filter(self, record: logging.LogRecord) -> bool:
        self._bar.clear()
        return True


def _noun(plural: str, count: float) -> str:
    """`1 payload`, `2 payloads` (the names given are plurals)."""
    return plural.removesuffix("s") if count == 1 else plural
