"""Keep traces by duration (latest end − earliest start), as the OTel Collector's latency policy:
at least ``threshold_ms``; with ``upper_threshold_ms``, the half-open range
(``threshold_ms``, ``upper_threshold_ms``] — above the lower bound, up to and including the upper
one, as the Collector has it (its sources, v0.160.0). Compared in nanoseconds; the Collector
compares whole (truncated) milliseconds, so the two differ only within the same millisecond."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView

_NS_PER_MS = 1_000_000


@dataclass
class LatencyPolicy(Policy):
    name: str
    threshold_ms: float
    upper_threshold_ms: float | None = None
    _reason: str = field(init=False, repr=False)
    _verdict: Verdict = field(init=False, repr=False)  # immutable: one for every matching trace

    def __post_init__(self) -> None:
        if self.upper_threshold_ms is None:
            self._reason = f"latency>={self.threshold_ms:g}ms"
        else:
            self._reason = f"latency:({self.threshold_ms:g},{self.upper_threshold_ms:g}]ms"
        self._verdict = Verdict(Action.KEEP, self._reason)

    def evaluate(self, trace: TraceView) -> Verdict | None:
        duration = trace.duration_ns
        lower = self.threshold_ms * _NS_PER_MS
        if self.upper_threshold_ms is None:
            return self._verdict if duration >= lower else None
        if lower < duration <= self.upper_threshold_ms * _NS_PER_MS:
            return self._verdict
        return None
