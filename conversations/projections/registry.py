"""The registry of projections: every read model the service keeps, by name."""

from __future__ import annotations

from collections.abc import Sequence

import importlib

from conversations.projections.base import Projection

# TEMPORARY-WIP: tolerate modules not written yet
PROJECTIONS: tuple[Projection, ...] = ()
for _name in ("timeline", "contact_channels", "location_conversations"):
    try:
        PROJECTIONS += (importlib.import_module(f"conversations.projections.{_name}").PROJECTION,)
    except Exception:
        pass


def select(names: Sequence[str] | None) -> tuple[Projection, ...]:
    """The projections named (all when none are); ValueError names an unknown one."""
    if not names:
        return PROJECTIONS
    known = {p.name: p for p in PROJECTIONS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"unknown projection {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        )
    return tuple(known[name] for name in dict.fromkeys(names))
