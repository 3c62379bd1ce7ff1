"""Keep traces whose duration (latest end − earliest start) is at least ``threshold_ms``
(and, if set, below ``upper_threshold_ms``), as the OTel Collector's latency policy."""

from __future__ import annotations

from dataclasses import dataclass

from operators.policies.base import Action, Policy, Verdict
from operators.trace import TraceView

_NS_PER_MS = 1_000_000


@dataclass
class LatencyPolicy(Policy):
    name: str
    threshold_ms: float
    upper_threshold_ms: float | None = None

    def evaluate(self, trace: TraceView) -> Verdict | None:
        duration = trace.duration_ns
        if duration < self.threshold_ms * _NS_PER_MS:
            return None
        if self.upper_threshold_ms is not None and duration >= self.upper_threshold_ms * _NS_PER_MS:
            return None
        return Verdict(Action.KEEP, f"latency>={self.threshold_ms:g}ms")
