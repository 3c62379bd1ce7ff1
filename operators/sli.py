"""Exact, pre-sampling SLI windows: every span counts, before any trace is dropped.

Tumbling event-time windows (by span end time) per service. Each window keeps exact span, error
and root counts and a DDSketch of latency (relative error ≤ ``relative_accuracy`` at every
quantile, mergeable). A window closes when processing time passes its end plus ``grace``; a span
for a window that already closed opens a fresh partial of it, emitted at the next flush — partials
of one (service, window) sum exactly. State is kept per input partition so a partition that moves
to another worker takes its uncommitted contributions with it (they are recounted there, not here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from ddsketch import DDSketch

from operators.trace import SpanHeader

OVERFLOW_SERVICE = "__overflow__"
_NS_PER_MS = 1_000_000.0


@dataclass(slots=True)
class WindowAggregate:
    service: str
    window_start_ns: int
    window_end_ns: int
    sketch: DDSketch
    span_count: int = 0
    error_count: int = 0
    root_count: int = 0
    min_ms: float = float("inf")
    max_ms: float = 0.0
    sum_ms: float = 0.0
    partitions: set[int] = field(default_factory=set)
    holds: list[Any] = field(default_factory=list)

    def merge(self, other: "WindowAggregate") -> None:
        self.sketch.merge(other.sketch)
        self.span_count += other.span_count
        self.error_count += other.error_count
        self.root_count += other.root_count
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)
        self.sum_ms += other.sum_ms
        self.partitions |= other.partitions
        self.holds.extend(other.holds)

    def quantile(self, q: float) -> float:
        value = self.sketch.get_quantile_value(q)
        # The sketch's answer is within the relative error; clamp to the exact extremes.
        return min(max(value, self.min_ms), self.max_ms) if value is not None else 0.0


class SliWindows:
    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        relative_accuracy: float = 0.01,
        max_services: int = 1000,
    ):
        self.window_ns = window_ns
        self.grace_ns = grace_ns
        self.relative_accuracy = relative_accuracy
        self.max_services = max_services
        self._open: dict[tuple[int, int, str], WindowAggregate] = {}
        self._services: set[str] = set()

    def __len__(self) -> int:
        return len(self._open)

    def _service_label(self, service: str) -> str:
        # Bounded cardinality: past max_services distinct names, new ones share one bucket.
        if service in self._services:
            return service
        if len(self._services) < self.max_services:
            self._services.add(service)
            return service
        return OVERFLOW_SERVICE

    def add(self, partition: int, service: str, spans: Iterable[SpanHeader], hold: Any = None) -> int:
        """Count one message's spans. Returns how many windows now hold ``hold`` (each window
        releases it when emitted); the caller adds that many obligations to the hold."""
        service = self._service_label(service)
        window_ns = self.window_ns
        touched = 0
        last_key = None
        agg = None
        for span in spans:
            end = span["end_time_unix_nano"]
            start_of_window = end - end % window_ns
            key = (start_of_window, partition, service)
            if key != last_key:
                agg = self._open.get(key)
                if agg is None:
                    agg = self._open[key] = WindowAggregate(
                        service, start_of_window, start_of_window + window_ns,
                        DDSketch(self.relative_accuracy), partitions={partition},
                    )
                if hold is not None and (not agg.holds or agg.holds[-1] is not hold):
                    agg.holds.append(hold)
                    touched += 1
                last_key = key
            latency_ms = (end - span["start_time_unix_nano"]) / _NS_PER_MS
            if latency_ms < 0:
                latency_ms = 0.0  # clock skew between hosts: count the span, not a negative latency
            agg.sketch.add(latency_ms)
            agg.span_count += 1
            if latency_ms < agg.min_ms:
                agg.min_ms = latency_ms
            if latency_ms > agg.max_ms:
                agg.max_ms = latency_ms
            agg.sum_ms += latency_ms
            if span["status_code"] == "ERROR":
                agg.error_count += 1
            if span.get("parent_span_id") is None:
                agg.root_count += 1
        return touched

    def due(self, now_ns: int, flush_all: bool = False) -> list[WindowAggregate]:
        """Windows closed by ``now`` (end + grace ≤ now), merged across partitions per
        (service, window); they leave the state."""
        closed = [k for k, a in self._open.items() if flush_all or a.window_end_ns + self.grace_ns <= now_ns]
        merged: dict[tuple[int, str], WindowAggregate] = {}
        for key in sorted(closed):
            agg = self._open.pop(key)
            into = merged.get((key[0], key[2]))
            if into is None:
                merged[(key[0], key[2])] = agg
            else:
                into.merge(agg)
        return list(merged.values())

    def revoke(self, partitions: Iterable[int]) -> int:
        lost = set(partitions)
        gone = [k for k in self._open if k[1] in lost]
        for k in gone:
            del self._open[k]
        return len(gone)


def sketch_to_record(sketch: DDSketch) -> dict:
    """The DDSketch as the ``LatencySketch`` Avro record (positive bins; latencies are ≥ 0)."""
    store = sketch._store  # ddsketch exposes no public bin accessor; pinned <4 in pyproject
    return {
        "relative_accuracy": sketch._relative_accuracy,
        "zero_count": float(sketch._zero_count),
        "bin_offset": int(store.offset),
        "bin_counts": [float(c) for c in store.bins],
    }


def sketch_from_record(record: dict) -> DDSketch:
    """Rebuild a mergeable DDSketch from a ``LatencySketch`` record (for downstream merging)."""
    sketch = DDSketch(record["relative_accuracy"])
    mapping = sketch._mapping
    for i, count in enumerate(record["bin_counts"]):
        if count:
            sketch.add(mapping.value(record["bin_offset"] + i), count)
    if record["zero_count"]:
        sketch.add(0.0, record["zero_count"])
    return sketch
