"""Keep traces with at least ``min_spans`` (and, if set, at most ``max_spans``) spans, as the
OTel Collector's span_count policy (both bounds inclusive)."""

from __future__ import annotations

from dataclasses import dataclass

from operators.policies.base import Policy, Verdict, keep
from operators.trace import TraceView


@dataclass
class SpanCountPolicy(Policy):
    name: str
    min_spans: int = 0
    max_spans: int | None = None

    def evaluate(self, trace: TraceView) -> Verdict | None:
        n = trace.span_count
        if n < self.min_spans or (self.max_spans is not None and n > self.max_spans):
            return None
        return keep(f"span_count:{n}")
