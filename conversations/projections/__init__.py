"""Projections: read models folded from the event stream (see registry.py)."""
