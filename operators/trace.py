"""The view of one buffered trace that policies evaluate."""

from __future__ import annotations

from functools import cached_property
from typing import Iterable, TypedDict


class SpanHeader(TypedDict, total=False):
    """What ingest decodes for every span (the rest stays encoded until the trace is kept)."""

    service: str
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: str  # UNSPECIFIED INTERNAL SERVER CLIENT PRODUCER CONSUMER
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: str  # UNSET OK ERROR
    trace_state: str


class TraceView:
    """Read-only facts about a trace's spans, computed once on first use."""

    def __init__(self, trace_id: bytes, spans: Iterable[SpanHeader]):
        self.trace_id = trace_id
        self.spans = list(spans)

    @property
    def span_count(self) -> int:
        return len(self.spans)

    @cached_property
    def has_error(self) -> bool:
        return any(s["status_code"] == "ERROR" for s in self.spans)

    @cached_property
    def start_ns(self) -> int:
        return min(s["start_time_unix_nano"] for s in self.spans)

    @cached_property
    def end_ns(self) -> int:
        return max(s["end_time_unix_nano"] for s in self.spans)

    @property
    def duration_ns(self) -> int:
        """Trace duration = latest span end − earliest span start (as the OTel latency policy)."""
        return self.end_ns - self.start_ns

    @cached_property
    def root(self) -> SpanHeader | None:
        return next((s for s in self.spans if s.get("parent_span_id") is None), None)
