"""The registry of projections: every read model the service keeps, by name."""

from __future__ import annotations

from collections.abc import Sequence

from conversations.projections import contact_channels, location_conversations, timeline
from conversations.projections.base import Projection

PROJECTIONS: tuple[Projection, ...] = (
    timeline.PROJECTION,
    contact_channels.PROJECTION,
    location_conversations.PROJECTION,
)


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
