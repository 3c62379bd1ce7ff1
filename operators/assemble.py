"""Group spans by trace ID until a decision point.

Decision points: ``decision_wait`` after the trace's first span; earlier, once the root span has
arrived and the trace has been quiet for ``root_quiet_gap`` (a finished request rarely grows after
its root ends — Refinery's SendDelay; 0 turns it off); a forced early decision when the trace
exceeds ``max_spans_per_trace`` or when the buffer as a whole exceeds ``max_buffered_spans``
(oldest trace first), so memory stays bounded. Spans that arrive after their trace was decided
follow the remembered decision (``operators.decision_cache``) — the caller checks that first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from operators.trace import SpanHeader


@dataclass(slots=True)
class TraceBuffer:
    trace_id: bytes
    partition: int
    first_seen_ns: int
    deadline_ns: int
    spans: list[SpanHeader] = field(default_factory=list)
    fragments: list[Any] = field(default_factory=list)  # per message: an opaque ref the caller chose
    forced_reason: str = ""
    has_root: bool = False
    last_seen_ns: int = 0
    trigger: str = "decision_wait"  # which decision point released it
    size_bytes: int = 0  # raw bytes of its messages


class TraceAssembler:
    def __init__(
        self,
        decision_wait_ns: int,
        max_buffered_spans: int = 1_000_000,
        max_spans_per_trace: int = 10_000,
        root_quiet_gap_ns: int = 0,
        max_trace_bytes: int = 1 << 62,
        max_buffered_bytes: int = 1 << 62,
    ):
        self.decision_wait_ns = decision_wait_ns
        self.root_quiet_gap_ns = root_quiet_gap_ns
        self.max_buffered_spans = max_buffered_spans
        self.max_spans_per_trace = max_spans_per_trace
        self.max_trace_bytes = max_trace_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered_bytes = 0
        # Insertion order = first-seen order = deadline order (the wait is the same for all).
        self._traces: OrderedDict[bytes, TraceBuffer] = OrderedDict()
        # Traces whose root arrived, in order of last activity (= order of their quiet deadlines).
        self._rooted: OrderedDict[bytes, TraceBuffer] = OrderedDict()
        self._forced: list[TraceBuffer] = []
        self.buffered_spans = 0

    def __len__(self) -> int:
        return len(self._traces)

    def add(self, trace_id: bytes, partition: int, spans: list[SpanHeader], fragment: Any, now_ns: int,
            size_bytes: int = 0) -> None:
        """Buffer one message's spans. Callers check the decision cache first for late spans."""
        buf = self._traces.get(trace_id)
        if buf is None:
            buf = TraceBuffer(trace_id, partition, now_ns, now_ns + self.decision_wait_ns)
            self._traces[trace_id] = buf
        buf.spans.extend(spans)
        buf.fragments.append(fragment)
        buf.last_seen_ns = now_ns
        buf.size_bytes += size_bytes
        self.buffered_spans += len(spans)
        self.buffered_bytes += size_bytes
        if self.root_quiet_gap_ns:
            if not buf.has_root:
                buf.has_root = any(s.get("parent_span_id") is None for s in spans)
            if buf.has_root:
                self._rooted[trace_id] = buf
                self._rooted.move_to_end(trace_id)
        if not buf.forced_reason:
            if len(buf.spans) >= self.max_spans_per_trace:
                self._force(buf, "span_limit")
            elif buf.size_bytes >= self.max_trace_bytes:
                self._force(buf, "trace_bytes")

    def _force(self, buf: TraceBuffer, reason: str) -> None:
        del self._traces[buf.trace_id]
        self._rooted.pop(buf.trace_id, None)
        buf.forced_reason = buf.trigger = reason
        self._forced.append(buf)

    def due(self, now_ns: int) -> list[TraceBuffer]:
        """Traces whose decision point has come, oldest first; they leave the buffer."""
        out, self._forced = self._forced, []
        remaining = self.buffered_spans - sum(len(b.spans) for b in out)
        remaining_bytes = self.buffered_bytes - sum(b.size_bytes for b in out)
        traces, rooted = self._traces, self._rooted
        quiet_before = now_ns - self.root_quiet_gap_ns
        while rooted:
            buf = next(iter(rooted.values()))
            if buf.last_seen_ns > quiet_before:
                break
            rooted.popitem(last=False)
            del traces[buf.trace_id]
            remaining -= len(buf.spans)
            remaining_bytes -= buf.size_bytes
            buf.trigger = "root_quiet"
            out.append(buf)
        while traces:
            buf = next(iter(traces.values()))
            expired = buf.deadline_ns <= now_ns
            if not expired and remaining <= self.max_buffered_spans and remaining_bytes <= self.max_buffered_bytes:
                break
            traces.popitem(last=False)
            rooted.pop(buf.trace_id, None)
            remaining -= len(buf.spans)
            remaining_bytes -= buf.size_bytes
            if not expired:
                buf.forced_reason = buf.trigger = "memory_bound"
            out.append(buf)
        self.buffered_spans = remaining
        self.buffered_bytes = remaining_bytes
        return out

    def over_bound(self) -> bool:
        """At the global bound (backpressure mode: the caller pauses input instead of forcing)."""
        return self.buffered_spans >= self.max_buffered_spans or self.buffered_bytes >= self.max_buffered_bytes

    def revoke(self, partitions: Iterable[int]) -> int:
        """Drop buffered traces of partitions this worker lost (their offsets are uncommitted, so
        the new owner reads them again). Returns how many traces were dropped."""
        lost = set(partitions)
        gone = [tid for tid, b in self._traces.items() if b.partition in lost]
        for tid in gone:
            buf = self._traces.pop(tid)
            self.buffered_spans -= len(buf.spans)
            self.buffered_bytes -= buf.size_bytes
            self._rooted.pop(tid, None)
        kept_forced = [b for b in self._forced if b.partition not in lost]
        dropped = len(gone) + len(self._forced) - len(kept_forced)
        self.buffered_spans -= sum(len(b.spans) for b in self._forced if b.partition in lost)
        self.buffered_bytes -= sum(b.size_bytes for b in self._forced if b.partition in lost)
        self._forced = kept_forced
        return dropped

    def __iter__(self) -> Iterator[TraceBuffer]:
        return iter(list(self._traces.values()))
