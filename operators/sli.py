"""Exact, pre-sampling SLI windows: every span counts, before any trace is dropped.

Tumbling event-time windows (by span end time) per (service, operation, span kind, status). The
operation is the span name sanitized (``operators.privacy.sanitize.sanitize_span_name`` by default,
or the job's ``Protector.dimension``: "GET /users/123" → "GET /users/{id}") and capped per service
(``max_operations`` distinct names, then ``__other__``). Each window keeps exact span, error
and root counts and a DDSketch of latency (relative error ≤ ``relative_accuracy`` at every
quantile, mergeable). A window closes when processing time passes its end plus ``grace``; a span
for a window that already closed opens a fresh partial of it, emitted at the next flush — partials
of one (service, window) sum exactly. State is kept per input partition so a partition that moves
to another worker takes its uncommitted contributions with it (they are recounted there, not here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch

from operators.privacy.sanitize import sanitize_span_name
from operators.trace import SpanHeader

OVERFLOW_SERVICE = "__overflow__"
OVERFLOW_OPERATION = "__other__"
_MEMO_LIMIT = 4096  # raw span names remembered per service (names with ids are unbounded: reset when full)
_NS_PER_MS = 1_000_000.0
_LN2 = math.log(2.0)  # math.log(x, 2) divides by exactly this


@dataclass(slots=True)
class WindowAggregate:
    """Exact counts and the latency sketch of one SLI window (service, operation, kind, status,
    start, end) — or of a merge of several: the partials of one window from several partitions or
    workers, or a roll-up over windows and operations (``operators.sli_merge``; its identity fields
    are then the first window's and the caller's key says what was merged)."""

    service: str
    window_start_ns: int
    window_end_ns: int
    sketch: DDSketch
    operation: str = "*"
    span_kind: str = "*"
    status: str = "*"
    span_count: int = 0
    error_count: int = 0
    root_count: int = 0
    min_ms: float = float("inf")
    max_ms: float = 0.0
    sum_ms: float = 0.0
    partials: int = 1  # how many emitted records (or open partials) this merges
    partitions: set[int] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    holds: list[Any] = field(default_factory=list)
    # DDSketch bins counted inline on the hot path (the sketch's own add costs ~0.8 µs); ``fold``
    # moves them into ``sketch`` with the very same key mapping before anything reads it.
    bins: dict[int, int] = field(default_factory=dict)
    zeros: int = 0
    accuracies: set[float] = field(default_factory=set)  # of merged partials' sketches (records only)

    @classmethod
    def from_record(cls, r: dict) -> WindowAggregate:
        """One decoded ``SliWindow`` record (``schemas/sli_window.v1.avsc``) as a partial."""
        n = r["span_count"]
        latency = r["latency_ms"]
        return cls(
            r["service"],
            r["window_start_unix_nano"],
            r["window_end_unix_nano"],
            sketch_from_record(r["sketch"]),
            r["operation"],
            r["span_kind"],
            r.get("status", "*"),
            n,
            r["error_count"],
            r.get("root_count", 0),
            latency["min"] if n else float("inf"),  # an empty window's record says 0
            latency["max"] if n else 0.0,
            latency["sum"],
            partitions=set(r.get("partitions", ())),
            workers={r["worker"]} if r.get("worker") else set(),
            accuracies={r["sketch"]["relative_accuracy"]},
        )

    def empty_like(self) -> WindowAggregate:
        """A zero aggregate with this one's identity and sketch accuracy, to merge others into."""
        return WindowAggregate(
            self.service,
            self.window_start_ns,
            self.window_end_ns,
            DDSketch(self.sketch._relative_accuracy),
            self.operation,
            self.span_kind,
            self.status,
            partials=0,
        )

    def fold(self) -> DDSketch:
        bins, sketch = self.bins, self.sketch
        if bins or self.zeros:
            store = sketch._store  # ddsketch pinned <4 (see sketch_to_record)
            n = 0
            for key, count in bins.items():
                store.add(key, count)
                n += count
            sketch._zero_count += self.zeros
            sketch._count += n + self.zeros
            self.bins = {}
            self.zeros = 0
        return sketch

    def merge(self, other: WindowAggregate) -> None:
        """Add ``other`` in: counts and sums add, extremes combine, sketches merge exactly (same
        relative accuracy ⇒ same bins, so merged quantiles keep the ≤ α error bound; different
        accuracies: see ``merged_sketch`` and ``quantile_accuracy``)."""
        self.sketch = merged_sketch(self.fold(), other.fold())
        self.accuracies |= other.accuracies
        if other.span_count:
            self.min_ms = min(self.min_ms, other.min_ms)
            self.max_ms = max(self.max_ms, other.max_ms)
        self.span_count += other.span_count
        self.error_count += other.error_count
        self.root_count += other.root_count
        self.sum_ms += other.sum_ms
        self.partials += other.partials
        self.partitions |= other.partitions
        self.workers |= other.workers
        self.holds.extend(other.holds)

    @property
    def quantile_accuracy(self) -> float:
        """The relative-error bound of ``quantile``: α, or the re-binning bound when partials had
        sketches of different accuracies."""
        ordered = sorted(self.accuracies or {self.sketch._relative_accuracy}, reverse=True)
        if len(ordered) == 1:
            return ordered[0]
        coarse, fine = ordered[0], ordered[1]
        return coarse + fine + coarse * fine

    def quantile(self, q: float) -> float:
        value = self.fold().get_quantile_value(q) if self.span_count else None
        # The sketch's answer is within the relative error; clamp to the exact extremes.
        return min(max(value, self.min_ms), self.max_ms) if value is not None else 0.0

    def quantiles(self, qs: tuple[float, ...]) -> list[float]:
        """``[quantile(q) for q in qs]`` (``qs`` ascending) in one pass over the bins: DDSketch's
        ``get_quantile_value`` walks the dense store from its first bin for every quantile, and
        four walks per emitted window were half the cost of an SLI partial (issue 11: every window
        a commit interval touched is emitted under exactly_once). Same arithmetic — the same
        running sum compared with the same ranks — so the same values, bit for bit."""
        if not self.span_count:
            return [0.0] * len(qs)
        sketch = self.fold()
        store = sketch._store
        below = sketch._zero_count + sketch._negative_store.count  # latencies ≥ 0: no negatives
        if sketch._negative_store.count:
            return [self.quantile(q) for q in qs]
        values: list[float] = []
        pending: list[float] = []  # ranks within the positive store, ascending
        for q in qs:
            rank = q * (sketch._count - 1)
            if rank < below:
                values.append(0)  # what get_quantile_value answers below the positive store
            else:
                pending.append(rank - sketch._zero_count - sketch._negative_store.count)
        keys: list[int] = []
        if pending:
            running, offset, j = 0.0, store.offset, 0
            for i, count in enumerate(store.bins):
                running += count
                while j < len(pending) and running > pending[j]:  # DenseStore.key_at_rank(lower=True)
                    keys.append(i + offset)
                    j += 1
                if j == len(pending):
                    break
            keys.extend([store.max_key] * (len(pending) - len(keys)))
        value_of = sketch._mapping.value
        values.extend(value_of(k) for k in keys)
        lo, hi = self.min_ms, self.max_ms
        return [min(max(v, lo), hi) for v in values]

    @property
    def error_ratio(self) -> float:
        return self.error_count / self.span_count if self.span_count else 0.0


def rebinned(sketch: DDSketch, relative_accuracy: float) -> DDSketch:
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


def merged_sketch(into: DDSketch, sketch: DDSketch) -> DDSketch:
    """``into`` with ``sketch`` merged; equal accuracies merge exactly, others into the coarser."""
    a, b = into._relative_accuracy, sketch._relative_accuracy
    if a == b:
        into.merge(sketch)
        return into
    if a < b:
        into = rebinned(into, b)
        into.merge(sketch)
        return into
    into.merge(rebinned(sketch, a))
    return into


class SliWindows:
    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        relative_accuracy: float = 0.01,
        max_services: int = 1000,
        max_operations: int = 200,
        sanitize: Callable[[str], str] | None = None,
        service_label: Callable[[str], str] | None = None,
    ):
        self.window_ns = window_ns
        self.grace_ns = grace_ns
        self.relative_accuracy = relative_accuracy
        self.max_services = max_services
        self.max_operations = max_operations
        self.sanitize = sanitize or sanitize_span_name
        # service.name is producer text too: through the protector before it is a dimension
        self._protect_service = service_label
        self._service_memo: dict[str, str] = {}  # raw service name → its label (bounded below)
        mapping = DDSketch(relative_accuracy)._mapping
        if type(mapping).__name__ != "LogarithmicMapping" or mapping._offset != 0:
            raise RuntimeError("ddsketch's default mapping changed: the inline bin count would disagree")
        self._multiplier = mapping._multiplier
        self._min_possible = mapping.min_possible
        # (partition, service) → {(window start, operation, kind, status) → aggregate}: one lookup
        # per message for the outer key, one per span (or per run of equal keys) for the inner.
        self._open: dict[tuple[int, str], dict[tuple[int, str, str, str], WindowAggregate]] = {}
        self._services: set[str] = set()
        self._op_memo: dict[str, dict[str, str]] = {}  # service → raw span name → operation label
        self._ops: dict[str, set[str]] = {}  # service → operation labels admitted (≤ max_operations)

    def __len__(self) -> int:
        return sum(len(cell) for cell in self._open.values())

    def service_label(self, service: str) -> str:
        """The bounded, protected dimension of a service name (memoized)."""
        memo = self._service_memo
        label = memo.get(service)
        if label is not None:
            return label
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        label = memo[service] = self._admit_service(
            self._protect_service(service) if self._protect_service is not None else service
        )
        return label

    def _admit_service(self, service: str) -> str:
        # Bounded cardinality: past max_services distinct names, new ones share one bucket.
        if service in self._services:
            return service
        if len(self._services) < self.max_services:
            self._services.add(service)
            return service
        return OVERFLOW_SERVICE

    def operation_label(self, service: str, name: str) -> str:
        """The bounded operation dimension of a span name (slow path of ``add``; memoized)."""
        memo = self._op_memo.setdefault(service, {})
        label = memo.get(name)
        if label is not None:
            return label
        label = self.sanitize(name)
        ops = self._ops.setdefault(service, set())
        if label not in ops:
            if len(ops) < self.max_operations:
                ops.add(label)
            else:
                label = OVERFLOW_OPERATION
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[name] = label
        return label

    def add(self, partition: int, service: str, spans: Iterable[SpanHeader], hold: Any = None) -> int:
        """Count one message's spans of one service (see ``add_groups``)."""
        return self.add_groups(partition, ((service, spans),), hold)

    def add_groups(self, partition: int, groups: Iterable[tuple[str, Iterable[SpanHeader]]], hold: Any = None) -> int:
        """Count one message's spans, given as (service, spans) groups (``Fragment.groups``).
        Returns how many windows now hold ``hold`` (each window releases it when emitted); the
        caller adds that many obligations to the hold. One call per message, not per group: a
        message of OTLP traffic holds ~1.6 spans per service, so per-call setup was most of the
        cost."""
        window_ns = self.window_ns
        open_cells = self._open
        service_memo, op_memos = self._service_memo, self._op_memo
        log, ceil, ln2 = math.log, math.ceil, _LN2
        multiplier, min_possible = self._multiplier, self._min_possible
        touched = 0
        last = None
        for raw_service, spans in groups:
            service = service_memo.get(raw_service)
            if service is None:
                service = self.service_label(raw_service)
            cell = open_cells.get((partition, service))
            if cell is None:
                cell = open_cells[(partition, service)] = {}
            memo = op_memos.get(service) or {}
            for span in spans:
                end = span["end_time_unix_nano"]
                name = span["name"]
                op = memo.get(name)
                if op is None:
                    op = self.operation_label(service, name)
                    memo = op_memos[service]
                status = span["status_code"]
                key = (end - end % window_ns, op, span["kind"], status)
                agg = cell.get(key)
                if agg is None:
                    start_of_window = key[0]
                    agg = cell[key] = WindowAggregate(
                        service,
                        start_of_window,
                        start_of_window + window_ns,
                        DDSketch(self.relative_accuracy),
                        op,
                        key[2],
                        status,
                        partitions={partition},
                    )
                if agg is not last:
                    if hold is not None and (not agg.holds or agg.holds[-1] is not hold):
                        agg.holds.append(hold)
                        touched += 1
                    last = agg
                latency_ms = (end - span["start_time_unix_nano"]) / _NS_PER_MS
                if latency_ms <= 0:
                    latency_ms = 0.0  # clock skew between hosts: count the span, not a negative latency
                if latency_ms > min_possible:
                    bins = agg.bins
                    # = LogarithmicMapping.key (offset 0): math.log(x, 2) is log(x) / log(2.0)
                    k = ceil(log(latency_ms) / ln2 * multiplier)
                    bins[k] = bins.get(k, 0) + 1
                else:
                    agg.zeros += 1
                agg.span_count += 1
                if latency_ms < agg.min_ms:
                    agg.min_ms = latency_ms
                if latency_ms > agg.max_ms:
                    agg.max_ms = latency_ms
                agg.sum_ms += latency_ms
                if status == "ERROR":
                    agg.error_count += 1
                if span.get("parent_span_id") is None:
                    agg.root_count += 1
        return touched

    def due(self, now_ns: int, flush_all: bool = False) -> list[WindowAggregate]:
        """Windows closed by ``now`` (end + grace ≤ now), merged across partitions per
        (window, service, operation, kind, status); they leave the state."""
        horizon = now_ns - self.grace_ns
        merged: dict[tuple, WindowAggregate] = {}
        for (_partition, service), cell in sorted(self._open.items()):
            closed = [k for k, a in cell.items() if flush_all or a.window_end_ns <= horizon]
            for key in closed:
                agg = cell.pop(key)
                agg.fold()
                mkey = (key[0], service, key[1], key[2], key[3])
                into = merged.get(mkey)
                if into is None:
                    merged[mkey] = agg
                else:
                    into.merge(agg)
        self._open = {k: c for k, c in self._open.items() if c}
        return [merged[k] for k in sorted(merged)]

    def revoke(self, partitions: Iterable[int]) -> int:
        lost = set(partitions)
        gone = [k for k in self._open if k[0] in lost]
        n = 0
        for k in gone:
            n += len(self._open.pop(k))
        return n


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


def sketch_from_store(
    relative_accuracy: float,
    offset: int,
    bins: list[float],
    keys: tuple[int, int] | None,
    store_count: float,
    zero_count: float,
    count: float,
) -> DDSketch:
    """A DDSketch holding exactly this positive store (the native windows' sketch, for the SLO
    book): the same layout as the one the Python windows build, not a re-binning of it."""
    sketch = DDSketch(relative_accuracy)
    store = sketch._store  # ddsketch pinned <4 (see sketch_to_record)
    store.offset, store.bins, store.count = offset, bins, store_count
    if keys is not None:  # else the store's own ±infinity sentinels: it is empty
        store.min_key, store.max_key = keys
    sketch._zero_count, sketch._count = zero_count, count
    return sketch


_RECORD_QUANTILES = (0.50, 0.90, 0.95, 0.99)


def window_record(w: Any, worker: str, now_ns: int) -> dict:
    """The ``SliWindow`` Avro record (``schemas/sli_window.v1.avsc``) of one emitted window (a
    ``WindowAggregate``, or a window of the native core's twin, which builds its record itself)."""
    if not isinstance(w, WindowAggregate):
        record: dict = w.record(worker, now_ns)
        return record
    p50, p90, p95, p99 = w.quantiles(_RECORD_QUANTILES)
    return {
        "service": w.service,
        "operation": w.operation,
        "span_kind": w.span_kind,
        "status": w.status,
        "window_start_unix_nano": w.window_start_ns,
        "window_end_unix_nano": w.window_end_ns,
        "span_count": w.span_count,
        "error_count": w.error_count,
        "root_count": w.root_count,
        "latency_ms": {
            "min": w.min_ms if w.span_count else 0.0,
            "max": w.max_ms,
            "sum": w.sum_ms,
            "p50": p50,
            "p90": p90,
            "p95": p95,
            "p99": p99,
        },
        "sketch": sketch_to_record(w.fold()),
        "partitions": sorted(w.partitions),
        "worker": worker,
        "emitted_at_unix_nano": now_ns,
    }
