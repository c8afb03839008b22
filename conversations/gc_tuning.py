"""Garbage-collector settings for the long-running processes (`serve`, `work`).

Measured under the ingest benchmark's load (concurrency 64), CPython's defaults cost the
service its p99: a full collection walked every object the process had built at
startup (SQLAlchemy, pydantic, Starlette, alembic: a few hundred thousand of them) and
stopped the event loop for 150-200 ms, twice in 4,000 webhooks; and with 64 requests in
flight, their live objects alone kept crossing the first generation's threshold (700
net allocations), so young collections ran every ~20 webhooks and promoted request
objects into the older generations, which made the full collections come sooner.

So, once started: collect, then `gc.freeze()` moves everything that exists into a
permanent generation the collector never walks again (nothing built at startup is
garbage later: modules, engines, compiled models); and the first generation's threshold
is raised so that objects of requests in flight, freed by reference counting when the
request ends, no longer trigger collections. Cyclic garbage is still collected, only
in larger steps.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net new container objects (allocations minus frees) that trigger a young collection."""


def freeze_startup_heap() -> None:
    """Call once startup is done, before serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
