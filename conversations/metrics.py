"""In-process counters and histograms, rendered in Prometheus' text format."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence


class Counter:
    def __init__(self, name: str, help: str, label: str, known: Sequence[str] = ()) -> None:
        """`known`: the label values rendered (as 0) before their first increment. A
        series that first appears at 1 hides that increment from `rate()` and
        `increase()`, so an alert on, say, the first `unavailable` after a restart
        would never fire (Prometheus' "avoid missing metrics")."""
        self.name = name
        self.help = help
        self.label = label
        self.values: defaultdict[str, int] = defaultdict(int, dict.fromkeys(known, 0))

    def inc(self, label_value: str, amount: int = 1) -> None:
        self.values[label_value] += amount

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for value, count in sorted(self.values.items()):
            yield f'{self.name}{{{self.label}="{_escape(value)}"}} {count}'


class Histogram:
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, name: str, help: str, label: str) -> None:
        self.name = name
        self.help = help
        self.label = label
        self.counts: dict[str, list[int]] = {}
        self.sums: defaultdict[str, float] = defaultdict(float)

    def observe(self, label_value: str, seconds: float) -> None:
        counts = self.counts.setdefault(label_value, [0] * (len(self.BUCKETS) + 1))
        counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.sums[label_value] += seconds

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for value, counts in sorted(self.counts.items()):
            label = f'{self.label}="{_escape(value)}"'
            running = 0
            for bound, count in zip((*self.BUCKETS, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                yield f'{self.name}_bucket{{{label},le="{le}"}} {running}'
            yield f"{self.name}_sum{{{label}}} {self.sums[value]}"
            yield f"{self.name}_count{{{label}}} {running}"


class Gauge:
    """A value read when scraped (from the database), by label value; `label` None for a
    gauge without labels (its one value under the key "")."""

    def __init__(self, name: str, help: str, label: str | None = None) -> None:
        self.name = name
        self.help = help
        self.label = label
        self.values: dict[str, float] = {}

    def set(self, value: float, label_value: str = "") -> Gauge:
        self.values[label_value] = value
        return self

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for value, number in sorted(self.values.items()):
            label = f'{{{self.label}="{_escape(value)}"}}' if self.label is not None else ""
            yield f"{self.name}{label} {_number(number)}"


WEBHOOK_OUTCOMES = (
    "stored",
    "duplicate",
    "quarantined",
    "not_json",
    "bad_encoding",
    "unauthenticated",
    "too_large",
    "unsupported_encoding",
    "body_timeout",
    "unavailable",
    "client_disconnected",
)
"""Every `outcome` of `conversations_webhooks_total` (README's metrics table)."""


class Metrics:
    """The service's metrics; one instance per process, held by the app's state."""

    def __init__(self) -> None:
        self.webhooks = Counter(
            "conversations_webhooks_total",
            "Webhook deliveries by outcome.",
            "outcome",
            known=WEBHOOK_OUTCOMES,
        )
        self.read_cache = Counter(
            "conversations_read_cache_total",
            "Reads of cacheable pages by result: hit (answered from memory) or miss.",
            "result",
            known=("hit", "miss"),
        )
        self.request_seconds = Histogram(
            "conversations_request_duration_seconds", "HTTP request latency by route.", "route"
        )

    def render(self, gauges: Sequence[Gauge] = ()) -> str:
        lines = [
            *self.webhooks.render(),
            *self.read_cache.render(),
            *self.request_seconds.render(),
        ]
        for gauge in gauges:
            lines += gauge.render()
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Integers without a fraction; anything else as Python writes floats (repr)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
