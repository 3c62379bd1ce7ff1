"""Merging ``SliWindow`` partials into exact totals (pure; used by ``tailsift sli`` and tests).

Records with the same (service, operation, span kind, status, window start, window end) are
partials of one window — from different workers, different input partitions, or spans that
arrived after a window was emitted. Their counts and sums add, min/max combine, and their DDSketches
merge exactly (same relative accuracy ⇒ same bins), so the merged quantiles carry the same ≤ α
relative-error guarantee as one sketch over all the spans. Rolling up further (all windows, all
operations of a service) is the same operation on a coarser key.

Partials whose sketches have different relative accuracies (``sli.relative_accuracy`` changed
between runs, or workers configured differently) are merged too: the finer sketch's bins are
re-binned into the coarser one, so the merged quantiles are within α_c + α_f + α_c·α_f (α_c the
coarsest, α_f the next accuracy) instead of α — ``MergedWindow.quantile_accuracy`` says which, and
``tailsift sli`` says so when it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ddsketch import DDSketch

from operators.sli import sketch_from_record

WindowKey = tuple[str, str, str, str, int, int]  # service, operation, kind, status, start, end


def window_key(record: dict) -> WindowKey:
    return (
        record["service"],
        record["operation"],
        record["span_kind"],
        record.get("status", "*"),
        record["window_start_unix_nano"],
        record["window_end_unix_nano"],
    )


@dataclass
class MergedWindow:
    span_count: int = 0
    error_count: int = 0
    root_count: int = 0
    min_ms: float = float("inf")
    max_ms: float = 0.0
    sum_ms: float = 0.0
    partials: int = 0
    partitions: set[int] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    sketch: DDSketch | None = None
    accuracies: set[float] = field(default_factory=set)  # of the partials' sketches

    def add_record(self, r: dict) -> None:
        self._add(
            r["span_count"],
            r["error_count"],
            r.get("root_count", 0),
            r["latency_ms"]["min"],
            r["latency_ms"]["max"],
            r["latency_ms"]["sum"],
            sketch_from_record(r["sketch"]),
        )
        self.partitions.update(r.get("partitions", ()))
        if r.get("worker"):
            self.workers.add(r["worker"])

    def merge(self, other: MergedWindow) -> None:
        self._add(
            other.span_count,
            other.error_count,
            other.root_count,
            other.min_ms,
            other.max_ms,
            other.sum_ms,
            other.sketch,
            other.partials,
        )
        self.partitions |= other.partitions
        self.workers |= other.workers
        self.accuracies |= other.accuracies

    def _add(self, n, errors, roots, mn, mx, total, sketch, partials=1) -> None:
        if n:
            self.min_ms = min(self.min_ms, mn)
            self.max_ms = max(self.max_ms, mx)
        self.span_count += n
        self.error_count += errors
        self.root_count += roots
        self.sum_ms += total
        self.partials += partials
        if sketch is not None:
            if self.sketch is None:
                self.sketch = DDSketch(sketch._relative_accuracy)
            self.sketch = _merged_sketch(self.sketch, sketch)
            self.accuracies.add(sketch._relative_accuracy)

    @property
    def quantile_accuracy(self) -> float:
        """The relative-error bound of ``quantile``: α, or the re-binning bound when partials had
        sketches of different accuracies."""
        if not self.accuracies:
            return 0.0
        ordered = sorted(self.accuracies, reverse=True)
        if len(ordered) == 1:
            return ordered[0]
        coarse, fine = ordered[0], ordered[1]
        return coarse + fine + coarse * fine

    def quantile(self, q: float) -> float:
        v = self.sketch.get_quantile_value(q) if self.sketch is not None and self.span_count else None
        return 0.0 if v is None else min(max(v, self.min_ms), self.max_ms)

    @property
    def error_ratio(self) -> float:
        return self.error_count / self.span_count if self.span_count else 0.0


def _rebinned(sketch: DDSketch, relative_accuracy: float) -> DDSketch:
    """``sketch``'s counts in a sketch of (coarser) ``relative_accuracy``: each bin's representative
    value, with its count, goes into the new sketch's bin for it. Latencies are ≥ 0: no negatives."""
    out = DDSketch(relative_accuracy)
    mapping, store = sketch._mapping, sketch._store
    for i, count in enumerate(store.bins):
        if count:
            out.add(mapping.value(store.offset + i), count)
    if sketch._zero_count:
        out.add(0.0, sketch._zero_count)
    return out


def _merged_sketch(into: DDSketch, sketch: DDSketch) -> DDSketch:
    """``into`` with ``sketch`` merged; equal accuracies merge exactly, others into the coarser."""
    a, b = into._relative_accuracy, sketch._relative_accuracy
    if a == b:
        into.merge(sketch)
        return into
    if a < b:
        into = _rebinned(into, b)
        into.merge(sketch)
        return into
    into.merge(_rebinned(sketch, a))
    return into


def merge_records(records: Iterable[dict]) -> dict[WindowKey, MergedWindow]:
    """Decoded ``SliWindow`` records → one exact aggregate per window key."""
    out: dict[WindowKey, MergedWindow] = {}
    for r in records:
        key = window_key(r)
        m = out.get(key)
        if m is None:
            m = out[key] = MergedWindow()
        m.add_record(r)
    return out


def roll_up(windows: dict[WindowKey, MergedWindow], by: Callable[[WindowKey], tuple]) -> dict[tuple, MergedWindow]:
    """Coarser totals, e.g. ``by=lambda k: k[:1]`` per service over all windows and operations."""
    out: dict[tuple, MergedWindow] = {}
    for key, w in windows.items():
        k = by(key)
        m = out.get(k)
        if m is None:
            m = out[k] = MergedWindow()
        m.merge(w)
    return out
